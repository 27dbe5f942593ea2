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


# The binding reads tensors through DLPack's C exchange API where torch has
# it (2.13 here), which takes tensors that require grad as they are; older
# torch goes through __dlpack__(), which refuses them, so they are detached
# first (a torch call per tensor, saved where it is not needed).
_MUST_DETACH = not hasattr(torch.Tensor, "__dlpack_c_exchange_api__")


def _detached(t: Optional[Tensor]) -> Optional[Tensor]:
    return t.detach() if (_MUST_DETACH and t is not None) else t


def _stream(t: Tensor) -> int:
    """The handle of the stream the kernels launch on: torch's current CUDA
    stream of t's device (0 on the CPU)."""
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0


def _prepare(t: Tensor) -> None:
    if t.is_cuda:
        return
    _config.apply_num_threads()


def _batch_slice(t: Optional[Tensor], start: int, stop: int, batch: int) -> Optional[Tensor]:
    """t[start:stop] along the batch (of size ``batch``), or t itself when that
    is all of it (a batch in one chunk, the usual case): slicing costs a few
    microseconds, and so does reading t.shape."""
    if t is None or stop - start == batch:
        return t
    return t[start:stop]


def _leading(buf: Optional[Tensor], numel: int) -> Optional[Tensor]:
    """The first numel elements of a 1-D workspace buffer (the buffer itself
    when that is all of it)."""
    if buf is None or buf.numel() == numel:
        return buf
    return buf[:numel]


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
# channels-last copy of the input, the forward GEMM's channels-last result,
# the weight in the pixel-major columns' order.
_COLS, _GRAD_COLS, _STAGED_INPUT, _GEMM_OUT, _WEIGHT = 0, 1, 2, 3, 4


def _weight_channels_last(weight: Tensor, geo: dict) -> Tensor:
    """The weight (O, C, kh, kw) as (O, kh*kw*C), its reduction index k*C + c
    in the order of pixel-major columns: copied by the core into a cached
    buffer (torch's permute + reshape allocates every call)."""
    O, C = weight.shape[0], weight.shape[1]
    kh, kw = geo["kernel"]
    w = _workspace.get(weight.numel(), weight.dtype, weight.device, _WEIGHT)
    _C.to_channels_last(weight, w.view(O, kh, kw, C).permute(0, 3, 1, 2))
    return w.view(O, kh * kw * C)


# The CPU forward samples channels-last when a group has at least this many
# channels: with the input in NHWC and pixel-major columns (N, Ho, Wo, K*C),
# the four corners of a sample are four contiguous runs of channels, swept as
# vectors. Measured here (im2col, 2 threads): 1x64x32x32 0.40 -> 0.23 ms,
# 1x256x64x64 6.8 -> 3.0 ms, 8x64x56x56 12.4 -> 9.2 ms; at 4 channels the
# channel-major loop is faster (70 vs 88 us). The GEMM then reads the columns
# transposed, which costs 1-5% (more when batched: 4x64x56x56 2.9 vs 3.5 ms).
PIXEL_MAJOR_MIN_CHANNELS = 8


