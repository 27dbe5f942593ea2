"""CUDA speed of dcn against its peers, all measured in the same process (issue 5).

Configs (3x3, stride 1, padding 1, mask and bias, offsets ~ 2 * randn):

  A 1x256x64x64 -> 256     B 1x256x128x128 -> 256    C 8x64x64x64 -> 64, 8 offset groups
  D 16x256x32x32 -> 256    E 32x64x56x56 -> 64

in float32, float16 and bfloat16, forward (under no_grad) and forward+backward
(all five gradients; conv2d: input, weight and bias), for

  dcn       dcn_torch.deform_conv2d, default mode (atomic input gradient)
  dcn det   the same with dcn_torch.set_deterministic(True)
  tv        torchvision.ops.deform_conv2d (when importable; it has no bfloat16 kernels,
            so those cells say n/a with torchvision's error)
  conv2d    torch.nn.functional.conv2d (cuDNN) of the same input and weight

Timing: CUDA events around each call after --warmup calls, median of --repeats.
A failing cell (an error, out of memory) is reported as n/a with its error;
nothing is estimated. Targets (issue 5), marked met / not met per cell:

  tv / dcn forward           >= 3    (float32, float16)
  dcn / conv2d forward       <= 1.5  (bfloat16)
  tv / dcn forward+backward  >= 3    (where torchvision runs)
  det / default fwd+bwd      <= 1.3  (every dtype)

Prints a markdown table and writes it, with the device, date, versions,
dcn's build_info and the exact command, to --out (default
benchmarks/results/cuda-<device>-<date>.md) and the same as JSON next to it:

    python benchmarks/bench_cuda.py [--repeats 20] [--configs A,B,C,D,E] [--dtypes f32,f16,bf16]
    python benchmarks/bench_cuda.py --device cpu --quick    # smoke test of this script on the CPU
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from configs import Config  # benchmarks/ is on sys.path for a script
from timing import wall_times_ms

import dcn_torch

HERE = os.path.dirname(os.path.abspath(__file__))


CONFIGS = {
    "A": Config(1, 256, 64, 64, 256),
    "B": Config(1, 256, 128, 128, 256),
    "C": Config(8, 64, 64, 64, 64, offset_groups=8),
    "D": Config(16, 256, 32, 32, 256),
    "E": Config(32, 64, 56, 56, 64),
}
#: --quick: tiny shapes that only exercise this script's logic
QUICK_CONFIGS = {
    "q1": Config(1, 16, 12, 12, 16),
    "q2": Config(2, 16, 10, 10, 16, offset_groups=4),
}
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}

#: (method, phase) columns, in table order
METHODS = ("dcn", "dcn_det", "tv", "conv")
METHOD_LABEL = {"dcn": "dcn", "dcn_det": "dcn det", "tv": "tv", "conv": "conv2d"}
PHASES = ("fwd", "fwdbwd")
PHASE_LABEL = {"fwd": "fwd", "fwdbwd": "fwd+bwd"}


@dataclasses.dataclass(frozen=True)
class Target:
    key: str
    label: str
    num: tuple  # (method, phase)
    den: tuple
    op: str  # ">=" or "<="
    threshold: float
    dtypes: tuple  # dtype keys the target is about

    def met(self, ratio: float) -> bool:
        return ratio >= self.threshold if self.op == ">=" else ratio <= self.threshold

    @property
    def text(self) -> str:
        return f"{self.label} {self.op} {self.threshold:g} ({', '.join(self.dtypes)})"


TARGETS = (
    Target("tv_over_dcn_fwd", "tv / dcn fwd", ("tv", "fwd"), ("dcn", "fwd"), ">=", 3.0, ("f32", "f16")),
    Target("dcn_over_conv_fwd", "dcn / conv2d fwd", ("dcn", "fwd"), ("conv", "fwd"), "<=", 1.5, ("bf16",)),
    Target("tv_over_dcn_fwdbwd", "tv / dcn fwd+bwd", ("tv", "fwdbwd"), ("dcn", "fwdbwd"), ">=", 3.0,
           ("f32", "f16", "bf16")),
    Target("det_over_default_fwdbwd", "det / default fwd+bwd", ("dcn_det", "fwdbwd"), ("dcn", "fwdbwd"),
           "<=", 1.3, ("f32", "f16", "bf16")),
)


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------


def _summary(times_ms: List[float]) -> dict:
    return {"ms": statistics.median(times_ms), "min_ms": min(times_ms), "max_ms": max(times_ms),
            "samples": len(times_ms)}


def time_cuda(fn: Callable[[], None], repeats: int, warmup: int) -> dict:
    """Median of ``repeats`` calls, each timed by CUDA events on the current
    stream (GPU time from the first kernel to the last, launch gaps included)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(repeats)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return _summary([start.elapsed_time(end) for start, end in events])


