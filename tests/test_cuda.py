"""The CUDA backend of ``dcn_torch`` (issue 5), on CUDA tensors.

Skipped, with the reason in the report (``pytest -rs``), where torch sees no
GPU or this dcn build has no CUDA backend (``build_info()["backends"]``).

* CPU <-> CUDA agreement: every case of ``conformance/cases.py`` in every
  dtype, the output and all five gradients (input, offset, weight, mask,
  bias) on CUDA against the CPU backend on the same inputs, within twice
  ``tolerances.TOL`` (both carry the dtype's rounding); gradients in the
  default (atomic) and the deterministic mode. (The conformance suite itself
  checks the CUDA frontends ``torch_cuda`` / ``torch_cuda_det_ws1`` against
  the float64 reference.)
* ``torch.autograd.gradcheck`` in float64 on CUDA (mask, bias, weight groups
  and offset groups > 1), in both modes.
* ``torch.library.opcheck`` of both ops on CUDA tensors.
* Determinism: with ``dcn_torch.set_deterministic(True)`` repeated backward
  runs are bitwise identical on a problem where each input pixel of each
  channel receives ~2000 contributions per image (atomics would reorder
  those sums); the offset,
  mask, weight and bias gradients are bitwise reproducible in the default
  mode too; the two modes agree within the dtype's tolerance; with the
  default setting (None), ``torch.use_deterministic_algorithms(True)`` gives
  the deterministic kernels' bits (the switch's logic itself is in
  ``test_cuda_settings.py``).
* CUDA graphs: forward+backward captured (after a warm-up on a side stream),
  replayed on new values copied into the static inputs, against eager.
* A non-default stream kept busy (``torch.cuda._sleep``) while the inputs are
  written on it: kernels launched on any other stream would read stale
  inputs.
* Inputs on different devices raise ``ValueError`` naming the argument (the
  raw op in a subprocess, so a kernel fault there cannot poison this
  session's CUDA context); with two GPUs, everything on cuda:1 while cuda:0
  is current.
* ``torch.compile(fullgraph=True)`` forward+backward (eager, aot_eager,
  inductor).
* Batch chunking: ``set_workspace_limit`` at one image and at two images
  (uneven tail) per chunk agrees with the default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from typing import Dict, Optional

import numpy as np
import pytest
import torch

import dcn_torch

try:
    from conformance.cases import CASES, CASES_BY_NAME, DTYPES, GRAD_KEYS, Case, CaseArrays, quantize_arrays
    from conformance.frontends import TorchFrontend
    from conformance.tolerances import TOL, assert_close
except ImportError:  # pragma: no cover - depends on pytest's import mode
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from conformance.cases import CASES, CASES_BY_NAME, DTYPES, GRAD_KEYS, Case, CaseArrays, quantize_arrays
    from conformance.frontends import TorchFrontend
    from conformance.tolerances import TOL, assert_close


def _unavailable_reason() -> Optional[str]:
    if not torch.cuda.is_available():
        return (f"no CUDA device: torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")
    backends = dcn_torch.build_info()["backends"]
    if "cuda" not in backends:
        return f"this dcn_torch build has no CUDA backend (build_info()['backends'] == {backends})"
    return None


UNAVAILABLE = _unavailable_reason()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"CUDA tests: {UNAVAILABLE}")

needs_two_gpus = pytest.mark.skipif(
    UNAVAILABLE is None and torch.cuda.device_count() < 2,
    reason="needs two CUDA devices (torch.cuda.device_count() < 2)")

#: CaseArrays field -> dcn_torch argument name
ARG_OF = {"x": "input", "offset": "offset", "weight": "weight", "mask": "mask", "bias": "bias"}
TORCH_DTYPE = {name: getattr(torch, name) for name in DTYPES}
CASE_PARAMS = [pytest.param(c, id=c.name) for c in CASES]
MODES = [pytest.param(False, id="default"), pytest.param(True, id="deterministic")]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def dcn_deterministic(mode: Optional[bool]):
    """``dcn_torch.set_deterministic(mode)`` inside the block, then back to
    the default (None: follow torch). ``mode=None`` leaves the setting alone."""
    if mode is None:
        yield
        return
    dcn_torch.set_deterministic(mode)
    try:
        yield
    finally:
        dcn_torch.set_deterministic(None)


class CheckedTorchFrontend(TorchFrontend):
    """The conformance suite's torch adapter (``device``, ``deterministic``,
    ``workspace_bytes`` as there) that also checks that every result comes
    back on the inputs' device."""

    def _check(self, t, dtype, shape, what):
        want = torch.device(self.device)
        if t.device.type != want.type or (want.index is not None and t.device.index != want.index):
            raise AssertionError(f"{self.name}: {what} is on {t.device}, expected {want}")
        super()._check(t, dtype, shape, what)


