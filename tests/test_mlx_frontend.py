"""dcn_mlx beyond the conformance table: MLX transformations (compile,
shapeless compile, grad through a model, vmap, jvp), the layer, the torch
weight port, the errors, the primitive's strided paths, the determinism
switch, and the GPU (Metal) path against the CPU on the conformance cases.

Skipped as a whole when mlx or dcn_mlx is not installed. The GPU tests run
where MLX has Metal (Apple silicon) and are reported as skipped elsewhere;
everything else runs on the CPU (tests/conftest.py pins MLX's default
device there).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx not installed")
dcn_mlx = pytest.importorskip("dcn_mlx", reason="dcn_mlx (built with MLX) not installed")
nn = pytest.importorskip("mlx.nn")
optim = pytest.importorskip("mlx.optimizers")

from dcn_mlx import _C  # noqa: E402


def _inputs(N=2, H=6, W=7, C=4, O=6, k=(3, 3), G=1, groups=1, seed=0, dtype=None,
            stride=1, padding=1, dilation=1):
    dtype = dtype or mx.float32
    rng = np.random.default_rng(seed)
    kh, kw = k
    Ho = (H + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    Wo = (W + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    K = kh * kw

    def arr(*shape, scale=1.0, uniform=False):
        a = rng.uniform(0, 1, shape) if uniform else scale * rng.standard_normal(shape)
        return mx.array(a.astype(np.float32)).astype(dtype)

    return dict(
        input=arr(N, H, W, C),
        offset=arr(N, Ho, Wo, 2 * G * K, scale=1.5),
        weight=arr(O, kh, kw, C // groups, scale=0.3),
        bias=arr(O),
        mask=arr(N, Ho, Wo, G * K, uniform=True),
    )


def _call(a, **kw):
    return dcn_mlx.deform_conv2d(a["input"], a["offset"], a["weight"], a["bias"],
                                 mask=a["mask"], **kw)


def _max_diff(a, b) -> float:
    return float(mx.max(mx.abs(a.astype(mx.float32) - b.astype(mx.float32))))


# ---------------------------------------------------------------------------
# mx.compile
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("groups,G", [(1, 1), (2, 2), (4, 1)])
def test_compile_matches_eager(groups, G):
    a = _inputs(C=4, O=8, G=G, groups=groups)

    def f(x, off, w, b, m):
        return dcn_mlx.deform_conv2d(x, off, w, b, padding=1, mask=m)

    args = (a["input"], a["offset"], a["weight"], a["bias"], a["mask"])
    assert _max_diff(mx.compile(f)(*args), f(*args)) == 0.0


@pytest.mark.parametrize("groups,G", [(1, 1), (2, 2)])
def test_compile_shapeless_second_shape(groups, G):
    """One shapeless trace serves a second input with another N, H and W
    (so other output sizes): output_shapes of both primitives at work."""

    def f(x, off, w, b, m):
        return dcn_mlx.deform_conv2d(x, off, w, b, stride=(1, 2), padding=1, mask=m)

    cf = mx.compile(f, shapeless=True)
    for N, H, W in [(2, 6, 7), (3, 9, 5), (1, 4, 11)]:
        a = _inputs(N=N, H=H, W=W, C=4, O=6, G=G, groups=groups, seed=N + H, stride=1)
        Wo = (W + 2 - 3) // 2 + 1
        a["offset"] = a["offset"][:, :, : Wo]
        a["mask"] = a["mask"][:, :, : Wo]
        args = (a["input"], a["offset"], a["weight"], a["bias"], a["mask"])
        got, ref = cf(*args), f(*args)
        assert got.shape == ref.shape == (N, H, Wo, 6)
        assert _max_diff(got, ref) == 0.0


def test_compile_shapeless_grad_second_shape():
    def loss(x, off, w, b, m):
        return mx.sum(dcn_mlx.deform_conv2d(x, off, w, b, padding=1, mask=m) ** 2)

    g = mx.grad(loss, argnums=(0, 1, 2, 3, 4))
    cg = mx.compile(g, shapeless=True)
    for N, H, W in [(2, 5, 6), (3, 7, 4)]:
        a = _inputs(N=N, H=H, W=W, seed=H)
        args = (a["input"], a["offset"], a["weight"], a["bias"], a["mask"])
        for got, ref in zip(cg(*args), g(*args)):
            assert got.shape == ref.shape
            scale = float(mx.max(mx.abs(ref)))
            # the weight gradient's GEMM may be batched differently when shapeless
            assert _max_diff(got, ref) <= 1e-5 * scale


def test_compile_module():
    layer = dcn_mlx.DeformConv2d(4, 6, 3, padding=1)
    a = _inputs(C=4, O=6)
    f = mx.compile(lambda x, off, m: layer(x, off, m))
    assert _max_diff(f(a["input"], a["offset"], a["mask"]), layer(a["input"], a["offset"], a["mask"])) == 0.0


# ---------------------------------------------------------------------------
# autodiff and other transformations
# ---------------------------------------------------------------------------


class _TinyDCN(nn.Module):
    """Offsets and mask predicted by a plain conv, then the deformable conv."""

    def __init__(self, C=4, O=4, G=1):
        super().__init__()
        self.offset_conv = nn.Conv2d(C, 3 * G * 9, 3, padding=1)
        self.dcn = dcn_mlx.DeformConv2d(C, O, 3, padding=1)
        self.G = G

    def __call__(self, x):
        om = self.offset_conv(x)
        K = self.G * 9
        offset, mask = om[..., : 2 * K], mx.sigmoid(om[..., 2 * K:])
        return self.dcn(x, offset, mask)


def test_value_and_grad_training_step_reduces_loss():
    mx.random.seed(0)
    model = _TinyDCN(C=4, O=4)
    teacher = _TinyDCN(C=4, O=4)  # a reachable target
    rng = np.random.default_rng(1)
    x = mx.array(rng.standard_normal((4, 8, 8, 4)).astype(np.float32))
    target = teacher(x)

    def loss_fn(model, x, y):
        return mx.mean((model(x) - y) ** 2)

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    opt = optim.Adam(learning_rate=0.02)
    _, grads = loss_and_grad(model, x, target)
    # every parameter gets a gradient, the deformable layer's included
    flat = dict(__import__("mlx.utils", fromlist=["tree_flatten"]).tree_flatten(grads))
    assert set(flat) == {"offset_conv.weight", "offset_conv.bias", "dcn.weight", "dcn.bias"}
    assert all(float(mx.max(mx.abs(v))) > 0 for v in flat.values())
    losses = []
    for _ in range(15):
        loss, grads = loss_and_grad(model, x, target)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_grad_matches_finite_differences_float64():
    """mx.grad of every argument against central differences (float64 runs
    on MLX's CPU backend), away from kinks of the bilinear interpolation."""
    a = _inputs(N=1, H=4, W=5, C=2, O=3, G=2, groups=1, seed=3, dtype=mx.float64)
    keys = ["input", "offset", "weight", "bias", "mask"]
    r = mx.array(np.random.default_rng(5).standard_normal((1, 4, 5, 3)), dtype=mx.float64)

    def loss(*args):
        kw = dict(zip(keys, args))
        out = dcn_mlx.deform_conv2d(kw["input"], kw["offset"], kw["weight"], kw["bias"],
                                    padding=1, mask=kw["mask"])
        # polynomial: MLX's float64 transcendentals are not accurate to 1e-16
        return mx.sum(out * r) + 0.5 * mx.sum(out * out)

    args = [a[k] for k in keys]
    grads = mx.grad(loss, argnums=tuple(range(5)))(*args)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for i, key in enumerate(keys):
        base = np.array(args[i])
        for _ in range(6):
            idx = tuple(rng.integers(0, s) for s in base.shape)
            plus, minus = base.copy(), base.copy()
            plus[idx] += eps
            minus[idx] -= eps
            ap, am = list(args), list(args)
            ap[i] = mx.array(plus, dtype=mx.float64)
            am[i] = mx.array(minus, dtype=mx.float64)
            fd = (loss(*ap).item() - loss(*am).item()) / (2 * eps)
            got = np.array(grads[i])[idx]
            assert abs(got - fd) <= 1e-6 * max(1.0, abs(fd)), (key, idx, got, fd)


def test_vmap_matches_loop_and_vmap_of_grad():
    B = 3
    a = [_inputs(N=2, H=5, W=6, C=4, O=6, G=2, groups=2, seed=s) for s in range(B)]
    x = mx.stack([t["input"] for t in a])
    off = mx.stack([t["offset"] for t in a])
    w, m = a[0]["weight"], a[0]["mask"]

    def f(x, off, m):
        return dcn_mlx.deform_conv2d(x, off, w, None, padding=1, mask=m)

    loop = mx.stack([f(x[i], off[i], m) for i in range(B)])
    assert _max_diff(mx.vmap(f, in_axes=(0, 0, None))(x, off, m), loop) == 0.0
    # vmapped axis not in front
    assert _max_diff(mx.vmap(f, in_axes=(2, 0, None))(mx.moveaxis(x, 0, 2), off, m), loop) == 0.0

    g = mx.grad(lambda x, off, m: mx.sum(f(x, off, m) ** 2), argnums=(0, 1, 2))
    vg = mx.vmap(g, in_axes=(0, 0, None))(x, off, m)
    lg = [g(x[i], off[i], m) for i in range(B)]
    for j in range(3):
        assert _max_diff(vg[j], mx.stack([l[j] for l in lg])) == 0.0


def test_jvp_input_and_mask_exact_offset_refused():
    a = _inputs(N=1, H=5, W=5, C=4, O=3)
    x, off, w, m = a["input"], a["offset"], a["weight"], a["mask"]
    f = lambda x, m: dcn_mlx.deform_conv2d(x, off, w, None, padding=1, mask=m)  # noqa: E731
    tx = mx.random.normal(x.shape)
    tm = mx.random.normal(m.shape)
    # the output is linear in x and (separately) in the mask
    _, (jx,) = mx.jvp(lambda x: f(x, m), (x,), (tx,))
    assert _max_diff(jx, f(tx, m)) <= 1e-5 * float(mx.max(mx.abs(jx)))
    _, (jm,) = mx.jvp(lambda m: f(x, m), (m,), (tm,))
    assert _max_diff(jm, f(x, tm)) <= 1e-5 * float(mx.max(mx.abs(jm)))
    with pytest.raises(RuntimeError, match="jvp .*offset is not implemented"):
        _, (jo,) = mx.jvp(lambda o: dcn_mlx.deform_conv2d(x, o, w, padding=1), (off,), (off,))
        mx.eval(jo)


def test_second_order_refused_clearly():
    a = _inputs(N=1, H=4, W=4, C=2, O=2)
    off, w = a["offset"], a["weight"]
    inner = mx.grad(lambda x: mx.sum(dcn_mlx.deform_conv2d(x, off, w, padding=1) ** 2))
    with pytest.raises(RuntimeError, match="second-order gradients"):
        mx.eval(mx.grad(lambda x: mx.sum(inner(x) ** 2))(a["input"]))


# ---------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------


def test_layer_parameters_init_and_repr():
    mx.random.seed(3)
    layer = dcn_mlx.DeformConv2d(6, 8, (3, 2), stride=2, padding=1, groups=2)
    ref = nn.Conv2d(6, 8, (3, 2), stride=2, padding=1, groups=2)
    assert layer.weight.shape == ref.weight.shape == (8, 3, 2, 3)
    assert layer.bias.shape == (8,) and float(mx.max(mx.abs(layer.bias))) == 0.0
    bound = math.sqrt(1 / (3 * 3 * 2))
    assert float(mx.max(mx.abs(layer.weight))) <= bound
    assert set(dict(__import__("mlx.utils", fromlist=["tree_flatten"]).tree_flatten(layer.parameters()))) == {"weight", "bias"}
    r = repr(layer)
    assert r.startswith("DeformConv2d(6, 8, kernel_size=(3, 2), stride=(2, 2), padding=(1, 1)") and "groups=2" in r
    nobias = dcn_mlx.DeformConv2d(4, 4, 3, bias=False)
    assert "bias" not in nobias and "bias=False" in repr(nobias)


def test_layer_matches_functional_and_checks_channels():
    layer = dcn_mlx.DeformConv2d(4, 6, 3, padding=1, groups=2)
    a = _inputs(C=4, O=6, groups=2)
    y = layer(a["input"], a["offset"], a["mask"])
    ref = dcn_mlx.deform_conv2d(a["input"], a["offset"], layer.weight, layer.bias, padding=1,
                                mask=a["mask"])
    assert _max_diff(y, ref) == 0.0
    # 8 channels would silently mean groups=4 in the functional form
    x8 = mx.concatenate([a["input"], a["input"]], axis=-1)
    with pytest.raises(ValueError, match="expected 4 channels"):
        layer(x8, a["offset"], a["mask"])
    with pytest.raises(ValueError, match="divisible"):
        dcn_mlx.DeformConv2d(5, 6, 3, groups=2)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_dtypes_flow_through(dtype):
    dt = getattr(mx, dtype)
    a = _inputs(dtype=dt)
    out = _call(a, padding=1)
    assert out.dtype == dt
    g = mx.grad(lambda x, o, m: mx.sum(dcn_mlx.deform_conv2d(x, o, a["weight"], a["bias"], padding=1, mask=m)),
                argnums=(0, 1, 2))(a["input"], a["offset"], a["mask"])
    assert [t.dtype for t in g] == [dt] * 3
    ref = _call({k: v.astype(mx.float32) for k, v in a.items()}, padding=1)
    tol = {"float16": 5e-3, "bfloat16": 4e-2}[dtype]
    assert _max_diff(out, ref) <= tol * float(mx.max(mx.abs(ref)))


# ---------------------------------------------------------------------------
# the torch weight port
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("groups,G,bias", [(1, 1, True), (2, 2, False), (1, 3, True)])
def test_port_from_dcn_torch_gives_equal_outputs(groups, G, bias):
    torch = pytest.importorskip("torch")
    dcn_torch = pytest.importorskip("dcn_torch")
    torch.manual_seed(0)
    tm = dcn_torch.DeformConv2d(6, 4, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1),
                                groups=groups, bias=bias)
    x = torch.randn(2, 6, 7, 8)
    Ho = (7 + 2 - 2 * 2 - 1) // 1 + 1
    Wo = (8 - 1 - 1) // 2 + 1
    off = torch.randn(2, 2 * G * 6, Ho, Wo)
    mask = torch.rand(2, G * 6, Ho, Wo)
    with torch.no_grad():
        ref = tm(x, off, mask).numpy()

    layer = dcn_mlx.from_torch(tm)
    assert (layer.stride, layer.padding, layer.dilation, layer.groups) == ((1, 2), (1, 0), (2, 1), groups)
    got = dcn_mlx.nhwc_to_nchw(layer(dcn_mlx.nchw_to_nhwc(x), dcn_mlx.nchw_to_nhwc(off),
                                     dcn_mlx.nchw_to_nhwc(mask)))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())

    # the same through load_torch_state_dict, from numpy arrays
    fresh = dcn_mlx.DeformConv2d(6, 4, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1),
                                 groups=groups, bias=bias)
    dcn_mlx.load_torch_state_dict(fresh, {k: v.numpy() for k, v in tm.state_dict().items()})
    assert _max_diff(fresh.weight, layer.weight) == 0.0
    # and back
    back = dcn_mlx.torch_state_dict(fresh)
    for k, v in tm.state_dict().items():
        np.testing.assert_array_equal(back[k], v.numpy())


