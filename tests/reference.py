"""Slow, obvious float64 numpy reference for deformable convolution v2.

Semantics follow ``torchvision.ops.deform_conv2d`` exactly (including its
offset-gradient rule, see ``deform_conv2d_ref_grads``).  Nothing here depends on
torch or on the library under test; clarity is preferred over speed, although
the work is vectorised over output pixels with numpy.

Layouts (all NCHW):

* ``x``       (N, C, H, W)
* ``weight``  (O, C // groups, kh, kw); ``groups = C // weight.shape[1]``
* ``offset``  (N, 2 * G * kh * kw, Ho, Wo); ``G = offset.shape[1] // (2*kh*kw)``.
  Channel ``g*2K + 2p`` is dy and ``g*2K + 2p + 1`` is dx for kernel point
  ``p = i*kw + j`` with ``K = kh*kw``.
* ``mask``    (N, G * K, Ho, Wo), channel ``g*K + p`` (``None`` means all ones)
* ``bias``    (O,) or ``None``

Input channel ``c`` uses offset group ``c // (C // G)``; output channel ``o``
belongs to weight group ``o // (O // groups)`` (as ``nn.Conv2d``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["output_size", "deform_conv2d_ref", "deform_conv2d_ref_grads"]


def _pair(v):
    if np.isscalar(v):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def output_size(H, W, kh, kw, stride, padding, dilation):
    """Output spatial size ``(Ho, Wo)`` of a (deformable) convolution."""
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return Ho, Wo


# ---------------------------------------------------------------------------
# shape bookkeeping
# ---------------------------------------------------------------------------


class _Geom:
    """All derived sizes of one call, checked once."""

    def __init__(self, x, weight, offset, mask, bias, stride, padding, dilation):
        self.N, self.C, self.H, self.W = x.shape
        self.O, self.Cpg, self.kh, self.kw = weight.shape
        self.K = self.kh * self.kw
        if self.Cpg <= 0 or self.C % self.Cpg:
            raise ValueError("weight.shape[1] must divide the input channels")
        self.groups = self.C // self.Cpg
        if self.O % self.groups:
            raise ValueError("out channels must be divisible by groups")
        self.Opg = self.O // self.groups
        if offset.shape[1] % (2 * self.K) or offset.shape[1] == 0:
            raise ValueError("offset channels must be a positive multiple of 2*kh*kw")
        self.G = offset.shape[1] // (2 * self.K)
        if self.C % self.G:
            raise ValueError("input channels must be divisible by offset groups")
        self.Cpog = self.C // self.G  # channels per offset group
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.Ho, self.Wo = output_size(
            self.H, self.W, self.kh, self.kw, self.stride, self.padding, self.dilation
        )
        exp_off = (self.N, 2 * self.G * self.K, self.Ho, self.Wo)
        if tuple(offset.shape) != exp_off:
            raise ValueError(f"offset shape {offset.shape} != expected {exp_off}")
        if mask is not None:
            exp_mask = (self.N, self.G * self.K, self.Ho, self.Wo)
            if tuple(mask.shape) != exp_mask:
                raise ValueError(f"mask shape {mask.shape} != expected {exp_mask}")
        if bias is not None and tuple(bias.shape) != (self.O,):
            raise ValueError(f"bias shape {bias.shape} != ({self.O},)")

    def sample_coords(self, offset_n):
        """Sampling positions for one batch element.

        Returns ``(ys, xs)``, each (G, K, Ho, Wo) float64.
        """
        sh, sw = self.stride
        ph, pw = self.padding
        dh, dw = self.dilation
        off = offset_n.reshape(self.G, self.K, 2, self.Ho, self.Wo)
        i = np.repeat(np.arange(self.kh), self.kw)  # kernel row of point p
        j = np.tile(np.arange(self.kw), self.kh)  # kernel col of point p
        oy = np.arange(self.Ho)
        ox = np.arange(self.Wo)
        base_y = oy[None, :, None] * sh - ph + i[:, None, None] * dh  # (K, Ho, 1)
        base_x = ox[None, None, :] * sw - pw + j[:, None, None] * dw  # (K, 1, Wo)
        ys = base_y[None] + off[:, :, 0]
        xs = base_x[None] + off[:, :, 1]
        return ys, xs


# ---------------------------------------------------------------------------
# bilinear sampling primitives (one offset group at a time)
# ---------------------------------------------------------------------------


def _corners(ys, xs, H, W):
    """The four bilinear corners of every sample point.

    Returns a list of ``(yc, xc, wgt, valid)`` for the corners
    (y_l,x_l), (y_l,x_h), (y_h,x_l), (y_h,x_h); ``wgt`` are the bilinear
    weights hy*hx, hy*lx, ly*hx, ly*lx and ``valid`` says whether the corner
    lies in [0,H) x [0,W).  ``yc``/``xc`` are clipped so they can index safely.
    """
    y_l = np.floor(ys)
    x_l = np.floor(xs)
    ly = ys - y_l
    lx = xs - x_l
    hy = 1.0 - ly
    hx = 1.0 - lx
    y_l = y_l.astype(np.int64)
    x_l = x_l.astype(np.int64)
    out = []
    for yc, xc, wgt in (
        (y_l, x_l, hy * hx),
        (y_l, x_l + 1, hy * lx),
        (y_l + 1, x_l, ly * hx),
        (y_l + 1, x_l + 1, ly * lx),
    ):
        valid = (yc >= 0) & (yc < H) & (xc >= 0) & (xc < W)
        out.append((np.clip(yc, 0, H - 1), np.clip(xc, 0, W - 1), wgt, valid))
    return out


def _inside(ys, xs, H, W):
    """torchvision's forward early-exit region: -1 < y < H and -1 < x < W."""
    return (ys > -1) & (ys < H) & (xs > -1) & (xs < W)