CPU = TorchFrontend(name="torch_cpu")
CUDA = CheckedTorchFrontend(name="torch_cuda", device="cuda")
CUDA_DET = CheckedTorchFrontend(name="torch_cuda_det", device="cuda", deterministic=True)


def finite_arrays(case: Case, dtype: str, seed: Optional[int] = None) -> CaseArrays:
    arrs = case.make(dtype, seed)
    if not arrs.all_finite():
        pytest.skip(f"{case.name}: inputs are not representable in {dtype} (overflow to inf)")
    return arrs


def smooth_arrays(case: Case, seed: Optional[int] = None) -> CaseArrays:
    """``case.arrays`` with every sample point 0.25..0.75 away from the pixel
    grid: the case's integer offsets (``offset_kind="integer"``; the base
    positions are integers too) plus a fraction in [0.25, 0.75]. Finite
    differences never cross a bilinear kink or the border (at y = -1, y = H,
    x = -1, x = W)."""
    assert case.offset_kind == "integer", case.name
    arrs = case.arrays(seed)
    rng = np.random.default_rng(case.default_seed + 1 if seed is None else seed + 1)
    return dataclasses.replace(arrs, offset=arrs.offset + rng.uniform(0.25, 0.75, arrs.offset.shape))


def torch_inputs(arrs: CaseArrays, dtype: str, device="cuda", requires_grad=False) -> Dict[str, Optional[torch.Tensor]]:
    """The case's arrays as contiguous tensors, keyed by argument name."""
    out = {}
    for field, arg in ARG_OF.items():
        a = getattr(arrs, field)
        if a is None:
            out[arg] = None
            continue
        out[arg] = torch.from_numpy(a).to(device=device, dtype=TORCH_DTYPE[dtype]).requires_grad_(requires_grad)
    return out


def to_torch(a: np.ndarray, dtype: str, device="cuda") -> torch.Tensor:
    return torch.from_numpy(a).to(device=device, dtype=TORCH_DTYPE[dtype])


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def call(ts, case: Case, fn=None):
    return (fn or dcn_torch.deform_conv2d)(
        ts["input"], ts["offset"], ts["weight"], ts["bias"], stride=tuple(case.stride),
        padding=tuple(case.padding), dilation=tuple(case.dilation), mask=ts["mask"])


def forward_backward(ts, case: Case, grad_out: torch.Tensor, fn=None):
    """Output and the gradients of ``sum(out * grad_out)`` w.r.t. every
    present argument (``ts`` must require grad)."""
    leaves = {k: t for k, t in ts.items() if t is not None}
    out = call(ts, case, fn)
    grads = torch.autograd.grad(out, tuple(leaves.values()), grad_out)
    return out.detach(), dict(zip(leaves, grads))


def assert_results_close(got, want, dtype: str, what: str, factor: float = 2.0) -> None:
    """(out, grads) pairs within ``factor * TOL[dtype]`` (per tensor, scaled
    by its max |want|; exact where ``want`` is all zeros)."""
    (out_g, grads_g), (out_w, grads_w) = got, want
    assert_close(to_numpy(out_g), to_numpy(out_w), dtype, f"{what}: output", factor)
    assert grads_g.keys() == grads_w.keys()
    for k in grads_w:
        assert grads_g[k].dtype == grads_w[k].dtype and grads_g[k].device == grads_w[k].device, k
        assert_close(to_numpy(grads_g[k]), to_numpy(grads_w[k]), dtype, f"{what}: grad[{k}]", factor)


