"""The PyTorch frontend's ops: ``torch.ops.dcn.deform_conv2d`` / ``_backward``.

* ``torch.library.opcheck`` (schema, fake kernel, autograd registration,
  AOT dispatch) on both ops;
* ``gradcheck`` in float64 for all five differentiable inputs;
* agreement with the float64 numpy reference (``tests/reference.py``);
* ``torch.compile`` (eager / aot_eager / inductor backends, dynamic shapes);
* batch chunking (``set_workspace_limit``), thread counts, batch 0,
  ``needs_input_grad``, non-contiguous inputs, concurrent Python callers and
  the 16-bit dtypes.
"""

from __future__ import annotations

import functools
import os
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

import dcn_torch

try:
    from reference import deform_conv2d_ref, deform_conv2d_ref_grads, output_size
except ImportError:  # pragma: no cover - depends on pytest's import mode
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from reference import deform_conv2d_ref, deform_conv2d_ref_grads, output_size


OP = torch.ops.dcn.deform_conv2d.default
BWD = torch.ops.dcn.deform_conv2d_backward.default
NAMES = ("input", "offset", "weight", "mask", "bias")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def make_case(
    seed=0,
    N=2,
    C=4,
    O=3,
    H=6,
    W=5,
    kernel=(3, 3),
    groups=1,
    offset_groups=1,
    stride=(1, 1),
    padding=(1, 1),
    dilation=(1, 1),
    use_mask=True,
    use_bias=True,
    dtype=torch.float64,
    requires_grad=False,
):
    """Random inputs with every sample point away from integer positions.

    Bases are integers, so an offset with fractional part in [0.25, 0.75]
    keeps each sample point >= 0.25 from the bilinear kinks and from the
    forward's border early exit: finite differences are valid there.
    """
    g = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    K = kh * kw
    Ho, Wo = output_size(H, W, kh, kw, stride, padding, dilation)
    off_shape = (N, 2 * offset_groups * K, Ho, Wo)
    offset = (torch.randint(-2, 2, off_shape, generator=g).double()
              + 0.25 + 0.5 * torch.rand(off_shape, generator=g, dtype=torch.float64))
    t = dict(
        input=torch.randn(N, C, H, W, generator=g, dtype=torch.float64),
        offset=offset,
        weight=torch.randn(O, C // groups, kh, kw, generator=g, dtype=torch.float64),
        mask=(torch.rand(N, offset_groups * K, Ho, Wo, generator=g, dtype=torch.float64)
              if use_mask else None),
        bias=torch.randn(O, generator=g, dtype=torch.float64) if use_bias else None,
    )
    for k, v in t.items():
        if v is not None:
            t[k] = v.to(dtype).requires_grad_(requires_grad)
    t["stride"], t["padding"], t["dilation"] = tuple(stride), tuple(padding), tuple(dilation)
    return t


def call(c, **over):
    """dcn_torch.deform_conv2d on a case dict (entries overridable)."""
    c = {**c, **over}
    return dcn_torch.deform_conv2d(c["input"], c["offset"], c["weight"], c["bias"],
                                   stride=c["stride"], padding=c["padding"],
                                   dilation=c["dilation"], mask=c["mask"])


def op_args(c):
    """Positional arguments of torch.ops.dcn.deform_conv2d."""
    return (c["input"], c["weight"], c["offset"], c["mask"], c["bias"],
            list(c["stride"]), list(c["padding"]), list(c["dilation"]))


def leaves(c):
    return {k: c[k] for k in NAMES if c[k] is not None}


def fresh(c, requires_grad=True, names=NAMES):
    """Detached copies of the case's tensors (grad on for ``names``)."""
    out = dict(c)
    for k in NAMES:
        if c[k] is not None:
            out[k] = c[k].detach().clone().requires_grad_(requires_grad and k in names)
    return out


def out_and_grads(c, fn=None, grad_out=None, names=NAMES):
    """Forward output and the gradients of sum(out * grad_out)."""
    c = fresh(c, names=names)
    out = (fn or call)(c)
    if grad_out is None:
        grad_out = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * grad_out).sum().backward()
    grads = {k: c[k].grad for k in NAMES if c[k] is not None and c[k].requires_grad}
    return out.detach(), grads


def assert_same(a, b, exact=True, **tol):
    """Outputs/grad dicts equal: bitwise when exact, else assert_close(**tol)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k], exact, **tol)
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    if exact:
        assert torch.equal(a, b), f"max |diff| = {(a.double() - b.double()).abs().max()}"
    else:
        torch.testing.assert_close(a, b, **tol)


@pytest.fixture
def restore_settings():
    """Restore dcn's process-wide settings after a test that changes them."""
    limit = dcn_torch.get_workspace_limit()
    yield
    dcn_torch.set_workspace_limit(limit)
    dcn_torch.set_num_threads(0)


