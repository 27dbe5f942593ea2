"""Wall-clock timing shared by the benchmark scripts (CPU work, or anything
the caller synchronises itself)."""
from __future__ import annotations

import time
from typing import Callable, List


def wall_times_ms(fn: Callable[[], None], repeats: int, warmup: int) -> List[float]:
    """Milliseconds of each of ``repeats`` calls of fn, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times