_SAME_SIZE_INT = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def assert_bitwise_equal(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Equal bit patterns (so -0.0 != 0.0 and NaN payloads count)."""
    assert a.dtype == b.dtype and a.shape == b.shape, what
    as_int = _SAME_SIZE_INT[a.element_size()]
    if not torch.equal(a.view(as_int), b.view(as_int)):
        diff = (a.double() - b.double()).abs()
        raise AssertionError(f"{what}: not bitwise equal, {int((diff > 0).sum())}/{diff.numel()} "
                             f"elements differ, max |diff| {diff.max().item():.3e}")


def expected_grad_keys(arrs: CaseArrays):
    return {k for k in GRAD_KEYS if not (k == "mask" and arrs.mask is None)
            and not (k == "bias" and arrs.bias is None)}


def test_build_covers_this_device():
    """This GPU runs its own SASS or the PTX of a lower architecture."""
    archs = dcn_torch.build_info()["cuda"]["architectures"]
    major, minor = torch.cuda.get_device_capability()
    assert min(archs) <= 10 * major + minor, (archs, (major, minor))


# ---------------------------------------------------------------------------
# (a) the conformance cases: CUDA vs the float64 reference and vs the CPU
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_forward_cuda_matches_cpu(case, dtype):
    arrs = finite_arrays(case, dtype)
    got = CUDA.forward(arrs, case, dtype)
    assert_close(got, CPU.forward(arrs, case, dtype), dtype, "cuda output vs cpu output", factor=2.0)


@pytest.mark.parametrize("fe", [pytest.param(CUDA, id="default"), pytest.param(CUDA_DET, id="deterministic")])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_grads_cuda_match_cpu(case, dtype, fe):
    arrs = finite_arrays(case, dtype)
    grad_out = case.grad_out(dtype)
    got = fe.grads(arrs, case, dtype, grad_out)
    cpu = CPU.grads(arrs, case, dtype, grad_out)
    assert set(got) == set(cpu) == expected_grad_keys(arrs), (sorted(got), sorted(cpu))
    failures = []
    for key in GRAD_KEYS:
        if key not in cpu:
            continue
        try:
            assert_close(got[key], cpu[key], dtype, f"{fe.name} grad[{key}] vs cpu", factor=2.0)
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------
# (b) gradcheck in float64 on CUDA
# ---------------------------------------------------------------------------

GRADCHECK_CASES = [
    Case("cuda_gradcheck_groups", N=2, C=4, O=4, H=4, W=5, padding=(1, 1), groups=2,
         offset_groups=2, offset_kind="integer"),
    Case("cuda_gradcheck_strided", N=1, C=6, O=2, H=5, W=6, kernel=(2, 3), stride=(2, 1),
         padding=(1, 0), dilation=(1, 2), offset_groups=3, offset_kind="integer"),
]


@pytest.mark.parametrize("deterministic", MODES)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in GRADCHECK_CASES])
def test_gradcheck_float64(case, deterministic):
    assert case.with_mask and case.with_bias and case.offset_groups > 1
    ts = torch_inputs(smooth_arrays(case), "float64", requires_grad=True)
    names = [k for k, t in ts.items() if t is not None]

    def fn(*args):
        return call({**ts, **dict(zip(names, args))}, case)

    # gradcheck also runs the backward twice and compares (reentrancy): the
    # atomic input gradient may differ in the last bits between those runs.
    nondet_tol = 0.0 if deterministic else 1e-12
    with dcn_deterministic(deterministic):
        assert torch.autograd.gradcheck(fn, tuple(ts[k] for k in names), eps=1e-6, atol=1e-5,
                                        rtol=1e-4, nondet_tol=nondet_tol)


# ---------------------------------------------------------------------------
# (c) opcheck on CUDA
# ---------------------------------------------------------------------------

OP = torch.ops.dcn.deform_conv2d.default
BWD = torch.ops.dcn.deform_conv2d_backward.default
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor",
                 "test_aot_dispatch_static", "test_aot_dispatch_dynamic")
OPCHECK_CASES = {
    "mask_bias": Case("cuda_opcheck_mask_bias", N=2, C=4, O=3, H=6, W=5, padding=(1, 1),
                      offset_groups=2, offset_kind="integer"),
    "plain": Case("cuda_opcheck_plain", N=2, C=4, O=3, H=6, W=5, padding=(1, 1),
                  with_mask=False, with_bias=False, offset_kind="integer"),
    "groups_strided": Case("cuda_opcheck_groups_strided", N=1, C=4, O=6, H=7, W=6, kernel=(2, 3),
                           stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=2,
                           offset_groups=2, offset_kind="integer"),
}


def op_args(ts, case: Case):
    return (ts["input"], ts["weight"], ts["offset"], ts["mask"], ts["bias"],
            list(case.stride), list(case.padding), list(case.dilation))


def _opcheck_tolerance(dtype: str):
    # opcheck compares eager and AOT-compiled results; the default mode's
    # atomic input gradient may differ in its last bits between the two.
    return dict(rtol=TOL[dtype], atol=10 * TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("name", list(OPCHECK_CASES))
def test_opcheck_forward(name, requires_grad, dtype):
    case = OPCHECK_CASES[name]
    ts = torch_inputs(smooth_arrays(case), dtype, requires_grad=requires_grad)
    torch.library.opcheck(OP, op_args(ts, case), test_utils=OPCHECK_UTILS, **_opcheck_tolerance(dtype))


OUTPUT_MASKS = [
    [True, True, True, True, True],
    [False, False, False, False, False],
    [True, False, False, False, False],
    [False, True, False, False, True],
    [False, False, True, True, False],
]


@pytest.mark.parametrize("deterministic", MODES)
@pytest.mark.parametrize("output_mask", OUTPUT_MASKS,
                         ids=["".join("1" if b else "0" for b in m) for m in OUTPUT_MASKS])
@pytest.mark.parametrize("name,dtype", [("mask_bias", "float32"), ("plain", "float64"),
                                        ("groups_strided", "float32")])
def test_opcheck_backward(name, dtype, output_mask, deterministic):
    case = OPCHECK_CASES[name]
    arrs = smooth_arrays(case)
    ts = torch_inputs(arrs, dtype)
    grad = to_torch(case.grad_out(dtype), dtype)
    args = (grad,) + op_args(ts, case) + (list(output_mask),)
    with dcn_deterministic(deterministic):
        torch.library.opcheck(BWD, args, test_utils=OPCHECK_UTILS, **_opcheck_tolerance(dtype))
        res = BWD(*args)
    present = [True, True, True, arrs.mask is not None, arrs.bias is not None]
    for want, p, r, k in zip(output_mask, present, res, ("input", "weight", "offset", "mask", "bias")):
        assert r.device.type == "cuda", k
        if want and p:
            assert r.shape == ts[k].shape and r.dtype == ts[k].dtype, k
        else:
            assert r.numel() == 0, k


# ---------------------------------------------------------------------------
# (d) determinism
# ---------------------------------------------------------------------------

#: a 4x4 image, a 30x30 output (padding 14) and every sample pulled into
#: [0.5, 2.5]^2: per image and channel, 900 * 9 samples * 4 corners land on
#: 16 pixels, ~2000 adds into each.
COLLIDE = Case("cuda_collisions", N=4, C=16, O=16, H=4, W=4, padding=(14, 14), offset_groups=2,
               offset_kind="zero")


def clustered_arrays(case: Case, dtype: str, seed: int = 0) -> CaseArrays:
    """``case``'s data with offsets that move every sample point to a
    position in [0.5, 2.5]^2 of the image (rounded to ``dtype``)."""
    arrs = case.arrays(seed)
    rng = np.random.default_rng(seed)
    Ho, Wo = case.out_size
    by, bx = case.base_positions()
    shape = (case.N, case.offset_groups, case.K, Ho, Wo)
    off = np.empty((case.N, case.offset_groups, case.K, 2, Ho, Wo))
    off[:, :, :, 0] = rng.uniform(0.5, 2.5, shape) - by
    off[:, :, :, 1] = rng.uniform(0.5, 2.5, shape) - bx
    return quantize_arrays(dataclasses.replace(arrs, offset=off.reshape(case.shapes["offset"])), dtype)


def _collide_run(dtype: str):
    arrs = clustered_arrays(COLLIDE, dtype)
    ts = torch_inputs(arrs, dtype, requires_grad=True)
    return forward_backward(ts, COLLIDE, to_torch(COLLIDE.grad_out(dtype), dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_mode_bitwise_reproducible(dtype):
    with dcn_deterministic(True):
        assert dcn_torch.get_deterministic() is True
        runs = [_collide_run(dtype) for _ in range(3)]
    out0, grads0 = runs[0]
    assert set(grads0) == set(GRAD_KEYS)
    for i, (out, grads) in enumerate(runs[1:], 1):
        assert_bitwise_equal(out, out0, f"run {i}: output")
        for k in GRAD_KEYS:
            assert_bitwise_equal(grads[k], grads0[k], f"run {i}: grad[{k}]")


@pytest.mark.parametrize("dtype", DTYPES)
def test_default_mode_other_gradients_bitwise_reproducible(dtype):
    """Only the input gradient may use atomics: the output and the offset,
    mask, weight and bias gradients are reproducible in the default mode."""
    with dcn_deterministic(False):
        assert dcn_torch.get_deterministic() is False
        runs = [_collide_run(dtype) for _ in range(3)]
    out0, grads0 = runs[0]
    for i, (out, grads) in enumerate(runs[1:], 1):
        assert_bitwise_equal(out, out0, f"run {i}: output")
        for k in ("offset", "mask", "weight", "bias"):
            assert_bitwise_equal(grads[k], grads0[k], f"run {i}: grad[{k}]")


@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_and_default_agree(dtype):
    with dcn_deterministic(True):
        det = _collide_run(dtype)
    with dcn_deterministic(False):
        default = _collide_run(dtype)
    assert_results_close(det, default, dtype, "deterministic vs default")
    # and both against the CPU backend on the same inputs
    arrs = clustered_arrays(COLLIDE, dtype)
    cpu = forward_backward(torch_inputs(arrs, dtype, device="cpu", requires_grad=True), COLLIDE,
                           to_torch(COLLIDE.grad_out(dtype), dtype, device="cpu"))
    cpu_on_cuda = (cpu[0].cuda(), {k: g.cuda() for k, g in cpu[1].items()})
    assert_results_close(det, cpu_on_cuda, dtype, "deterministic vs cpu")


@pytest.fixture
def restore_deterministic():
    """Put torch's and dcn's deterministic settings back after the test."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    dcn_torch.set_deterministic(None)


def test_torch_deterministic_algorithms_select_deterministic_kernels(restore_deterministic):
    """With the default setting (None), torch.use_deterministic_algorithms
    gives the same bits as dcn_torch.set_deterministic(True)."""
    with dcn_deterministic(True):
        explicit = _collide_run("float32")
    dcn_torch.set_deterministic(None)
    # warn_only: torch would otherwise refuse cuBLAS without CUBLAS_WORKSPACE_CONFIG
    torch.use_deterministic_algorithms(True, warn_only=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*CUBLAS_WORKSPACE_CONFIG.*")
        followed = [_collide_run("float32") for _ in range(2)]
    for out, grads in followed:
        assert_bitwise_equal(out, explicit[0], "output")
        for k in GRAD_KEYS:
            assert_bitwise_equal(grads[k], explicit[1][k], f"grad[{k}]")


# ---------------------------------------------------------------------------
# (e) CUDA graph capture and replay
# ---------------------------------------------------------------------------

GRAPH_CASE = Case("cuda_graph", N=3, C=8, O=6, H=9, W=10, padding=(1, 1), groups=2, offset_groups=2)


@pytest.mark.parametrize("deterministic", MODES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_graph_capture_and_replay(dtype, deterministic):
    case = GRAPH_CASE
    with dcn_deterministic(deterministic):
        static = torch_inputs(case.make(dtype, seed=1), dtype, requires_grad=True)
        static_grad_out = to_torch(case.grad_out(dtype, seed=1), dtype)
        leaves = {k: t for k, t in static.items() if t is not None}

        # warm up on a side stream (torch.cuda.graphs docs: "whole network capture")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                for t in leaves.values():
                    t.grad = None
                call(static, case).backward(static_grad_out)
        torch.cuda.current_stream().wait_stream(side)

        graph = torch.cuda.CUDAGraph()
        for t in leaves.values():
            t.grad = None  # the captured backward allocates static .grad tensors
        with torch.cuda.graph(graph):
            static_out = call(static, case)
            static_out.backward(static_grad_out)
        static_grads = {k: t.grad for k, t in leaves.items()}
        assert all(g is not None for g in static_grads.values())

        for seed in (2, 3):
            arrs = case.make(dtype, seed=seed)
            new = torch_inputs(arrs, dtype)
            grad_out = to_torch(case.grad_out(dtype, seed=seed), dtype)
            with torch.no_grad():
                for k, t in leaves.items():
                    t.copy_(new[k])
                static_grad_out.copy_(grad_out)
            graph.replay()
            replayed = (static_out.detach().clone(), {k: g.clone() for k, g in static_grads.items()})
            eager = forward_backward(torch_inputs(arrs, dtype, requires_grad=True), case, grad_out)
            assert_results_close(replayed, eager, dtype, f"graph replay (seed {seed}) vs eager")


# ---------------------------------------------------------------------------
# (f) a non-default stream
# ---------------------------------------------------------------------------

#: ~25 ms at 2 GHz: long enough that work launched on another stream runs
#: (and reads the stale inputs) before the copies queued behind it.
SLEEP_CYCLES = 50_000_000


@pytest.mark.parametrize("deterministic", MODES)
def test_runs_on_the_current_stream(deterministic):
    case = GRAPH_CASE
    dtype = "float32"
    new_arrs = case.make(dtype, seed=5)
    grad_out = to_torch(case.grad_out(dtype, seed=5), dtype)
    with dcn_deterministic(deterministic):
        want = forward_backward(torch_inputs(new_arrs, dtype, requires_grad=True), case, grad_out)
        ts = torch_inputs(case.make(dtype, seed=4), dtype, requires_grad=True)  # stale values
        new = torch_inputs(new_arrs, dtype)
        torch.cuda.synchronize()

        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            torch.cuda._sleep(SLEEP_CYCLES)
            with torch.no_grad():
                for k, t in ts.items():
                    if t is not None:
                        t.copy_(new[k])
            got = forward_backward(ts, case, grad_out)
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
    assert_results_close(got, want, dtype, "on a side stream vs on the default stream")


# ---------------------------------------------------------------------------
# (g) devices
# ---------------------------------------------------------------------------

DEVICE_CASE = CASES_BY_NAME["offset_groups_4"]


@pytest.mark.parametrize("moved", ["input", "offset", "weight", "mask", "bias"])
def test_mixed_devices_functional_raise(moved):
    ts = torch_inputs(DEVICE_CASE.make("float32"), "float32")
    ts[moved] = ts[moved].cpu()
    with pytest.raises(ValueError, match=rf"\b{moved}\b") as info:
        call(ts, DEVICE_CASE)
    assert "cpu" in str(info.value)


def test_mixed_devices_module_raise():
    layer = dcn_torch.DeformConv2d(4, 6, 3, padding=1).cuda()
    x = torch.randn(1, 4, 5, 5, device="cuda")
    offset = torch.randn(1, 18, 5, 5, device="cuda")
    mask = torch.rand(1, 9, 5, 5)
    with pytest.raises(ValueError, match=r"\bmask\b"):
        layer(x, offset, mask)
    with pytest.raises(ValueError, match=r"\binput\b"):
        layer(x.cpu(), offset)
    with pytest.raises(ValueError, match=r"\bweight\b"):
        layer.cpu()(x, offset)


_OP_MIXED_DEVICES = textwrap.dedent("""
    import json, torch, dcn_torch
    def args():
        return dict(input=torch.randn(1, 4, 5, 5, device="cuda"),
                    weight=torch.randn(3, 4, 3, 3, device="cuda"),
                    offset=torch.randn(1, 18, 5, 5, device="cuda"),
                    mask=torch.rand(1, 9, 5, 5, device="cuda"),
                    bias=torch.randn(3, device="cuda"))
    result = {}
    for moved in ("input", "weight", "offset", "mask", "bias"):
        a = args()
        a[moved] = a[moved].cpu()
        try:
            torch.ops.dcn.deform_conv2d(a["input"], a["weight"], a["offset"], a["mask"],
                                        a["bias"], [1, 1], [1, 1], [1, 1])
            torch.cuda.synchronize()
            result[moved] = ["no error", ""]
        except Exception as e:
            result[moved] = [type(e).__name__, str(e)]
    print(json.dumps(result))
""")


def test_mixed_devices_op_raise(tmp_path):
    """The registered op checks devices too (not only the Python wrapper).
    Run in a subprocess: a kernel reading a host pointer could leave this
    process's CUDA context unusable for the tests after it. The subprocess
    imports the same dcn_torch as this one (not a source tree in its cwd)."""
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(dcn_torch.__file__)))
    path = os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", _OP_MIXED_DEVICES], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": path})
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for moved, (kind, message) in result.items():
        assert kind == "ValueError", f"{moved} on the CPU: got {kind}: {message}"
        assert re.search(rf"\b{moved}\b", message), f"{moved} on the CPU: {message}"