def test_port_errors_and_dtype():
    torch = pytest.importorskip("torch")
    layer = dcn_mlx.DeformConv2d(4, 6, 3)
    good = {"weight": torch.randn(6, 4, 3, 3), "bias": torch.randn(6)}
    with pytest.raises(ValueError, match="layer's weight"):
        dcn_mlx.load_torch_state_dict(layer, {"weight": torch.randn(6, 2, 3, 3), "bias": good["bias"]})
    with pytest.raises(ValueError, match="bias"):
        dcn_mlx.load_torch_state_dict(layer, {"weight": good["weight"]})
    with pytest.raises(ValueError, match="no 'dcn.weight'"):
        dcn_mlx.load_torch_state_dict(layer, good, prefix="dcn.")
    dcn_mlx.load_torch_state_dict(layer, {"dcn." + k: v.to(torch.bfloat16) for k, v in good.items()},
                                  prefix="dcn.")
    assert layer.weight.dtype == mx.bfloat16
    dcn_mlx.load_torch_state_dict(layer, good, dtype=mx.float16)
    assert layer.weight.dtype == mx.float16 and layer.bias.dtype == mx.float16


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


def test_errors_name_the_argument():
    a = _inputs(N=1, H=4, W=4, C=2, O=2)
    x, off, w, b, m = a["input"], a["offset"], a["weight"], a["bias"], a["mask"]
    f = dcn_mlx.deform_conv2d
    with pytest.raises(ValueError, match="offset: expected shape .* with a channel count that is a positive multiple of 2\\*kh\\*kw = 18"):
        f(x, off[..., :17], w, b, padding=1)
    with pytest.raises(ValueError, match=r"mask: expected shape \(1, 4, 4, 9\)"):
        f(x, off, w, b, padding=1, mask=m[..., :8])
    with pytest.raises(ValueError, match=r"bias: expected shape \(2,\)"):
        f(x, off, w, b[:1], padding=1)
    with pytest.raises(ValueError, match="weight: its C/groups axis"):
        f(x, off, mx.zeros((2, 3, 3, 3)), padding=1)
    with pytest.raises(ValueError, match="offset: dtype float16 does not match input dtype float32"):
        f(x, off.astype(mx.float16), w, padding=1)
    with pytest.raises(ValueError, match="input: expected a 4-D tensor"):
        f(x[0], off, w, padding=1)
    with pytest.raises(ValueError, match=r"input: expected a 4-D tensor \(N, H, W, C\), got 5-D"):
        f(x[None], off, w, padding=1)
    with pytest.raises(ValueError, match="stride: expected values >= 1"):
        f(x, off, w, stride=0, padding=1)
    with pytest.raises(ValueError, match="padding: expected values >= 0"):
        f(x, off, w, padding=-1)
    with pytest.raises(TypeError, match="input: expected a floating-point array"):
        f(x.astype(mx.int32), off, w, padding=1)
    with pytest.raises(TypeError, match="weight: expected an mx.array, got ndarray"):
        f(x, off, np.zeros((2, 3, 3, 2), np.float32), padding=1)
    with pytest.raises(TypeError, match="stride: expected an int or a pair"):
        f(x, off, w, stride=(1, 1, 1), padding=1)
    with pytest.raises(TypeError, match="dilation: expected an int or a pair"):
        f(x, off, w, dilation=1.5, padding=1)