# Small configurations used throughout; all with non-integer sample points.
CASES = {
    "basic": dict(seed=1),
    "plain_no_mask_no_bias": dict(seed=2, use_mask=False, use_bias=False),
    "groups2_offset_groups2": dict(seed=3, C=4, O=4, groups=2, offset_groups=2),
    "offset_groups2_mask_only": dict(seed=4, C=4, O=2, offset_groups=2, use_bias=False),
    "groups2_bias_only": dict(seed=5, C=4, O=6, groups=2, use_mask=False),
    "stride_dilation_nonsquare": dict(seed=6, N=1, C=2, O=2, H=7, W=8, kernel=(2, 3),
                                      stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
    "depthwise_k1x2_stride2": dict(seed=7, N=2, C=3, O=3, H=5, W=6, kernel=(1, 2), groups=3,
                                   offset_groups=3, stride=(1, 2), padding=(0, 0)),
    # 8 channels per offset group: the CPU's channels-last path (pixel-major columns).
    "channels_last_path": dict(seed=8, C=16, O=5, offset_groups=2),
    # Weight groups of 8 or more channels: the channels-last path with columns
    # by weight group, a sample's channels in one run per weight group: two
    # runs on lane boundaries; an offset group across weight groups; runs of
    # 12 channels (the second starts off a lane boundary: scalar lanes).
    "grouped_channels_last": dict(seed=9, C=32, O=6, groups=2, offset_groups=1),
    "grouped_offset_groups_across": dict(seed=10, C=48, O=6, groups=3, offset_groups=2),
    "grouped_runs_of_12": dict(seed=11, C=24, O=4, groups=2, offset_groups=1),
}


# ---------------------------------------------------------------------------
# forward/backward vs the float64 numpy reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference_float64(name):
    c = make_case(**CASES[name])
    grad_out_like = call(c)
    go = torch.randn(grad_out_like.shape, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(9))
    out, grads = out_and_grads(c, grad_out=go)
    np_ = {k: (None if c[k] is None else c[k].numpy()) for k in NAMES}
    ref = deform_conv2d_ref(np_["input"], np_["weight"], np_["offset"], np_["mask"], np_["bias"],
                            c["stride"], c["padding"], c["dilation"])
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-10)
    rg = deform_conv2d_ref_grads(np_["input"], np_["weight"], np_["offset"], np_["mask"],
                                 np_["bias"], c["stride"], c["padding"], c["dilation"], go.numpy())
    assert set(grads) == {k for k in NAMES if c[k] is not None}
    for k, v in grads.items():
        np.testing.assert_allclose(v.numpy(), rg[k], rtol=1e-10, atol=1e-10, err_msg=k)


def test_float32_matches_reference():
    c = make_case(**CASES["groups2_offset_groups2"], dtype=torch.float32)
    out = call(c)
    assert out.dtype == torch.float32
    ref = deform_conv2d_ref(*(c[k].double().numpy() for k in ("input", "weight", "offset",
                                                              "mask", "bias")),
                            c["stride"], c["padding"], c["dilation"])
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=1e-5, atol=1e-5)


def test_functional_accepts_int_params_and_op_matches():
    c = make_case(seed=11, stride=(2, 2), padding=(1, 1), dilation=(1, 1))
    a = dcn_torch.deform_conv2d(c["input"], c["offset"], c["weight"], c["bias"], stride=2,
                                padding=1, dilation=1, mask=c["mask"])
    b = OP(*op_args(c))
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------
# torch.library.opcheck
# ---------------------------------------------------------------------------


OPCHECK_FWD = {
    "f32_mask_bias": dict(seed=20, dtype=torch.float32),
    "f64_mask_bias": dict(seed=21, dtype=torch.float64),
    "f32_no_mask_no_bias": dict(seed=22, dtype=torch.float32, use_mask=False, use_bias=False),
    "f64_mask_only": dict(seed=23, use_bias=False),
    "f64_bias_only": dict(seed=24, use_mask=False),
    "f32_groups2_offset_groups2": dict(seed=25, C=4, O=4, groups=2, offset_groups=2,
                                       dtype=torch.float32),
    "f64_groups2_offset_groups2_strided": dict(seed=26, C=4, O=6, groups=2, offset_groups=2,
                                               kernel=(2, 3), stride=(2, 1), dilation=(1, 2)),
}


@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("name", list(OPCHECK_FWD))
def test_opcheck_forward(name, requires_grad):
    c = make_case(**OPCHECK_FWD[name], requires_grad=requires_grad)
    torch.library.opcheck(OP, op_args(c))


OUTPUT_MASKS = [
    [True, True, True, True, True],
    [False, False, False, False, False],
    [True, False, False, False, False],
    [False, True, False, False, True],
    [False, False, True, False, False],
    [False, False, False, True, False],
    [False, False, True, True, False],
    [True, True, False, True, False],
]


OUTPUT_MASK_IDS = ["".join("1" if b else "0" for b in m) for m in OUTPUT_MASKS]
BWD_CASES = ["f32_mask_bias", "f64_mask_bias", "f32_no_mask_no_bias",
             "f64_groups2_offset_groups2_strided"]

def _bwd_args(name, output_mask):
    c = make_case(**OPCHECK_FWD[name])
    out = OP(*op_args(c))
    grad = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(3))
    return c, (grad,) + op_args(c) + (list(output_mask),)


@pytest.mark.parametrize("output_mask", OUTPUT_MASKS, ids=OUTPUT_MASK_IDS)
@pytest.mark.parametrize("name", BWD_CASES)
def test_opcheck_backward(name, output_mask):
    """Default test_utils (incl. test_schema: the outputs, empty ones included,
    must not alias each other)."""
    c, args = _bwd_args(name, output_mask)
    torch.library.opcheck(BWD, args)
    res = BWD(*args)
    ptrs = [r.untyped_storage().data_ptr() for r in res if r.numel() > 0]
    assert len(set(ptrs)) == len(ptrs)
    for i in range(5):
        for j in range(i + 1, 5):
            assert res[i] is not res[j]


@pytest.mark.parametrize("output_mask", OUTPUT_MASKS, ids=OUTPUT_MASK_IDS)
@pytest.mark.parametrize("name", BWD_CASES)
def test_opcheck_backward_except_schema(name, output_mask):
    """opcheck's other utils (incl. the static AOT dispatch), plus the
    shapes/dtypes of computed and skipped outputs."""
    c, args = _bwd_args(name, output_mask)
    torch.library.opcheck(BWD, args, test_utils=("test_autograd_registration",
                                                 "test_faketensor",
                                                 "test_aot_dispatch_static",
                                                 "test_aot_dispatch_dynamic"))
    res = BWD(*args)
    assert len(res) == 5
    present = [True, True, True, c["mask"] is not None, c["bias"] is not None]
    for want, p, r, k in zip(output_mask, present, res, ("input", "weight", "offset", "mask",
                                                          "bias")):
        if want and p:
            assert r.shape == c[k].shape and r.dtype == c[k].dtype, k
        else:
            assert r.numel() == 0, k
    # a computed gradient does not depend on which others were requested
    full = BWD(*args[:-1], [True] * 5)
    for want, p, r, f in zip(output_mask, present, res, full):
        if want and p:
            assert torch.equal(r, f)


