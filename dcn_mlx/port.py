"""Moving models between PyTorch (NCHW) and MLX (NHWC).

* :func:`load_torch_state_dict` loads the state_dict of a
  ``torchvision.ops.DeformConv2d`` / ``dcn_torch.DeformConv2d`` (torch tensors
  or numpy arrays) into a :class:`dcn_mlx.DeformConv2d`: weight
  ``(O, C/groups, kh, kw)`` -> ``(O, kh, kw, C/groups)``, bias unchanged.
* :func:`from_torch` builds the MLX layer from a torch layer.
* :func:`torch_state_dict` goes back (numpy arrays in torch's layout).
* :func:`nchw_to_nhwc` / :func:`nhwc_to_nchw` move the channel axis of an
  input, offset, mask or output. The offset's channel order (offset group,
  kernel point, then dy, dx) is the same in both frontends: only the axis
  moves.

None of this imports torch: torch tensors are recognised by duck typing.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import mlx.core as mx
import numpy as np

__all__ = [
    "to_mlx",
    "nchw_to_nhwc",
    "nhwc_to_nchw",
    "torch_weight_to_mlx",
    "mlx_weight_to_torch",
    "load_torch_state_dict",
    "from_torch",
    "torch_state_dict",
]

_MX_DTYPES = {
    "float32": mx.float32,
    "float16": mx.float16,
    "bfloat16": mx.bfloat16,
    "float64": mx.float64,
}


def to_mlx(a: Any, dtype: Optional[mx.Dtype] = None) -> mx.array:
    """A torch tensor, numpy array or mx.array as an ``mx.array`` (same
    values; bfloat16 torch tensors included), optionally cast to ``dtype``."""
    if isinstance(a, mx.array):
        return a if dtype is None else a.astype(dtype)
    if hasattr(a, "detach") and hasattr(a, "dtype") and hasattr(a, "cpu"):  # torch.Tensor
        t = a.detach().cpu()
        name = str(t.dtype).replace("torch.", "")
        if name == "bfloat16":  # numpy has no bfloat16: exact via float32
            out = mx.array(t.float().numpy()).astype(mx.bfloat16)
        else:
            out = _from_numpy(t.numpy())
        return out if dtype is None else out.astype(dtype)
    out = _from_numpy(np.asarray(a))
    return out if dtype is None else out.astype(dtype)


def _from_numpy(a: np.ndarray) -> mx.array:
    # mx.array(float64 ndarray) alone gives float32: keep the dtype.
    if a.dtype == np.float64:
        return mx.array(a, dtype=mx.float64)
    return mx.array(a)


def nchw_to_nhwc(a: Any, dtype: Optional[mx.Dtype] = None) -> mx.array:
    """(N, C, H, W) -> (N, H, W, C) as an mx.array (input, offset, mask)."""
    m = to_mlx(a, dtype)
    if m.ndim != 4:
        raise ValueError(f"expected a 4-D (N, C, H, W) array, got shape {tuple(m.shape)}")
    return mx.contiguous(mx.transpose(m, (0, 2, 3, 1)))


def nhwc_to_nchw(a: mx.array) -> np.ndarray:
    """(N, H, W, C) mx.array -> (N, C, H, W) numpy array (bfloat16 as float32)."""
    if a.ndim != 4:
        raise ValueError(f"expected a 4-D (N, H, W, C) array, got shape {tuple(a.shape)}")
    if a.dtype == mx.bfloat16:
        a = a.astype(mx.float32)
    return np.ascontiguousarray(np.array(mx.transpose(a, (0, 3, 1, 2))))


def torch_weight_to_mlx(w: Any, dtype: Optional[mx.Dtype] = None) -> mx.array:
    """(O, C/groups, kh, kw) -> (O, kh, kw, C/groups)."""
    m = to_mlx(w, dtype)
    if m.ndim != 4:
        raise ValueError(f"weight: expected a 4-D (O, C/groups, kh, kw) array, got shape {tuple(m.shape)}")
    return mx.contiguous(mx.transpose(m, (0, 2, 3, 1)))


def mlx_weight_to_torch(w: mx.array) -> np.ndarray:
    """(O, kh, kw, C/groups) -> (O, C/groups, kh, kw) numpy array."""
    if w.dtype == mx.bfloat16:
        w = w.astype(mx.float32)
    return np.ascontiguousarray(np.array(mx.transpose(w, (0, 3, 1, 2))))


def load_torch_state_dict(layer, state_dict: Mapping[str, Any], prefix: str = "",
                          strict: bool = True, dtype: Optional[mx.Dtype] = None):
    """Load ``state_dict[prefix + "weight"]`` (and ``"bias"``) of a torch
    DeformConv2d into the MLX ``layer`` in place; returns the layer.

    The arrays keep their dtype unless ``dtype`` is given. With ``strict``
    (default) a shape mismatch, a missing key or a bias present on one side
    only raises ValueError.
    """
    wkey, bkey = prefix + "weight", prefix + "bias"
    if wkey not in state_dict:
        raise ValueError(f"state_dict has no {wkey!r} (keys: {sorted(state_dict)[:8]})")
    w = torch_weight_to_mlx(state_dict[wkey], dtype)
    if tuple(w.shape) != tuple(layer.weight.shape):
        raise ValueError(
            f"{wkey}: torch shape {tuple(_shape(state_dict[wkey]))} (O, C/groups, kh, kw) gives "
            f"{tuple(w.shape)} (O, kh, kw, C/groups), but the layer's weight is "
            f"{tuple(layer.weight.shape)}")
    b = state_dict.get(bkey)
    has_bias = "bias" in layer
    if strict and (b is not None) != has_bias:
        raise ValueError(
            f"bias: the layer {'has' if has_bias else 'has no'} bias but the state_dict "
            f"{'has' if b is not None else 'has no'} {bkey!r}")
    layer.weight = w
    if b is not None and has_bias:
        bm = to_mlx(b, dtype)
        if tuple(bm.shape) != tuple(layer.bias.shape):
            raise ValueError(f"{bkey}: shape {tuple(bm.shape)} != the layer's {tuple(layer.bias.shape)}")
        layer.bias = bm
    return layer


def _shape(a) -> tuple:
    return tuple(a.shape) if hasattr(a, "shape") else np.shape(a)


def from_torch(module, dtype: Optional[mx.Dtype] = None):
    """A :class:`dcn_mlx.DeformConv2d` with the configuration and weights of
    a ``torchvision.ops.DeformConv2d`` / ``dcn_torch.DeformConv2d``."""
    from .layers import DeformConv2d

    layer = DeformConv2d(module.in_channels, module.out_channels, tuple(module.kernel_size),
                         stride=tuple(module.stride), padding=tuple(module.padding),
                         dilation=tuple(module.dilation), groups=module.groups,
                         bias=module.bias is not None)
    return load_torch_state_dict(layer, module.state_dict(), dtype=dtype)


def torch_state_dict(layer) -> Dict[str, np.ndarray]:
    """The layer's parameters in torch's layout, as numpy arrays (load with
    ``torch_module.load_state_dict({k: torch.from_numpy(v) ...})``)."""
    out = {"weight": mlx_weight_to_torch(layer.weight)}
    if "bias" in layer:
        b = layer.bias
        out["bias"] = np.array(b.astype(mx.float32) if b.dtype == mx.bfloat16 else b)
    return out