@needs_two_gpus
@pytest.mark.parametrize("case", [pytest.param(CASES_BY_NAME[n], id=n) for n in
                                  ("tv_odd_n3_noncontig", "offset_groups_4", "large_tiled")])
def test_second_device(case):
    """Everything on cuda:1 while cuda:0 is current: the kernels must run on
    the inputs' device, and agree with the CPU."""
    fe = CheckedTorchFrontend(name="torch_cuda1", device="cuda:1")
    arrs = case.make("float32")
    grad_out = case.grad_out("float32")
    with torch.cuda.device(0):
        out = fe.forward(arrs, case, "float32")
        grads = fe.grads(arrs, case, "float32", grad_out)
    assert_close(out, CPU.forward(arrs, case, "float32"), "float32", "cuda:1 output vs cpu", factor=2.0)
    cpu = CPU.grads(arrs, case, "float32", grad_out)
    assert set(grads) == set(cpu)
    for k in cpu:
        assert_close(grads[k], cpu[k], "float32", f"cuda:1 grad[{k}] vs cpu", factor=2.0)


@needs_two_gpus
def test_two_cuda_devices_raise():
    ts = torch_inputs(DEVICE_CASE.make("float32"), "float32")
    ts["offset"] = ts["offset"].to("cuda:1")
    with pytest.raises(ValueError, match=r"\boffset\b"):
        call(ts, DEVICE_CASE)


