"""``deform_conv2d`` for MLX (channels last, like ``mx.conv2d``).

The deformable sampling is the ``DeformSample`` primitive (C++, the dcn core's
CPU kernels or, on the GPU stream of a macOS build, its Metal kernels, with a
vjp that builds a ``DeformSampleGrad`` node); the weight product is
``mx.matmul`` in the graph, so MLX's own autodiff differentiates it and it
runs on MLX's GEMM.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import mlx.core as mx

from . import _C

IntPair = Union[int, Tuple[int, int]]

__all__ = ["deform_conv2d"]


def _pair(v, name: str) -> Tuple[int, int]:
    def is_int(x):
        return isinstance(x, int) and not isinstance(x, bool)

    if is_int(v):
        return (int(v), int(v))
    try:
        a, b = v
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {v!r}") from None
    if not (is_int(a) and is_int(b)):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {v!r}")
    return (int(a), int(b))


def _check_array(a, name: str, optional: bool = False) -> None:
    if a is None and optional:
        return
    if not isinstance(a, mx.array):
        raise TypeError(f"{name}: expected an mx.array, got {type(a).__name__}")
    if not mx.issubdtype(a.dtype, mx.floating):
        raise TypeError(
            f"{name}: expected a floating-point array (float32, float16, bfloat16 or float64), "
            f"got dtype {a.dtype}")


def deform_conv2d(
    input: mx.array,
    offset: mx.array,
    weight: mx.array,
    bias: Optional[mx.array] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Optional[mx.array] = None,
    *,
    stream: Union[None, mx.Stream, mx.Device] = None,
) -> mx.array:
    """Deformable convolution v2 (v1 when ``mask`` is None) with
    ``torchvision.ops.deform_conv2d``'s semantics, in MLX's NHWC layout.

    Args:
        input: ``(N, H, W, C)``.
        offset: ``(N, Ho, Wo, 2*G*kh*kw)``; channel ``g*2*kh*kw + 2*p`` is dy
            and ``+1`` is dx for kernel point ``p = i*kw + j`` of offset group
            ``g`` (torchvision's channel order, moved to the last axis).
        weight: ``(O, kh, kw, C/groups)``, as ``mx.conv2d``.
        bias: ``(O,)`` or None.
        stride, padding, dilation: an int or a pair.
        mask: ``(N, Ho, Wo, G*kh*kw)`` or None (channel ``g*kh*kw + p``).
        stream: the stream or device of the graph nodes (default: the
            default stream). On the GPU (Metal, macOS builds): float32,
            float16 and bfloat16, every buffer under 2^31 elements; float64
            runs on the CPU only.

    ``groups = C / weight.shape[-1]`` and the offset group count
    ``G = offset.shape[-1] / (2*kh*kw)`` are inferred from the shapes.
    Returns ``(N, Ho, Wo, O)`` in the input's dtype. dtypes: float32,
    float16, bfloat16 (float32 sample coordinates and accumulation), float64.
    """
    for a, name, opt in ((input, "input", False), (offset, "offset", False),
                         (weight, "weight", False), (mask, "mask", True), (bias, "bias", True)):
        _check_array(a, name, opt)
    stride_ = _pair(stride, "stride")
    padding_ = _pair(padding, "padding")
    dilation_ = _pair(dilation, "dilation")
    geo = _C.geometry(input, weight, offset, mask, bias, stride_, padding_, dilation_)
    groups = geo["groups"]
    O = geo["out_channels"]
    s = {} if stream is None else {"stream": stream}

    # (groups, N, Ho, Wo, kh*kw*C/groups)
    cols = _C.deform_sample(input, offset, mask, geo["kernel"], stride_, padding_, dilation_,
                            groups, stream=stream)
    if groups == 1:
        # (N, Ho, Wo, K*C) @ (K*C, O): one GEMM. The small weight is copied
        # to (K*C, O) row-major: MLX's CPU GEMM (reference BLAS on Linux)
        # runs the non-transposed product ~30% faster.
        w = mx.contiguous(mx.swapaxes(mx.reshape(weight, (O, -1), **s), 0, 1, **s), **s)
        out = mx.matmul(mx.squeeze(cols, 0, **s), w, **s)
    else:
        # group g: cols[g] (N, Ho, Wo, K*Cg) @ weight[g].T (K*Cg, Og)
        w = mx.reshape(weight, (groups, 1, 1, O // groups, -1), **s)
        w = mx.contiguous(mx.swapaxes(w, -1, -2, **s), **s)  # (groups, 1, 1, K*Cg, Og)
        out = mx.matmul(cols, w, **s)  # (groups, N, Ho, Wo, Og)
        out = mx.flatten(mx.moveaxis(out, 0, -2, **s), -2, -1, **s)  # (N, Ho, Wo, O)
    if bias is not None:
        out = mx.add(out, bias, **s)
    return out