def test_empty_output_message_is_about_size():
    x = mx.zeros((1, 2, 2, 1))
    with pytest.raises(ValueError, match="gives an empty output"):
        dcn_mlx.deform_conv2d(x, mx.zeros((1, 1, 1, 18)), mx.zeros((1, 3, 3, 1)))


def test_offset_size_mismatch_message():
    a = _inputs(N=1, H=4, W=4, C=2, O=2)
    with pytest.raises(ValueError) as e:
        dcn_mlx.deform_conv2d(a["input"], a["offset"][:, :3], a["weight"], padding=1)
    assert "offset: expected shape (1, 4, 4, 18) = (N, out_h, out_w, 2*offset_groups*kh*kw), got (1, 3, 4, 18)" in str(e.value)


# ---------------------------------------------------------------------------
# the primitive: layout, strided cotangents, threads, GPU refusal
# ---------------------------------------------------------------------------


def test_columns_layout_matches_weight_groups():
    """columns[g] @ weight[g-th block].reshape(Og, -1).T is group g's conv."""
    a = _inputs(C=6, O=4, groups=2, G=3)
    cols = _C.deform_sample(a["input"], a["offset"], a["mask"], (3, 3), (1, 1), (1, 1), (1, 1), 2)
    assert cols.shape == (2, 2, 6, 7, 27)
    w = a["weight"]
    out = mx.concatenate([cols[g] @ w[2 * g: 2 * g + 2].reshape(2, -1).T for g in range(2)], axis=-1)
    ref = dcn_mlx.deform_conv2d(a["input"], a["offset"], w, None, padding=1, mask=a["mask"])
    assert _max_diff(out, ref) <= 1e-6 * float(mx.max(mx.abs(ref)))


