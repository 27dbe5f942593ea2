"""The torch.library ops ``dcn::deform_conv2d`` and ``dcn::deform_conv2d_backward``.

The C++ core does the deformable sampling (im2col), its adjoint (col2im) and
the coordinate gradient; the weight products run on torch's own GEMMs. Batches
are processed in chunks whose column buffer fits the workspace budget
(``dcn_torch.set_workspace_limit``), so memory never grows with the batch.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _C, _config, _workspace

_lib = torch.library.Library("dcn", "DEF")  # kept alive at module level
_lib.define(
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor? mask, Tensor? bias, "
    "int[2] stride, int[2] padding, int[2] dilation) -> Tensor"
)
_lib.define(
    "deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, "
    "Tensor? mask, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
    "bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)

_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


def dtype_name(t: Optional[Tensor]) -> str:
    return "float32" if t is None else _DTYPE_NAMES.get(t.dtype, "other")


def check_devices(input, **others) -> None:
    """Every tensor on the input's device, or ValueError naming the one that
    is not (before any kernel or GEMM sees a mix)."""
    for name, t in others.items():
        if t is not None and t.device != input.device:
            raise ValueError(
                f"{name}: expected a tensor on {input.device} (the input's device), got {t.device}")


def check_args(input, weight, offset, mask, bias, stride, padding, dilation) -> dict:
    """Validate everything in the core (one place for every frontend); raise
    ValueError naming the argument, what it got and what was expected."""
    check_devices(input, offset=offset, weight=weight, mask=mask, bias=bias)
    shapes = [None if t is None else list(t.shape) for t in (input, weight, offset, mask, bias)]
    dtypes = [dtype_name(t) for t in (input, weight, offset, mask, bias)]
    return _C.geometry(shapes[0], shapes[1], shapes[2], shapes[3], shapes[4], dtypes,
                       tuple(stride), tuple(padding), tuple(dilation), "NCHW")


# Validation is a function of the shapes, dtypes and parameters alone, so the
# kernels' geometry is remembered per such key (the same layer runs with the
# same shapes call after call): a hit costs a tuple hash instead of building
# lists for the core's check. Devices are compared on every call. Bounded:
# cleared when full.
_GEOMETRY_CACHE: dict = {}
_GEOMETRY_CACHE_SIZE = 256


def _shape_key(t: Optional[Tensor]):
    return None if t is None else (t.shape, t.dtype)


def checked_geometry(input, weight, offset, mask, bias, stride, padding, dilation) -> dict:
    """check_args, remembered: the returned dict is shared, never modify it."""
    check_devices(input, offset=offset, weight=weight, mask=mask, bias=bias)
    key = (input.shape, input.dtype, weight.shape, weight.dtype, offset.shape, offset.dtype,
           _shape_key(mask), _shape_key(bias), tuple(stride), tuple(padding), tuple(dilation))
    geo = _GEOMETRY_CACHE.get(key)
    if geo is None:
        geo = check_args(input, weight, offset, mask, bias, stride, padding, dilation)
        if len(_GEOMETRY_CACHE) >= _GEOMETRY_CACHE_SIZE:
            _GEOMETRY_CACHE.clear()
        _GEOMETRY_CACHE[key] = geo
    return geo


def _out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _params(stride, padding, dilation) -> dict:
    return dict(stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation))


def _detached(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.detach()


def _stream(t: Tensor) -> int:
    """The handle of the stream the kernels launch on: torch's current CUDA
    stream of t's device (0 on the CPU)."""
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0


def _prepare(t: Tensor) -> None:
    if t.is_cuda:
        return
    _config.apply_num_threads()


def _sample(input: Tensor, offset: Tensor, mask: Optional[Tensor], cols: Tensor, kernel, p,
            pixel_major: bool = False) -> None:
    _C.im2col(input, offset, mask, cols, kernel, p["stride"], p["padding"], p["dilation"],
              _stream(input), pixel_major)


def _batch_slice(t: Optional[Tensor], start: int, stop: int) -> Optional[Tensor]:
    """t[start:stop] along the batch, or t itself when that is all of it (a
    batch in one chunk, the usual case): slicing costs a few microseconds."""
    if t is None or (start == 0 and stop == t.shape[0]):
        return t
    return t[start:stop]