def _gather(img, yc, xc, valid):
    """img (Cg, H, W) sampled at integer corners; invalid corners read 0."""
    return np.where(valid[None], img[:, yc, xc], 0.0)


def _bilinear(img, ys, xs):
    """Bilinear sample of img (Cg, H, W) at (ys, xs) (any shape S) -> (Cg, *S)."""
    H, W = img.shape[1:]
    val = np.zeros((img.shape[0],) + ys.shape)
    for yc, xc, wgt, valid in _corners(ys, xs, H, W):
        val += wgt[None] * _gather(img, yc, xc, valid)
    return np.where(_inside(ys, xs, H, W)[None], val, 0.0)


def _columns(x, offset, mask, g):
    """Sampled columns (N, C, K, Ho, Wo): mask * bilinear(x[n, c], y, x)."""
    cols = np.zeros((g.N, g.C, g.K, g.Ho, g.Wo))
    for n in range(g.N):
        ys, xs = g.sample_coords(offset[n])
        m = None if mask is None else mask[n].reshape(g.G, g.K, g.Ho, g.Wo)
        for og in range(g.G):
            cs = slice(og * g.Cpog, (og + 1) * g.Cpog)
            v = _bilinear(x[n, cs], ys[og], xs[og])
            if m is not None:
                v = v * m[og][None]
            cols[n, cs] = v
    return cols