# ---------------------------------------------------------------------------
# (h) torch.compile
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _inductor_problem() -> Optional[str]:
    """None when inductor compiles a CUDA kernel here, else why not."""
    try:
        torch._dynamo.reset()
        f = torch.compile(lambda x: x.sin() + 1, backend="inductor", fullgraph=True)
        x = torch.randn(8, device="cuda")
        torch.testing.assert_close(f(x), x.sin() + 1)
    except Exception as e:  # pragma: no cover - depends on the machine
        return f"inductor unavailable for CUDA here: {type(e).__name__}: {str(e)[:200]}"
    finally:
        torch._dynamo.reset()
    return None


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", [pytest.param(CASES_BY_NAME[n], id=n) for n in
                                  ("tv_odd_n1", "depthwise_multiplier_2", "large_tiled")])
def test_compile_fullgraph_forward_backward(case, dtype, backend):
    if backend == "inductor" and _inductor_problem():
        pytest.skip(_inductor_problem())
    torch._dynamo.reset()
    compiled = torch.compile(dcn_torch.deform_conv2d, backend=backend, fullgraph=True)
    arrs = case.make(dtype)
    grad_out = to_torch(case.grad_out(dtype), dtype)
    got = forward_backward(torch_inputs(arrs, dtype, requires_grad=True), case, grad_out, fn=compiled)
    want = forward_backward(torch_inputs(arrs, dtype, requires_grad=True), case, grad_out)
    assert_results_close(got, want, dtype, f"torch.compile({backend}) vs eager")