def test_backward_op_matches_autograd():
    c = make_case(**CASES["groups2_offset_groups2"])
    go = torch.randn(call(c).shape, dtype=torch.float64)
    _, grads = out_and_grads(c, grad_out=go)
    gi, gw, go_, gm, gb = BWD(go, *op_args(c), [True] * 5)
    for k, v in zip(("input", "weight", "offset", "mask", "bias"), (gi, gw, go_, gm, gb)):
        assert torch.equal(v, grads[k]), k


@pytest.mark.parametrize("name", ["basic", "channels_last_path"])
def test_detached_path_of_older_torch_gives_the_same_results(name, monkeypatch):
    # torch without DLPack's C exchange API hands the binding tensors through
    # __dlpack__(), which refuses tensors that require grad: ops detaches
    # every tensor it passes to the core there (ops._MUST_DETACH). Forced on
    # here, with the binding refusing such tensors as that path would, the
    # results must not change by a bit.
    from dcn_torch import ops

    class RefusingBinding:
        def __getattr__(self, attr):
            fn = getattr(real, attr)

            def checked(*args):
                for a in args:
                    if isinstance(a, torch.Tensor) and a.requires_grad:
                        raise RuntimeError(f"_C.{attr} got a tensor that requires grad")
                return fn(*args)
            return checked

    real = ops._C
    case = {**CASES["basic"], "C": 16, "O": 4} if name == "channels_last_path" else CASES[name]
    c = make_case(**case, dtype=torch.float32, requires_grad=True)
    out_d, g_d = out_and_grads(c)
    monkeypatch.setattr(ops, "_MUST_DETACH", True)
    monkeypatch.setattr(ops, "_C", RefusingBinding())
    ops._GEOMETRY_CACHE.clear()
    out_c, g_c = out_and_grads(c)
    assert torch.equal(out_c, out_d)
    for k in g_d:
        assert torch.equal(g_c[k], g_d[k]), k


@pytest.mark.parametrize("name, layout", [
    ("channels_last_path", "pixel-major"),
    ("grouped_channels_last", "pixel-major by weight group"),
    ("grouped_runs_of_12", "pixel-major by weight group"),
    ("groups2_offset_groups2", "channel-major"),  # 2 channels per group
], ids=["dense", "grouped", "grouped_runs_of_12", "few_channels"])
def test_cpu_column_layout(name, layout, monkeypatch):
    """Which column layout the CPU forward and backward give the kernels:
    pixel-major (channels-last sampling) when offset groups and weight
    groups have 8+ channels, by weight group with groups; channel-major
    otherwise. A layout falling back silently would only show as time."""
    from dcn_torch import ops
    seen = []

    class RecordingBinding:
        def __getattr__(self, attr):
            fn = getattr(real, attr)

            def recorded(*args):
                if attr in ("im2col", "col2im", "coord_grad", "col2im_and_coord_grad"):
                    cols = args[3] if attr == "im2col" else args[0]
                    pixel_major = args[-1]
                    seen.append((attr, cols.dim(), pixel_major))
                return fn(*args)
            return recorded

    real = ops._C
    c = make_case(**CASES[name], dtype=torch.float32, requires_grad=True)
    monkeypatch.setattr(ops, "_C", RecordingBinding())
    out_and_grads(c)
    assert {a for a, _, _ in seen} >= {"im2col", "col2im_and_coord_grad"}, seen
    want = {"pixel-major": (4, True), "pixel-major by weight group": (5, True),
            "channel-major": (4, False)}[layout]
    assert all((d, pm) == want for _, d, pm in seen), seen


# ---------------------------------------------------------------------------
# gradcheck (float64, all five inputs)
# ---------------------------------------------------------------------------


# gradcheck costs one forward per input element: smaller versions of CASES
# (batch 2 kept where it matters: grads sum over the batch for weight/bias).
GRADCHECK_CASES = {
    "basic": dict(seed=1, N=2, C=2, O=2, H=4, W=3),
    "plain_no_mask_no_bias": dict(seed=2, N=1, C=2, O=3, H=4, W=4, use_mask=False,
                                  use_bias=False),
    "groups2_offset_groups2": dict(seed=3, N=1, C=4, O=4, H=4, W=3, groups=2, offset_groups=2),
    "offset_groups2_mask_only": dict(seed=4, N=1, C=4, O=2, H=3, W=4, offset_groups=2,
                                     use_bias=False),
    "groups2_bias_only": dict(seed=5, N=2, C=4, O=4, H=3, W=3, groups=2, use_mask=False),
    "stride_dilation_nonsquare": CASES["stride_dilation_nonsquare"],
    "depthwise_k1x2_stride2": CASES["depthwise_k1x2_stride2"],
    # 8 channels per offset group: the CPU's channels-last path.
    "channels_last_path": dict(seed=8, N=1, C=16, O=2, H=4, W=3, offset_groups=2),
    # ... and with weight groups (columns by weight group).
    "grouped_channels_last": dict(seed=9, N=1, C=16, O=4, H=4, W=3, groups=2, offset_groups=1),
}


@pytest.mark.parametrize("name", list(GRADCHECK_CASES))
def test_gradcheck(name):
    c = make_case(**GRADCHECK_CASES[name], requires_grad=True)
    present = [k for k in NAMES if c[k] is not None]

    def fn(*ts):
        return call(c, **dict(zip(present, ts)))

    assert torch.autograd.gradcheck(fn, tuple(c[k] for k in present), eps=1e-6, atol=1e-5,
                                    rtol=1e-4)


def test_zero_mask_gives_bias_only_and_zero_grads():
    """mask == 0 everywhere: output is bias only, offset grad is exactly 0."""
    c = make_case(seed=30)
    c["mask"] = torch.zeros_like(c["mask"])
    out, grads = out_and_grads(c)
    assert torch.equal(out, c["bias"].view(1, -1, 1, 1).expand_as(out))
    assert torch.equal(grads["offset"], torch.zeros_like(c["offset"]))
    assert torch.equal(grads["input"], torch.zeros_like(c["input"]))
    assert torch.equal(grads["weight"], torch.zeros_like(c["weight"]))