def test_strided_grad_columns_read_in_place_or_copied():
    a = _inputs(N=2, H=5, W=6, C=4, O=2, G=2, groups=2)
    x, off, m = a["input"], a["offset"], a["mask"]
    args = ((3, 3), (1, 1), (1, 1), (1, 1), 2)
    shape = (2, 2, 5, 6, 18)
    gc = mx.random.normal(shape)
    ref = _C.deform_sample_grad(gc, x, off, m, *args)
    # H/W swapped in memory: the pixel axes need one stride each -> copied
    swapped = mx.swapaxes(mx.contiguous(mx.swapaxes(gc, 2, 3)), 2, 3)
    # a broadcast cotangent (all strides 0 along the broadcast axes)
    row = mx.random.normal((1, 1, 1, 1, 18))
    bcast = mx.broadcast_to(row, shape)
    dense = bcast + mx.zeros(shape)  # the same values, row-contiguous
    for variant, expect in ((swapped, ref),
                            (bcast, _C.deform_sample_grad(dense, x, off, m, *args))):
        got = _C.deform_sample_grad(variant, x, off, m, *args)
        for p, q in zip(got, expect):
            assert _max_diff(p, q) == 0.0
    # only some outputs
    assert len(_C.deform_sample_grad(gc, x, off, m, *args, need_input=True, need_coords=False)) == 1
    assert len(_C.deform_sample_grad(gc, x, off, None, *args, need_input=False)) == 1
    with pytest.raises(ValueError, match="grad_columns: expected shape"):
        _C.deform_sample_grad(gc[:, :1], x, off, m, *args)