def _pixel_major(input: Tensor, geo: dict) -> bool:
    # With weight groups the columns are pixel-major by group (each group's a
    # matrix) and a sample's channels run to the end of its weight group, so
    # both the offset group and the weight group need the channels.
    C = geo["channels"]
    return (not input.is_cuda
            and C // geo["offset_groups"] >= PIXEL_MAJOR_MIN_CHANNELS
            and C // geo["groups"] >= PIXEL_MAJOR_MIN_CHANNELS)


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
    N, O = geo["batch"], geo["out_channels"]
    Ho, Wo = geo["out_size"]
    out = input.new_empty((N, O, Ho, Wo))
    if N == 0:
        return out
    _prepare(input)
    input, weight, offset, mask, bias = (_detached(t) for t in (input, weight, offset, mask, bias))
    pm = _pixel_major(input, geo)
    if pm and geo["groups"] > 1:
        _forward_grouped_pixel_major(input, weight, offset, mask, bias, geo, stride, padding,
                                     dilation, out)
    elif pm:
        _forward_pixel_major(input, weight, offset, mask, bias, geo, stride, padding, dilation, out)
    else:
        _forward_channel_major(input, weight, offset, mask, bias, geo, stride, padding, dilation,
                               out)
    return out


def _forward_pixel_major(input, weight, offset, mask, bias, geo, stride, padding, dilation, out):
    """The CPU forward with channels-last sampling: columns (n, P, K*C), one
    GEMM per image against the weight as (O, K*C), its channels-last result
    written out NCHW with the bias by the core. Written with as few torch
    calls as it needs: at 1x64x32x32 each costs a few microseconds of a
    millisecond (1x8x4x4: 92 -> 45 us for this function, the same bits)."""
    N, C, O = geo["batch"], geo["channels"], geo["out_channels"]
    kh, kw = geo["kernel"]
    Ho, Wo = geo["out_size"]
    KC, P = kh * kw * C, Ho * Wo
    dt, dev = input.dtype, input.device
    wt = _weight_channels_last(weight, geo).t()
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()
    chunk = _config.chunk_size(N, KC * P * input.element_size())
    cols = _workspace.get(chunk * P * KC, dt, dev, _COLS)
    gemm_out = _workspace.get(chunk * P * O, dt, dev, _GEMM_OUT)
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        nc = n1 - n0
        x, off, m, o = (_batch_slice(t, n0, n1, N) for t in (input, offset, mask, out))
        # Channels-last per chunk, so the copy stays within the chunk.
        x = _channels_last(x, _STAGED_INPUT)
        c = _leading(cols, nc * P * KC).view(nc, Ho, Wo, KC)
        _C.im2col(x, off, m, c, (kh, kw), stride, padding, dilation, 0, True)
        # The GEMM with a channels-last result, (P, O) = cols[n] @ w^T per
        # image (the same shape whatever the chunking, so the same bits),
        # then NCHW plus the bias by the core. Measured here against
        # w @ cols[n]^T into NCHW (interleaved blocks): 1x64x32x32 0.93 ->
        # 0.67 ms, 1x256x64x64 56 -> 50 ms, 4x64x56x56 the same.
        t = _leading(gemm_out, nc * P * O).view(nc, P, O)
        torch.bmm(c.view(nc, P, KC), wt.expand(nc, KC, O), out=t)
        _C.from_channels_last(t.view(nc, Ho, Wo, O), bias, o)


def _forward_grouped_pixel_major(input, weight, offset, mask, bias, geo, stride, padding,
                                 dilation, out):
    """The CPU forward with weight groups and channels-last sampling: columns
    (n, groups, P, kh*kw*Cg), each group's one matrix, and out[n, g] (Og, P) =
    w[g] (Og, kh*kw*Cg) @ cols[n, g]^T written straight into the NCHW output.
    This orientation measured fastest for groups' small GEMMs here (32 groups
    of 8 channels on 32x32: 0.77 ms, against 1.29 ms for cols @ w^T).
    Against channel-major columns, the sampling is the channels-last kernels'
    (1x256x32x32 with 32 groups, im2col: see README, Speed)."""
    N, C, O, groups = geo["batch"], geo["channels"], geo["out_channels"], geo["groups"]
    kh, kw = geo["kernel"]
    Ho, Wo = geo["out_size"]
    P, KCg, Og = Ho * Wo, kh * kw * (C // groups), O // groups
    dt, dev = input.dtype, input.device
    w = _weight_channels_last(weight, geo).view(groups, Og, KCg)
    chunk = _config.chunk_size(N, C * kh * kw * P * input.element_size())
    cols = _workspace.get(chunk * C * kh * kw * P, dt, dev, _COLS)
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        nc = n1 - n0
        x, off, m, o = (_batch_slice(t, n0, n1, N) for t in (input, offset, mask, out))
        x = _channels_last(x, _STAGED_INPUT)
        c = _leading(cols, nc * C * kh * kw * P).view(nc, groups, Ho, Wo, KCg)
        _C.im2col(x, off, m, c, (kh, kw), stride, padding, dilation, 0, True)
        cv, ov = c.view(nc, groups, P, KCg), o.view(nc, groups, Og, P)
        for i in range(nc):  # image by image: the same GEMMs whatever the chunking
            torch.bmm(w, cv[i].transpose(1, 2), out=ov[i])
        if bias is not None:
            o.view(nc, O, P).add_(bias.view(1, O, 1))


def _forward_channel_major(input, weight, offset, mask, bias, geo, stride, padding, dilation,
                           out):
    """Columns (n, C*K, P) and out[n, g] = w[g] @ cols[n, g]: CUDA, weight
    groups, and few channels per offset group on the CPU."""
    N, C = geo["batch"], geo["channels"]
    O, groups = geo["out_channels"], geo["groups"]
    kh, kw = geo["kernel"]
    Ho, Wo = geo["out_size"]
    K, P = kh * kw, Ho * Wo
    chunk = _config.chunk_size(N, C * K * P * input.element_size(), cpu=not input.is_cuda)
    w = weight.reshape(groups, O // groups, (C // groups) * K)
    cols = _workspace.get(chunk * C * K * P, input.dtype, input.device, _COLS)
    stream = _stream(input)
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        nc = n1 - n0
        x, off, m, o = (_batch_slice(t, n0, n1, N) for t in (input, offset, mask, out))
        c = _leading(cols, nc * C * K * P)
        _C.im2col(x, off, m, c.view(nc, C * K, Ho, Wo), (kh, kw), stride, padding, dilation,
                  stream, False)
        # out[n, g] = w[g] @ cols[n, g]: a batched GEMM written into the output.
        torch.matmul(w, c.view(nc, groups, (C // groups) * K, P),
                     out=o.view(nc, groups, O // groups, P))
        if bias is not None:
            o.view(nc, O, P).add_(bias.view(1, O, 1))


# ------------------------------------------------------------------- backward
def _backward(grad, input, weight, offset, mask, bias, stride, padding, dilation, output_mask):
    geo = checked_geometry(input, weight, offset, mask, bias, stride, padding, dilation)
    check_devices(input, grad=grad)
    need_in, need_w, need_off, need_mask, need_b = output_mask
    need_mask = need_mask and mask is not None
    need_b = need_b and bias is not None
    N, C = geo["batch"], geo["channels"]
    O, groups = geo["out_channels"], geo["groups"]
    kh, kw = geo["kernel"]
    K, Cg = kh * kw, C // groups
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    dev = input.device
    pm = _pixel_major(input, geo)  # channels-last sampling, as in the forward
    # col2im and coord_grad write every element: no zero fill needed. NCHW
    # even with pixel-major columns: col2im then scatters channels-last into
    # its own scratch and writes this layout out (no transposing copy).
    grad_input = torch.empty(input.shape, dtype=acc, device=dev) if need_in else None
    # Pixel-major: accumulated transposed, (kh*kw*C, O), or with weight
    # groups (groups, Og, kh*kw*Cg) (see _backward_pixel_major).
    gw_shape = (K * C, O) if (pm and groups == 1) else (groups, O // groups, Cg * K)
    grad_weight = torch.zeros(gw_shape, dtype=acc, device=dev) if need_w else None
    coord = need_off or need_mask  # the offset/mask gradient kernel runs
    grad_offset = offset.new_empty(offset.shape) if coord else None
    grad_mask = mask.new_empty(mask.shape) if (mask is not None and coord) else None

    if N > 0 and (need_in or need_w or coord):
        _prepare(input)
        g = _detached(grad).contiguous()
        input, weight, offset, mask = (_detached(t) for t in (input, weight, offset, mask))
        if pm:
            _backward_pixel_major(g, input, weight, offset, mask, geo, stride, padding, dilation,
                                  grad_input, grad_weight, grad_offset, grad_mask)
        else:
            _backward_channel_major(g, input, weight, offset, mask, geo, stride, padding,
                                    dilation, grad_input, grad_weight, grad_offset, grad_mask)

    # Absent gradients are distinct empty tensors: outputs must not alias.
    # Returned in the layouts the fake kernel promises (contiguous).
    if need_in:
        gi = grad_input if grad_input.dtype == input.dtype else grad_input.to(input.dtype)
    else:
        gi = input.new_empty((0,))
    if need_w and pm and groups == 1:  # (kh*kw, C, O) -> (O, C, kh, kw)
        gw = grad_weight.view(K, C, O).permute(2, 1, 0).to(
            weight.dtype, memory_format=torch.contiguous_format).view(weight.shape)
    elif need_w and pm:  # (groups, Og, kh*kw, Cg) -> (O, Cg, kh, kw)
        gw = grad_weight.view(O, K, Cg).permute(0, 2, 1).to(
            weight.dtype, memory_format=torch.contiguous_format).view(weight.shape)
    elif need_w:
        gw = grad_weight.view(weight.shape)
        gw = gw if gw.dtype == weight.dtype else gw.to(weight.dtype)
    else:
        gw = input.new_empty((0,))
    go = grad_offset if need_off else input.new_empty((0,))
    gm = grad_mask if need_mask else input.new_empty((0,))
    if need_b:
        gb = grad.sum((0, 2, 3), dtype=acc)
        gb = gb if gb.dtype == bias.dtype else gb.to(bias.dtype)
    else:
        gb = input.new_empty((0,))
    return gi, gw, go, gm, gb


def _backward_pixel_major(g, input, weight, offset, mask, geo, stride, padding, dilation,
                          grad_input, grad_weight, grad_offset, grad_mask):
    """The CPU backward with channels-last sampling (as _forward_pixel_major):
    grad_cols (n, P, K*C) = grad[n]^T @ w, then col2im and the coordinate
    gradient in one parallel region, which also recompute the forward's
    columns for the weight gradient, accumulated transposed:
    grad_weight (K*C, O) += cols[n]^T @ grad[n]^T. With weight groups the
    same per group on columns (n, groups, P, K*Cg) (as
    _forward_grouped_pixel_major), the weight gradient as (groups, Og, K*Cg)
    += grad[n, g] @ cols[n, g] (measured 0.36 ms against 3.45 ms transposed
    for 32 groups of 8 channels on 32x32)."""
    N, C, O, groups = geo["batch"], geo["channels"], geo["out_channels"], geo["groups"]
    kh, kw = geo["kernel"]
    Ho, Wo = geo["out_size"]
    KC, P = kh * kw * C, Ho * Wo
    KCg, Og = KC // groups, O // groups
    dt, dev = input.dtype, input.device
    need_in, need_w = grad_input is not None, grad_weight is not None
    coord = grad_offset is not None
    w = _weight_channels_last(weight, geo)
    if groups > 1:
        w = w.view(groups, Og, KCg)
    chunk = _chunk(geo, KC * P * input.element_size(), dev, False, True)
    cols = _workspace.get(chunk * P * KC, dt, dev, _COLS) if need_w else None
    gcols = _workspace.get(chunk * P * KC, dt, dev, _GRAD_COLS) if (need_in or coord) else None
    # The columns' shape as the core takes it: (n, Ho, Wo, K*C), or by group.
    shape = (Ho, Wo, KC) if groups == 1 else (groups, Ho, Wo, KCg)
    gw = grad_weight
    kernel = (kh, kw)
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        nc = n1 - n0
        gv = _batch_slice(g, n0, n1, N).view(nc, O, P)
        xc, off, mc = (_batch_slice(t, n0, n1, N) for t in (input, offset, mask))
        gi, go, gm = (_batch_slice(t, n0, n1, N) for t in (grad_input, grad_offset, grad_mask))
        c = _leading(cols, nc * P * KC).view(nc, *shape) if need_w else None
        # The sampling kernels read the input channels-last; col2im alone does not read it.
        if coord or need_w:
            xc = _channels_last(xc, _STAGED_INPUT)
        if gcols is not None:
            gc = _leading(gcols, nc * P * KC).view(nc, *shape)
            if groups == 1:
                torch.matmul(gv.transpose(1, 2), w, out=gc.view(nc, P, KC))
            else:
                torch.matmul(gv.view(nc, groups, Og, P).transpose(-1, -2), w,
                             out=gc.view(nc, groups, P, KCg))
            if need_in and coord:
                # One parallel region for both (no core idles between them);
                # the forward's columns (c) recomputed on the way.
                _C.col2im_and_coord_grad(gc, xc, off, mc, gi, go, gm, c, kernel, stride, padding,
                                         dilation, True)
            elif need_in:
                _C.col2im(gc, off, mc, gi, kernel, stride, padding, dilation, 0, None, True)
            else:
                _C.coord_grad(gc, xc, off, mc, go, gm, c, kernel, stride, padding, dilation, 0,
                              True)
        if need_w and not coord:  # otherwise the coordinate gradient wrote them
            _C.im2col(xc, off, mc, c, kernel, stride, padding, dilation, 0, True)
        if need_w:
            # Image by image in batch order, so the sum does not depend on the
            # chunking. Without groups grad_weight^T (K*C, O) += cols[n]^T @
            # grad[n]^T: this orientation measured faster than grad[n] @
            # cols[n] here (MKL, interleaved): 1x64x32x32 1.03 -> 0.94 ms,
            # 1x256x64x64 48 -> 42 ms, an image of 8x64x56x56 3.4 -> 2.6 ms.
            for i in range(nc):
                half = gv.dtype != gw.dtype  # GEMM in the storage dtype, sum in float32
                if groups == 1:
                    ct, gt = c[i].view(P, KC).t(), gv[i].t()
                    if half:
                        gw += torch.mm(ct, gt)
                    else:
                        gw.addmm_(ct, gt)
                else:
                    gg, cg = gv[i].view(groups, Og, P), c[i].view(groups, P, KCg)
                    if half:
                        gw += torch.bmm(gg, cg)
                    else:
                        gw.baddbmm_(gg, cg)


def _backward_channel_major(g, input, weight, offset, mask, geo, stride, padding, dilation,
                            grad_input, grad_weight, grad_offset, grad_mask):
    """Columns (n, C*K, P): CUDA, weight groups, and few channels per offset
    group on the CPU."""
    N, C = geo["batch"], geo["channels"]
    O, groups = geo["out_channels"], geo["groups"]
    kh, kw = geo["kernel"]
    Ho, Wo = geo["out_size"]
    K, P, Cg, Og = kh * kw, Ho * Wo, C // groups, O // groups
    dev = input.device
    cuda = dev.type == "cuda"
    stream = _stream(input)
    need_in, need_w = grad_input is not None, grad_weight is not None
    coord = grad_offset is not None
    acc = grad_weight.dtype if need_w else None
    # The CPU col2im is deterministic by construction; on CUDA the default
    # adds with atomics and the deterministic kernel is chosen here.
    deterministic = cuda and _config.deterministic()
    w = weight.reshape(groups, Og, Cg * K)
    wt = w.transpose(1, 2)
    kernel = (kh, kw)
    chunk = _chunk(geo, C * K * P * input.element_size(), dev, deterministic)
    numel = chunk * C * K * P
    cols = _workspace.get(numel, input.dtype, dev, _COLS) if need_w else None
    gcols = _workspace.get(numel, input.dtype, dev, _GRAD_COLS) if (need_in or coord) else None
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        nc = n1 - n0
        gv = _batch_slice(g, n0, n1, N).view(nc, groups, Og, P)
        xc, off, mc = (_batch_slice(t, n0, n1, N) for t in (input, offset, mask))
        gi, go, gm = (_batch_slice(t, n0, n1, N) for t in (grad_input, grad_offset, grad_mask))
        c = _leading(cols, nc * C * K * P).view(nc, C * K, Ho, Wo) if need_w else None
        if gcols is not None:
            gc = _leading(gcols, nc * C * K * P).view(nc, C * K, Ho, Wo)
            torch.matmul(wt, gv, out=gc.view(nc, groups, Cg * K, P))
            if need_in and coord and not cuda:
                # One parallel region for both (no core idles between them);
                # the forward's columns (c) recomputed on the way.
                _C.col2im_and_coord_grad(gc, xc, off, mc, gi, go, gm, c, kernel, stride, padding,
                                         dilation, False)
            else:
                if need_in:
                    ws = None
                    if deterministic:
                        size = _C.col2im_workspace_size(gi, off, mc, kernel, stride, padding,
                                                        dilation)
                        ws = torch.empty(size, dtype=torch.uint8, device=dev)
                    _C.col2im(gc, off, mc, gi, kernel, stride, padding, dilation, stream, ws,
                              False)
                if coord:
                    # Also recomputes the forward's columns (c) on the way.
                    _C.coord_grad(gc, xc, off, mc, go, gm, c, kernel, stride, padding, dilation,
                                  stream, False)
        if need_w and not coord:  # otherwise the coordinate gradient wrote them
            _C.im2col(xc, off, mc, c, kernel, stride, padding, dilation, stream, False)
        if need_w and cuda:
            # One batched GEMM per chunk, summed over the chunk's images in
            # float32 (float64 for float64): deterministic, no atomics.
            cv = c.view(nc, groups, Cg * K, P)
            grad_weight += torch.matmul(gv, cv.transpose(-1, -2)).sum(0, dtype=acc)
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