def time_cpu(fn: Callable[[], None], repeats: int, warmup: int) -> dict:
    return _summary(wall_times_ms(fn, repeats, warmup))


def _error_text(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first[:300]}"


# ---------------------------------------------------------------------------
# the peers
# ---------------------------------------------------------------------------


def make_inputs(cfg: Config, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    """Inputs drawn in float32 on the CPU (the same values for every device),
    then converted; weights scaled by 1/sqrt(fan_in) so outputs are O(1)."""
    g = torch.Generator().manual_seed(seed)
    N, C, H, W, O, G = cfg.N, cfg.C, cfg.H, cfg.W, cfg.O, cfg.offset_groups
    t = dict(
        input=torch.randn(N, C, H, W, generator=g),
        weight=torch.randn(O, C, 3, 3, generator=g) / (C * 9) ** 0.5,
        bias=torch.randn(O, generator=g) * 0.1,
        offset=torch.randn(N, 2 * G * 9, H, W, generator=g) * 2.0,
        mask=torch.rand(N, G * 9, H, W, generator=g),
        grad_out=torch.randn(N, O, H, W, generator=g),
    )
    return {k: v.to(device=device, dtype=dtype) for k, v in t.items()}


def _dcn(t: dict):
    return dcn_torch.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], padding=1, mask=t["mask"])


def _tv(t: dict):
    import torchvision.ops

    return torchvision.ops.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], padding=(1, 1),
                                         mask=t["mask"])


def _conv(t: dict):
    return F.conv2d(t["input"], t["weight"], t["bias"], padding=1)


FORWARD = {"dcn": _dcn, "dcn_det": _dcn, "tv": _tv, "conv": _conv}
#: arguments that get gradients in forward+backward
GRAD_ARGS = {m: ("input", "offset", "weight", "mask", "bias") for m in ("dcn", "dcn_det", "tv")}
GRAD_ARGS["conv"] = ("input", "weight", "bias")


def forward_fn(method: str, t: dict) -> Callable[[], None]:
    fwd = FORWARD[method]

    def run():
        with torch.no_grad():
            fwd(t)

    return run


def fwdbwd_fn(method: str, t: dict) -> Callable[[], None]:
    fwd = FORWARD[method]
    leaves = {k: (v.detach().clone().requires_grad_(k in GRAD_ARGS[method]) if k != "grad_out" else v)
              for k, v in t.items()}
    grads = [leaves[k] for k in GRAD_ARGS[method]]

    def run():
        for p in grads:
            p.grad = None  # as optimizer.zero_grad() does: no accumulation cost
        fwd(leaves).backward(leaves["grad_out"])

    return run


@contextlib.contextmanager
def dcn_mode(method: str):
    """dcn's deterministic switch for the ``dcn_det`` column (back to the
    default, None, afterwards)."""
    if method != "dcn_det":
        yield
        return
    dcn_torch.set_deterministic(True)
    try:
        yield
    finally:
        dcn_torch.set_deterministic(None)


# ---------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------


