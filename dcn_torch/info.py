"""What this build of dcn contains."""
from __future__ import annotations


def build_info() -> dict:
    """Backends and dtypes compiled in, and the CPU thread setting."""
    from . import _config

    return {
        "backends": ["cpu"],
        "dtypes": ["float32", "float64", "float16", "bfloat16"],
        "cpu_threads": _config.get_num_threads(),
        "workspace_bytes": _config.get_workspace_limit(),
    }