def test_deterministic_across_thread_counts():
    a = _inputs(N=3, H=17, W=19, C=8, O=4, G=2)
    try:
        results = []
        for n in (1, 0):
            dcn_mlx.set_num_threads(n)
            g = mx.grad(lambda x, o, m: mx.sum(_call({**a, "input": x, "offset": o, "mask": m}, padding=1) ** 2),
                        argnums=(0, 1, 2))(a["input"], a["offset"], a["mask"])
            mx.eval(g)
            results.append([np.array(t) for t in g])
        for p, q in zip(*results):
            np.testing.assert_array_equal(p, q)
    finally:
        dcn_mlx.set_num_threads(0)
    with pytest.raises(ValueError):
        dcn_mlx.set_num_threads(-1)


def test_primitive_names_in_graph_export(tmp_path):
    a = _inputs(N=1, H=4, W=4, C=2, O=2)
    out = mx.grad(lambda x: mx.sum(_call({**a, "input": x}, padding=1)))(a["input"])
    dot = tmp_path / "g.dot"
    mx.export_to_dot(str(dot), out)
    text = dot.read_text()
    assert "DeformSample" in text and "DeformSampleGrad" in text


def test_views_with_offsets_are_read_in_place():
    """Sliced / transposed views (nonzero data offsets, odd strides) give the
    same values and gradients as their contiguous copies."""
    x = mx.transpose(mx.random.normal((3, 7, 9, 8)), (0, 3, 2, 1))[1:, 1:7, :, 2:6]  # (2, 6, 9, 4)
    off = mx.random.normal((3, 6, 9, 30))[1:, :, :, 3:21]
    m = mx.random.uniform(shape=(2, 9, 6, 9)).swapaxes(1, 2)
    w = mx.random.normal((3, 3, 3, 4))[:, :, :, :] * 0.3
    args = (x, off, w, None, 1, 1, 1, m)
    dense = tuple(mx.contiguous(a) + 0 if isinstance(a, mx.array) else a for a in args)
    f = lambda *a: dcn_mlx.deform_conv2d(*a[:3], a[3], stride=a[4], padding=a[5], dilation=a[6], mask=a[7])  # noqa: E731
    assert _max_diff(f(*args), f(*dense)) == 0.0
    gf = mx.grad(lambda x, o, m: mx.sum(dcn_mlx.deform_conv2d(x, o, w, padding=1, mask=m) ** 2), argnums=(0, 1, 2))
    gv, gd = gf(x, off, m), gf(dense[0], dense[1], dense[7])
    assert _max_diff(gv[0], gd[0]) == 0.0
    # Offset and mask gradients: the contiguous copy has unit channel stride,
    # so float32 sums its channels in 8 lanes (core/cpu/coord_lanes.h), the
    # view in order: equal up to summation rounding.
    for p, q in zip(gv[1:], gd[1:]):
        np.testing.assert_allclose(np.array(p), np.array(q), rtol=1e-5, atol=1e-5)


