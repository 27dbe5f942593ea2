"""Where a CPU forward+backward's time goes: the same layer timed at three
levels, in one process, the levels taking turns (timing.py):

  op          dcn_torch.deform_conv2d through torch.library and autograd,
              as bench_cpu.py times it (forward under no autograd; forward +
              backward of out.sum() with all five gradients);
  bodies      the ops' Python bodies called directly (dcn_torch.ops._forward
              and _backward): the same kernels, GEMMs, layout copies and
              allocations, without the dispatcher and autograd;
  arithmetic  only the work the algorithm cannot skip, on prepared buffers,
              image by image: forward = im2col + one GEMM (P, K*C) @ (K*C, O);
              backward = the column-gradient GEMM (P, O) @ (O, K*C), the fused
              col2im + coordinate gradient (which also rebuilds the columns)
              and the weight-gradient GEMM (K*C, P) @ (P, O).

For each level it prints forward, forward+backward and their ratio (issue 2's
target: forward+backward <= 3.5x the forward). The arithmetic level's ratio
is a floor for the others: three GEMMs of one size against one, plus the
sampling kernels. torch.conv2d's own times are printed for scale.

    python benchmarks/anatomy_cpu.py [--configs A,C] [--repeats 40] [--blocks 8]

Channels-last configs without weight groups only (A, B, C, D), the path
those take on the CPU.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch
import torch.nn.functional as F

import dcn_torch
from dcn_torch import _C, ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu import CONFIGS, make_inputs  # noqa: E402
from timing import interleaved_medians_ms  # noqa: E402


def level_fns(cfg):
    x, w, b, off, mask = make_inputs(cfg)
    N, C, H, W, O = cfg.N, cfg.C, cfg.H, cfg.W, cfg.O
    K, P = 9, H * W
    KC = K * C
    params = ((1, 1), (1, 1), (1, 1))
    grad = torch.ones(N, O, H, W)
    fns = {}

    # op
    xs, ws, bs, offs, ms = (t.clone().requires_grad_() for t in (x, w, b, off, mask))

    def op_fwd_bwd():
        for t in (xs, ws, bs, offs, ms):
            t.grad = None
        dcn_torch.deform_conv2d(xs, offs, ws, bs, padding=1, mask=ms).sum().backward()

    fns["op fwd"] = lambda: dcn_torch.deform_conv2d(x, off, w, b, padding=1, mask=mask)
    fns["op fwd+bwd"] = op_fwd_bwd

    # bodies
    def body_fwd():
        return ops._forward(x, w, off, mask, b, *params)

    def body_fwd_bwd():
        body_fwd()
        ops._backward(grad, x, w, off, mask, b, *params, [True] * 5)

    fns["bodies fwd"] = body_fwd
    fns["bodies fwd+bwd"] = body_fwd_bwd

    # arithmetic, on buffers prepared once
    xc = x.contiguous(memory_format=torch.channels_last)
    wt = w.permute(0, 2, 3, 1).reshape(O, KC).t().contiguous()  # (K*C, O)
    wk = wt.t().contiguous()  # (O, K*C)
    cols = torch.empty(N, H, W, KC)
    gcols = torch.empty(N, H, W, KC)
    out = torch.empty(N, P, O)
    gi, go, gm = torch.empty(x.shape), torch.empty(off.shape), torch.empty(mask.shape)
    gw = torch.empty(KC, O)
    g = grad.view(N, O, P)

    def arith_fwd():
        for n in range(N):
            _C.im2col(xc[n:n + 1], off[n:n + 1], mask[n:n + 1], cols[n:n + 1], (3, 3), *params,
                      0, True)
            torch.mm(cols[n].view(P, KC), wt, out=out[n])

    def arith_bwd():
        for n in range(N):
            torch.mm(g[n].t(), wk, out=gcols[n].view(P, KC))
            _C.col2im_and_coord_grad(gcols[n:n + 1], xc[n:n + 1], off[n:n + 1], mask[n:n + 1],
                                     gi[n:n + 1], go[n:n + 1], gm[n:n + 1], cols[n:n + 1],
                                     (3, 3), *params, True)
            if n == 0:
                torch.mm(cols[n].view(P, KC).t(), g[n].t(), out=gw)
            else:
                gw.addmm_(cols[n].view(P, KC).t(), g[n].t())

    def arith_fwd_bwd():
        arith_fwd()
        arith_bwd()

    fns["arithmetic fwd"] = arith_fwd
    fns["arithmetic fwd+bwd"] = arith_fwd_bwd

    # torch.conv2d, for scale
    xc2, wc2, bc2 = (t.clone().requires_grad_() for t in (x, w, b))

    def conv_fwd_bwd():
        for t in (xc2, wc2, bc2):
            t.grad = None
        F.conv2d(xc2, wc2, bc2, padding=1).sum().backward()

    fns["conv2d fwd"] = lambda: F.conv2d(x, w, b, padding=1)
    fns["conv2d fwd+bwd"] = conv_fwd_bwd
    return fns


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="A,C")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--blocks", type=int, default=8)
    args = ap.parse_args()
    print(f"# {datetime.date.today()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"dcn threads {dcn_torch.get_num_threads()}")
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        if cfg.groups != 1:
            raise SystemExit(f"{name}: weight groups take another path; configs without them only")
        r = interleaved_medians_ms(level_fns(cfg), args.repeats, args.blocks)
        print(f"\n{name} {cfg.label}")
        print("| level | fwd | fwd+bwd | fwd+bwd / fwd |")
        print("|---|---|---|---|")
        for level in ("op", "bodies", "arithmetic", "conv2d"):
            f, fb = r[f"{level} fwd"], r[f"{level} fwd+bwd"]
            print(f"| {level} | {f:.3f} ms | {fb:.3f} ms | {fb / f:.2f}x |")


if __name__ == "__main__":
    main()
