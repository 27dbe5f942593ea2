"""dcn demo: DeformConv2d forward and backward on every available backend,
checked against an oracle nobody here wrote (onnxruntime's DeformConv when
installed) and against the float64 numpy reference, with timings.

    python examples/demo.py
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

import dcn_torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from reference import deform_conv2d_ref, deform_conv2d_ref_grads  # noqa: E402


def timed(fn, repeats=5):
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats * 1e3


def main() -> int:
    print("dcn build:", dcn_torch.build_info())
    torch.manual_seed(0)
    N, C, H, W, O, k = 2, 16, 24, 20, 32, 3
    layer = dcn_torch.DeformConv2d(C, O, k, padding=1)
    offset_net = torch.nn.Conv2d(C, 2 * k * k, k, padding=1)  # the usual DCNv2 pattern
    mask_net = torch.nn.Conv2d(C, k * k, k, padding=1)
    x = torch.randn(N, C, H, W)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and "cuda" in dcn_torch.build_info()["backends"] else [])
    ok = True
    for dev in devices:
        layer_d, off_d, mask_d = layer.to(dev), offset_net.to(dev), mask_net.to(dev)
        xd = x.to(dev).clone().requires_grad_()
        offset = off_d(xd) * 2.0
        mask = torch.sigmoid(mask_d(xd))
        out = layer_d(xd, offset, mask)
        out.square().mean().backward()

        # Oracles, float64, from the same numbers.
        arrays = [t.detach().cpu().double().numpy() for t in (x, layer.weight, offset, mask, layer.bias)]
        ref = deform_conv2d_ref(arrays[0], arrays[1], arrays[2], arrays[3], arrays[4], 1, 1, 1)
        err = float(np.abs(out.detach().cpu().double().numpy() - ref).max())
        line = f"[{dev}] forward {tuple(out.shape)}: max |dcn - float64 reference| = {err:.2e}"
        try:
            from oracles import ort_deform_conv2d

            ort = ort_deform_conv2d(*[a.astype(np.float32) for a in arrays[:1]], arrays[1].astype(np.float32),
                                    arrays[2].astype(np.float32), arrays[3].astype(np.float32),
                                    arrays[4].astype(np.float32), padding=(1, 1))
            ort_err = float(np.abs(out.detach().cpu().numpy() - ort).max())
            line += f", vs onnxruntime DeformConv = {ort_err:.2e}"
            ok &= ort_err < 1e-3
        except ImportError:
            line += " (onnxruntime not installed: pip install onnxruntime for the second oracle)"
        print(line)
        ok &= err < 1e-3

        # Gradients of the deformable layer itself against the reference.
        go = 2.0 * out.detach() / out.numel()
        grads = deform_conv2d_ref_grads(arrays[0], arrays[1], arrays[2], arrays[3], arrays[4], 1, 1, 1,
                                        go.cpu().double().numpy())
        xs, os_, ms = (t.detach().clone().requires_grad_() for t in (x.to(dev), offset, mask))
        ws = layer_d.weight.detach().clone().requires_grad_()
        bs = layer_d.bias.detach().clone().requires_grad_()
        dcn_torch.deform_conv2d(xs, os_, ws, bs, padding=1, mask=ms).backward(go)
        for name, t in (("input", xs), ("offset", os_), ("weight", ws), ("mask", ms), ("bias", bs)):
            e = float(np.abs(t.grad.cpu().double().numpy() - grads[name]).max())
            scale = max(1.0, float(np.abs(grads[name]).max()))
            ok &= e < 1e-3 * scale
            print(f"[{dev}]   grad {name:6s} max abs error {e:.2e}")

        xt = x.to(dev)
        fwd_ms = timed(lambda: layer_d(xt, offset.detach(), mask.detach()))
        def step():
            xs.grad = None
            layer_d(xs, os_, ms).sum().backward()
        print(f"[{dev}] timing: forward {fwd_ms:.2f} ms, forward+backward {timed(step):.2f} ms "
              f"({N}x{C}x{H}x{W} -> {O}, 3x3, threads={dcn_torch.get_num_threads()})")
    ok &= demo_mlx(x.detach(), offset.detach(), mask.detach(), layer)
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def demo_mlx(x, offset, mask, torch_layer) -> bool:
    """The same layer through dcn_mlx (NHWC), weights ported from torch, on
    MLX's CPU stream and, on Apple silicon, its GPU (Metal) stream."""
    try:
        import mlx.core as mx

        import dcn_mlx  # noqa: F401  (checks it is installed)
    except ImportError as e:
        print(f"[mlx] skipped: {e}")
        return True
    ok = True
    for dev in ["cpu"] + (["gpu"] if mx.metal.is_available() else []):
        with mx.stream(mx.gpu if dev == "gpu" else mx.cpu):
            ok &= _demo_mlx_on(dev, x, offset, mask, torch_layer)
    return ok


def _demo_mlx_on(dev, x, offset, mask, torch_layer) -> bool:
    import mlx.core as mx

    import dcn_mlx

    layer = dcn_mlx.from_torch(torch_layer)
    xm, om, mm = (dcn_mlx.nchw_to_nhwc(t.cpu().numpy()) for t in (x, offset, mask))
    out = layer(xm, om, mm)
    ref = torch_layer(x, offset, mask).detach().numpy()
    err = float(np.abs(dcn_mlx.nhwc_to_nchw(out) - ref).max())
    print(f"[mlx {dev}] forward {tuple(out.shape)} (NHWC): max |dcn_mlx - dcn_torch| = {err:.2e}")

    def loss(params, xx, oo, mk):
        layer.update(params)
        return (layer(xx, oo, mk) ** 2).mean()

    grad_fn = mx.value_and_grad(loss, argnums=(0, 1, 2, 3))
    _, grads = grad_fn(layer.parameters(), xm, om, mm)
    mx.eval(grads)
    # The same loss through dcn_torch: every gradient must agree.
    xs, os_, ms = (t.clone().requires_grad_() for t in (x, offset, mask))
    torch_layer.zero_grad()
    (torch_layer(xs, os_, ms) ** 2).mean().backward()
    pairs = [("input", grads[1], xs.grad), ("offset", grads[2], os_.grad), ("mask", grads[3], ms.grad),
             ("weight", grads[0]["weight"], torch_layer.weight.grad.permute(0, 2, 3, 1)),
             ("bias", grads[0]["bias"], torch_layer.bias.grad)]
    worst = 0.0
    for name, g_mlx, g_torch in pairs:
        want = g_torch.detach()
        want = want.permute(0, 2, 3, 1) if (want.dim() == 4 and name != "weight") else want
        want = want.numpy()
        worst = max(worst, float(np.abs(np.array(g_mlx) - want).max() / max(1e-12, np.abs(want).max())))
    def step():
        mx.eval(grad_fn(layer.parameters(), xm, om, mm))
    fwd_ms = timed(lambda: mx.eval(layer(xm, om, mm)))
    print(f"[mlx {dev}]   gradients (input, offset, mask, weight, bias) vs dcn_torch: max relative error {worst:.2e}")
    print(f"[mlx {dev}] timing: forward {fwd_ms:.2f} ms, forward+backward {timed(step):.2f} ms")
    return err < 1e-4 and worst < 1e-4


if __name__ == "__main__":
    sys.exit(main())