def test_explicit_cpu_stream():
    a = _inputs()
    ref = _call(a, padding=1)
    assert _max_diff(_call(a, padding=1, stream=mx.cpu), ref) == 0.0
    s = mx.new_stream(mx.cpu)
    assert _max_diff(_call(a, padding=1, stream=s), ref) == 0.0


# ---------------------------------------------------------------------------
# the determinism switch, and the GPU (Metal) path
# ---------------------------------------------------------------------------


def test_deterministic_switch_api_and_cpu_results():
    assert dcn_mlx.get_deterministic() is False
    a = _inputs(N=2, H=6, W=5, C=4, O=3, G=2)
    gf = mx.grad(lambda x, o, m: mx.sum(_call({**a, "input": x, "offset": o, "mask": m}, padding=1) ** 2),
                 argnums=(0, 1, 2))
    default = gf(a["input"], a["offset"], a["mask"])
    try:
        dcn_mlx.set_deterministic(True)
        assert dcn_mlx.get_deterministic() is True
        # the CPU kernels are deterministic either way: same bits
        for p, q in zip(gf(a["input"], a["offset"], a["mask"]), default):
            assert _max_diff(p, q) == 0.0
    finally:
        dcn_mlx.set_deterministic(False)
    with pytest.raises(TypeError, match="expected a bool"):
        dcn_mlx.set_deterministic(1)


