"""Peak memory of a large-batch dcn_torch forward and forward+backward,
printed next to the documented workspace budget.

Each measurement runs in a fresh subprocess: after the imports and the
inputs are allocated and touched, it records the resident set size (RSS,
/proc/self/statm), runs the op once, and reports the peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) minus that baseline, i.e. the
extra memory the call needed at its worst moment. README ("Memory") bounds
the column buffers by the workspace budget (at least one image): one buffer
in the forward, two in the backward. The call also has to hold its results
(the output; in the backward the gradients and grad_out), so

    forward            peak extra <=   budget_cols + output           (+ slack)
    forward+backward   peak extra <= 3*budget_cols + output + grads   (+ slack)

(forward+backward holds three buffers: the forward's stays in the per-thread
cache while the backward uses its two.)

where ``budget_cols = max(budget, one image's columns)`` rounded to whole
images. ``slack`` covers the GEMM's per-chunk temporaries (a chunk of the
output before it is laid out NCHW, the column gradient's weight product) and
allocator rounding; the table prints the measured peak beside the bound and
the difference. Measured on the 2-core CI machine, that difference is a
constant ~30-40 MiB in forward+backward, independent of batch size and
budget (torch's GEMM / thread-pool scratch and malloc arenas): the call's
memory is bounded by the budget, not by the batch.

    python benchmarks/bench_memory.py                   # 64x64x56x56 -> 64, 3x3, float32
    python benchmarks/bench_memory.py --n 16 --budgets 256,16,1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

MiB = 1 << 20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(args) -> None:
    import torch

    import dcn_torch

    torch.manual_seed(0)
    if args.budget_mib is not None:
        dcn_torch.set_workspace_limit(int(args.budget_mib * MiB))
    N, C, H, W, O, k = args.n, args.c, args.hw, args.hw, args.o, 3
    Ho = Wo = H  # padding 1, stride 1
    x = torch.randn(N, C, H, W)
    offset = torch.randn(N, 2 * k * k, Ho, Wo)
    mask = torch.rand(N, k * k, Ho, Wo)
    weight = torch.randn(O, C, k, k) * 0.05
    bias = torch.randn(O)
    grad_out = torch.randn(N, O, Ho, Wo) if args.child == "backward" else None
    if args.child == "backward":
        for t in (x, offset, mask, weight, bias):
            t.requires_grad_(True)
    # warm torch's own lazily initialised state on a tiny problem (thread
    # pools, GEMM packing), not counted; then drop dcn's cached buffers
    tiny = [t[:1, :, :4, :4].detach().clone() for t in (x, offset, mask)]
    dcn_torch.deform_conv2d(tiny[0], tiny[1], weight.detach(), None, padding=1, mask=tiny[2])
    dcn_torch.empty_cache()
    base = _rss_bytes()
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.child == "forward":
        with torch.no_grad():
            out = dcn_torch.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    else:
        out = dcn_torch.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
        out.backward(grad_out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    es = x.element_size()
    print(json.dumps(dict(
        base=base, peak=peak, peak_before=peak0,
        budget=dcn_torch.get_workspace_limit(),
        col_image=C * k * k * Ho * Wo * es,
        inputs=sum(t.numel() * es for t in (x, offset, mask, weight, bias)),
        output=out.numel() * es,
        grads=sum(t.numel() * es for t in (x, offset, mask, weight, bias)) if args.child == "backward" else 0,
    )))


def _measure(mode: str, budget_mib, a) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode,
           "--n", str(a.n), "--c", str(a.c), "--hw", str(a.hw), "--o", str(a.o)]
    if budget_mib is not None:
        cmd += ["--budget-mib", str(budget_mib)]
    env = dict(os.environ)
    # run outside the repository so the installed package is imported
    r = subprocess.run(cmd, capture_output=True, text=True, cwd="/", env=env)
    if r.returncode != 0:
        raise SystemExit(f"child failed ({mode}, budget {budget_mib}):\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", choices=["forward", "backward"])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--c", type=int, default=64)
    ap.add_argument("--hw", type=int, default=56)
    ap.add_argument("--o", type=int, default=64)
    ap.add_argument("--budget-mib", type=float, default=None)
    ap.add_argument("--budgets", default="default,16",
                    help="comma list of workspace budgets in MiB ('default' = the library's)")
    a = ap.parse_args()
    if a.child:
        _child(a)
        return

    print(f"dcn_torch deform_conv2d {a.n}x{a.c}x{a.hw}x{a.hw} -> {a.o}, 3x3, pad 1, float32, with mask + bias")
    print("peak = max RSS during the call minus RSS before it (fresh process per row)\n")
    hdr = (f"{'mode':9} {'budget':>9} {'cols/img':>9} {'chunk':>6} {'inputs':>8} {'output':>8} "
           f"{'grads':>8} {'bound':>9} {'peak':>9} {'peak-bound':>10}")
    print(hdr)
    print("-" * len(hdr))
    ok = True
    for b in a.budgets.split(","):
        budget_mib = None if b.strip() == "default" else float(b)
        for mode in ("forward", "backward"):  # "backward" = forward + backward
            m = _measure(mode, budget_mib, a)
            chunk = max(1, min(a.n, m["budget"] // m["col_image"]))
            cols = chunk * m["col_image"]
            nbuf = 1 if mode == "forward" else 3
            bound = nbuf * cols + m["output"] + m["grads"]
            extra = m["peak"] - max(m["base"], 0)
            if m["peak_before"] > m["base"] + extra:  # peak reached before the call: unmeasurable
                extra = float("nan")
            print(f"{mode:9} {m['budget'] / MiB:8.1f}M {m['col_image'] / MiB:8.2f}M {chunk:6d} "
                  f"{m['inputs'] / MiB:7.1f}M {m['output'] / MiB:7.1f}M {m['grads'] / MiB:7.1f}M "
                  f"{bound / MiB:8.1f}M {extra / MiB:8.1f}M {(extra - bound) / MiB:9.1f}M")
            # slack: per-chunk GEMM temporaries (one chunk of output, one of
            # columns) + 48 MiB of fixed torch/allocator overhead
            slack = chunk * (m["output"] // a.n) + cols + 48 * MiB
            if extra > bound + slack:
                ok = False
                print(f"  !! exceeds budget bound + slack ({(bound + slack) / MiB:.1f} MiB)")
    print("\nbound = (1 fwd | 3 fwd+bwd) x chunk x cols/img + output (+ grads); "
          "documented budget: dcn_torch.get_workspace_limit()")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
