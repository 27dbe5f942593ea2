"""Session setup shared by every test file.

MLX's default device is the GPU wherever it has Metal (Apple silicon). The
suite's MLX tests are written for the CPU: float64 (MLX's GPU has none),
bitwise determinism and exact CPU-kernel comparisons. So the default device
is pinned to the CPU for the session, and the GPU tests
(tests/test_mlx_frontend.py) ask for the GPU explicitly with mx.stream(mx.gpu)
or stream=mx.gpu. Elsewhere (Linux) the CPU is already the default and MLX is
not imported here.
"""
from __future__ import annotations

import sys


def pytest_configure(config):
    if sys.platform != "darwin":
        return
    try:
        import mlx.core as mx
    except ImportError:
        return
    mx.set_default_device(mx.cpu)
