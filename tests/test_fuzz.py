"""Property-based fuzzing (hypothesis) of both frontends against the oracles.

Each example draws a random geometry (batch 0-3, channel / weight-group /
offset-group counts with valid divisibility, kernel 1-4 per axis, stride 1-3,
padding 0-2, dilation 1-3, H/W 1-12 with an output of at least one pixel),
mask / bias presence, an offset kind (zero, integer, small fractional,
far +-1e3, exact border lines) and a dtype, then runs it through every
installed base frontend (``tests/conformance/frontends.py``: dcn_torch and
dcn_mlx) and checks

* the forward against the float64 reference (``tolerances.TOL``) and, for
  float32 / float64 with N > 0, against onnxruntime's DeformConv;
* all gradients against ``deform_conv2d_ref_grads``.

CI runs ``max_examples = 100`` derandomized (the same examples every run);
``DCN_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py`` runs more, and
``DCN_FUZZ_SEED=<int>`` switches to a random (seeded) search.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from conformance.cases import DTYPES, GRAD_KEYS, Case, CaseArrays  # noqa: E402
from conformance.frontends import FRONTENDS  # noqa: E402
from conformance.tolerances import assert_close  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st  # noqa: E402
from oracles import ort_available, ort_deform_conv2d  # noqa: E402

MAX_EXAMPLES = int(os.environ.get("DCN_FUZZ_EXAMPLES", "100"))
_SEED = os.environ.get("DCN_FUZZ_SEED")

#: the plain adapters (the conformance suite covers the ws1 / compiled variants)
BASE_FRONTENDS = [fe for fe in FRONTENDS if fe.name in ("torch", "mlx")]

#: examples actually executed (reported at the end of the module)
RUN = {"examples": 0, "frontend_calls": 0}


@st.composite
def fuzz_cases(draw):
    N = draw(st.integers(0, 3))
    groups = draw(st.integers(1, 3))
    offset_groups = draw(st.integers(1, 3))
    C = (groups * offset_groups // math.gcd(groups, offset_groups)) * draw(st.integers(1, 2))
    O = groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    # smallest H/W with an output >= 1: H + 2p >= d*(k-1) + 1
    H = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 12))
    W = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 12))
    kind = draw(st.sampled_from(["zero", "integer", "small", "small", "far", "border"]))
    if kind == "small":
        offset_kind, scale = "random", draw(st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0]))
    elif kind == "far":
        offset_kind, scale = "far", 1e3
    else:
        offset_kind, scale = kind, 1.5
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    case = Case(
        f"fuzz_{seed}", N=N, C=C, H=H, W=W, O=O, kernel=(kh, kw), stride=(sh, sw),
        padding=(ph, pw), dilation=(dh, dw), groups=groups, offset_groups=offset_groups,
        with_mask=draw(st.booleans()), with_bias=draw(st.booleans()),
        offset_kind=offset_kind, offset_scale=scale, seed=seed,
        non_contiguous=draw(st.booleans()),
    )
    return case, dtype


def _amax(a) -> float:
    return float(np.abs(a).max()) if a is not None and a.size else 0.0


def _factors(case: Case, arrs: CaseArrays, grad_out, ref, ref_g):
    """Tolerance factors for cancellation.

    ``assert_close`` bounds the error by ``TOL * max|ref|``, which assumes the
    result is about as large as the terms summed into it. With a handful of
    output elements (tiny fuzzed shapes) a result can be a cancellation of
    much larger terms, and the dtype's rounding of those terms (columns are
    stored in the dtype) is then large relative to ``max|ref|``. The
    standard bound is ``TOL * max sum|terms|``: evaluate the reference on
    absolute values (|x|, |weight|, |mask|, |bias|, |grad_out|) and scale
    the tolerance by ``max|abs_ref| / max|ref|`` (>= 1). A semantic error
    is of the size of the terms, so it still fails by orders of magnitude.
    """
    absd = dict(
        x=np.abs(arrs.x), weight=np.abs(arrs.weight), offset=arrs.offset,
        mask=None if arrs.mask is None else np.abs(arrs.mask),
        bias=None if arrs.bias is None else np.abs(arrs.bias),
    )
    a = CaseArrays(**absd)
    fwd = case.ref(a)
    g = case.ref_grads(a, np.abs(grad_out))

    def f(absv, refv):
        r = _amax(refv)
        return 1.0 if r == 0.0 else max(1.0, _amax(absv) / r)

    out = {"output": f(fwd, ref)}
    for k in ref_g:
        if k != "offset":
            out[k] = f(g[k], ref_g[k])
    # the offset gradient is a difference of corner values: bound its terms
    # by the input / mask / forward magnitudes, which involve the same ones
    out["offset"] = max(out["output"], out.get("input", 1.0), out.get("mask", 1.0))
    return out


def _check_one(case: Case, dtype: str) -> None:
    arrs = case.make(dtype)
    assert arrs.all_finite()
    ref = case.ref(arrs)
    grad_out = case.grad_out(dtype)
    ref_g = case.ref_grads(arrs, grad_out)
    fac = _factors(case, arrs, grad_out, ref, ref_g)
    use_ort = dtype in ("float32", "float64") and case.N > 0 and ort_available()
    if use_ort:
        np_dt = np.float32 if dtype == "float32" else np.float64
        ort = ort_deform_conv2d(
            arrs.x.astype(np_dt), arrs.weight, arrs.offset, arrs.mask, arrs.bias, **case.conv_args
        ).astype(np.float64)
        # the oracle itself computes in dtype: compare it with the reference
        # at the looser of the two bounds, then the frontends with it
        assert_close(ort, ref, dtype, "onnxruntime vs reference", factor=2.0 * fac["output"])
    failures = []
    for fe in BASE_FRONTENDS:
        if dtype not in fe.dtypes:
            continue
        RUN["frontend_calls"] += 1
        try:
            got = fe.forward(arrs, case, dtype)
            assert got.shape == case.shapes["out"]
            assert_close(got, ref, dtype, f"{fe.name} output", factor=fac["output"])
            if use_ort:
                assert_close(got, ort, dtype, f"{fe.name} output vs onnxruntime", factor=2.0 * fac["output"])
            grads = fe.grads(arrs, case, dtype, grad_out)
            assert set(grads) == set(ref_g), f"{fe.name}: gradients {sorted(grads)} != {sorted(ref_g)}"
            for key in GRAD_KEYS:
                if key in ref_g:
                    assert_close(grads[key], ref_g[key], dtype, f"{fe.name} grad[{key}]", factor=fac[key])
        except AssertionError as e:
            failures.append(f"{fe.name}: {e}")
    assert not failures, f"{case!r} dtype={dtype}\n" + "\n".join(failures)


def _settings(f):
    kw = dict(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
    if _SEED is None:
        kw["derandomize"] = True
        return settings(**kw)(f)
    return hyp_seed(int(_SEED))(settings(**kw)(f))


@pytest.mark.skipif(not BASE_FRONTENDS, reason="no frontend installed")
@_settings
@given(fuzz_cases())
def test_fuzz_forward_and_grads(case_dtype):
    case, dtype = case_dtype
    _check_one(case, dtype)
    RUN["examples"] += 1


def test_fuzz_report(capsys):
    """Prints how many fuzz examples ran (``pytest -s`` or ``-rA`` shows it)."""
    with capsys.disabled():
        print(f"\n[test_fuzz] {RUN['examples']} examples, {RUN['frontend_calls']} frontend runs "
              f"(frontends: {[fe.name for fe in BASE_FRONTENDS]}, max_examples={MAX_EXAMPLES})")
