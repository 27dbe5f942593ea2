"""Checks of the test oracles themselves.

* the float64 numpy reference forward agrees with onnxruntime's DeformConv;
* the reference gradients agree with central finite differences of the
  reference forward;
* the offset gradient follows torchvision's rule at exact integer border
  positions (pytorch/vision#6885).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

try:
    from oracles import ort_available, ort_deform_conv2d
    from reference import deform_conv2d_ref, deform_conv2d_ref_grads, output_size
except ImportError:  # pragma: no cover - depends on pytest's import mode
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from oracles import ort_available, ort_deform_conv2d
    from reference import deform_conv2d_ref, deform_conv2d_ref_grads, output_size


# ---------------------------------------------------------------------------
# case construction
# ---------------------------------------------------------------------------


def make_case(
    seed,
    N,
    C,
    O,
    H,
    W,
    kernel,
    groups=1,
    offset_groups=1,
    stride=(1, 1),
    padding=(0, 0),
    dilation=(1, 1),
    use_mask=True,
    use_bias=True,
    offset_kind="random",
    offset_scale=2.0,
):
    """Random float64 inputs for one configuration, as a dict of kwargs."""
    rng = np.random.default_rng(seed)
    kh, kw = kernel
    K = kh * kw
    Ho, Wo = output_size(H, W, kh, kw, stride, padding, dilation)
    off_shape = (N, 2 * offset_groups * K, Ho, Wo)
    if offset_kind == "random":
        offset = offset_scale * rng.standard_normal(off_shape)
    elif offset_kind == "far":
        offset = rng.choice([-1e3, 1e3], size=off_shape) + rng.random(off_shape)
    elif offset_kind == "integer":
        offset = rng.integers(-3, 4, size=off_shape).astype(np.float64)
        _force_border_samples(offset, H, W, kernel, stride, padding, dilation)
    elif offset_kind == "off_integer":
        # fractional part in [0.1, 0.9]: every sample point stays >= 0.1 away
        # from integer positions (bases are integers), so the forward is
        # smooth in each offset around the point and FD is meaningful.
        offset = rng.integers(-3, 3, size=off_shape) + rng.uniform(0.1, 0.9, off_shape)
    else:
        raise ValueError(offset_kind)
    return dict(
        x=rng.standard_normal((N, C, H, W)),
        weight=rng.standard_normal((O, C // groups, kh, kw)),
        offset=offset,
        mask=rng.uniform(0.0, 1.5, (N, offset_groups * K, Ho, Wo)) if use_mask else None,
        bias=rng.standard_normal(O) if use_bias else None,
        stride=stride,
        padding=padding,
        dilation=dilation,
    )


def _force_border_samples(offset, H, W, kernel, stride, padding, dilation):
    """Pin a few integer sample points (offset group 0) onto the borders.

    Targets (y, x): (-1, 1) just above the image, (H-1, W-1) the last pixel,
    (1, -1) just left of it and (H, 0) just below it.
    """
    kh, kw = kernel
    N, _, Ho, Wo = offset.shape
    targets = [(-1, 1), (H - 1, W - 1), (1, -1), (H, 0)]
    slots = np.unravel_index(np.arange(len(targets)) * 3 % (kh * kw * Ho * Wo),
                             (kh * kw, Ho, Wo))
    for n in range(N):
        for (ty, tx), p, oy, ox in zip(targets, *slots):
            i, j = divmod(int(p), kw)
            offset[n, 2 * p, oy, ox] = ty - (oy * stride[0] - padding[0] + i * dilation[0])
            offset[n, 2 * p + 1, oy, ox] = tx - (ox * stride[1] - padding[1] + j * dilation[1])


# torchvision's own "odd" test configuration
TV_ODD = dict(
    C=6, O=2, H=5, W=4, kernel=(3, 2), groups=2, offset_groups=3,
    stride=(2, 1), padding=(1, 0), dilation=(2, 1),
)

FORWARD_CASES = {
    "tv_odd_n2_mask_bias": dict(seed=1, N=2, **TV_ODD),
    "tv_odd_n1_plain": dict(seed=2, N=1, use_mask=False, use_bias=False, **TV_ODD),
    "kernel_1x1": dict(seed=3, N=2, C=4, O=3, H=4, W=5, kernel=(1, 1), offset_groups=2),
    "non_square": dict(
        seed=4, N=1, C=3, O=4, H=7, W=5, kernel=(2, 3), stride=(1, 2),
        padding=(2, 1), dilation=(1, 2), use_bias=False,
    ),
    "depthwise_bias_only": dict(
        seed=5, N=3, C=4, O=4, H=6, W=6, kernel=(3, 3), groups=4, offset_groups=4,
        padding=(1, 1), use_mask=False, offset_scale=3.0,
    ),
    "far_offsets": dict(
        seed=6, N=2, C=4, O=2, H=5, W=5, kernel=(3, 3), offset_groups=2,
        padding=(1, 1), offset_kind="far",
    ),
    "integer_offsets": dict(
        seed=7, N=2, C=4, O=4, H=5, W=6, kernel=(3, 3), groups=2, offset_groups=2,
        padding=(1, 1), offset_kind="integer",
    ),
    "integer_offsets_no_mask_strided": dict(
        seed=8, N=1, C=2, O=2, H=6, W=5, kernel=(2, 2), stride=(2, 2),
        padding=(1, 0), dilation=(2, 2), use_mask=False, offset_kind="integer",
    ),
}


def sample_positions(case):
    """All (y, x) sample positions of a case, each (N, G, K, Ho, Wo)."""
    x, w, off = case["x"], case["weight"], case["offset"]
    N, _, H, W = x.shape
    _, _, kh, kw = w.shape
    sh, sw = case["stride"]
    ph, pw = case["padding"]
    dh, dw = case["dilation"]
    Ho, Wo = off.shape[2:]
    K = kh * kw
    G = off.shape[1] // (2 * K)
    o = off.reshape(N, G, K, 2, Ho, Wo)
    i = np.repeat(np.arange(kh), kw)[:, None, None]
    j = np.tile(np.arange(kw), kh)[:, None, None]
    ys = np.arange(Ho)[None, :, None] * sh - ph + i * dh + o[:, :, :, 0]
    xs = np.arange(Wo)[None, None, :] * sw - pw + j * dw + o[:, :, :, 1]
    return ys, xs


# ---------------------------------------------------------------------------
# (a) forward vs onnxruntime
# ---------------------------------------------------------------------------

needs_ort = pytest.mark.skipif(not ort_available(), reason="onnxruntime DeformConv unavailable")


@needs_ort
@pytest.mark.parametrize("name", list(FORWARD_CASES))
def test_forward_matches_onnxruntime_float64(name):
    case = make_case(**FORWARD_CASES[name])
    ref = deform_conv2d_ref(**case)
    ort_out = ort_deform_conv2d(**case)
    assert ort_out.dtype == np.float64
    assert ref.shape == ort_out.shape
    np.testing.assert_allclose(ref, ort_out, rtol=0, atol=1e-12)
    assert np.abs(ref).max() > 0 or name == "far_offsets"


@needs_ort
def test_forward_matches_onnxruntime_float32():
    case = make_case(**FORWARD_CASES["tv_odd_n2_mask_bias"])
    c32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v) for k, v in case.items()}
    out32 = ort_deform_conv2d(**c32)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, deform_conv2d_ref(**c32), rtol=1e-5, atol=1e-5)


def test_far_offsets_give_bias_only():
    case = make_case(**FORWARD_CASES["far_offsets"])
    out = deform_conv2d_ref(**case)
    np.testing.assert_array_equal(out, np.broadcast_to(case["bias"][None, :, None, None], out.shape))


def test_integer_offsets_cover_pixels_and_borders():
    """The integer cases really sample on pixels and on the -1 / H-1 borders."""
    for name in ("integer_offsets", "integer_offsets_no_mask_strided"):
        case = make_case(**FORWARD_CASES[name])
        H, W = case["x"].shape[2:]
        ys, xs = sample_positions(case)
        assert np.all(ys == np.round(ys)) and np.all(xs == np.round(xs))
        inside_x = (xs >= 0) & (xs <= W - 1)
        inside_y = (ys >= 0) & (ys <= H - 1)
        assert np.any((ys == -1) & inside_x)
        assert np.any((ys == H - 1) & inside_x)
        assert np.any((xs == -1) & inside_y)
        assert np.any((xs == W - 1) & inside_y)
        assert np.any(inside_x & inside_y)


def test_integer_offsets_read_pixels_exactly():
    """With integer positions the sampled value is the pixel itself (or 0)."""
    case = make_case(
        seed=11, N=1, C=1, O=1, H=4, W=5, kernel=(1, 1), use_mask=False,
        use_bias=False, offset_kind="integer",
    )
    case["weight"][...] = 1.0
    img = case["x"][0, 0]
    ys, xs = sample_positions(case)
    ys, xs = ys[0, 0, 0].astype(int), xs[0, 0, 0].astype(int)
    valid = (ys >= 0) & (ys < 4) & (xs >= 0) & (xs < 5)
    expected = np.where(valid, img[np.clip(ys, 0, 3), np.clip(xs, 0, 4)], 0.0)
    np.testing.assert_array_equal(deform_conv2d_ref(**case)[0, 0], expected)


def test_zero_offsets_equal_plain_convolution():
    case = make_case(
        seed=12, N=2, C=4, O=6, H=6, W=7, kernel=(3, 2), groups=2, stride=(2, 1),
        padding=(1, 2), dilation=(1, 2), use_mask=False,
    )
    case["offset"][...] = 0.0
    x, w, b = case["x"], case["weight"], case["bias"]
    (sh, sw), (ph, pw), (dh, dw) = case["stride"], case["padding"], case["dilation"]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    O, Cpg, kh, kw = w.shape
    Ho, Wo = case["offset"].shape[2:]
    Opg = O // (x.shape[1] // Cpg)
    expected = np.zeros((x.shape[0], O, Ho, Wo))
    for o in range(O):
        c0 = (o // Opg) * Cpg
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, c0:c0 + Cpg, i * dh: i * dh + sh * (Ho - 1) + 1: sh,
                           j * dw: j * dw + sw * (Wo - 1) + 1: sw]
                expected[:, o] += np.einsum("c,ncyx->nyx", w[o, :, i, j], patch)
    expected += b[None, :, None, None]
    np.testing.assert_allclose(deform_conv2d_ref(**case), expected, rtol=0, atol=1e-12)


def test_output_size():
    assert output_size(5, 4, 3, 2, (2, 1), (1, 0), (2, 1)) == (2, 3)
    assert output_size(7, 7, 3, 3, (1, 1), (1, 1), (1, 1)) == (7, 7)
    assert output_size(8, 9, 1, 1, (3, 2), (0, 0), (1, 1)) == (3, 5)


def test_batch_zero():
    case = make_case(seed=13, N=0, **TV_ODD)
    out = deform_conv2d_ref(**case)
    assert out.shape == (0, 2, 2, 3) and out.dtype == np.float64
    grads = deform_conv2d_ref_grads(**case, grad_out=np.zeros(out.shape))
    for k in ("input", "offset", "mask"):
        assert grads[k].shape == case[k if k != "input" else "x"].shape
    np.testing.assert_array_equal(grads["weight"], np.zeros(case["weight"].shape))
    np.testing.assert_array_equal(grads["bias"], np.zeros(case["bias"].shape))


# ---------------------------------------------------------------------------
# (b) gradients vs central finite differences
# ---------------------------------------------------------------------------

GRAD_CASES = {
    "grouped_mask_bias": dict(
        seed=21, N=2, C=4, O=4, H=4, W=5, kernel=(2, 3), groups=2, offset_groups=2,
        stride=(1, 2), padding=(1, 1),
    ),
    "tv_odd": dict(seed=22, N=1, **TV_ODD),
    "plain_no_mask_no_bias": dict(
        seed=23, N=1, C=2, O=3, H=5, W=4, kernel=(3, 3), dilation=(2, 1),
        padding=(1, 1), use_mask=False, use_bias=False,
    ),
}

_ARG = {"input": "x", "weight": "weight", "offset": "offset", "mask": "mask", "bias": "bias"}


def fd_grad(case, arg, grad_out, h=1e-6):
    """Central finite difference of sum(forward * grad_out) w.r.t. case[arg]."""
    base = case[arg]
    g = np.zeros(base.shape)
    for idx in np.ndindex(base.shape):
        vals = []
        for sgn in (1.0, -1.0):
            pert = base.copy()
            pert[idx] += sgn * h
            vals.append(np.sum(deform_conv2d_ref(**{**case, arg: pert}) * grad_out))
        g[idx] = (vals[0] - vals[1]) / (2 * h)
    return g


def _grad_setup(name, offset_kind):
    case = make_case(**GRAD_CASES[name], offset_kind=offset_kind)
    out = deform_conv2d_ref(**case)
    grad_out = np.random.default_rng(99).standard_normal(out.shape)
    return case, grad_out, deform_conv2d_ref_grads(**case, grad_out=grad_out)


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_grads_match_finite_differences(name):
    case, grad_out, grads = _grad_setup(name, "random")
    checked = 0
    for key, arg in _ARG.items():
        if key == "offset" or case[arg] is None:
            if case[arg] is None:
                assert grads[key] is None
            continue
        np.testing.assert_allclose(
            grads[key], fd_grad(case, arg, grad_out), rtol=1e-6, atol=1e-6, err_msg=key
        )
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_offset_grad_matches_finite_differences(name):
    case, grad_out, grads = _grad_setup(name, "off_integer")
    ys, xs = sample_positions(case)
    H, W = case["x"].shape[2:]
    # the case should exercise interior, border cells and fully outside points
    inside = (ys > -1) & (ys < H) & (xs > -1) & (xs < W)
    assert inside.any() and (~inside).any()
    fd = fd_grad(case, "offset", grad_out)
    np.testing.assert_allclose(grads["offset"], fd, rtol=1e-6, atol=1e-6)
    assert np.abs(grads["offset"]).max() > 1e-3
    # the other gradients stay FD-consistent with these offsets too
    for key in ("input", "mask"):
        if case[_ARG[key]] is not None:
            np.testing.assert_allclose(
                grads[key], fd_grad(case, _ARG[key], grad_out), rtol=1e-6, atol=1e-6
            )


# ---------------------------------------------------------------------------
# (c) torchvision's offset-gradient rule at exact integer border positions
# ---------------------------------------------------------------------------


def _single_point_case(dy, dx, H=3, W=4, oy=0, ox=1):
    """1x1 kernel, one channel; only output pixel (oy, ox) gets offset (dy, dx)."""
    x = (np.arange(H * W, dtype=np.float64).reshape(1, 1, H, W) + 1.0)
    offset = np.zeros((1, 2, H, W))
    offset[0, 0, oy, ox] = dy
    offset[0, 1, oy, ox] = dx
    return dict(
        x=x, weight=np.full((1, 1, 1, 1), 2.0), offset=offset, mask=None, bias=None,
        stride=(1, 1), padding=(0, 0), dilation=(1, 1),
    )


def test_offset_grad_nonzero_at_y_equal_minus_one():
    """y == -1 exactly: forward value 0, but d/d(dy) is the right derivative.

    torchvision computes the offset gradient from floor(y) = -1 without the
    forward's ``y <= -1`` early exit, so the row-0 corners contribute
    (pytorch/vision#6885).  The reference reproduces that on purpose.
    """
    H, W = 3, 4
    oy, ox, dx = 0, 1, 0.25
    case = _single_point_case(dy=-1.0, dx=dx, H=H, W=W, oy=oy, ox=ox)  # y = -1, x = 1.25
    out = deform_conv2d_ref(**case)
    assert out[0, 0, oy, ox] == 0.0  # forward contribution is exactly zero

    grad_out = np.zeros(out.shape)
    grad_out[0, 0, oy, ox] = 1.0
    g = deform_conv2d_ref_grads(**case, grad_out=grad_out)
    img = case["x"][0, 0]
    wgt = case["weight"][0, 0, 0, 0]
    expected_dy = wgt * ((1 - dx) * img[0, 1] + dx * img[0, 2])  # row 0 bilinear along x
    assert g["offset"][0, 0, oy, ox] != 0.0
    np.testing.assert_allclose(g["offset"][0, 0, oy, ox], expected_dy, rtol=1e-14)
    # dx gradient only sees the (invalid) row -1 at ly == 0: exactly zero
    assert g["offset"][0, 1, oy, ox] == 0.0
    # the input gradient is the adjoint of the forward: nothing flows back
    np.testing.assert_array_equal(g["input"], np.zeros(case["x"].shape))

    # it equals the one-sided derivative from above; from below it is 0
    h = 1e-7
    up = _single_point_case(dy=-1.0 + h, dx=dx, H=H, W=W, oy=oy, ox=ox)
    down = _single_point_case(dy=-1.0 - h, dx=dx, H=H, W=W, oy=oy, ox=ox)
    right = deform_conv2d_ref(**up)[0, 0, oy, ox] / h
    left = (0.0 - deform_conv2d_ref(**down)[0, 0, oy, ox]) / h
    np.testing.assert_allclose(right, expected_dy, rtol=1e-6)
    assert left == 0.0


def test_offset_grad_zero_at_y_equal_H():
    """y == H exactly: floor(y) = H is outside, so the rule gives 0 there."""
    H, W = 3, 4
    case = _single_point_case(dy=float(H), dx=0.5, H=H, W=W, oy=0, ox=1)  # y = 3
    out = deform_conv2d_ref(**case)
    assert out[0, 0, 0, 1] == 0.0
    grad_out = np.zeros(out.shape)
    grad_out[0, 0, 0, 1] = 1.0
    g = deform_conv2d_ref_grads(**case, grad_out=grad_out)
    assert g["offset"][0, 0, 0, 1] == 0.0 and g["offset"][0, 1, 0, 1] == 0.0
