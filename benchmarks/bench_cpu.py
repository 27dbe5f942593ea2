"""CPU speed of dcn against peers measured in the same process.

Configs (float32, 3x3, padding 1, mask and bias):
  A 1x64x32x32 -> 64,  B 1x256x64x64 -> 256,  C 8x64x56x56 -> 64 (the targets);
  with --configs also the layers of the models dcn is for:
  D 1x64x64x64 -> 64 with 8 offset groups (EDVR's and BasicVSR++'s alignment:
    8 channels per offset group), E 1x256x32x32 -> 256 with 32 weight groups
    (a ResNeXt-DCN detector backbone's grouped conv)
Peers: onnxruntime's DeformConv (forward), torch.conv2d of the same shape
(forward and forward+backward), and MLX (mx.conv2d and dcn_mlx) when
installed. Prints median milliseconds and ratios; run:

    python benchmarks/bench_cpu.py [--repeats 20] [--blocks 4] [--rounds 1] [--configs A,B,C] [--markdown]

The torch-side functions (dcn, onnxruntime, torch.conv2d) are timed in
interleaved blocks, so a machine whose speed drifts slows them alike.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys

import torch
import torch.nn.functional as F
from configs import Config  # benchmarks/ is on sys.path
from timing import interleaved_medians_ms, wall_times_ms

import dcn_torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

CONFIGS = {
    "A": Config(1, 64, 32, 32, 64),
    "B": Config(1, 256, 64, 64, 256),
    "C": Config(8, 64, 56, 56, 64),
    "D": Config(1, 64, 64, 64, 64, offset_groups=8),
    "E": Config(1, 256, 32, 32, 256, groups=32),
}


def timeit(fn, repeats: int, warmup: int = 2) -> float:
    return statistics.median(wall_times_ms(fn, repeats, warmup))


def make_inputs(cfg: Config, seed=0):
    N, C, H, W, O = cfg.N, cfg.C, cfg.H, cfg.W, cfg.O
    G = cfg.offset_groups
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g)
    w = torch.randn(O, C // cfg.groups, 3, 3, generator=g) * 0.05
    b = torch.randn(O, generator=g)
    off = torch.randn(N, 18 * G, H, W, generator=g) * 2.0
    mask = torch.rand(N, 9 * G, H, W, generator=g)
    return x, w, b, off, mask


def bench_torch(cfg, repeats, blocks):
    """dcn's forward and forward+backward, onnxruntime's forward and
    torch.conv2d's, measured in interleaved blocks (timing.py), so that the
    ratios compare calls made in the same stretch of time."""
    x, w, b, off, mask = make_inputs(cfg)
    fns = {"dcn_fwd": lambda: dcn_torch.deform_conv2d(x, off, w, b, padding=1, mask=mask)}
    try:
        from oracles import ort_deform_conv2d

        xn, wn, bn, offn, mn = (t.numpy() for t in (x, w, b, off, mask))
        fns["ort_fwd"] = lambda: ort_deform_conv2d(xn, wn, offn, mn, bn, padding=(1, 1))
    except Exception as e:  # onnxruntime not installed
        print(f"# onnxruntime unavailable: {e}", file=sys.stderr)

    xs, ws, bs, offs, ms = (t.clone().requires_grad_() for t in (x, w, b, off, mask))

    def fwd_bwd():
        for t in (xs, ws, bs, offs, ms):
            t.grad = None  # as optimizer.zero_grad() does: no accumulation cost
        out = dcn_torch.deform_conv2d(xs, offs, ws, bs, padding=1, mask=ms)
        out.sum().backward()

    fns["dcn_fwdbwd"] = fwd_bwd
    fns["conv_fwd"] = lambda: F.conv2d(x, w, b, padding=1, groups=cfg.groups)
    xc, wc, bc = (t.clone().requires_grad_() for t in (x, w, b))

    def conv_fwd_bwd():
        for t in (xc, wc, bc):
            t.grad = None
        F.conv2d(xc, wc, bc, padding=1, groups=cfg.groups).sum().backward()

    fns["conv_fwdbwd"] = conv_fwd_bwd
    return interleaved_medians_ms(fns, repeats, blocks)


def bench_mlx(cfg, repeats):
    try:
        import mlx.core as mx

        import dcn_mlx
    except Exception:
        return {}
    if not hasattr(dcn_mlx, "deform_conv2d"):
        return {}
    x, w, b, off, mask = make_inputs(cfg)
    xm = mx.array(x.permute(0, 2, 3, 1).numpy())
    wm = mx.array(w.permute(0, 2, 3, 1).numpy())
    bm = mx.array(b.numpy())
    offm = mx.array(off.permute(0, 2, 3, 1).numpy())
    mm = mx.array(mask.permute(0, 2, 3, 1).numpy())
    res = {}
    res["mlx_dcn_fwd"] = timeit(lambda: mx.eval(dcn_mlx.deform_conv2d(xm, offm, wm, bm, padding=1, mask=mm)), repeats)
    res["mlx_conv_fwd"] = timeit(lambda: mx.eval(mx.conv2d(xm, wm, padding=1, groups=cfg.groups) + bm),
                                 repeats)

    def loss(xx, oo, ww, bb, mk):
        return dcn_mlx.deform_conv2d(xx, oo, ww, bb, padding=1, mask=mk).sum()

    grad = mx.grad(loss, argnums=(0, 1, 2, 3, 4))
    res["mlx_dcn_fwdbwd"] = timeit(lambda: mx.eval(grad(xm, offm, wm, bm, mm)), repeats)

    def closs(xx, ww, bb):
        return (mx.conv2d(xx, ww, padding=1, groups=cfg.groups) + bb).sum()

    cgrad = mx.grad(closs, argnums=(0, 1, 2))
    res["mlx_conv_fwdbwd"] = timeit(lambda: mx.eval(cgrad(xm, wm, bm)), repeats)
    return res


def print_config(name, cfg, r):
    print(f"\n{name} {cfg.label}")
    for k, v in r.items():
        print(f"  {k:16s} {v:9.2f} ms")
    if "ort_fwd" in r:
        print(f"  fwd / onnxruntime fwd        {r['dcn_fwd'] / r['ort_fwd']:.2f}x  (target <= 1.0)")
    print(f"  fwd / torch.conv2d fwd       {r['dcn_fwd'] / r['conv_fwd']:.2f}x")
    print(f"  fwd+bwd / own fwd            {r['dcn_fwdbwd'] / r['dcn_fwd']:.2f}x  (target <= 3.5)")
    print(f"  fwd+bwd / conv2d fwd+bwd     {r['dcn_fwdbwd'] / r['conv_fwdbwd']:.2f}x")
    if "mlx_dcn_fwd" in r:
        print(f"  mlx fwd / mx.conv2d fwd      {r['mlx_dcn_fwd'] / r['mlx_conv_fwd']:.2f}x  (target <= 2.0)")


def print_rounds(names, rounds):
    """The target ratios of every round: on a shared machine one round's
    ratio can sit on either side of a target that the spread straddles."""
    print("\n| config | fwd / onnxruntime, each round | fwd+bwd / fwd, each round |")
    print("|---|---|---|")
    for name in names:
        rs = [rd[name] for rd in rounds]
        ort = ", ".join(f"{r['dcn_fwd'] / r['ort_fwd']:.2f}x" if "ort_fwd" in r else "-" for r in rs)
        fb = ", ".join(f"{r['dcn_fwdbwd'] / r['dcn_fwd']:.2f}x" for r in rs)
        print(f"| {name} | {ort} | {fb} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20, help="timed calls of each function")
    ap.add_argument("--blocks", type=int, default=4,
                    help="the torch-side functions take turns in this many blocks each")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every config this many times and print each round's ratios")
    ap.add_argument("--configs", default="A,B,C")
    ap.add_argument("--no-mlx", action="store_true", help="torch-side peers only")
    ap.add_argument("--markdown", action="store_true", help="print a README table (of the last round)")
    args = ap.parse_args()

    print(f"# {datetime.date.today()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, dcn threads {dcn_torch.get_num_threads()}")
    names = args.configs.split(",")
    rounds = []
    for i in range(args.rounds):
        if args.rounds > 1:
            print(f"\n## round {i + 1} of {args.rounds}")
        results = {}
        for name in names:
            cfg = CONFIGS[name]
            r = bench_torch(cfg, args.repeats, args.blocks)
            if not args.no_mlx:
                r.update(bench_mlx(cfg, max(3, args.repeats // 2)))
            results[name] = r
            print_config(name, cfg, r)
        rounds.append(results)
    if args.rounds > 1:
        print_rounds(names, rounds)
    rows = [(name, CONFIGS[name], rounds[-1][name]) for name in names]

    if args.markdown:
        print("\n| config | dcn fwd | onnxruntime fwd | ratio | conv2d fwd | dcn fwd+bwd | fwd+bwd / fwd | conv2d fwd+bwd |")
        print("|---|---|---|---|---|---|---|---|")
        for name, cfg, r in rows:
            ort = r.get("ort_fwd", float("nan"))
            print(f"| {name} {cfg.label} | {r['dcn_fwd']:.2f} ms | {ort:.2f} ms | "
                  f"{r['dcn_fwd'] / ort:.2f}x | {r['conv_fwd']:.2f} ms | {r['dcn_fwdbwd']:.2f} ms | "
                  f"{r['dcn_fwdbwd'] / r['dcn_fwd']:.2f}x | {r['conv_fwdbwd']:.2f} ms |")
        if any("mlx_dcn_fwd" in r for _, _, r in rows):
            print("\n| config (MLX, CPU) | dcn_mlx fwd | mx.conv2d fwd | ratio | dcn_mlx fwd+bwd | mx.conv2d fwd+bwd |")
            print("|---|---|---|---|---|---|")
            for name, cfg, r in rows:
                print(f"| {name} {cfg.label} | {r['mlx_dcn_fwd']:.1f} ms | {r['mlx_conv_fwd']:.1f} ms | "
                      f"{r['mlx_dcn_fwd'] / r['mlx_conv_fwd']:.2f}x | {r['mlx_dcn_fwdbwd']:.1f} ms | "
                      f"{r['mlx_conv_fwdbwd']:.1f} ms |")


if __name__ == "__main__":
    main()