def unavailable_methods() -> Dict[str, str]:
    """method -> why it is not measured at all (every cell n/a)."""
    out = {}
    if not hasattr(dcn_torch, "set_deterministic"):
        out["dcn_det"] = "this dcn_torch build has no set_deterministic (no deterministic switch)"
    try:
        import torchvision.ops  # noqa: F401
    except Exception as e:
        out["tv"] = f"torchvision not importable ({_error_text(e)})"
    return out


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float32."""
    a, b = a.float(), b.float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def bench_cell(cfg: Config, dtype_key: str, args, skip: Dict[str, str], timer) -> dict:
    t = make_inputs(cfg, DTYPES[dtype_key], args.device)
    row = {"config": cfg.label, "dtype": dtype_key, "times": {}, "errors": {}, "checks": {}}
    for method in METHODS:
        for phase in PHASES:
            key = f"{method}_{phase}"
            if method in skip:
                row["errors"][key] = skip[method]
                continue
            try:
                with dcn_mode(method):
                    fn = forward_fn(method, t) if phase == "fwd" else fwdbwd_fn(method, t)
                    row["times"][key] = timer(fn)
            except Exception as e:  # per cell: an unsupported dtype, out of memory, a kernel error
                row["errors"][key] = _error_text(e)
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    # dcn and torchvision must compute the same thing for the comparison to mean anything
    if "dcn_fwd" in row["times"] and "tv_fwd" in row["times"]:
        try:
            with torch.no_grad():
                row["checks"]["max_rel_diff_dcn_vs_tv_fwd"] = relative_diff(_dcn(t), _tv(t))
        except Exception as e:
            row["errors"]["check"] = _error_text(e)
    row["ratios"] = ratios(row)
    del t
    dcn_torch.empty_cache()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return row


def ratios(row: dict) -> dict:
    out = {}
    for tg in TARGETS:
        num, den = row["times"].get("_".join(tg.num)), row["times"].get("_".join(tg.den))
        entry = {"ratio": None, "target_applies": row["dtype"] in tg.dtypes, "met": None}
        if num is not None and den is not None:
            entry["ratio"] = num["ms"] / den["ms"]
            if entry["target_applies"]:
                entry["met"] = tg.met(entry["ratio"])
        out[tg.key] = entry
    return out


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "unknown"


def metadata(args, device_name: str) -> dict:
    now = datetime.datetime.now(datetime.timezone.utc)
    meta = {
        "date": now.date().isoformat(),
        "time_utc": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "device": args.device,
        "device_name": device_name,
        "host": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "settings": {
            "cudnn.benchmark": torch.backends.cudnn.benchmark,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "repeats": args.repeats,
            "warmup": args.warmup,
        },
        "dcn_build_info": dcn_torch.build_info(),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }
    try:
        import torchvision

        meta["torchvision"] = torchvision.__version__
    except Exception as e:
        meta["torchvision"] = f"not importable ({_error_text(e)})"
    if args.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        meta["device_properties"] = {
            "compute_capability": f"{p.major}.{p.minor}",
            "memory_gib": round(p.total_memory / 2**30, 1),
            "multiprocessors": p.multi_processor_count,
        }
        meta["driver"] = _driver_version()
    return meta


def _driver_version() -> Optional[str]:
    """The NVIDIA driver version, from nvidia-smi (None when it is not there)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _ms(row: dict, key: str) -> str:
    cell = row["times"].get(key)
    return "n/a" if cell is None else f"{cell['ms']:.3f}"


def _ratio_cell(entry: dict) -> str:
    if entry["ratio"] is None:
        return "n/a"
    s = f"{entry['ratio']:.2f}x"
    if entry["met"] is not None:
        s += " ✓" if entry["met"] else " ✗"
    return s


