"""Reusable column buffers.

A fresh multi-megabyte CPU tensor costs page faults on first touch (measured
here: ~10 ms for the 37 MB columns of a 1x256x64x64 3x3 layer, as much as the
sampling itself), so each thread keeps its largest buffer per (device, dtype)
and reuses it. Buffers never exceed the workspace budget (plus one image when
a single image is larger); ``dcn_torch.empty_cache()`` releases them.
Thread-local, so concurrent callers never share a buffer.
"""
from __future__ import annotations

import threading

import torch

_local = threading.local()


def get(numel: int, dtype: torch.dtype, device: torch.device, slot: int = 0) -> torch.Tensor:
    """A 1-D tensor of exactly ``numel`` elements, backed by a cached buffer."""
    if device.type != "cpu":
        # The CUDA caching allocator already reuses memory (and keeps graphs capturable).
        return torch.empty(numel, dtype=dtype, device=device)
    cache = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    key = (dtype, slot)  # CPU only, so the device is implied
    buf = cache.get(key)
    if buf is None or buf.numel() < numel:
        cache[key] = None  # drop the old one before allocating the new one
        buf = torch.empty(numel, dtype=dtype, device=device)
        cache[key] = buf
    return buf if buf.numel() == numel else buf[:numel]


def empty_cache() -> None:
    """Release this thread's cached column buffers."""
    _local.cache = {}
