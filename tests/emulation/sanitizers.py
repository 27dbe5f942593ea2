"""What the CUDA and Metal emulation tests share: the sanitizer flags their
harnesses are built with, and the environment those harnesses run in (leaks
reported, the first error fatal, a distinct exit code for ThreadSanitizer)."""
from __future__ import annotations

import os

ASAN = ["-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all"]
TSAN = ["-fsanitize=thread"]


def sanitizer_env() -> dict:
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    env.setdefault("TSAN_OPTIONS", "halt_on_error=1:exitcode=66")
    return env
