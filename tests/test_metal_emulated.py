"""The Metal kernels (core/metal/*.metal), compiled as C++ and run on the host.

No Apple GPU is needed: tests/metal/shim stands in for <metal_stdlib> (the
address-space keywords, half, bfloat, metal:: math, atomics), so the
unmodified .metal sources compile with g++ (and clang when installed).
tests/metal/harness.cpp dispatches every kernel over an emulated thread grid
(shuffled order, or thread groups on several host threads for the atomics)
and compares it with the CPU kernels of core/cpu on the same inputs, for
float32, float16 and bfloat16:

* im2col, the deterministic col2im and coord_grad must match bit for bit,
* the atomic col2im within a float32 summation tolerance,

under AddressSanitizer + UndefinedBehaviorSanitizer (with float-cast-overflow,
which catches NaN or huge offsets turning into indices), and the whole run
again under ThreadSanitizer for the atomic and parallel paths. Each .metal
file also gets a -Werror syntax check with every available compiler.

Run with ``pytest -m metal_emulated``.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.metal_emulated

ROOT = Path(__file__).resolve().parents[1]
try:
    from emulation.sanitizers import ASAN, TSAN, sanitizer_env
except ImportError:  # pragma: no cover - depends on pytest's import mode
    sys.path.insert(0, str(ROOT / "tests"))
    from emulation.sanitizers import ASAN, TSAN, sanitizer_env
METAL_SOURCES = sorted((ROOT / "core" / "metal").glob("*.metal"))
CPU_SOURCES = sorted((ROOT / "core" / "cpu").glob("*.cpp")) + [ROOT / "core" / "validate.cpp"]
HARNESS = ROOT / "tests" / "metal" / "harness.cpp"
INCLUDES = [
    f"-I{ROOT / 'core' / 'include'}",
    f"-I{ROOT / 'tests' / 'metal' / 'shim'}",
    f"-I{ROOT / 'core' / 'metal'}",
    f"-I{ROOT / 'tests' / 'metal'}",
    f"-I{ROOT / 'tests' / 'emulation'}",
]
# -ffp-contract=off on both sides: the bitwise comparisons assume neither the
# kernels nor the CPU code is contracted into FMAs. -O0: the cases are tiny,
# and sanitizer builds at -O1 take ~8x longer to compile.
BASE_FLAGS = ["-std=c++17", "-O0", "-g", "-ffp-contract=off", "-fno-omit-frame-pointer"]
SANITIZERS = {
    "asan": ASAN,
    "tsan": TSAN,
}
WARNINGS = ["-Wall", "-Wextra", "-Werror"]

# (name, harness case): key=value list, see tests/metal/harness.cpp.
CASES = [
    # torchvision's odd configuration: C=6, O=2, groups 2, offset groups 3,
    # kernel (3, 2), stride (2, 1), padding (1, 0), dilation (2, 1), 5x4 input
    ("torchvision_odd_mask", "N=1,C=6,H=5,W=4,groups=2,G=3,kh=3,kw=2,sh=2,sw=1,ph=1,pw=0,dh=2,dw=1,mask=1,off=normal,seed=1"),
    ("torchvision_odd_nomask", "N=1,C=6,H=5,W=4,groups=2,G=3,kh=3,kw=2,sh=2,sw=1,ph=1,pw=0,dh=2,dw=1,mask=0,off=normal,seed=2"),
    ("torchvision_odd_border", "N=2,C=6,H=5,W=4,groups=2,G=3,kh=3,kw=2,sh=2,sw=1,ph=1,pw=0,dh=2,dw=1,mask=1,off=border,seed=3"),
    ("border_3x3", "N=1,C=4,H=5,W=6,groups=2,G=2,kh=3,kw=3,ph=1,pw=1,mask=1,off=border,seed=4"),
    ("border_nomask", "N=1,C=3,H=3,W=4,groups=1,G=1,kh=3,kw=3,ph=2,pw=2,dh=2,dw=1,mask=0,off=border,seed=5"),
    ("integer_offsets", "N=1,C=3,H=4,W=3,groups=1,G=1,kh=2,kw=2,ph=1,pw=1,mask=1,off=integer,seed=6"),
    ("far_offsets", "N=1,C=4,H=4,W=4,groups=2,G=2,kh=3,kw=3,ph=1,pw=1,mask=1,off=far,seed=7"),
    ("nan_inf_offsets", "N=2,C=2,H=4,W=5,groups=1,G=1,kh=3,kw=3,ph=1,pw=1,mask=1,off=nan,seed=8"),
    ("nan_inf_offsets_nomask", "N=1,C=4,H=3,W=3,groups=1,G=2,kh=2,kw=2,ph=0,pw=1,mask=0,off=nan,seed=9"),
    ("offset_group_per_channel", "N=2,C=4,H=6,W=5,groups=4,G=4,kh=3,kw=3,sh=2,sw=2,ph=1,pw=1,mask=1,off=normal,seed=10"),
    ("inf_nan_pixels", "N=1,C=3,H=5,W=5,groups=1,G=1,kh=3,kw=3,ph=1,pw=1,mask=1,off=integer,bad_pixels=1,seed=12"),
    ("inf_nan_pixels_border", "N=1,C=2,H=4,W=6,groups=2,G=2,kh=3,kw=2,ph=1,pw=1,mask=0,off=border,bad_pixels=1,seed=13"),
    ("wider", "N=2,C=8,H=9,W=7,groups=4,G=2,kh=3,kw=3,sh=1,sw=2,ph=2,pw=1,dh=2,dw=1,mask=1,off=normal,seed=11"),
]


def _conformance_cases():
    try:
        from conformance.cases import CASES as table
    except ImportError:  # pragma: no cover - depends on pytest's import mode
        sys.path.insert(0, str(ROOT / "tests"))
        from conformance.cases import CASES as table
    return list(table)


def _conformance_arg(case, tmp_path: Path) -> str:
    """A harness case running on the conformance case's own data (NHWC)."""
    import numpy as np

    arr = case.arrays()
    Ho, Wo = case.out_size
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = case.kernel, case.stride, case.padding, case.dilation
    rng = np.random.default_rng(case.default_seed + 1)
    gcol = rng.standard_normal((case.N, Ho, Wo, case.C * case.K))
    parts = [arr.x.transpose(0, 2, 3, 1), arr.offset.transpose(0, 2, 3, 1)]
    if arr.mask is not None:
        parts.append(arr.mask.transpose(0, 2, 3, 1))
    parts.append(gcol)
    path = tmp_path / f"{case.name}.f32"
    path.write_bytes(b"".join(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in parts))
    return (f"N={case.N},C={case.C},H={case.H},W={case.W},groups={case.groups},"
            f"G={case.offset_groups},kh={kh},kw={kw},sh={sh},sw={sw},ph={ph},pw={pw},"
            f"dh={dh},dw={dw},mask={int(arr.mask is not None)},file={path}")


