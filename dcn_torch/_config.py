"""Process-wide settings: CPU thread count, the column workspace budget and
the deterministic mode of the CUDA backward."""
from __future__ import annotations

import os

import torch

from . import _C

# Columns for one batch chunk are (chunk, C*kh*kw, out_h, out_w); the chunk is
# the largest batch slice whose columns fit this budget (at least one image).
# The backward holds two such buffers (columns and their gradient).
DEFAULT_WORKSPACE_BYTES = 256 * 1024 * 1024

_workspace_bytes = int(os.environ.get("DCN_WORKSPACE_MB", "0")) * 1024 * 1024 or DEFAULT_WORKSPACE_BYTES
_threads_override = int(os.environ.get("DCN_NUM_THREADS", "0"))
_threads_applied = 0


def set_num_threads(n: int) -> None:
    """Threads used by dcn's CPU kernels. 0 (the default) follows
    ``torch.get_num_threads()``, so dcn never runs more threads than torch."""
    global _threads_override
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"set_num_threads: expected an int >= 0, got {n!r}")
    _threads_override = n


def get_num_threads() -> int:
    return _threads_override or torch.get_num_threads()


def apply_num_threads() -> None:
    """Called before every CPU kernel launch; cheap when nothing changed."""
    global _threads_applied
    n = get_num_threads()
    if n != _threads_applied:
        _C.set_num_threads(n)
        _threads_applied = n


def set_workspace_limit(nbytes: int) -> None:
    """Upper bound, in bytes, of one column buffer (default 256 MiB). Batches
    are processed in chunks that fit it; a single image always runs whole."""
    global _workspace_bytes
    if not isinstance(nbytes, int) or nbytes < 1:
        raise ValueError(f"set_workspace_limit: expected a positive int (bytes), got {nbytes!r}")
    _workspace_bytes = nbytes
    from . import _workspace

    _workspace.empty_cache()  # do not keep a buffer sized for the old budget


def get_workspace_limit() -> int:
    return _workspace_bytes


# On the CPU a chunk is also kept near cache size. The backward writes the
# column gradient, then col2im, coord_grad and the weight GEMM each read it
# (and the columns); the forward writes the columns and its GEMM reads them:
# columns that stay in L2/L3 between those passes beat a bigger batched
# GEMM. Measured on 8x64x56x56 (6.9 MiB of columns per image):
# forward+backward 83-87 ms with the whole batch in one chunk, 65-71 ms with
# one image per chunk. The forward, with the channels-last GEMM (interleaved,
# targets of 8 vs 32 MiB): 8x64x56x56 27.4 vs 32.1 ms and 31.8 vs 34.2 ms,
# 4x256x32x32 39.3 vs 44.3 ms, 16x64x28x28 12.3 vs 13.9 ms and 12.0 vs 13.9
# ms. A kernel that parallelises over images asks for one image per thread
# (min_images): the channels-last backward at 2 threads, 39.7 ms with one
# image per chunk, 32.2 ms with two.
CPU_CHUNK_TARGET_BYTES = 8 * 1024 * 1024


def chunk_size(batch: int, bytes_per_image: int, cpu: bool = True, min_images: int = 1) -> int:
    """Images per batch chunk: within the workspace budget (at least one
    image) and, on the CPU, near the cache-friendly target above but not
    below ``min_images`` (what a kernel needs to keep every thread busy)."""
    if batch <= 0:
        return 0
    per_image = max(bytes_per_image, 1)
    budget = _workspace_bytes // per_image
    chunk = budget
    if cpu:
        chunk = min(chunk, max(CPU_CHUNK_TARGET_BYTES // per_image, min(min_images, budget)))
    return max(1, min(batch, chunk))


_deterministic: "bool | None" = None


def set_deterministic(mode: "bool | None") -> None:
    """Deterministic CUDA backward: True, False, or None (the default: follow
    ``torch.use_deterministic_algorithms``). Deterministic mode gives bitwise
    identical input gradients run to run (a sort-based gather instead of
    atomic adds); every other gradient, and everything on the CPU, is
    deterministic always."""
    global _deterministic
    if mode is not None and not isinstance(mode, bool):
        raise TypeError(f"set_deterministic: expected True, False or None, got {mode!r}")
    _deterministic = mode


def deterministic() -> bool:
    """The effective setting (see set_deterministic)."""
    if _deterministic is not None:
        return _deterministic
    return torch.are_deterministic_algorithms_enabled()