# ---------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------


def _fn(input, offset, weight, bias, mask, stride, padding, dilation):
    return dcn_torch.deform_conv2d(input, offset, weight, bias, stride=stride, padding=padding,
                                   dilation=dilation, mask=mask)


def _compiled_call(backend, dynamic=None):
    torch._dynamo.reset()
    return torch.compile(_fn, backend=backend, fullgraph=True, dynamic=dynamic)


def _via(fn):
    return lambda c: fn(c["input"], c["offset"], c["weight"], c["bias"], c["mask"], c["stride"],
                        c["padding"], c["dilation"])


@functools.lru_cache(maxsize=None)
def _inductor_problem():
    """None when the default inductor backend compiles here (it needs a C++
    compiler for CPU), else the reason it does not."""
    try:
        torch._dynamo.reset()
        f = torch.compile(lambda x: x.sin() + 1, backend="inductor", fullgraph=True)
        x = torch.randn(8)
        torch.testing.assert_close(f(x), x.sin() + 1)
    except Exception as e:  # pragma: no cover - depends on the machine
        return f"inductor unavailable on this machine: {type(e).__name__}: {str(e)[:200]}"
    finally:
        torch._dynamo.reset()
    return None


BACKENDS = ["eager", "aot_eager", "inductor"]


@pytest.fixture(autouse=True)
def _skip_without_inductor(request):
    backend = getattr(request.node, "callspec", None)
    backend = backend.params.get("backend") if backend else None
    if backend == "inductor" and _inductor_problem():
        pytest.skip(_inductor_problem())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["basic", "groups2_offset_groups2", "plain_no_mask_no_bias",
                                  "stride_dilation_nonsquare"])
def test_compile_forward(backend, name):
    c = make_case(**CASES[name], dtype=torch.float32)
    f = _compiled_call(backend)
    with torch.no_grad():
        assert_same(_via(f)(c), call(c), exact=False, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["basic", "groups2_offset_groups2", "plain_no_mask_no_bias"])
def test_compile_forward_backward(backend, name):
    c = make_case(**CASES[name])
    f = _compiled_call(backend)
    out_c, g_c = out_and_grads(c, fn=_via(f))
    out_e, g_e = out_and_grads(c)
    assert_same(out_c, out_e, exact=False, rtol=1e-12, atol=1e-12)
    assert_same(g_c, g_e, exact=False, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_dynamic_two_sizes(backend):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    f = torch.compile(_fn, backend=counter, fullgraph=True, dynamic=True)
    for size in [dict(N=2, H=6, W=5), dict(N=3, H=9, W=11)]:
        c = make_case(seed=40, **size)
        out_c, g_c = out_and_grads(c, fn=_via(f))
        out_e, g_e = out_and_grads(c)
        assert out_c.shape == out_e.shape
        assert_same(out_c, out_e, exact=False, rtol=1e-12, atol=1e-12)
        assert_same(g_c, g_e, exact=False, rtol=1e-12, atol=1e-12)
    # one graph serves both sizes: the fake kernel is symbolic-shape clean
    assert counter.frame_count == 1


def test_compile_module_in_model():
    torch._dynamo.reset()
    torch.manual_seed(0)
    conv = dcn_torch.DeformConv2d(4, 6, 3, padding=1, groups=2).double()
    off_conv = torch.nn.Conv2d(4, 3 * 18, 3, padding=1).double()

    def model(x):
        o = off_conv(x)
        off, m = o[:, :36], torch.sigmoid(o[:, 36:])
        return conv(x, off, m)

    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    cm = torch.compile(model, backend="aot_eager", fullgraph=True)
    y_c = cm(x)
    y_c.square().sum().backward()
    gc = [p.grad.clone() for p in (*conv.parameters(), *off_conv.parameters())]
    for p in (*conv.parameters(), *off_conv.parameters()):
        p.grad = None
    y_e = model(x)
    y_e.square().sum().backward()
    ge = [p.grad for p in (*conv.parameters(), *off_conv.parameters())]
    torch.testing.assert_close(y_c, y_e, rtol=1e-12, atol=1e-12)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# batch chunking
# ---------------------------------------------------------------------------


def _bytes_per_image(c):
    N, C, H, W = c["input"].shape
    kh, kw = c["weight"].shape[2:]
    Ho, Wo = c["offset"].shape[2:]
    return C * kh * kw * Ho * Wo * c["input"].element_size()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["basic", "groups2_offset_groups2", "plain_no_mask_no_bias"])
def test_chunking_matches_default(name, dtype, restore_settings):
    c = make_case(**{**CASES[name], "N": 7}, dtype=dtype)
    assert dcn_torch.get_workspace_limit() >= 7 * _bytes_per_image(c)
    out_d, g_d = out_and_grads(c)
    bpi = _bytes_per_image(c)
    for limit in (1, bpi, 3 * bpi + bpi // 2, 6 * bpi):  # chunks of 1, 1, 3 (3+3+1), 6 (6+1)
        dcn_torch.set_workspace_limit(limit)
        assert dcn_torch.get_workspace_limit() == limit
        out_c, g_c = out_and_grads(c)
        assert_same(out_c, out_d)
        for k in g_d:
            if k == "weight":
                # The weight gradient sums per-image products over the batch;
                # chunks change the summation order (last-bit differences).
                tol = 1e-12 if dtype == torch.float64 else 1e-5
                assert_same(g_c[k], g_d[k], exact=False, rtol=tol, atol=tol)
            else:
                assert_same(g_c[k], g_d[k]), k


def test_default_workspace_limit(restore_settings):
    assert dcn_torch.get_workspace_limit() == dcn_torch.DEFAULT_WORKSPACE_BYTES or \
        os.environ.get("DCN_WORKSPACE_MB")
    assert dcn_torch.build_info()["workspace_bytes"] == dcn_torch.get_workspace_limit()


def test_cpu_chunk_keeps_an_image_per_thread(restore_settings):
    """The CPU backward's chunk: near the cache target, but with at least
    ``min_images`` images (one per thread for the channels-last col2im),
    and never past the workspace budget."""
    from dcn_torch import _config
    per_image = _config.CPU_CHUNK_TARGET_BYTES  # the target alone allows one image
    assert _config.chunk_size(8, per_image) == 1
    assert _config.chunk_size(8, per_image, min_images=2) == 2
    assert _config.chunk_size(1, per_image, min_images=2) == 1  # never more than the batch
    dcn_torch.set_workspace_limit(per_image)  # the budget holds one image: it wins
    assert _config.chunk_size(8, per_image, min_images=2) == 1
    dcn_torch.set_workspace_limit(1)  # below one image: still one image
    assert _config.chunk_size(8, per_image, min_images=2) == 1


# ---------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["basic", "groups2_offset_groups2", "stride_dilation_nonsquare",
                                  "channels_last_path", "grouped_offset_groups_across"])
