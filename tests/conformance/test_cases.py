"""The case table delivers what it promises (framework-free, fast).

If one of these fails, the conformance tests would silently test less than
they claim (e.g. "border" offsets that no longer land on a border).
"""

from __future__ import annotations

import numpy as np
import pytest

from .cases import CASES, CASES_BY_NAME, DTYPES, TV_ODD, quantize

CASE_PARAMS = [pytest.param(c, id=c.name) for c in CASES]


def _is(case, **kw):
    return all(getattr(case, k) == v for k, v in kw.items())


def test_table_covers_required_configurations():
    tv = [c for c in CASES if _is(c, **TV_ODD)]
    assert {0, 1, 33} <= {c.N for c in tv}
    assert any(not c.with_mask and not c.with_bias for c in tv)
    assert any(c.with_mask and c.with_bias for c in tv)
    far = [c for c in CASES if c.offset_kind == "far"]
    assert min(c.offset_scale for c in far) >= 1e3
    assert max(c.offset_scale for c in far) > 2**31  # past int32 after floor()
    for kind in ("random", "integer", "zero", "border"):
        assert any(c.offset_kind == kind for c in CASES), kind
    assert any(c.H != c.W for c in CASES) and any(c.kernel[0] != c.kernel[1] for c in CASES)
    assert any(c.kernel == (1, 1) for c in CASES)
    assert any(c.groups == c.C and c.groups > 1 for c in CASES)  # depthwise
    assert len({c.offset_groups for c in CASES if c.offset_groups > 1}) >= 2
    assert any(c.groups > 1 and c.offset_groups > 1 and c.groups != c.offset_groups for c in CASES)
    assert any(c.out_size[0] * c.out_size[1] > 256 for c in CASES)  # more than one pixel tile
    assert any(min(c.kernel) > min(c.H, c.W) for c in CASES)
    assert sum(c.non_contiguous for c in CASES) >= 4
    for mask in (True, False):
        for bias in (True, False):
            assert any(c.with_mask == mask and c.with_bias == bias for c in CASES), (mask, bias)


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_arrays_shapes_and_determinism(case):
    a, b = case.arrays(), case.arrays()
    for key, shape in case.shapes.items():
        if key == "out":
            continue
        arr = getattr(a, key)
        assert (arr is None) == (shape is None), key
        if arr is not None:
            assert arr.shape == shape and arr.dtype == np.float64, key
            np.testing.assert_array_equal(arr, getattr(b, key))
    assert case.ref(a).shape == case.shapes["out"]
    assert case.grad_out().shape == case.shapes["out"]


@pytest.mark.parametrize("case", [c for c in CASE_PARAMS if c.values[0].offset_kind in ("integer", "zero", "border")])
def test_exact_offsets_are_exact_in_every_dtype(case):
    off = case.arrays().offset
    for dt in DTYPES:
        np.testing.assert_array_equal(quantize(off, dt), off, err_msg=dt)
    ys, xs = case.sample_positions(off)
    assert np.all(ys * 8 == np.round(ys * 8)) and np.all(xs * 8 == np.round(xs * 8))
    if case.offset_kind != "border":
        assert np.all(ys == np.round(ys)) and np.all(xs == np.round(xs))


@pytest.mark.parametrize("case", [c for c in CASE_PARAMS if c.values[0].offset_kind == "border"])
def test_border_cases_hit_every_border_line(case):
    ys, xs = case.sample_positions(case.arrays().offset)
    H, W = case.H, case.W
    in_x = (xs >= 0) & (xs <= W - 1)
    in_y = (ys >= 0) & (ys <= H - 1)
    lines = {
        "y=-1": (ys == -1) & in_x,
        "y=H-1": (ys == H - 1) & in_x,
        "y=H": (ys == H) & in_x,
        "x=-1": (xs == -1) & in_y,
        "x=W-1": (xs == W - 1) & in_y,
        "x=W": (xs == W) & in_y,
        "interior": (ys > -1) & (ys < H) & (xs > -1) & (xs < W) & (ys != np.round(ys)),
    }
    # a fractional position along the border line needs room along it
    if W > 1:
        lines["y=-1, fractional x"] = (ys == -1) & in_x & (xs != np.round(xs))
    if H > 1:
        lines["x=-1, fractional y"] = (xs == -1) & in_y & (ys != np.round(ys))
    for name, hit in lines.items():
        assert hit.any(), f"{case.name}: no sample on {name}"


def test_padding_with_zero_offsets_samples_on_minus_one():
    case = CASES_BY_NAME["zero_offsets"]
    ys, xs = case.sample_positions(case.arrays().offset)
    assert (ys == -1).any() and (xs == -1).any() and (xs == -2).any()


@pytest.mark.parametrize("case", [c for c in CASE_PARAMS if c.values[0].offset_kind == "far"])
def test_far_offsets_leave_the_image(case):
    ys, xs = case.sample_positions(case.arrays().offset)
    # every bilinear corner is outside: y < -1 or y >= H (same for x)
    outside = (ys < -1) | (ys >= case.H) | (xs < -1) | (xs >= case.W)
    assert outside.all()
    assert np.abs(case.arrays().offset).min() >= case.offset_scale - 1


def test_quantize_matches_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.standard_normal(10000) * 10.0 ** rng.integers(-6, 6, 10000),
                        [0.0, -0.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 65504.0, 1e10, -1e-30]])
    a32 = a.astype(np.float32)  # tie cases decided on the float32 value, as quantize does
    np.testing.assert_array_equal(quantize(a32, "bfloat16"), a32.astype(ml_dtypes.bfloat16).astype(np.float64))
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(quantize(a, "float16"), a.astype(np.float16).astype(np.float64))
    assert quantize(np.array([1e10]), "float16")[0] == np.inf
