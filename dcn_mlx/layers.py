"""``DeformConv2d``: an ``mlx.nn`` layer written like ``mlx.nn.Conv2d``."""
from __future__ import annotations

import math
from typing import Optional, Union

import mlx.core as mx
import mlx.nn as nn

from .functional import _pair, deform_conv2d

__all__ = ["DeformConv2d"]


class DeformConv2d(nn.Module):
    """Deformable convolution v2 over an ``NHWC`` input.

    Same constructor, parameters (``weight`` ``(O, kh, kw, C/groups)`` and
    ``bias`` ``(O,)``) and initialisation as ``mlx.nn.Conv2d``; call it with
    the offsets (and optionally the modulation mask) predicted for the
    output pixels::

        y = layer(x, offset, mask)   # x (N, H, W, C), offset (N, Ho, Wo, 2*G*kh*kw),
                                     # mask (N, Ho, Wo, G*kh*kw) or None

    The offset group count ``G`` is inferred from ``offset``'s last axis.
    Weights of a ``torchvision.ops.DeformConv2d`` / ``dcn_torch.DeformConv2d``
    load with :func:`dcn_mlx.load_torch_state_dict`.

    Args:
        in_channels (int): The number of input channels.
        out_channels (int): The number of output channels.
        kernel_size (int or tuple): The size of the convolution filters.
        stride (int or tuple, optional): Default: ``1``.
        padding (int or tuple, optional): Zero padding. Default: ``0``.
        dilation (int or tuple, optional): Default: ``1``.
        groups (int, optional): Weight groups. Default: ``1``.
        bias (bool, optional): Add a learnable bias. Default: ``True``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, tuple],
        stride: Union[int, tuple] = 1,
        padding: Union[int, tuple] = 0,
        dilation: Union[int, tuple] = 1,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        if groups < 1 or in_channels % groups != 0:
            raise ValueError(
                f"The number of input channels ({in_channels}) must be "
                f"divisible by the number of groups ({groups})")
        if out_channels % groups != 0:
            raise ValueError(
                f"The number of output channels ({out_channels}) must be "
                f"divisible by the number of groups ({groups})")
        kernel_size = _pair(kernel_size, "kernel_size")
        stride = _pair(stride, "stride")
        padding = _pair(padding, "padding")
        dilation = _pair(dilation, "dilation")
        scale = math.sqrt(1 / (in_channels // groups * kernel_size[0] * kernel_size[1]))
        self.weight = mx.random.uniform(
            low=-scale, high=scale, shape=(out_channels, *kernel_size, in_channels // groups))
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.padding = padding
        self.stride = stride
        self.dilation = dilation
        self.groups = groups

    def _extra_repr(self):
        return (
            f"{self.weight.shape[-1] * self.groups}, {self.weight.shape[0]}, "
            f"kernel_size={self.weight.shape[1:3]}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, "
            f"bias={'bias' in self}"
        )

    def __call__(self, x: mx.array, offset: mx.array, mask: Optional[mx.array] = None) -> mx.array:
        if x.ndim == 4 and x.shape[-1] != self.weight.shape[-1] * self.groups:
            raise ValueError(
                f"input: expected {self.weight.shape[-1] * self.groups} channels (last axis, "
                f"NHWC), got shape {tuple(x.shape)}")
        return deform_conv2d(x, offset, self.weight, self.bias if "bias" in self else None,
                             stride=self.stride, padding=self.padding, dilation=self.dilation,
                             mask=mask)