def _channels_last(x: Tensor, slot: int) -> Tensor:
    """x (N, C, H, W) in channels-last memory: x itself when it already is,
    else a copy made by the core into a cached buffer. torch's own
    x.contiguous(memory_format=torch.channels_last) allocates every call and
    measured 0.13 ms on 1x64x32x32 and 2.1 ms on 1x256x64x64 here (2 GB/s)."""
    if x.is_contiguous(memory_format=torch.channels_last):
        return x
    N, C, H, W = x.shape
    dst = _workspace.get(x.numel(), x.dtype, x.device, slot).view(N, H, W, C).permute(0, 3, 1, 2)
    _C.to_channels_last(x, dst)
    return dst


# Workspace slots (_workspace.get): the columns, their gradient, the
# channels-last copy of the input, the forward GEMM's channels-last result.
_COLS, _GRAD_COLS, _STAGED_INPUT, _GEMM_OUT = 0, 1, 2, 3


# The CPU forward samples channels-last when a group has at least this many
# channels: with the input in NHWC and pixel-major columns (N, Ho, Wo, K*C),
# the four corners of a sample are four contiguous runs of channels, swept as
# vectors. Measured here (im2col, 2 threads): 1x64x32x32 0.40 -> 0.23 ms,
# 1x256x64x64 6.8 -> 3.0 ms, 8x64x56x56 12.4 -> 9.2 ms; at 4 channels the
# channel-major loop is faster (70 vs 88 us). The GEMM then reads the columns
# transposed, which costs 1-5% (more when batched: 4x64x56x56 2.9 vs 3.5 ms).
PIXEL_MAJOR_MIN_CHANNELS = 8