def test_threads_bitwise_identical(name, dtype, restore_settings):
    # big enough that every kernel has many tasks to split
    c = make_case(**{**CASES[name], "N": 3, "H": 23, "W": 29}, dtype=dtype)
    results = []
    for n in (1, 2, 4, 1, 4):
        dcn_torch.set_num_threads(n)
        assert dcn_torch.get_num_threads() == n
        assert dcn_torch.build_info()["cpu_threads"] == n
        results.append(out_and_grads(c))
    for out, grads in results[1:]:
        assert_same(out, results[0][0])
        assert_same(grads, results[0][1])
    dcn_torch.set_num_threads(0)
    assert dcn_torch.get_num_threads() == torch.get_num_threads()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pixel_major", [False, True])
@pytest.mark.parametrize("N", [1, 3])
def test_fused_col2im_and_coord_grad_equals_the_two_calls(N, pixel_major, dtype, restore_settings):
    """The CPU backward's fused call (one parallel region) gives the bits of
    col2im and coord_grad called one after the other, columns included."""
    from dcn_torch import _C
    g = torch.Generator().manual_seed(31)
    C, H, W, K = 16, 9, 11, 9
    fmt = torch.channels_last if pixel_major else torch.contiguous_format
    x = torch.randn(N, C, H, W, generator=g).to(dtype).contiguous(memory_format=fmt)
    off = (2 * torch.randn(N, 2 * 2 * K, H, W, generator=g)).to(dtype)
    m = torch.rand(N, 2 * K, H, W, generator=g).to(dtype)
    shape = (N, H, W, K * C) if pixel_major else (N, C * K, H, W)
    gcols = torch.randn(shape, generator=g).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    args = ((3, 3), (1, 1), (1, 1), (1, 1))
    for threads in (1, 2, 3):
        dcn_torch.set_num_threads(threads)
        dcn_torch._config.apply_num_threads()  # what each op call does first
        outs = []
        for fused in (False, True):
            gi = torch.full(x.shape, float("nan"), dtype=acc).contiguous(memory_format=fmt)
            go, gm = torch.full_like(off, float("nan")), torch.full_like(m, float("nan"))
            cols = torch.full_like(gcols, float("nan"))
            if fused:
                _C.col2im_and_coord_grad(gcols, x, off, m, gi, go, gm, cols, *args, pixel_major)
            else:
                _C.col2im(gcols, off, m, gi, *args, 0, None, pixel_major)
                _C.coord_grad(gcols, x, off, m, go, gm, cols, *args, 0, pixel_major)
            outs.append((gi, go, gm, cols))
        if pixel_major:
            # grad_input NCHW with pixel-major columns: col2im scatters into a
            # channels-last scratch and writes NCHW; the same bits.
            gi = torch.full(x.shape, float("nan"), dtype=acc)
            _C.col2im(gcols, off, m, gi, *args, 0, None, True)
            assert torch.equal(gi, outs[0][0])
            gi.fill_(float("nan"))
            go, gm = torch.full_like(off, float("nan")), torch.full_like(m, float("nan"))
            cols = torch.full_like(gcols, float("nan"))
            _C.col2im_and_coord_grad(gcols, x, off, m, gi, go, gm, cols, *args, True)
            outs.append((gi, go, gm, cols))
        for other in outs[1:]:
            for a, b in zip(outs[0], other):
                assert not a.isnan().any()
                assert torch.equal(a, b)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
def test_col2im_scratch_out_of_memory_is_a_memory_error(tmp_path):
    """col2im's per-task scratch (pixel-major columns, NCHW grad_input) is
    allocated on a worker thread; when that fails the call raises
    MemoryError on the caller's thread instead of terminating the process."""
    import subprocess
    code = textwrap.dedent("""
        import resource, torch, dcn_torch
        from dcn_torch import _C
        C, H, W, K = 128, 256, 256, 9
        gcols = torch.zeros(1, 8, 8, K * C)  # tiny columns: only the scratch is big
        off, m = torch.zeros(1, 18, 8, 8), torch.ones(1, 9, 8, 8)
        gi = torch.empty(1, C, H, W)  # 8x8 output at stride 32
        args = ((3, 3), (32, 32), (1, 1), (1, 1))
        _C.col2im(gcols, off, m, gi, *args, 0, None, True)  # threads and code in place
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (used + (8 << 20), hard))  # scratch: 32 MiB
        try:
            _C.col2im(gcols, off, m, gi, *args, 0, None, True)
            print("no error")
        except MemoryError:
            print("MemoryError")
    """)
    # Run outside the checkout, so that the installed package is imported.
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "MemoryError", r.stdout + r.stderr[-2000:]