def markdown(meta: dict, rows: List[dict]) -> str:
    lines = [f"# dcn benchmark: {meta['device_name']}, {meta['date']}", ""]
    lines += [
        f"- date: {meta['time_utc']}",
        f"- device: {meta['device_name']}"
        + (f" (sm {meta['device_properties']['compute_capability']}, "
           f"{meta['device_properties']['multiprocessors']} SMs, {meta['device_properties']['memory_gib']} GiB; "
           f"driver {meta.get('driver')})" if "device_properties" in meta else ""),
        f"- host: {meta['host']}",
        f"- torch {meta['torch']} (CUDA {meta['torch_cuda']}, cuDNN {meta['cudnn']}), "
        f"torchvision {meta['torchvision']}",
        f"- settings: {', '.join(f'{k}={v}' for k, v in meta['settings'].items())}",
        f"- dcn build_info: `{json.dumps(meta['dcn_build_info'], sort_keys=True)}`",
        f"- command: `{meta['command']}`",
        "",
        "Milliseconds, median of the repeats (CUDA events on the GPU, wall clock on the CPU). "
        "fwd runs under no_grad; fwd+bwd computes every gradient (conv2d: input, weight, bias). "
        "✓ / ✗: the issue's target for that ratio and dtype met / not met.",
        "",
    ]
    head = ["config", "dtype"]
    head += [f"{METHOD_LABEL[m]} {PHASE_LABEL[p]}" for p in PHASES for m in METHODS]
    head += [tg.label for tg in TARGETS] + ["max rel diff dcn vs tv (fwd)"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        cells = [r["config"], r["dtype"]]
        cells += [_ms(r, f"{m}_{p}") for p in PHASES for m in METHODS]
        cells += [_ratio_cell(r["ratios"][tg.key]) for tg in TARGETS]
        d = r["checks"].get("max_rel_diff_dcn_vs_tv_fwd")
        cells.append("n/a" if d is None else f"{d:.1e}")
        lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "## Targets", ""]
    for tg in TARGETS:
        entries = [(r, r["ratios"][tg.key]) for r in rows if r["dtype"] in tg.dtypes]
        met = [f"{r['config']} {r['dtype']}" for r, e in entries if e["met"] is True]
        missed = [f"{r['config']} {r['dtype']} ({e['ratio']:.2f}x)" for r, e in entries if e["met"] is False]
        unmeasured = [f"{r['config']} {r['dtype']}" for r, e in entries if e["met"] is None]
        line = f"- {tg.text}: met in {len(met)} of {len(entries) - len(unmeasured)} measured cells"
        if missed:
            line += "; not met: " + ", ".join(missed)
        if unmeasured:
            line += "; not measured: " + ", ".join(unmeasured)
        lines.append(line)

    by_error: Dict[str, List[str]] = {}
    for r in rows:
        for k, v in r["errors"].items():
            by_error.setdefault(f"{k}: {v}", []).append(f"{r['config']} {r['dtype']}")
    if by_error:
        lines += ["", "## n/a cells", ""]
        for text, where in by_error.items():
            lines.append(f"- {text} ({', '.join(where)})")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: smoke-test this script's logic where there is no GPU")
    ap.add_argument("--quick", action="store_true", help="tiny configs (q1, q2) and few repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per cell (default 20; 3 with --quick)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 5; 2 with --quick)")
    ap.add_argument("--configs", default=None, help="comma-separated: A,B,C,D,E (default all; q1,q2 with --quick)")
    ap.add_argument("--dtypes", default="f32,f16,bf16")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="let cuDNN autotune conv2d (torch.backends.cudnn.benchmark = True)")
    ap.add_argument("--out", default=None,
                    help="markdown report path (JSON next to it); default "
                         "benchmarks/results/<device>-<name>-<date>.md")
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    table = QUICK_CONFIGS if args.quick else CONFIGS
    names = args.configs.split(",") if args.configs else list(table)
    unknown = [n for n in names if n not in table] + [d for d in args.dtypes.split(",") if d not in DTYPES]
    if unknown:
        ap.error(f"unknown config/dtype {unknown}; configs: {list(table)}, dtypes: {list(DTYPES)}")

    if args.device == "cuda":
        if not torch.cuda.is_available():
            ap.error("torch sees no CUDA device (use --device cpu --quick for a smoke test)")
        if "cuda" not in dcn_torch.build_info()["backends"]:
            print("# warning: this dcn build has no CUDA backend; its cells will be n/a", file=sys.stderr)
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
        device_name = torch.cuda.get_device_name(0)
        device_slug = _slug(device_name)

        def timer(fn):
            return time_cuda(fn, args.repeats, args.warmup)
    else:
        device_name = f"CPU {platform.processor() or platform.machine()}"
        device_slug = _slug(platform.machine())

        def timer(fn):
            return time_cpu(fn, args.repeats, args.warmup)

    meta = metadata(args, device_name)
    skip = unavailable_methods()
    for method, why in skip.items():
        print(f"# {METHOD_LABEL[method]}: n/a, {why}", file=sys.stderr)

    rows = []
    for name in names:
        for dt in args.dtypes.split(","):
            print(f"# {name} {table[name].label} {dt} ...", file=sys.stderr, flush=True)
            row = bench_cell(table[name], dt, args, skip, timer)
            row["name"] = name
            rows.append(row)

    md = markdown(meta, rows)
    print(md)
    out = args.out or os.path.join(HERE, "results", f"{args.device}-{device_slug}-{meta['date']}.md")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(md)
    json_path = os.path.splitext(out)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "targets": [dataclasses.asdict(t) for t in TARGETS], "rows": rows}, f,
                  indent=1, default=str)
    print(f"# wrote {out} and {json_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