def _compilers():
    out = []
    for cxx in ("g++", "clang++"):
        if shutil.which(cxx):
            out.append(cxx)
    return out


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _arch_flags(cxx):
    """clang < 15 has no _Float16 on x86-64; the shim's __fp16 half then needs F16C."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    probe = _run([cxx, "-dM", "-E", "-x", "c++", os.devnull])
    return [] if "__FLT16_MANT_DIG__" in probe.stdout else ["-mf16c"]


def _build(cxx, sanitizer, outdir: Path, metal_dir: Path | None = None, cpu_objs=None):
    """Compile the CPU kernels and the harness (one TU each, in parallel).

    metal_dir replaces core/metal (for planted-bug checks); cpu_objs reuses
    CPU objects of an earlier build with the same compiler and sanitizer.
    """
    includes = list(INCLUDES)
    if metal_dir is not None:
        includes[2] = f"-I{metal_dir}"
    flags = BASE_FLAGS + _arch_flags(cxx) + SANITIZERS[sanitizer] + includes
    outdir.mkdir(parents=True, exist_ok=True)
    sources = [HARNESS] if cpu_objs else CPU_SOURCES + [HARNESS]
    jobs = []
    for src in sources:
        obj = outdir / (src.stem + ".o")
        extra = WARNINGS if src == HARNESS else []
        cmd = [cxx, *flags, *extra, "-c", str(src), "-o", str(obj)]
        jobs.append((cmd, obj, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    objs = list(cpu_objs or [])
    errors = []
    for cmd, obj, proc in jobs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            errors.append(f"$ {' '.join(cmd)}\n{out}")
        if obj.stem != HARNESS.stem:
            objs.append(str(obj))
    if errors:
        return None, "\n".join(errors)
    exe = outdir / "harness"
    link = _run([cxx, *BASE_FLAGS, *SANITIZERS[sanitizer], str(outdir / (HARNESS.stem + ".o")),
                 *objs, "-o", str(exe), "-lpthread"])
    if link.returncode != 0:
        return None, link.stdout + link.stderr
    return exe, ""


def _cpu_objs(exe: Path):
    return [str(exe.parent / (src.stem + ".o")) for src in CPU_SOURCES]


def _planted(tmp_path: Path, source: str, old: str, new: str) -> Path:
    """A copy of core/metal with one bug planted in `source`."""
    d = tmp_path / "metal"
    shutil.copytree(ROOT / "core" / "metal", d)
    text = (d / source).read_text()
    assert old in text, f"planted-bug pattern no longer in {source}: {old!r}"
    (d / source).write_text(text.replace(old, new, 1))
    return d


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory):
    """Sanitizer builds of the harness, once per session: {name: (exe, log)}."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: the emulated Metal tests compile the kernels with g++")
    root = tmp_path_factory.mktemp("metal_emulated")
    built = {}
    for san in ("asan", "tsan"):
        built[san] = _build("g++", san, root / f"gxx-{san}")
    return built