def test_fused_col2im_and_coord_grad_checks_its_arguments():
    from dcn_torch import _C
    x = torch.randn(1, 4, 5, 5)
    off, m = torch.randn(1, 18, 5, 5), torch.rand(1, 9, 5, 5)
    gcols = torch.randn(1, 36, 5, 5)
    args = ((3, 3), (1, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="grad_offset"):
        _C.col2im_and_coord_grad(gcols, x, off, m, torch.empty(1, 4, 5, 5),
                                 torch.empty(1, 17, 5, 5), torch.empty(1, 9, 5, 5), None, *args)
    with pytest.raises(ValueError, match="grad_input"):
        _C.col2im_and_coord_grad(gcols, x, off, m, torch.empty(1, 4, 5, 5, dtype=torch.float64),
                                 torch.empty(1, 18, 5, 5), torch.empty(1, 9, 5, 5), None, *args)


def test_two_runs_bitwise_identical():
    c = make_case(**{**CASES["groups2_offset_groups2"], "N": 4, "H": 17, "W": 19},
                  dtype=torch.float32)
    a = out_and_grads(c)
    b = out_and_grads(c)
    assert_same(a[0], b[0])
    assert_same(a[1], b[1])


# ---------------------------------------------------------------------------
# batch 0
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("use_mask,use_bias", [(True, True), (False, False)])
def test_batch_zero(use_mask, use_bias):
    c = make_case(seed=50, N=0, C=4, O=6, H=6, W=5, groups=2, offset_groups=2,
                  use_mask=use_mask, use_bias=use_bias)
    out = call(c)
    assert out.shape == (0, 6, 6, 5)
    out, grads = out_and_grads(c)
    assert grads["input"].shape == c["input"].shape == (0, 4, 6, 5)
    assert grads["offset"].shape == c["offset"].shape
    assert torch.equal(grads["weight"], torch.zeros_like(c["weight"]))
    if use_mask:
        assert grads["mask"].shape == c["mask"].shape and grads["mask"].numel() == 0
    if use_bias:
        assert torch.equal(grads["bias"], torch.zeros_like(c["bias"]))
    res = BWD(torch.zeros(out.shape, dtype=out.dtype), *op_args(c), [True] * 5)
    assert res[0].shape == c["input"].shape and res[2].shape == c["offset"].shape
    assert torch.equal(res[1], torch.zeros_like(c["weight"]))


def test_batch_zero_compiled():
    c = make_case(seed=51, N=0)
    f = _compiled_call("aot_eager")
    out, grads = out_and_grads(c, fn=_via(f))
    assert out.shape == (0, 3, 6, 5)
    assert torch.equal(grads["weight"], torch.zeros_like(c["weight"]))


# ---------------------------------------------------------------------------
# needs_input_grad
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("only", NAMES)
def test_single_input_grad(only):
    c = make_case(**CASES["groups2_offset_groups2"])
    _, full = out_and_grads(c)
    _, part = out_and_grads(c, names=(only,))
    assert set(part) == {only}
    # one requested gradient is the same computation as in the full backward
    assert torch.equal(part[only], full[only])


def test_only_offset_grad_float32_no_mask():
    c = make_case(**CASES["plain_no_mask_no_bias"], dtype=torch.float32)
    _, full = out_and_grads(c)
    _, part = out_and_grads(c, names=("offset",))
    assert set(part) == {"offset"}
    assert torch.equal(part["offset"], full["offset"])


def test_no_grad_requested_forward_only():
    c = make_case(seed=60)
    out = call(fresh(c, requires_grad=False))
    assert not out.requires_grad


# ---------------------------------------------------------------------------
# non-contiguous inputs
# ---------------------------------------------------------------------------


def _noncontig_cases():
    """(name, case, views): views map a leaf name to a function leaf -> op input.

    The leaves are the case's tensors; ``views[k](leaf)`` is a non-contiguous
    tensor with the leaf's values (and the shape the op expects).
    """
    base = make_case(seed=70, N=3, C=4, O=4, H=8, W=7, groups=2, offset_groups=2)
    N, C, H, W = base["input"].shape
    out = []

    # channels_last input and mask
    out.append(("channels_last", base, {
        "input": lambda t: t.contiguous(memory_format=torch.channels_last),
        "mask": lambda t: t.contiguous(memory_format=torch.channels_last),
        "offset": lambda t: t.contiguous(memory_format=torch.channels_last),
    }))

    # transposed views: leaf stored with H/W swapped, op gets .transpose(2, 3)
    tcase = dict(base)
    for k in ("input", "offset", "mask", "weight"):
        tcase[k] = base[k].transpose(2, 3).contiguous()
    out.append(("transposed", tcase, {k: (lambda t: t.transpose(2, 3))
                                      for k in ("input", "offset", "mask", "weight")}))

    # sliced with steps: leaf is bigger, op gets every other element
    scase = dict(base)
    scase["input"] = torch.randn(N, 2 * C, 2 * H, 3 * W, dtype=torch.float64)
    scase["offset"] = torch.randn(N, base["offset"].shape[1] * 2, *base["offset"].shape[2:],
                                  dtype=torch.float64).round() + 0.5
    scase["weight"] = torch.randn(base["weight"].shape[0] * 2, *base["weight"].shape[1:],
                                  dtype=torch.float64)
    scase["bias"] = torch.randn(2 * base["bias"].shape[0], dtype=torch.float64)
    out.append(("sliced_steps", scase, {
        "input": lambda t: t[:, ::2, ::2, 1::3],
        "offset": lambda t: t[:, 1::2],
        "weight": lambda t: t[::2],
        "bias": lambda t: t[1::2],
    }))

    # expanded batch: one offset/mask shared by the whole batch (stride 0)
    ecase = dict(base)
    ecase["offset"] = base["offset"][:1].clone()
    ecase["mask"] = base["mask"][:1].clone()
    out.append(("expanded_batch", ecase, {
        "offset": lambda t: t.expand(N, -1, -1, -1),
        "mask": lambda t: t.expand(N, -1, -1, -1),
    }))
    return out


NONCONTIG = _noncontig_cases()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,case,views", NONCONTIG, ids=[n for n, _, _ in NONCONTIG])
def test_noncontiguous_inputs(name, case, views, dtype):
    case = {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in case.items()}

    def run(contiguous):
        def fn(c):
            c = dict(c)
            for k, view in views.items():
                v = view(c[k])
                if k in ("input", "offset", "mask", "weight"):
                    assert not v.is_contiguous(), (name, k)
                c[k] = v.contiguous() if contiguous else v
            return call(c)
        return fn

    # non-contiguous upstream gradient too (a transposed, then viewed tensor)
    shape = run(True)(case).shape
    go = torch.randn(shape[0], shape[1], shape[3], shape[2], dtype=dtype).transpose(2, 3)
    out_n, g_n = out_and_grads(case, fn=run(False), grad_out=go)
    out_c, g_c = out_and_grads(case, fn=run(True), grad_out=go)
    assert_same(out_n, out_c)
    assert_same(g_n, g_c)


def test_noncontiguous_upstream_grad_expanded():
    c = make_case(seed=71)
    out = call(c)
    go = torch.randn(1, out.shape[1], 1, 1, dtype=out.dtype).expand(out.shape)
    _, g1 = out_and_grads(c, grad_out=go)
    _, g2 = out_and_grads(c, grad_out=go.contiguous())
    assert_same(g1, g2)


# ---------------------------------------------------------------------------
# concurrent Python callers
# ---------------------------------------------------------------------------


def test_python_threads_concurrent_calls():
    cases = [make_case(seed=80 + i, N=2 + i % 2, C=4, O=4, H=15 + i, W=13, groups=2,
                       offset_groups=2, dtype=torch.float32 if i % 2 else torch.float64)
             for i in range(4)]
    serial = [out_and_grads(c) for c in cases]
    results = [[None] * 6 for _ in cases]
    errors = []
    barrier = threading.Barrier(len(cases))

    def worker(i):
        try:
            barrier.wait()
            for r in range(6):
                results[i][r] = out_and_grads(cases[i])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "deadlock: a caller thread did not finish"
    assert not errors, errors
    for i, c in enumerate(cases):
        for out, grads in results[i]:
            assert_same(out, serial[i][0])
            assert_same(grads, serial[i][1])


# ---------------------------------------------------------------------------
# float16 / bfloat16
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["basic", "groups2_offset_groups2", "plain_no_mask_no_bias"])
def test_half_precision(name, dtype):
    c64 = make_case(**CASES[name])
    ch = {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in c64.items()}
    # float32 result on the same (rounded) inputs
    c32 = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in ch.items()}
    out_h = call(ch)
    assert out_h.dtype == dtype and out_h.shape == call(c32).shape
    ref = call(c32)
    tol = 2e-2 if dtype == torch.float16 else 8e-2
    scale = ref.abs().max().item()
    torch.testing.assert_close(out_h.float(), ref, rtol=tol, atol=tol * scale)

    out_h, g_h = out_and_grads(ch)
    _, g_32 = out_and_grads(c32)
    assert set(g_h) == {k for k in NAMES if ch[k] is not None}
    for k, g in g_h.items():
        assert g.dtype == dtype and g.shape == ch[k].shape, k
        assert torch.isfinite(g).all(), k
        gs = g_32[k].abs().max().item()
        torch.testing.assert_close(g.float(), g_32[k], rtol=tol, atol=tol * max(gs, 1e-3),
                                   msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_backward_op_dtypes(dtype):
    c = make_case(seed=90, dtype=dtype)
    out = OP(*op_args(c))
    res = BWD(torch.ones_like(out), *op_args(c), [True] * 5)
    for r, k in zip(res, ("input", "weight", "offset", "mask", "bias")):
        assert r.dtype == dtype and r.shape == c[k].shape, k


# ---------------------------------------------------------------------------
# inference mode / double backward
# ---------------------------------------------------------------------------


def test_inference_mode_and_no_grad():
    c = make_case(seed=95, requires_grad=True)
    ref = call(c).detach()
    with torch.no_grad():
        a = call(c)
    with torch.inference_mode():
        b = call(c)
    assert not a.requires_grad and not b.requires_grad
    assert torch.equal(a, ref) and torch.equal(b, ref)


def test_double_backward_refused():
    """Like torchvision, double backward raises instead of silently treating
    the backward as a constant (which once gave all-zero second derivatives)."""
    c = make_case(seed=96, N=1, C=2, O=2, H=5, W=5, requires_grad=True)
    out = call(c)
    gx, gw = torch.autograd.grad(out.square().sum(), (c["input"], c["weight"]),
                                 create_graph=True)
    with pytest.raises((NotImplementedError, RuntimeError), match="double backward"):
        (gx.sum() + gw.sum()).backward()


def test_create_graph_first_order_still_works():
    """create_graph=True is fine as long as nobody differentiates dcn twice."""
    c = make_case(seed=97, requires_grad=True)
    g1 = torch.autograd.grad(call(c).sum(), c["offset"], create_graph=True)[0]
    g2 = torch.autograd.grad(call(c).sum(), c["offset"])[0]
    assert torch.equal(g1.detach(), g2)


# ---------------------------------------------------------------------------
# samples outside the image, non-finite offsets, cached workspaces
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_far_offsets_bias_only_and_exact_zero_grads(dtype):
    """Every sample outside the image: output is the bias, and the input /
    offset / mask grads are exactly zero (the kernels must write every element
    of their freshly allocated, uninitialised gradients)."""
    c = make_case(seed=100, N=3, C=4, O=4, H=7, W=6, groups=2, offset_groups=2, dtype=dtype)
    # dirty the allocator with non-zero garbage of the same sizes first
    for _ in range(3):
        out_and_grads(make_case(seed=101, N=3, C=4, O=4, H=7, W=6, groups=2, offset_groups=2,
                                dtype=dtype))
    sign = torch.where(torch.rand(c["offset"].shape) < 0.5, -1.0, 1.0).to(dtype)
    c["offset"] = sign * 1000.5
    out, grads = out_and_grads(c)
    assert torch.equal(out, c["bias"].view(1, -1, 1, 1).expand_as(out))
    for k in ("input", "offset", "mask", "weight"):
        assert torch.equal(grads[k], torch.zeros_like(grads[k])), k


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e30, 2.0 ** 63])
def test_non_finite_and_huge_offsets_do_not_crash(value):
    c = make_case(seed=102, N=2, C=2, O=2, H=6, W=6)
    off = c["offset"].clone()
    off[0, 3, 1, 2] = value
    off[1, ::2] = value
    c["offset"] = off
    out, grads = out_and_grads(c)
    assert out.shape == (2, 2, 6, 6)
    assert grads["offset"].shape == off.shape
    if value == value:  # not NaN: those samples are outside the image, read as 0
        assert torch.isfinite(out).all()
        for g in grads.values():
            assert torch.isfinite(g).all()


