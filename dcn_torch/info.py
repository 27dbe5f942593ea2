"""What this build of dcn contains."""
from __future__ import annotations


def build_info() -> dict:
    """Backends and dtypes compiled in (with the CUDA version and GPU
    architectures when CUDA is), and the runtime settings."""
    from . import _C, _config

    cuda = _C.cuda_info()
    info = {
        "backends": ["cpu", "cuda"] if cuda is not None else ["cpu"],
        "dtypes": ["float32", "float64", "float16", "bfloat16"],
        "cpu_threads": _config.get_num_threads(),
        "workspace_bytes": _config.get_workspace_limit(),
        "deterministic": _config.deterministic(),
    }
    if cuda is not None:
        info["cuda"] = cuda
    return info