def test_compile_module_in_model_inductor():
    """A DCNv2 block as models write it (offset and mask predicted by a
    conv), compiled with inductor around the op; float64, so that the plain
    conv's TF32 default plays no part."""
    if _inductor_problem():
        pytest.skip(_inductor_problem())
    torch._dynamo.reset()
    torch.manual_seed(0)
    conv = dcn_torch.DeformConv2d(8, 8, 3, padding=1, groups=2).to("cuda", torch.float64)
    off_conv = torch.nn.Conv2d(8, 3 * 2 * 9, 3, padding=1).to("cuda", torch.float64)
    params = [*conv.parameters(), *off_conv.parameters()]

    def model(x):
        o = off_conv(x)
        return conv(x, o[:, : 2 * 2 * 9], torch.sigmoid(o[:, 2 * 2 * 9:]))

    x = torch.randn(2, 8, 12, 11, device="cuda", dtype=torch.float64)
    results = []
    for fn in (torch.compile(model, backend="inductor", fullgraph=True), model):
        for p in params:
            p.grad = None
        y = fn(x)
        y.square().sum().backward()
        results.append((y.detach(), {f"param{i}": p.grad.clone() for i, p in enumerate(params)}))
    assert_results_close(results[0], results[1], "float64", "compiled model vs eager", factor=10.0)