def test_cached_workspace_reuse_across_shapes_and_dtypes(restore_settings):
    """Interleaving problems of different sizes/dtypes (reusing cached column
    buffers) gives exactly what a fresh process-state computation gives."""
    specs = [dict(seed=110, N=4, H=12, W=11), dict(seed=111, N=1, H=5, W=5),
             dict(seed=112, N=2, C=4, O=4, groups=2, offset_groups=2, H=9, W=7),
             dict(seed=113, N=3, H=6, W=8, kernel=(2, 3))]
    cases = [make_case(**s, dtype=dt) for s in specs for dt in (torch.float32, torch.float64)]
    fresh_results = []
    for c in cases:
        dcn_torch.empty_cache()
        fresh_results.append(out_and_grads(c))
    for _ in range(2):
        for c, (out, grads) in zip(cases[::-1], fresh_results[::-1]):
            o, g = out_and_grads(c)
            assert_same(o, out)
            assert_same(g, grads)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "expanded"])
def test_kernel_arrays_read_alike_through_both_dlpack_paths(layout):
    """The binding reads torch tensors through DLPack's C exchange API
    (bindings/torch/tensor_view.h) and any other array through __dlpack__
    (nb::ndarray): numpy views of the same memory give the same columns."""
    from dcn_torch import _C
    g = torch.Generator().manual_seed(7)
    N, C, H, W, K = 2, 8, 6, 7, 9
    base = torch.randn(N, C, 2 * H, W, generator=g)
    x = {"contiguous": base[:, :, :H].contiguous(),
         "channels_last": base[:, :, :H].contiguous(memory_format=torch.channels_last),
         "sliced": base[:, :, ::2],
         "expanded": base[:1, :, :H].expand(N, C, H, W)}[layout]
    off = 2 * torch.randn(N, 2 * K, H, W, generator=g)
    m = torch.rand(N, K, H, W, generator=g)
    args = ((3, 3), (1, 1), (1, 1), (1, 1))
    cols_t = torch.full((N, C * K, H, W), float("nan"))
    _C.im2col(x, off, m, cols_t, *args)
    # numpy has no C exchange API: its arrays take the nb::ndarray path.
    xn = x.numpy()
    assert xn.strides == tuple(4 * s for s in x.stride())
    cols_n = np.full((N, C * K, H, W), np.nan, dtype=np.float32)
    _C.im2col(xn, off.numpy(), m.numpy(), cols_n, *args)
    assert torch.equal(cols_t, torch.from_numpy(cols_n))
    expected = dcn_torch.deform_conv2d(x, off, torch.eye(C * K).view(C * K, C, 3, 3),
                                       padding=1, mask=m)
    assert torch.allclose(expected.view(N, C * K, H, W), cols_t, atol=1e-5)
    with pytest.raises(TypeError):
        _C.im2col([1.0], off, m, cols_t, *args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 64, 32, 32), (2, 13, 7, 9), (3, 8, 1, 5), (1, 24, 5, 17)])
