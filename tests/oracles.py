"""Independent forward oracle: onnxruntime's ``DeformConv`` (ONNX opset 19).

ONNX ``DeformConv`` has the same semantics as ``torchvision.ops.deform_conv2d``
(offset channels interleaved (dy, dx) per kernel point, offset group ``g``
owning channels ``g*2K .. g*2K+2K-1``, mask channel ``g*K + p``, zero padding
outside the image), so onnxruntime's CPU kernel is a second, independently
written implementation of the forward pass to compare against.

Only the forward is available here; ORT has no gradient for this op.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["ort_available", "ort_deform_conv2d"]

_OPSET = 19
_SESSIONS: dict = {}
_MAX_SESSIONS = 256


def _pair(v):
    if np.isscalar(v):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def _to_numpy(a):
    if a is None:
        return None
    if hasattr(a, "detach"):  # torch.Tensor, without importing torch here
        a = a.detach().cpu().numpy()
    return np.asarray(a)


@functools.lru_cache(maxsize=1)
def ort_available() -> bool:
    """True when onnx + onnxruntime are importable and can run DeformConv on CPU."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        x = np.ones((1, 1, 2, 2), np.float32)
        w = np.ones((1, 1, 1, 1), np.float32)
        off = np.zeros((1, 2, 2, 2), np.float32)
        y = ort_deform_conv2d(x, w, off)
        return bool(np.allclose(y, x))
    except Exception:
        return False


def _build_session(dtype, xs, ws, offs, has_bias, has_mask, stride, padding, dilation):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}[
        dtype
    ]
    N, C, H, W = xs
    O, Cpg, kh, kw = ws
    K = kh * kw
    groups = C // Cpg
    G = offs[1] // (2 * K)
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    inputs = [
        helper.make_tensor_value_info("X", elem, list(xs)),
        helper.make_tensor_value_info("W", elem, list(ws)),
        helper.make_tensor_value_info("offset", elem, list(offs)),
    ]
    names = ["X", "W", "offset"]
    if has_bias:
        inputs.append(helper.make_tensor_value_info("B", elem, [O]))
        names.append("B")
    elif has_mask:
        names.append("")  # optional input B omitted
    if has_mask:
        inputs.append(helper.make_tensor_value_info("mask", elem, [N, G * K, Ho, Wo]))
        names.append("mask")

    node = helper.make_node(
        "DeformConv",
        names,
        ["Y"],
        strides=[sh, sw],
        pads=[ph, pw, ph, pw],
        dilations=[dh, dw],
        group=groups,
        offset_group=G,
        kernel_shape=[kh, kw],
    )
    graph = helper.make_graph(
        [node],
        "deform_conv_oracle",
        inputs,
        [helper.make_tensor_value_info("Y", elem, [N, O, Ho, Wo])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 9  # accepted by every onnxruntime that knows opset 19
    onnx.checker.check_model(model)

    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only
    return ort.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )


def ort_deform_conv2d(
    x,
    weight,
    offset,
    mask=None,
    bias=None,
    stride=(1, 1),
    padding=(0, 0),
    dilation=(1, 1),
):
    """Deformable conv v2 forward computed by onnxruntime (CPU), as numpy.

    Arguments follow ``torchvision.ops.deform_conv2d`` (NCHW numpy arrays or
    CPU torch tensors).  The computation dtype is ``x``'s dtype, which must be
    float32 or float64; the other arrays are cast to it and the result has it.
    ``groups = C // weight.shape[1]`` and
    ``offset_groups = offset.shape[1] // (2 * kh * kw)``.  ``mask=None`` and
    ``bias=None`` are passed to ORT as omitted optional inputs (ORT then uses
    an all-ones mask / zero bias, matching torchvision).

    Sessions are cached per (dtype, shapes, bias/mask presence, stride,
    padding, dilation), so repeated calls with the same configuration only pay
    for ``run``.

    Batch size 0: onnxruntime 1.32 accepts it and returns an empty
    ``(0, O, Ho, Wo)`` array, but that is not guaranteed across versions
    (older releases and other builds may raise).  Tests should skip ``N == 0``
    rather than rely on this oracle for it.  Invalid shapes make ORT raise
    (``onnxruntime`` ``Fail``/``InvalidArgument`` exceptions).
    """
    x = _to_numpy(x)
    dtype = np.dtype(x.dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"ort_deform_conv2d supports float32/float64, got {dtype}")

    def cast(a):
        a = _to_numpy(a)
        return None if a is None else np.ascontiguousarray(a, dtype=dtype)

    x = np.ascontiguousarray(x)
    weight, offset, mask, bias = map(cast, (weight, offset, mask, bias))
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)

    key = (
        dtype.str,
        tuple(x.shape),
        tuple(weight.shape),
        tuple(offset.shape),
        bias is not None,
        mask is not None,
        stride,
        padding,
        dilation,
    )
    sess = _SESSIONS.get(key)
    if sess is None:
        if len(_SESSIONS) >= _MAX_SESSIONS:
            _SESSIONS.clear()
        sess = _build_session(
            dtype,
            tuple(x.shape),
            tuple(weight.shape),
            tuple(offset.shape),
            bias is not None,
            mask is not None,
            stride,
            padding,
            dilation,
        )
        _SESSIONS[key] = sess

    feed = {"X": x, "W": weight, "offset": offset}
    if bias is not None:
        feed["B"] = bias
    if mask is not None:
        feed["mask"] = mask
    return sess.run(None, feed)[0]