# ---------------------------------------------------------------------------
# (i) batch chunking
# ---------------------------------------------------------------------------


@pytest.fixture
def restore_workspace_limit():
    limit = dcn_torch.get_workspace_limit()
    yield
    dcn_torch.set_workspace_limit(limit)


def _bytes_per_image(case: Case, dtype: str) -> int:
    Ho, Wo = case.out_size
    return case.C * case.K * Ho * Wo * TORCH_DTYPE[dtype].itemsize


@pytest.mark.parametrize("images_per_chunk", [1, 2], ids=["one_image", "two_images"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("case", [pytest.param(CASES_BY_NAME[n], id=n) for n in
                                  ("tv_odd_n33", "tv_odd_n3_noncontig", "large_tiled",
                                   "single_output_pixel")])
def test_batch_chunking(case, dtype, images_per_chunk, restore_workspace_limit):
    """A workspace of 1 byte runs one image per chunk; two images' columns
    give chunks of 2 with an uneven tail for odd batches (33, 3)."""
    arrs = finite_arrays(case, dtype)
    grad_out = case.grad_out(dtype)
    default = (CUDA.forward(arrs, case, dtype), CUDA.grads(arrs, case, dtype, grad_out))
    budget = 1 if images_per_chunk == 1 else images_per_chunk * _bytes_per_image(case, dtype)
    dcn_torch.set_workspace_limit(budget)
    chunked = (CUDA.forward(arrs, case, dtype), CUDA.grads(arrs, case, dtype, grad_out))
    assert_close(chunked[0], default[0], dtype, "chunked output vs default", factor=2.0)
    assert chunked[1].keys() == default[1].keys()
    for k in default[1]:
        assert_close(chunked[1][k], default[1][k], dtype, f"chunked grad[{k}] vs default", factor=2.0)