def _pixel_major(input: Tensor, geo: dict) -> bool:
    return (not input.is_cuda and geo["groups"] == 1
            and geo["channels"] // geo["offset_groups"] >= PIXEL_MAJOR_MIN_CHANNELS)


def _layout(weight: Tensor, geo: dict, pixel_major: bool):
    """The weight as (groups, O/groups, reduction) with its reduction index in
    the columns' order, and the columns' shape for a chunk of n images:
    pixel-major (n, Ho, Wo, kh*kw*C), reduction k*C + c (the weight permuted
    to (O, kh, kw, C)), or channel-major (n, C*kh*kw, Ho, Wo), reduction
    c*K + k (the weight as it is)."""
    C, O, groups = geo["channels"], geo["out_channels"], geo["groups"]
    kh, kw = geo["kernel"]
    Ho, Wo = geo["out_size"]
    K = kh * kw
    if pixel_major:
        w = _detached(weight).permute(0, 2, 3, 1).reshape(1, O, K * C)
        return w, lambda n: (n, Ho, Wo, K * C)
    w = _detached(weight).reshape(groups, O // groups, (C // groups) * K)
    return w, lambda n: (n, C * K, Ho, Wo)


def _chunk(geo: dict, bytes_per_image: int, device: torch.device, deterministic: bool,
           pixel_major: bool = False) -> int:
    """Images per batch chunk: the columns fit the workspace budget and, for
    the deterministic CUDA col2im, its 32-bit entry and pixel keys fit."""
    N = geo["batch"]
    # The channels-last col2im runs one task per (image, offset group):
    # splitting an image's channels between threads measured no faster here
    # (1x64x56x56: 1.14 ms on one thread, 1.08 ms on two), so a chunk holds
    # an image per thread. 8x64x56x56 backward: 39.7 -> 32.2 ms at 2 images.
    per_thread = 1
    if pixel_major and device.type == "cpu":
        per_thread = -(-_config.get_num_threads() // geo["offset_groups"])
    chunk = _config.chunk_size(N, bytes_per_image, cpu=device.type == "cpu",
                               min_images=per_thread)
    if device.type == "cuda" and deterministic and N > 0:
        kh, kw = geo["kernel"]
        Ho, Wo = geo["out_size"]
        G = geo["offset_groups"]
        entries = 4 * G * kh * kw * Ho * Wo
        pixels = G * geo["height"] * geo["width"]
        chunk = max(1, min(chunk, (2**31 - 1) // entries, (2**32 - 2) // pixels))
    return chunk


# -------------------------------------------------------------------- forward
def _forward(input, weight, offset, mask, bias, stride, padding, dilation):
    geo = checked_geometry(input, weight, offset, mask, bias, stride, padding, dilation)
    _prepare(input)
    N, C = geo["batch"], geo["channels"]
    O, groups = geo["out_channels"], geo["groups"]
    kh, kw = geo["kernel"]
    Ho, Wo = geo["out_size"]
    K, P = kh * kw, Ho * Wo
    out = input.new_empty((N, O, Ho, Wo))
    if N == 0:
        return out
    # Detached: DLPack's __dlpack__ (the binding's path on torch without the C
    # exchange API) refuses tensors that require grad; the kernels only read them.
    input, offset, mask = _detached(input), _detached(offset), _detached(mask)
    chunk = _config.chunk_size(N, C * K * P * input.element_size(), cpu=not input.is_cuda,
                               forward=True)
    p = _params(stride, padding, dilation)
    pixel_major = _pixel_major(input, geo)
    w, col_shape = _layout(weight, geo, pixel_major)
    b = None if bias is None else _detached(bias).contiguous()
    cols = _workspace.get(chunk * C * K * P, input.dtype, input.device,
                          _COLS).view(col_shape(chunk))
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        nc = n1 - n0
        x, off, m, o = (_batch_slice(t, n0, n1) for t in (input, offset, mask, out))
        c = _batch_slice(cols, 0, nc)
        o = o.view(nc, O, P)
        if pixel_major:
            # Channels-last per chunk, so the copy stays within the chunk.
            x = _channels_last(x, _STAGED_INPUT)
            _sample(x, off, m, c, (kh, kw), p, pixel_major=True)
            # The GEMM with a channels-last result, (P, O) = cols[n] @ w^T
            # per image (the same shape whatever the chunking, so the same
            # bits), then NCHW plus the bias by the core. Measured here
            # against w @ cols[n]^T into NCHW (interleaved blocks): 1x64x32x32
            # 0.93 -> 0.67 ms, 1x256x64x64 56 -> 50 ms, 4x64x56x56 the same.
            t = _workspace.get(nc * P * O, input.dtype, input.device, _GEMM_OUT)
            torch.bmm(c.view(nc, P, K * C), w[0].t().expand(nc, K * C, O),
                      out=t.view(nc, P, O))
            _C.from_channels_last(t.view(nc, Ho, Wo, O), b, o.view(nc, O, Ho, Wo))
            continue
        _sample(x, off, m, c, (kh, kw), p)
        # out[n, g] = w[g] @ cols[n, g]: a batched GEMM written into the output.
        torch.matmul(w, c.view(nc, groups, (C // groups) * K, P),
                     out=o.view(nc, groups, O // groups, P))
        if b is not None:
            o.add_(b.view(1, O, 1))
    return out


# ------------------------------------------------------------------- backward
def _backward(grad, input, weight, offset, mask, bias, stride, padding, dilation, output_mask):
    geo = checked_geometry(input, weight, offset, mask, bias, stride, padding, dilation)
    check_devices(input, grad=grad)
    _prepare(input)
    need_in, need_w, need_off, need_mask, need_b = output_mask
    need_mask = need_mask and mask is not None
    need_b = need_b and bias is not None
    N, C = geo["batch"], geo["channels"]
    O, groups = geo["out_channels"], geo["groups"]
    kh, kw = geo["kernel"]
    Ho, Wo = geo["out_size"]
    K, P, Cg, Og = kh * kw, Ho * Wo, C // groups, O // groups
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32

    dev = input.device
    cuda = dev.type == "cuda"
    stream = _stream(input)
    # The CPU col2im is deterministic by construction; on CUDA the default
    # adds with atomics and the deterministic kernel is chosen here.
    deterministic = cuda and _config.deterministic()
    # col2im and coord_grad write every element: no zero fill needed.
    pm = _pixel_major(input, geo)  # channels-last sampling, as in the forward
    # NCHW even with pixel-major columns: col2im then scatters channels-last
    # into its own scratch and writes this layout out (no transposing copy).
    grad_input = torch.empty(input.shape, dtype=acc, device=dev) if need_in else None
    grad_weight = torch.zeros((groups, Og, Cg * K), dtype=acc, device=dev) if need_w else None
    grad_offset = offset.new_empty(offset.shape) if (need_off or need_mask) else None
    grad_mask = mask.new_empty(mask.shape) if (mask is not None and (need_off or need_mask)) else None

    coord = need_off or need_mask  # the offset/mask gradient kernel runs
    if N > 0 and (need_in or need_w or coord):
        g = grad.detach().contiguous()
        input, offset, mask = _detached(input), _detached(offset), _detached(mask)
        w, col_shape = _layout(weight, geo, pm)
        wt = w.transpose(1, 2)
        p = _params(stride, padding, dilation)
        chunk = _chunk(geo, C * K * P * input.element_size(), dev, deterministic, pm)
        shape = col_shape(chunk)
        numel = chunk * C * K * P
        cols = (_workspace.get(numel, input.dtype, input.device, _COLS).view(shape)
                if need_w else None)
        gcols = (_workspace.get(numel, input.dtype, input.device, _GRAD_COLS).view(shape)
                 if (need_in or coord) else None)
        for n0 in range(0, N, chunk):
            n1 = min(N, n0 + chunk)
            nc = n1 - n0
            gv = _batch_slice(g, n0, n1).view(nc, groups, Og, P)
            xc, off, mc = (_batch_slice(t, n0, n1) for t in (input, offset, mask))
            gi, go, gm = (_batch_slice(t, n0, n1) for t in (grad_input, grad_offset, grad_mask))
            c = _batch_slice(cols, 0, nc)
            # The sampling kernels read the input channels-last; col2im alone does not read it.
            if pm and (coord or need_w):
                xc = _channels_last(xc, _STAGED_INPUT)
            if gcols is not None:
                gc = _batch_slice(gcols, 0, nc)
                if pm:  # gcols[n] (P, K*C) = grad[n]^T @ w
                    torch.matmul(gv[:, 0].transpose(1, 2), w[0], out=gc.view(nc, P, K * C))
                else:
                    torch.matmul(wt, gv, out=gc.view(nc, groups, Cg * K, P))
                if need_in and coord and not cuda:
                    # One parallel region for both (no core idles between
                    # them); the forward's columns (c) recomputed on the way.
                    _C.col2im_and_coord_grad(gc, xc, off, mc, gi, go, gm, c, (kh, kw),
                                             p["stride"], p["padding"], p["dilation"], pm)
                else:
                    if need_in:
                        ws = None
                        if deterministic:
                            size = _C.col2im_workspace_size(gi, off, mc, (kh, kw), p["stride"],
                                                            p["padding"], p["dilation"])
                            ws = torch.empty(size, dtype=torch.uint8, device=dev)
                        _C.col2im(gc, off, mc, gi, (kh, kw), p["stride"], p["padding"],
                                  p["dilation"], stream, ws, pm)
                    if coord:
                        # Also recomputes the forward's columns (c) on the way.
                        _C.coord_grad(gc, xc, off, mc, go, gm, c, (kh, kw), p["stride"],
                                      p["padding"], p["dilation"], stream, pm)
            if need_w and not coord:  # otherwise the coordinate gradient wrote them
                _sample(xc, off, mc, c, (kh, kw), p, pm)
            if need_w and cuda:
                # One batched GEMM per chunk, summed over the chunk's images in
                # float32 (float64 for float64): deterministic, no atomics.
                cv = c.view(nc, groups, Cg * K, P)
                grad_weight += torch.matmul(gv, cv.transpose(-1, -2)).sum(0, dtype=acc)
            elif need_w and pm:
                # grad_weight (O, K*C) += grad[n] @ cols[n], image by image.
                for i in range(nc):
                    if gv.dtype != acc:
                        grad_weight[0] += torch.mm(gv[i, 0], c[i].view(P, K * C))
                    else:
                        grad_weight[0].addmm_(gv[i, 0], c[i].view(P, K * C))
            elif need_w:
                # grad_weight[g] += grad[n, g] @ cols[n, g]^T, one image at a time
                # in batch order, so the sum does not depend on the chunking.
                cv = c.view(nc, groups, Cg * K, P)
                for i in range(nc):
                    if gv.dtype != acc:  # half types: GEMM in the storage dtype, sum in float32
                        grad_weight += torch.bmm(gv[i], cv[i].transpose(1, 2))
                    elif groups == 1:  # plain 2-D GEMM: measured 2-3x faster than bmm here
                        grad_weight[0].addmm_(gv[i, 0], cv[i, 0].t())
                    else:
                        grad_weight.baddbmm_(gv[i], cv[i].transpose(1, 2))

    # Absent gradients are distinct empty tensors: outputs must not alias.
    # Returned in the layouts the fake kernel promises (contiguous).
    gi = (grad_input.to(input.dtype).contiguous() if need_in else input.new_empty((0,)))
    if need_w and pm:
        gw = grad_weight.view(O, kh, kw, Cg).permute(0, 3, 1, 2).contiguous().to(weight.dtype)
    elif need_w:
        gw = grad_weight.view(weight.shape).to(weight.dtype)
    else:
        gw = input.new_empty((0,))
    go = grad_offset if need_off else input.new_empty((0,))
    gm = grad_mask if need_mask else input.new_empty((0,))
    gb = grad.sum((0, 2, 3), dtype=acc).to(bias.dtype) if need_b else input.new_empty((0,))
    return gi, gw, go, gm, gb


_lib.impl("deform_conv2d", _forward, "CPU")
_lib.impl("deform_conv2d_backward", _backward, "CPU")


def _no_cuda(*args, **kwargs):
    raise NotImplementedError(
        "dcn: this build has no CUDA kernels (dcn_torch.build_info() lists the backends); "
        "move the tensors to the CPU or install a build with DCN_CUDA")


HAS_CUDA = _C.cuda_info() is not None
_lib.impl("deform_conv2d", _forward if HAS_CUDA else _no_cuda, "CUDA")
_lib.impl("deform_conv2d_backward", _backward if HAS_CUDA else _no_cuda, "CUDA")


# ------------------------------------------------------------------ fake kernels
@torch.library.register_fake("dcn::deform_conv2d")
def _forward_fake(input, weight, offset, mask, bias, stride, padding, dilation):
    if all(isinstance(d, int) for t in (input, weight, offset) for d in t.shape):
        check_args(input, weight, offset, mask, bias, stride, padding, dilation)
    kh, kw = weight.shape[2], weight.shape[3]
    Ho = _out_size(input.shape[2], kh, stride[0], padding[0], dilation[0])
    Wo = _out_size(input.shape[3], kw, stride[1], padding[1], dilation[1])
    return input.new_empty((input.shape[0], weight.shape[0], Ho, Wo))


@torch.library.register_fake("dcn::deform_conv2d_backward")
def _backward_fake(grad, input, weight, offset, mask, bias, stride, padding, dilation, output_mask):
    need_in, need_w, need_off, need_mask, need_b = output_mask

    def empty():
        return input.new_empty((0,))

    return (
        input.new_empty(input.shape) if need_in else empty(),
        weight.new_empty(weight.shape) if need_w else empty(),
        offset.new_empty(offset.shape) if need_off else empty(),
        mask.new_empty(mask.shape) if (need_mask and mask is not None) else empty(),
        bias.new_empty(bias.shape) if (need_b and bias is not None) else empty(),
    )


# ---------------------------------------------------------------------- autograd
def _setup_context(ctx, inputs, output):
    input, weight, offset, mask, bias, stride, padding, dilation = inputs
    ctx.save_for_backward(input, weight, offset, mask, bias)
    ctx.params = (stride, padding, dilation)


def _autograd_backward(ctx, grad):
    input, weight, offset, mask, bias = ctx.saved_tensors
    stride, padding, dilation = ctx.params
    needs = ctx.needs_input_grad
    output_mask = [needs[0], needs[1], needs[2], mask is not None and needs[3],
                   bias is not None and needs[4]]
    gi, gw, go, gm, gb = torch.ops.dcn.deform_conv2d_backward(
        grad, input, weight, offset, mask, bias, stride, padding, dilation, output_mask)
    return (gi if output_mask[0] else None, gw if output_mask[1] else None,
            go if output_mask[2] else None, gm if output_mask[3] else None,
            gb if output_mask[4] else None, None, None, None)


torch.library.register_autograd("dcn::deform_conv2d", _autograd_backward,
                                setup_context=_setup_context)


def _double_backward(ctx, *grads):
    raise NotImplementedError(
        "dcn: double backward (a gradient of deform_conv2d's gradient, e.g. from "
        "create_graph=True) is not supported; torchvision does not support it either")


def _setup_backward_context(ctx, inputs, output):
    pass


# Registered so that differentiating the backward raises instead of silently
# treating it as a constant.
torch.library.register_autograd("dcn::deform_conv2d_backward", _double_backward,
                                setup_context=_setup_backward_context)
