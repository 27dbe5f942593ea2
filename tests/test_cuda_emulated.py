"""The CUDA kernels (core/cuda/*.cu), compiled as C++ and run on the host.

No GPU is needed: tests/cuda/shim stands in for <cuda_runtime.h>, the half
types, atomicAdd, the built-in thread indices, kernel launches (an emulated
grid: serial, shuffled, or blocks on several host threads) and CUB's radix
sort (a stable host sort that also checks CUB's key-bits contract), so the
unmodified .cu sources compile with g++. tests/cuda/harness.cpp runs every
kernel on every conformance case, in float32/float64/float16/bfloat16, in
torch's NCHW layout and MLX's NHWC layout, and compares with the CPU kernels:

* im2col, coord_grad and the deterministic col2im bit for bit,
* the atomic col2im within a summation tolerance,

under AddressSanitizer + UndefinedBehaviorSanitizer (float-cast-overflow
included), again with the 64-bit index path forced and with a tiny grid so
the grid-stride loops take several steps, and under ThreadSanitizer with
blocks on 4 host threads (the atomics really contend). Separately, CI
compiles the same sources with nvcc (.ci/run); what only a GPU can confirm
(speed, the real CUB sort, launch limits) is in tests/test_cuda.py.

Run with ``pytest -m cuda_emulated``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.cuda_emulated

ROOT = Path(__file__).resolve().parents[1]
try:
    from emulation.sanitizers import ASAN, TSAN, sanitizer_env
except ImportError:  # pragma: no cover - depends on pytest's import mode
    sys.path.insert(0, str(ROOT / "tests"))
    from emulation.sanitizers import ASAN, TSAN, sanitizer_env
CUDA_SOURCES = sorted(p for p in (ROOT / "core" / "cuda").glob("*.cu") if p.name != "info.cu")
CPU_SOURCES = sorted((ROOT / "core" / "cpu").glob("*.cpp")) + [ROOT / "core" / "validate.cpp"]
HARNESS = ROOT / "tests" / "cuda" / "harness.cpp"
SHIM = ROOT / "tests" / "cuda" / "shim"
# The shim first, so <cuda_runtime.h> & co. resolve to it.
INCLUDES = [f"-I{SHIM}", f"-I{ROOT / 'core' / 'include'}", f"-I{ROOT / 'core' / 'cuda'}",
            f"-I{ROOT / 'tests' / 'emulation'}"]
# -ffp-contract=off: as the CPU build (and nvcc --fmad=false), so the bitwise
# comparisons hold. -O0: the cases are tiny, sanitizer builds compile faster.
BASE = ["-std=c++17", "-O0", "-g", "-ffp-contract=off", "-fno-omit-frame-pointer",
        "-include", str(SHIM / "cuda_shim.h")]
VARIANTS = {
    "asan": ASAN,
    # every launch on the 64-bit index path, and at most 2 blocks: the
    # grid-stride loops run several steps per thread
    "asan_int64": ASAN + ["-DDCN_CUDA_INT32_LIMIT=0", "-DDCN_CUDA_MAX_BLOCKS=2"],
    "tsan": TSAN,
    "plain": [],
}


def _build(variant: str, outdir: Path, cuda_dir: Path | None = None):
    """Compile CPU kernels, CUDA kernels (from cuda_dir, a planted-bug copy,
    when given) and the harness, one TU each in parallel, and link."""
    includes = list(INCLUDES)
    cuda_sources = CUDA_SOURCES
    if cuda_dir is not None:
        includes[2] = f"-I{cuda_dir}"  # replaces core/cuda
        cuda_sources = [cuda_dir / p.name for p in CUDA_SOURCES]
    flags = BASE + VARIANTS[variant] + includes
    outdir.mkdir(parents=True, exist_ok=True)
    jobs, objs = [], []
    for src in CPU_SOURCES + cuda_sources + [HARNESS]:
        obj = outdir / (src.name + ".o")
        lang = ["-x", "c++"] if src.suffix == ".cu" else []
        warn = ["-Wall", "-Wextra", "-Werror"] if src in cuda_sources or src == HARNESS else []
        cmd = ["g++", *flags, *warn, *lang, "-c", str(src), "-o", str(obj)]
        jobs.append((cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True)))
        objs.append(str(obj))
    errors = []
    for cmd, proc in jobs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            errors.append(f"$ {' '.join(cmd)}\n{out}")
    if errors:
        return None, "\n".join(errors)
    exe = outdir / "harness"
    link = subprocess.run(["g++", *BASE[:-2], *VARIANTS[variant], *objs, "-o", str(exe),
                           "-lpthread"], capture_output=True, text=True)
    if link.returncode != 0:
        return None, link.stdout + link.stderr
    return exe, ""


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: the emulated CUDA tests compile the kernels with g++")
    root = tmp_path_factory.mktemp("cuda_emulated")
    return {v: _build(v, root / v) for v in ("asan", "asan_int64", "tsan")}


def _conformance_cases():
    try:
        from conformance.cases import CASES
    except ImportError:  # pragma: no cover - depends on pytest's import mode
        sys.path.insert(0, str(ROOT / "tests"))
        from conformance.cases import CASES
    return [c for c in CASES if c.N > 0]


def _write_case(case, path: Path) -> Path:
    arr = case.arrays()
    Ho, Wo = case.out_size
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = case.kernel, case.stride, case.padding, case.dilation
    rng = np.random.default_rng(case.default_seed + 2)
    gcol = rng.standard_normal((case.N, case.C, case.K, Ho * Wo))
    head = (f"{case.N} {case.C} {case.H} {case.W} {case.groups} {case.offset_groups} {kh} {kw} "
            f"{sh} {sw} {ph} {pw} {dh} {dw} {int(arr.mask is not None)}\n")
    parts = [arr.x, arr.offset] + ([arr.mask] if arr.mask is not None else []) + [gcol]
    path.write_bytes(head.encode() + b"".join(np.ascontiguousarray(a, "<f8").tobytes()
                                               for a in parts))
    return path


def _special_cases(tmp_path: Path):
    """Cases the table does not stress: many samples landing on the same
    pixels (long runs for the deterministic col2im, contended atomics), NaN
    and inf offsets and pixels, a channel count that splits unevenly."""
    rng = np.random.default_rng(7)
    out = []

    def write(name, N, C, H, W, groups, G, k, s, p, d, x, off, mask):
        Ho = (H + 2 * p - d * (k - 1) - 1) // s + 1
        gcol = rng.standard_normal((N, C, k * k, Ho * Ho))
        head = f"{N} {C} {H} {W} {groups} {G} {k} {k} {s} {s} {p} {p} {d} {d} {int(mask is not None)}\n"
        parts = [x, off] + ([mask] if mask is not None else []) + [gcol]
        path = tmp_path / name
        path.write_bytes(head.encode() + b"".join(np.ascontiguousarray(a, "<f8").tobytes()
                                                  for a in parts))
        out.append(path)

    # 3x3 input, 9x9 output: every sample lands in the same few pixels.
    N, C, H, k, p = 2, 5, 3, 3, 4
    Ho = H + 2 * p - k + 1
    base = rng.uniform(-0.9, 2.9, size=(N, 2, 1, Ho, Ho))
    ys = np.arange(Ho)[:, None] - p + np.arange(k).repeat(k)[:, None, None]
    xs = np.arange(Ho)[None, :] - p + np.tile(np.arange(k), k)[:, None, None]
    off = np.empty((N, 2 * k * k, Ho, Ho))
    off[:, 0::2] = base[:, 0] - ys
    off[:, 1::2] = base[:, 1] - xs
    write("clustered", N, C, H, H, 1, 1, k, 1, p, 1, rng.standard_normal((N, C, H, H)), off,
          rng.uniform(0, 1, (N, k * k, Ho, Ho)))
    # NaN / inf offsets and pixels, offset groups 2, weight groups 3 (C=6)
    x = rng.standard_normal((1, 6, 5, 5))
    x[0, 1, 2, 2], x[0, 4, 0, 3] = np.inf, np.nan
    off = rng.standard_normal((1, 2 * 2 * 9, 5, 5)) * 2
    off[0, 3, 1, 1], off[0, 8, 2, 2], off[0, 20, 4, 0] = np.nan, np.inf, -np.inf
    mask = rng.uniform(0, 1, (1, 2 * 9, 5, 5))
    mask[0, 5, 3, 3] = np.nan
    write("nonfinite", 1, 6, 5, 5, 3, 2, 3, 1, 1, 1, x, off, mask)
    # 37 channels in one offset group: the channel split leaves a short chunk
    write("uneven_channels", 1, 37, 4, 4, 1, 1, 3, 1, 1, 1, rng.standard_normal((1, 37, 4, 4)),
          rng.standard_normal((1, 18, 4, 4)), None)
    return out


def _run(exe, mode, files):
    r = subprocess.run([str(exe), "--mode", mode, *map(str, files)], capture_output=True,
                       text=True, env=sanitizer_env(), timeout=600)
    tail = (r.stdout + r.stderr)[-6000:]
    assert r.returncode == 0, f"harness exited {r.returncode}:\n{tail}"
    assert "MISMATCH" not in r.stdout, tail
    assert "\n0 mismatches" in r.stdout, tail
    return r.stdout


def _expected_lines(files, with_mask):
    # per file: 2 layouts x 4 dtypes x (im2col, 2 col2im, offset, columns,
    # columns-vs-im2col [+ mask])
    return sum(2 * 4 * (7 if m else 6) for m in with_mask)


@pytest.fixture(scope="module")
def case_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cuda_cases")
    table = _conformance_cases()
    files = [_write_case(c, d / c.name) for c in table]
    masks = [c.arrays().mask is not None for c in table]
    special = _special_cases(d)
    files += special
    masks += [b" 1\n" in p.read_bytes().split(b"\n", 1)[0] + b"\n" for p in special]
    return files, masks


@pytest.mark.parametrize("source", CUDA_SOURCES + [ROOT / "core" / "cuda" / "info.cu"],
                         ids=lambda p: p.name)
def test_cuda_source_compiles_as_cpp_cleanly(source):
    """Each .cu file alone, through the shim, every warning an error."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not installed")
    r = subprocess.run(["g++", *BASE, *INCLUDES, "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                        "-x", "c++", str(source)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("mode", ["serial", "shuffled"])
def test_kernels_match_cpu_under_asan_ubsan(harnesses, case_files, mode):
    exe, log = harnesses["asan"]
    assert exe is not None, f"ASan/UBSan build failed:\n{log[-6000:]}"
    files, masks = case_files
    assert len(files) >= 25
    out = _run(exe, mode, files)
    assert out.count(" ok") == _expected_lines(files, masks), out[-3000:]


def test_64bit_index_path_and_grid_stride_loops(harnesses, case_files):
    exe, log = harnesses["asan_int64"]
    assert exe is not None, f"ASan/UBSan (int64) build failed:\n{log[-6000:]}"
    files, masks = case_files
    out = _run(exe, "shuffled", files)
    assert out.count(" ok") == _expected_lines(files, masks), out[-3000:]


def test_atomics_under_tsan(harnesses, case_files):
    exe, log = harnesses["tsan"]
    assert exe is not None, f"TSan build failed:\n{log[-6000:]}"
    files, masks = case_files
    out = _run(exe, "parallel", files)
    assert out.count(" ok") == _expected_lines(files, masks), out[-3000:]


# Bugs a wrong kernel could plausibly have; the harness must catch each.
PLANTED = {
    "corner_order": ("common.cuh", "A(load(plane[c.idx[0]])),\n                         A(load(plane[c.idx[1]]))",
                     "A(load(plane[c.idx[1]])),\n                         A(load(plane[c.idx[0]]))"),
    "sort_bits": ("col2im.cu", "while (s.bits < 32 && (uint64_t(1) << s.bits) <= uint64_t(s.past_end)) ++s.bits;",
                  "while (s.bits < 32 && (uint64_t(1) << s.bits) < uint64_t(s.past_end)) ++s.bits;"),
    "channel_chunk": ("common.cuh", "s.c1 = s.c0 + chunk < end ? s.c0 + chunk : end;",
                      "s.c1 = s.c0 + chunk < end ? s.c0 + chunk - 1 : end;"),
    "mask_scale": ("coord_grad.cu", "goff[at + gos.c] = store<S>(outside ? A(0) : pt.m * ax);",
                   "goff[at + gos.c] = store<S>(outside ? A(0) : ax);"),
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_harness_catches_planted_bug(tmp_path, case_files, bug):
    """The comparison is not vacuous: a one-line bug makes the harness fail."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not installed")
    source, old, new = PLANTED[bug]
    d = tmp_path / "cuda"
    shutil.copytree(ROOT / "core" / "cuda", d)
    text = (d / source).read_text()
    assert old in text, f"planted-bug pattern no longer in {source}: {old!r}"
    (d / source).write_text(text.replace(old, new, 1))
    exe, log = _build("plain", tmp_path / "build", cuda_dir=d)
    assert exe is not None, log[-6000:]
    files, _ = case_files
    r = subprocess.run([str(exe), "--mode", "serial", *map(str, files)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode != 0 and ("MISMATCH" in r.stdout or "cub shim" in r.stderr), (
        f"planted bug {bug!r} went unnoticed:\n{r.stdout[-2000:]}")