def _check(result):
    tail = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"harness exited {result.returncode}:\n{tail}"
    assert " 0 failures" in result.stdout, tail
    assert "FAIL" not in result.stdout, tail


@pytest.mark.parametrize("compiler", ["g++", "clang++"])
@pytest.mark.parametrize("source", METAL_SOURCES, ids=lambda p: p.name)
def test_metal_source_compiles_cleanly(compiler, source):
    """Each .metal file alone, as C++, with every warning an error."""
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed")
    r = _run([compiler, "-std=c++17", "-fsyntax-only", *_arch_flags(compiler), *WARNINGS,
              "-Wpedantic", *INCLUDES[:2],
              "-x", "c++", str(source)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_kernel_has_a_host_name():
    """The host names eval_gpu asks for are instantiated in the sources."""
    text = "\n".join(p.read_text() for p in METAL_SOURCES)
    for kernel in ("im2col", "col2im", "col2im_deterministic", "coord_grad"):
        for dtype in ("float32", "float16", "bfloat16"):
            assert f'"dcn_{kernel}_{dtype}"' in text, (kernel, dtype)
    assert "dcn_zero_float32" in text


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[n for n, _ in CASES])
def test_kernels_match_cpu_under_asan_ubsan(harnesses, case):
    exe, log = harnesses["asan"]
    assert exe is not None, f"ASan/UBSan build failed:\n{log[-6000:]}"
    r = _run([str(exe), case], env=sanitizer_env(), timeout=120)
    _check(r)
    # 3 dtypes x (im2col, atomic col2im, 2 deterministic col2im, offset grad [, mask grad])
    per_dtype = 6 if "mask=1" in case else 5
    assert f"{3 * per_dtype} checks, 0 failures" in r.stdout, r.stdout[-3000:]


def test_conformance_cases_under_asan_ubsan(harnesses, tmp_path):
    """Every case of tests/conformance/cases.py, on its own data, every dtype."""
    pytest.importorskip("numpy")
    exe, log = harnesses["asan"]
    assert exe is not None, f"ASan/UBSan build failed:\n{log[-6000:]}"
    table = _conformance_cases()
    args = [_conformance_arg(c, tmp_path) for c in table]
    r = _run([str(exe), *args], env=sanitizer_env(), timeout=300)
    _check(r)
    assert len(table) >= 20, len(table)
    assert all(f"file={tmp_path / c.name}.f32" in r.stdout for c in table if c.N > 0)


def test_atomic_and_parallel_paths_under_tsan(harnesses, tmp_path):
    """The built-in and conformance cases with threadgroups on 4 host threads."""
    exe, log = harnesses["tsan"]
    assert exe is not None, f"TSan build failed:\n{log[-6000:]}"
    extra = []
    try:
        extra = [_conformance_arg(c, tmp_path) for c in _conformance_cases()]
    except ImportError:  # numpy missing: the built-in cases still run
        pass
    r = _run([str(exe), "--workers", "4", *[c for _, c in CASES], *extra], env=sanitizer_env(),
             timeout=300)
    assert "ThreadSanitizer" not in r.stderr, r.stderr[-6000:]
    _check(r)


def test_builtin_cases_with_clang(tmp_path):
    """A second compiler: clang builds and runs the harness (ASan/UBSan)."""
    if shutil.which("clang++") is None:
        pytest.skip("clang++ not installed")
    exe, log = _build("clang++", "asan", tmp_path / "clang-asan")
    assert exe is not None, f"clang build failed:\n{log[-6000:]}"
    _check(_run([str(exe), *[c for _, c in CASES[:4]], CASES[7][1]], env=sanitizer_env(), timeout=120))


@pytest.mark.parametrize("source", METAL_SOURCES, ids=lambda p: p.name)
def test_address_space_lint(source):
    """clang with device/constant/threadgroup as numbered address spaces."""
    if shutil.which("clang++") is None:
        pytest.skip("clang++ not installed")
    r = _run(["clang++", "-std=c++17", "-fsyntax-only", "-DDCN_SHIM_ADDRESS_SPACES", *WARNINGS,
              *INCLUDES[:2], "-x", "c++", str(source)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_address_space_lint_catches_a_dropped_address_space(tmp_path):
    if shutil.which("clang++") is None:
        pytest.skip("clang++ not installed")
    d = _planted(tmp_path, "im2col.metal", "  device const T* image = input",
                 "  const T* image = input")
    r = _run(["clang++", "-std=c++17", "-fsyntax-only", "-DDCN_SHIM_ADDRESS_SPACES",
              *INCLUDES[:2], "-x", "c++", str(d / "im2col.metal")])
    assert r.returncode != 0 and "device" in r.stderr, r.stderr[-3000:]


# Planted bugs: each must be caught, or the checks above prove nothing.
PLANTED = [
    ("non_atomic_add", "tsan", "col2im.metal",
     "atomic_fetch_add_explicit((device atomic_float*)(image + cr.idx[q] + c), cr.w[q] * gv,\n"
     "                                  memory_order_relaxed);",
     "image[cr.idx[q] + c] += cr.w[q] * gv;", "ThreadSanitizer: data race"),
    ("missing_grid_guard", "asan", "im2col.metal",
     "if (t >= dcn_sample_threads(prm)) return;", "", "AddressSanitizer"),
    ("nan_offset_to_int", "asan", "coord_grad.metal",
     "const int mi = dcn_mask_at(prm, s);", "const int mi = dcn_mask_at(prm, s) + (int(y) & 0);",
     "outside the range of representable values"),
    ("forward_rule_in_gradient", "asan", "coord_grad.metal",
     "dcn_corners(prm, y, x, 1.0f, true)", "dcn_corners(prm, y, x, 1.0f, y > -1.0f && x > -1.0f)",
     "FAIL"),
    ("reads_zero_weight_corners", "asan", "im2col.metal",
     "if ((valid >> q) & 1u) v += cr.w[q] * float(image[cr.idx[q] + c]);",
     "v += cr.w[q] * float(image[cr.idx[q] + c]);", "FAIL"),
]


@pytest.mark.parametrize("name,san,source,old,new,evidence", PLANTED, ids=[p[0] for p in PLANTED])
def test_planted_bug_is_caught(harnesses, tmp_path, name, san, source, old, new, evidence):
    base, log = harnesses[san]
    assert base is not None, log[-6000:]
    d = _planted(tmp_path, source, old, new)
    exe, log = _build("g++", san, tmp_path / "build", metal_dir=d, cpu_objs=_cpu_objs(base))
    assert exe is not None, log[-6000:]
    r = _run([str(exe), "--workers", "4", *[c for _, c in CASES]], env=sanitizer_env(), timeout=300)
    assert r.returncode != 0, f"planted bug {name} went unnoticed:\n{r.stdout[-3000:]}"
    assert evidence in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]