HAS_METAL = mx.metal.is_available()
needs_metal = pytest.mark.skipif(
    not HAS_METAL, reason="no Metal GPU: dcn's GPU kernels run on Apple silicon only (MLX's Metal backend)")
GPU_DTYPES = ("float32", "float16", "bfloat16")


def _conformance():
    try:
        from conformance import cases, tolerances
    except ImportError:  # pragma: no cover - depends on pytest's import mode
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from conformance import cases, tolerances
    return cases, tolerances


_cases, _tolerances = _conformance()


def _to_mlx(a, dtype, role, strided):
    """A float64 NCHW array (exact in dtype) -> mx.array in dcn_mlx's layout;
    strided: activations as NCHW memory viewed as NHWC (a non-contiguous view
    the GPU path must copy, the CPU path reads in place)."""
    if a is None:
        return None
    m = mx.array(np.ascontiguousarray(a, dtype=np.float32)).astype(getattr(mx, dtype))
    if role == "bias":
        return m
    if role == "weight":  # (O, C/g, kh, kw) -> (O, kh, kw, C/g)
        return mx.contiguous(mx.transpose(m, (0, 2, 3, 1)))
    view = mx.transpose(m, (0, 2, 3, 1))
    return view if strided else mx.contiguous(view)


def _forward_and_grads(case, arrs, grad_out, dtype, device, strided):
    """Output and all gradients of sum(out * grad_out) on `device`, as
    float64 NHWC numpy arrays (inputs built on the CPU, computed on device)."""
    data = dict(input=arrs.x, offset=arrs.offset, weight=arrs.weight, mask=arrs.mask, bias=arrs.bias)
    with mx.stream(mx.cpu):
        ins = {k: _to_mlx(a, dtype, k, strided) for k, a in data.items()}
        g = _to_mlx(grad_out, dtype, "grad_out", strided)
        mx.eval([v for v in ins.values() if v is not None], g)
    keys = [k for k in ("input", "offset", "weight", "mask", "bias") if ins[k] is not None]

    def fn(*args):
        kw = dict(zip(keys, args))
        return dcn_mlx.deform_conv2d(kw["input"], kw["offset"], kw["weight"], kw.get("bias"),
                                     mask=kw.get("mask"), **case.conv_args)

    with mx.stream(device):
        out = fn(*(ins[k] for k in keys))
        grads = mx.grad(lambda *a: mx.sum(fn(*a) * g), argnums=tuple(range(len(keys))))(
            *(ins[k] for k in keys))
        mx.eval(out, grads)
    assert out.dtype == getattr(mx, dtype) and all(t.dtype == out.dtype for t in grads)
    as_np = lambda t: np.array(t.astype(mx.float32), dtype=np.float64)  # noqa: E731
    return as_np(out), {k: as_np(t) for k, t in zip(keys, grads)}


@needs_metal
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("case", _cases.CASES, ids=[c.name for c in _cases.CASES])
def test_gpu_matches_cpu_on_conformance_cases(case, dtype):
    """Forward and every gradient on the GPU against the CPU on the same
    inputs, within the conformance tolerance of the dtype."""
    arrs = case.make(dtype)
    if not arrs.all_finite():
        pytest.skip(f"{case.name}: inputs overflow {dtype}")
    grad_out = case.grad_out(dtype)
    cpu_out, cpu_grads = _forward_and_grads(case, arrs, grad_out, dtype, mx.cpu, case.non_contiguous)
    gpu_out, gpu_grads = _forward_and_grads(case, arrs, grad_out, dtype, mx.gpu, case.non_contiguous)
    _tolerances.assert_close(gpu_out, cpu_out, dtype, f"{case.name} output (GPU vs CPU)")
    assert gpu_grads.keys() == cpu_grads.keys()
    for key in cpu_grads:
        _tolerances.assert_close(gpu_grads[key], cpu_grads[key], dtype, f"{case.name} grad[{key}] (GPU vs CPU)")


