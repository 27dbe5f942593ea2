"""Backward conformance: every case x every frontend x every supported dtype.

All five gradients (input, offset, weight, mask, bias; mask / bias only where
present) of ``sum(out * grad_out)`` for a random ``grad_out`` against the
float64 reference ``deform_conv2d_ref_grads`` (torchvision's offset-gradient
rule at exact border positions), evaluated on the dtype-rounded inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from .cases import CASES, GRAD_KEYS, Case, CaseArrays
from .frontends import frontend_dtype_params
from .tolerances import assert_close

CASE_PARAMS = [pytest.param(c, id=c.name) for c in CASES]


def _expected_keys(arrs: CaseArrays):
    return {k for k in GRAD_KEYS if not (k == "mask" and arrs.mask is None) and not (k == "bias" and arrs.bias is None)}


@pytest.mark.parametrize("fe,dtype", frontend_dtype_params())
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_grads_match_reference(case, fe, dtype):
    arrs = case.make(dtype)
    if not arrs.all_finite():
        pytest.skip(f"{case.name}: inputs are not representable in {dtype} (overflow to inf)")
    grad_out = case.grad_out(dtype)
    got = fe.grads(arrs, case, dtype, grad_out)
    ref = case.ref_grads(arrs, grad_out)
    assert set(ref) == _expected_keys(arrs)
    assert set(got) == set(ref), f"{fe.name} returned gradients {sorted(got)}, expected {sorted(ref)}"
    failures = []
    for key in GRAD_KEYS:
        if key not in ref:
            continue
        try:
            assert_close(got[key], ref[key], dtype, f"{fe.name} grad[{key}]")
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n".join(failures)
    if case.offset_kind == "far":
        # nothing is sampled: all gradients but the bias's are exactly zero
        for key in ("input", "offset", "weight", "mask"):
            if key in got:
                np.testing.assert_array_equal(got[key], 0.0, err_msg=f"grad[{key}]")


# ---------------------------------------------------------------------------
# torchvision's offset-gradient rule, on one sample point (diagnosable)
# ---------------------------------------------------------------------------

SINGLE_POINT = Case("single_point_1x1", N=1, C=1, H=3, W=4, O=1, kernel=(1, 1),
                    with_mask=False, with_bias=False, offset_kind="zero")


def _single_point_arrays(y: float, x: float, oy: int = 0, ox: int = 1) -> CaseArrays:
    """Pixel values 1..12, weight 2; only output pixel (oy, ox) samples at (y, x)."""
    H, W = SINGLE_POINT.H, SINGLE_POINT.W
    img = np.arange(1.0, H * W + 1).reshape(1, 1, H, W)
    offset = np.zeros((1, 2, H, W))
    offset[0, 0, oy, ox] = y - oy
    offset[0, 1, oy, ox] = x - ox
    return CaseArrays(img, np.full((1, 1, 1, 1), 2.0), offset, None, None)


@pytest.mark.parametrize("fe,dtype", frontend_dtype_params())
@pytest.mark.parametrize(
    "y,x,d_dy,d_dx",
    [
        # y == -1: forward 0, but d/d(dy) = w * (row 0 interpolated at x) (pytorch/vision#6885)
        pytest.param(-1.0, 1.25, 2.0 * (0.75 * 2 + 0.25 * 3), 0.0, id="y=-1"),
        # x == -1: symmetric, column 0 interpolated at y = 1.5
        pytest.param(1.5, -1.0, 0.0, 2.0 * (0.5 * 5 + 0.5 * 9), id="x=-1"),
        # y == H: floor(y) = H is outside, gradient 0
        pytest.param(3.0, 0.5, 0.0, 0.0, id="y=H"),
        # last row, y == H-1: d/dy uses rows H-1 (valid) and H (zero)
        pytest.param(2.0, 1.5, 2.0 * (0 - (0.5 * 10 + 0.5 * 11)), 2.0 * (11 - 10), id="y=H-1"),
    ],
)
def test_offset_grad_border_rule(fe, dtype, y, x, d_dy, d_dx):
    arrs = _single_point_arrays(y, x)
    grad_out = np.zeros(SINGLE_POINT.shapes["out"])
    grad_out[0, 0, 0, 1] = 1.0
    ref = SINGLE_POINT.ref_grads(arrs, grad_out)["offset"]
    # the hand-derived values document the rule; the reference agrees
    np.testing.assert_allclose(ref[0, :, 0, 1], [d_dy, d_dx], rtol=0, atol=1e-12)
    got = fe.grads(arrs, SINGLE_POINT, dtype, grad_out)
    # all values here are small integers / halves: exact in every dtype
    np.testing.assert_array_equal(got["offset"], ref, err_msg=f"{fe.name} [{dtype}] offset grad")
