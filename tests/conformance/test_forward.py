"""Forward conformance: every case x every frontend x every supported dtype.

* against the float64 numpy reference evaluated on the dtype-rounded inputs
  (tolerances: ``tolerances.TOL``);
* float32 / float64 also against onnxruntime's DeformConv (an independent
  implementation), N == 0 skipped there;
* "far" offsets give exactly the bias (or 0);
* torchvision's published values for a seeded fixture.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from .cases import CASES, Case, CaseArrays, quantize_arrays
from .frontends import frontend_dtype_params
from .tolerances import TOL, assert_close

try:
    from oracles import ort_available, ort_deform_conv2d
except ImportError:  # pragma: no cover - tests/ not on sys.path
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from oracles import ort_available, ort_deform_conv2d

CASE_PARAMS = [pytest.param(c, id=c.name) for c in CASES]


def case_arrays(case: Case, dtype: str) -> CaseArrays:
    arrs = case.make(dtype)
    if not arrs.all_finite():
        pytest.skip(f"{case.name}: inputs are not representable in {dtype} (overflow to inf)")
    return arrs


@pytest.mark.parametrize("fe,dtype", frontend_dtype_params())
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_forward_matches_reference(case, fe, dtype):
    arrs = case_arrays(case, dtype)
    got = fe.forward(arrs, case, dtype)
    assert got.shape == case.shapes["out"]
    assert_close(got, case.ref(arrs), dtype, f"{fe.name} output")
    if case.offset_kind == "far":
        # every sample outside the image: the output is exactly the bias
        bias = np.zeros(case.O) if arrs.bias is None else arrs.bias
        np.testing.assert_array_equal(got, np.broadcast_to(bias[None, :, None, None], got.shape))


needs_ort = pytest.mark.skipif(not ort_available(), reason="onnxruntime DeformConv unavailable")


@needs_ort
@pytest.mark.parametrize("fe,dtype", frontend_dtype_params(("float32", "float64")))
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_forward_matches_onnxruntime(case, fe, dtype):
    if case.N == 0:
        pytest.skip("onnxruntime's behaviour for an empty batch is not guaranteed")
    arrs = case_arrays(case, dtype)
    np_dtype = np.dtype(dtype)
    ort_in = {k: None if v is None else v.astype(np_dtype) for k, v in arrs.as_dict().items()}
    expected = ort_deform_conv2d(**ort_in, **case.conv_args).astype(np.float64)
    got = fe.forward(arrs, case, dtype)
    # both sides carry rounding error of the dtype: twice the tolerance
    assert_close(got, expected, dtype, f"{fe.name} output vs onnxruntime", factor=2.0)


# ---------------------------------------------------------------------------
# golden values from torchvision.ops.deform_conv2d
# ---------------------------------------------------------------------------

GOLDEN_CASE = Case("golden_seed42", N=1, C=2, H=4, W=4, O=2, kernel=(3, 3), padding=(1, 1),
                   with_mask=False, with_bias=False)
#: torchvision's output.flatten()[:4] for the fixture below
GOLDEN_HEAD = np.array([-0.006874, -0.079786, 0.0302, -0.1094])


@functools.lru_cache(maxsize=1)
def _golden_arrays() -> CaseArrays:
    torch = pytest.importorskip("torch", reason="the golden fixture is generated with torch's RNG")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(42)
        x = torch.randn(1, 2, 4, 4)
        weight = torch.randn(2, 2, 3, 3) * 0.1
        offset = torch.randn(1, 18, 4, 4) * 0.5
    to64 = lambda t: t.to(torch.float64).numpy()  # noqa: E731  (exact)
    return CaseArrays(to64(x), to64(weight), to64(offset), None, None)


def test_golden_reference():
    """The float64 reference itself reproduces torchvision's numbers."""
    ref = GOLDEN_CASE.ref(_golden_arrays())
    np.testing.assert_allclose(ref.ravel()[:4], GOLDEN_HEAD, rtol=0, atol=1e-4)


@pytest.mark.parametrize("fe,dtype", frontend_dtype_params())
def test_golden_torchvision_values(fe, dtype):
    arrs = quantize_arrays(_golden_arrays(), dtype)
    got = fe.forward(arrs, GOLDEN_CASE, dtype)
    assert_close(got, GOLDEN_CASE.ref(arrs), dtype, f"{fe.name} golden output")
    if dtype in ("float32", "float64"):
        np.testing.assert_allclose(got.ravel()[:4], GOLDEN_HEAD, rtol=0, atol=1e-4)
    else:
        # half types: inputs rounded to dtype, so only to the dtype's accuracy
        scale = np.abs(GOLDEN_CASE.ref(_golden_arrays())).max()
        np.testing.assert_allclose(got.ravel()[:4], GOLDEN_HEAD, rtol=0, atol=2 * TOL[dtype] * scale + 1e-4)