@needs_metal
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_deterministic_switch_gives_identical_bits(dtype):
    """set_deterministic(True): the GPU input gradient is the same bits run
    after run (one thread per channel plane), and still matches the CPU."""
    case = _cases.CASES_BY_NAME["large_tiled"]
    arrs, grad_out = case.make(dtype), case.grad_out(dtype)
    cpu_out, cpu_grads = _forward_and_grads(case, arrs, grad_out, dtype, mx.cpu, False)
    try:
        dcn_mlx.set_deterministic(True)
        runs = [_forward_and_grads(case, arrs, grad_out, dtype, mx.gpu, False)[1] for _ in range(3)]
    finally:
        dcn_mlx.set_deterministic(False)
    for run in runs[1:]:
        for key in ("input", "offset", "mask"):  # the sampling gradients, all deterministic now
            np.testing.assert_array_equal(run[key], runs[0][key], err_msg=key)
    for key in cpu_grads:
        _tolerances.assert_close(runs[0][key], cpu_grads[key], dtype, f"grad[{key}] deterministic GPU vs CPU")


@needs_metal
def test_gpu_primitive_layouts_and_transformations():
    """The primitive on the GPU: strided cotangents, only some outputs,
    vmap and shapeless compile, all against the CPU."""
    a = _inputs(N=2, H=5, W=6, C=4, O=2, G=2, groups=2)
    args = ((3, 3), (1, 1), (1, 1), (1, 1), 2)
    gc = mx.random.normal((2, 2, 5, 6, 18))
    swapped = mx.swapaxes(mx.contiguous(mx.swapaxes(gc, 2, 3)), 2, 3)
    for cot in (gc, swapped, mx.broadcast_to(gc[:, :1], gc.shape)):
        ref = _C.deform_sample_grad(cot, a["input"], a["offset"], a["mask"], *args, stream=mx.cpu)
        got = _C.deform_sample_grad(cot, a["input"], a["offset"], a["mask"], *args, stream=mx.gpu)
        for p, q in zip(got, ref):
            assert p.dtype == q.dtype and _max_diff(p, q) <= 1e-5 * float(mx.max(mx.abs(q)))
    got = _C.deform_sample_grad(gc, a["input"], a["offset"], None, *args, need_input=False, stream=mx.gpu)
    assert len(got) == 1 and got[0].shape == a["offset"].shape
    cols = _C.deform_sample(a["input"], a["offset"], a["mask"], *args, stream=mx.gpu)
    ref = _C.deform_sample(a["input"], a["offset"], a["mask"], *args, stream=mx.cpu)
    assert cols.shape == ref.shape and _max_diff(cols, ref) <= 1e-6 * float(mx.max(mx.abs(ref)))

    def loss(x, off, w, b, m):
        return mx.sum(dcn_mlx.deform_conv2d(x, off, w, b, padding=1, mask=m) ** 2)

    g = mx.grad(loss, argnums=(0, 1, 2, 3, 4))
    vals = (a["input"], a["offset"], a["weight"], a["bias"], a["mask"])
    with mx.stream(mx.cpu):
        want = g(*vals)
    with mx.stream(mx.gpu):
        compiled = mx.compile(g, shapeless=True)(*vals)
        vmapped = mx.vmap(g, in_axes=(0, 0, None, None, 0))(
            *(v[None] if i in (0, 1, 4) else v for i, v in enumerate(vals)))
    for p, q, r in zip(compiled, vmapped, want):
        scale = float(mx.max(mx.abs(r)))
        assert _max_diff(p, r) <= 1e-5 * scale and _max_diff(q[0] if q.ndim > r.ndim else q, r) <= 1e-5 * scale


@needs_metal
def test_gpu_refuses_what_its_kernels_cannot_do():
    a = _inputs(N=1, H=4, W=4, C=2, O=2, dtype=mx.float64)
    with pytest.raises(ValueError, match="float64"):
        dcn_mlx.deform_conv2d(a["input"], a["offset"], a["weight"], padding=1, stream=mx.gpu)
    # 32-bit indices: refused while the graph is built, nothing allocated
    x = mx.zeros((1, 1024, 1024, 64))
    off = mx.zeros((1, 1024, 1024, 2 * 49))
    with pytest.raises(ValueError, match="32-bit indices"):
        dcn_mlx.deform_conv2d(x, off, mx.zeros((1, 7, 7, 64)), padding=3, stream=mx.gpu)


def test_gpu_stream_without_metal_kernels_is_refused_clearly():
    if not mx.is_available(mx.gpu) or _C.metal_kernels != "none":
        pytest.skip("needs an MLX GPU backend and a dcn_mlx built without Metal kernels")
    a = _inputs(N=1, H=4, W=4, C=2, O=2)
    with pytest.raises(RuntimeError, match="no GPU kernels"):
        mx.eval(dcn_mlx.deform_conv2d(a["input"], a["offset"], a["weight"], padding=1, stream=mx.gpu))