def test_to_channels_last_copies_every_layout(shape, dtype):
    """The core's channels-last copy (8x8 register tiles plus ragged edges,
    or element by element for other strides) equals torch's, bit for bit."""
    from dcn_torch import _C
    N, C, H, W = shape
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, C, H, 2 * W, generator=g).to(dtype)
    views = {"contiguous": x[..., :W].contiguous(), "strided x": x[..., ::2],
             "transposed planes": x[..., :W].transpose(2, 3).contiguous().transpose(2, 3),
             "channels_last": x[..., :W].contiguous(memory_format=torch.channels_last)}
    for name, v in views.items():
        dst = torch.full((N, H, W, C), float("nan"), dtype=dtype).permute(0, 3, 1, 2)
        _C.to_channels_last(v, dst)
        assert torch.equal(dst, v), name
    with pytest.raises(ValueError, match="dst"):
        _C.to_channels_last(views["contiguous"], torch.empty(N, C, H, W, dtype=dtype))
    with pytest.raises(ValueError, match="src"):
        _C.to_channels_last(views["contiguous"].int(),
                            torch.empty(N, H, W, C, dtype=torch.int32).permute(0, 3, 1, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 64, 32, 32), (2, 13, 7, 9), (3, 8, 1, 5), (1, 24, 5, 17)])
def test_from_channels_last_with_and_without_bias(shape, dtype):
    """The forward's GEMM result (N, H, W, O) into NCHW by the core: a copy,
    plus the bias rounded once as torch's add would."""
    from dcn_torch import _C
    N, C, H, W = shape
    g = torch.Generator().manual_seed(5)
    src = torch.randn(N, H, W, C, generator=g).to(dtype)
    bias = torch.randn(C, generator=g).to(dtype)
    for b in (None, bias):
        dst = torch.full((N, C, H, W), float("nan"), dtype=dtype)
        _C.from_channels_last(src, b, dst)
        want = src.permute(0, 3, 1, 2) if b is None else src.permute(0, 3, 1, 2) + b.view(1, C, 1, 1)
        assert torch.equal(dst, want)
    with pytest.raises(ValueError, match="bias"):
        _C.from_channels_last(src, bias[:-1], dst)
    with pytest.raises(ValueError, match="src"):
        _C.from_channels_last(src.permute(0, 3, 1, 2), None, dst)