def _as64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def deform_conv2d_ref(
    x,
    weight,
    offset,
    mask=None,
    bias=None,
    stride=(1, 1),
    padding=(0, 0),
    dilation=(1, 1),
):
    """Forward deformable convolution v2 in float64 (torchvision semantics).

    Returns an (N, O, Ho, Wo) float64 array.
    """
    x, weight, offset, mask, bias = map(_as64, (x, weight, offset, mask, bias))
    g = _Geom(x, weight, offset, mask, bias, stride, padding, dilation)
    cols = _columns(x, offset, mask, g)  # (N, C, K, Ho, Wo)
    out = np.zeros((g.N, g.O, g.Ho, g.Wo))
    wk = weight.reshape(g.O, g.Cpg, g.K)
    for wg in range(g.groups):
        os_ = slice(wg * g.Opg, (wg + 1) * g.Opg)
        cs = slice(wg * g.Cpg, (wg + 1) * g.Cpg)
        out[:, os_] = np.einsum("ock,nckyx->noyx", wk[os_], cols[:, cs])
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def deform_conv2d_ref_grads(
    x, weight, offset, mask, bias, stride, padding, dilation, grad_out
):
    """Gradients of ``sum(deform_conv2d_ref(...) * grad_out)`` (torchvision rule).

    Returns a dict with float64 arrays under "input", "weight", "offset",
    "mask" (None when ``mask`` is None) and "bias" (None when ``bias`` is None).

    * input: exact adjoint of the bilinear sampling (same early-exit region as
      the forward).
    * mask: sum over the offset group's channels of grad_col * bilinear value.
    * offset: torchvision's formula, which does *not* apply the forward's
      early exit: at integer positions such as y == -1 exactly (forward value
      0) the gradient may be nonzero (pytorch/vision#6885).  Away from integer
      positions it is the true derivative.
    """
    x, weight, offset, mask, bias, grad_out = map(
        _as64, (x, weight, offset, mask, bias, grad_out)
    )
    g = _Geom(x, weight, offset, mask, bias, stride, padding, dilation)
    if tuple(grad_out.shape) != (g.N, g.O, g.Ho, g.Wo):
        raise ValueError(f"grad_out shape {grad_out.shape} mismatched")
    wk = weight.reshape(g.O, g.Cpg, g.K)

    # grad_col[n, c, p, oy, ox] and weight gradient from the sampled columns
    cols = _columns(x, offset, mask, g)
    grad_col = np.zeros((g.N, g.C, g.K, g.Ho, g.Wo))
    grad_w = np.zeros((g.O, g.Cpg, g.K))
    for wg in range(g.groups):
        os_ = slice(wg * g.Opg, (wg + 1) * g.Opg)
        cs = slice(wg * g.Cpg, (wg + 1) * g.Cpg)
        grad_col[:, cs] = np.einsum("ock,noyx->nckyx", wk[os_], grad_out[:, os_])
        grad_w[os_] = np.einsum("noyx,nckyx->ock", grad_out[:, os_], cols[:, cs])

    grad_x = np.zeros(x.shape)
    grad_off = np.zeros(offset.shape)
    grad_mask = None if mask is None else np.zeros(mask.shape)

    for n in range(g.N):
        ys, xs = g.sample_coords(offset[n])  # (G, K, Ho, Wo)
        if mask is None:
            m = np.ones((g.G, g.K, g.Ho, g.Wo))
        else:
            m = mask[n].reshape(g.G, g.K, g.Ho, g.Wo)
        goff = np.zeros((g.G, g.K, 2, g.Ho, g.Wo))
        gmask = np.zeros((g.G, g.K, g.Ho, g.Wo))
        for og in range(g.G):
            cs = slice(og * g.Cpog, (og + 1) * g.Cpog)
            img = x[n, cs]  # (Cg, H, W)
            gc = grad_col[n, cs]  # (Cg, K, Ho, Wo)
            y, xx, mg = ys[og], xs[og], m[og]
            inside = _inside(y, xx, g.H, g.W)
            corners = _corners(y, xx, g.H, g.W)

            # input: scatter mask * corner weight * grad_col into valid corners
            chan = np.arange(img.shape[0])[:, None, None, None]
            for yc, xc, wgt, valid in corners:
                use = valid & inside
                contrib = gc * (mg * wgt * use)[None]
                np.add.at(
                    grad_x[n, cs],
                    (chan, yc[None], xc[None]),
                    contrib,
                )

            # mask: grad_col * bilinear value, summed over the group's channels
            if grad_mask is not None:
                gmask[og] = (gc * _bilinear(img, y, xx)).sum(0)

            # offset: torchvision's coordinate weights (no early exit)
            (c_ll, c_lh, c_hl, c_hh) = [
                _gather(img, yc, xc, valid) for yc, xc, _, valid in corners
            ]
            ly = y - np.floor(y)
            lx = xx - np.floor(xx)
            hy = 1.0 - ly
            hx = 1.0 - lx
            d_dy = lx[None] * (c_hh - c_lh) + hx[None] * (c_hl - c_ll)
            d_dx = ly[None] * (c_hh - c_hl) + hy[None] * (c_lh - c_ll)
            goff[og, :, 0] = (gc * mg[None] * d_dy).sum(0)
            goff[og, :, 1] = (gc * mg[None] * d_dx).sum(0)

        grad_off[n] = goff.reshape(offset.shape[1:])
        if grad_mask is not None:
            grad_mask[n] = gmask.reshape(mask.shape[1:])

    return {
        "input": grad_x,
        "weight": grad_w.reshape(weight.shape),
        "offset": grad_off,
        "mask": grad_mask,
        "bias": None if bias is None else grad_out.sum(axis=(0, 2, 3)),
    }
