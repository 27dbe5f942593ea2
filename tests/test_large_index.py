"""64-bit indexing: element offsets beyond 2^31 are computed correctly.

The input (and the mask) are float16 views made with ``as_strided`` over a
storage of just over 2^31 elements, so image 1 starts at element offset
2^31 + 64 (> INT32_MAX). Only the touched pages are ever committed
(``torch.empty`` is lazily backed), so the test needs ~4 GiB of *address
space* per view and a few KiB of memory. Forward and every gradient must
equal those of the contiguous copies, bitwise (same arithmetic, different
addressing). A 32-bit element offset would wrap to a negative index
(typically a crash or garbage), so a pass is evidence of 64-bit indexing.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
dcn_torch = pytest.importorskip("dcn_torch")

BIG = 2**31 + 64  # element offset of image 1


def _huge_view(images: "torch.Tensor"):
    """``images`` (2, C, H, W) copied into a view whose image 1 sits at
    element offset BIG of a (BIG + C*H*W)-element storage."""
    n, c, h, w = images.shape
    per = c * h * w
    try:
        base = torch.empty(BIG + per, dtype=images.dtype)
    except (MemoryError, RuntimeError) as e:  # no address space / overcommit refused
        pytest.skip(f"cannot allocate a {BIG + per}-element float16 storage (~4 GiB virtual): {e}")
    view = base.as_strided((n, c, h, w), (BIG, h * w, w, 1))
    view[0].copy_(images[0])
    view[1].copy_(images[1])
    assert view.storage_offset() == 0 and view[1].storage_offset() == BIG > 2**31 - 1
    return base, view


def test_input_and_mask_beyond_2_31_elements():
    torch.manual_seed(0)
    dt = torch.float16
    N, C, H, W, O, k = 2, 4, 9, 11, 3, 3
    x = torch.randn(N, C, H, W).to(dt)
    offset = (torch.randn(N, 2 * 2 * k * k, H - 2, W - 2) * 2).to(dt)
    mask = torch.rand(N, 2 * k * k, H - 2, W - 2).to(dt)
    weight = torch.randn(O, C, k, k).to(dt)
    bias = torch.randn(O).to(dt)
    grad_out = torch.randn(N, O, H - 2, W - 2).to(dt)

    xbase, xv = _huge_view(x)
    mbase, mv = _huge_view(mask)

    def run(inp, msk):
        leaves = [t.detach().requires_grad_(True) if t is not inp and t is not msk else t
                  for t in (inp, offset, weight, msk, bias)]
        leaves[0].requires_grad_(True)
        leaves[3].requires_grad_(True)
        i, o, w, m, b = leaves
        out = dcn_torch.deform_conv2d(i, o, w, b, mask=m)
        out.backward(grad_out)
        return out.detach(), [t.grad for t in leaves]

    ref_out, ref_grads = run(x.clone(), mask.clone())
    # one batch chunk holding both images, so the kernels themselves (not a
    # per-chunk data pointer computed by torch) index image 1 at BIG
    old_ws = dcn_torch.get_workspace_limit()
    dcn_torch.set_workspace_limit(256 << 20)
    try:
        out, grads = run(xv, mv)
    finally:
        dcn_torch.set_workspace_limit(old_ws)
    assert torch.isfinite(ref_out).all()
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    for name, g, r in zip(("input", "offset", "weight", "mask", "bias"), grads, ref_grads):
        assert g is not None, name
        torch.testing.assert_close(g, r, rtol=0, atol=0, msg=lambda m: f"grad[{name}]: {m}")
    del xbase, mbase


def test_float32_channels_last_corner_index_beyond_2_31():
    """The float32 channels-last plans index corners in int32 lanes only
    where every corner index of the image fits (base32_safe in
    plan_lanes.cpp). Here rows lie 2^25 elements apart, so row 64's corner
    index is 2^31: those samples must take the 64-bit products. im2col and
    the coordinate gradient (the kernels that read the input) on such a
    view equal those on a compact channels-last copy, bitwise (with the
    index wrapped to 32 bits they read far outside the image)."""
    from dcn_torch import _C

    torch.manual_seed(0)
    N, C, H, W, K = 1, 8, 66, 4, 9
    row = 2**25
    size = (H - 1) * row + W * C
    try:
        base = torch.empty(size, dtype=torch.float32)
    except (MemoryError, RuntimeError) as e:
        pytest.skip(f"cannot allocate a {size}-element float32 storage (~8.7 GiB virtual): {e}")
    x = torch.randn(N, C, H, W)
    xv = base.as_strided((N, C, H, W), (0, 1, row, C))
    xv.copy_(x)
    assert (H - 2) * row >= 2**31  # the last interior row's corner index
    xc = x.contiguous(memory_format=torch.channels_last)
    off = 0.7 * torch.randn(N, 2 * K, H, W)
    m = torch.rand(N, K, H, W)
    gcols = torch.randn(N, H, W, K * C)
    args = ((3, 3), (1, 1), (1, 1), (1, 1))
    results = []
    for inp in (xc, xv):
        cols = torch.full((N, H, W, K * C), float("nan"))
        _C.im2col(inp, off, m, cols, *args, 0, True)
        go, gm = torch.full_like(off, float("nan")), torch.full_like(m, float("nan"))
        rebuilt = torch.full_like(cols, float("nan"))
        _C.coord_grad(gcols, inp, off, m, go, gm, rebuilt, *args, 0, True)
        results.append((cols, go, gm, rebuilt))
    for a, b in zip(*results):
        assert not a.isnan().any()
        assert torch.equal(a, b)
    del base
