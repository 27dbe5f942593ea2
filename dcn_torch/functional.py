"""``deform_conv2d``: the signature and semantics of ``torchvision.ops.deform_conv2d``."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from . import ops  # registers torch.ops.dcn.*

IntPair = Union[int, Tuple[int, int]]


def _pair(v: IntPair, name: str) -> Tuple[int, int]:
    if type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
        return v  # the common case, checked without the general path below
    if isinstance(v, bool):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {v!r}")
    if isinstance(v, int):
        return (v, v)
    try:
        a, b = v
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {v!r}") from None
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (a, b)):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {v!r}")
    return (int(a), int(b))


def _check_tensor(t, name: str, optional: bool = False) -> None:
    if t is None and optional:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not (t.is_floating_point()):
        raise TypeError(
            f"{name}: expected a floating-point tensor (float32, float64, float16 or bfloat16), "
            f"got dtype {t.dtype}")


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: IntPair = (1, 1),
    padding: IntPair = (0, 0),
    dilation: IntPair = (1, 1),
    mask: Optional[Tensor] = None,
) -> Tensor:
    """Deformable convolution v2 (v1 when ``mask`` is None), exactly as
    ``torchvision.ops.deform_conv2d``.

    input (N, C, H, W); offset (N, 2*G*kh*kw, Ho, Wo) with (dy, dx) pairs per
    kernel point; weight (O, C/groups, kh, kw); mask (N, G*kh*kw, Ho, Wo);
    bias (O,). ``groups`` and the offset group count G are inferred from the
    shapes. Returns (N, O, Ho, Wo).
    """
    for t, name, opt in ((input, "input", False), (offset, "offset", False),
                         (weight, "weight", False), (mask, "mask", True), (bias, "bias", True)):
        _check_tensor(t, name, opt)
    stride_, padding_, dilation_ = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    # Devices, shapes, dtypes and parameters are validated by the core inside
    # the op (and by its fake kernel under torch.compile); the ONNX path never
    # runs the op, so it validates here.
    if torch.onnx.is_in_onnx_export():
        ops.check_args(input, weight, offset, mask, bias, stride_, padding_, dilation_)
        return _onnx_deform_conv(input, weight, offset, mask, bias, stride_, padding_, dilation_)
    return torch.ops.dcn.deform_conv2d(input, weight, offset, mask, bias,
                                       stride_, padding_, dilation_)


def _onnx_deform_conv(input, weight, offset, mask, bias, stride, padding, dilation) -> Tensor:
    """ONNX DeformConv (opset 19): the same semantics, runnable in onnxruntime."""
    kh, kw = weight.shape[2], weight.shape[3]
    ho = (input.shape[2] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (input.shape[3] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    attrs = dict(
        strides=list(stride), pads=[padding[0], padding[1], padding[0], padding[1]],
        dilations=list(dilation), group=input.shape[1] // weight.shape[1],
        offset_group=offset.shape[1] // (2 * kh * kw), kernel_shape=[kh, kw])
    return torch.onnx.ops.symbolic(
        "::DeformConv", (input, weight, offset, bias, mask), attrs, dtype=input.dtype,
        shape=(input.shape[0], weight.shape[0], ho, wo), version=19)
