"""The host side of the Metal path, checked on Linux without a Mac.

* Run-time source: cmake/dcn_metal.cmake, run as a script, writes the header
  that embeds the kernels as one source for MLX to compile at run time (the
  build's way when it has no Metal compiler). That source must stand alone:
  it compiles through the Metal shim (tests/metal/shim) with no other
  include path, -Werror, and instantiates every host name eval_gpu asks for.
* eval_gpu: bindings/mlx/metal_eval.cpp (built on macOS only) and the
  primitives that call it are type-checked with the macOS build's
  definitions against the installed MLX's own headers, tests/metal/
  metal_cpp_stub standing in for Apple's metal-cpp. A call that does not
  match MLX's Metal API (device, command encoder, allocator, array flags) as
  the pinned release declares it fails here.

Not checked here: Apple's compiler, linking against libmlx's Metal symbols,
and anything running on a GPU (see README, "What only Apple hardware can
confirm").
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_metal_emulated import WARNINGS, _arch_flags

pytestmark = pytest.mark.metal_emulated

ROOT = Path(__file__).resolve().parents[1]
SHIM = ROOT / "tests" / "metal" / "shim"
METAL_CPP_STUB = ROOT / "tests" / "metal" / "metal_cpp_stub"
KERNELS = ("im2col", "col2im", "col2im_deterministic", "coord_grad")
OPEN, CLOSE = 'R"dcn_metal(', ')dcn_metal"'


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _cmake():
    """cmake on PATH, or the one of the `cmake` wheel (pip's build tool)."""
    found = shutil.which("cmake")
    if found is None:
        try:
            import cmake

            found = str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
        except ImportError:
            return None
    return found


def _write_header(header: Path) -> Path:
    """The embedded-source header, written by the build's own script."""
    r = _run([_cmake(), f"-DDCN_METAL_ROOT={ROOT}", f"-DDCN_METAL_HEADER={header}", "-P",
              str(ROOT / "cmake" / "dcn_metal.cmake")])
    assert r.returncode == 0, r.stdout + r.stderr
    return header


@pytest.fixture(scope="module")
def embedded_header(tmp_path_factory) -> Path:
    if _cmake() is None:
        pytest.skip("cmake not found")
    return _write_header(tmp_path_factory.mktemp("metal_host") / "dcn_metal_source.h")


def _embedded_source(header: Path) -> str:
    text = header.read_text()
    return text[text.index(OPEN) + len(OPEN): text.index(CLOSE)]


def test_embedded_source_has_every_kernel_and_no_local_include(embedded_header):
    source = _embedded_source(embedded_header)
    assert source.isascii()  # MLX hands it to Metal as an ASCII string
    assert "#include <metal_stdlib>" in source
    assert '\n#include "' not in source, "an #include \"...\" was left unresolved"
    for kernel in KERNELS:
        for dtype in ("float32", "float16", "bfloat16"):
            assert f'"dcn_{kernel}_{dtype}"' in source, (kernel, dtype)
    assert "dcn_zero_float32" in source
    # each shared header inlined exactly once
    for name in ("core/metal/kernels.h", "core/metal/params.h", "core/include/dcn/sampling.h",
                 "core/include/dcn/macros.h"):
        assert source.count(f"// ---- {name}\n") == 1, name


@pytest.mark.parametrize("compiler", ["g++", "clang++"])
def test_embedded_source_compiles_alone(embedded_header, tmp_path, compiler):
    """As one translation unit with only the shim on the include path."""
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed")
    src = tmp_path / "dcn_kernels.metal"
    src.write_text(_embedded_source(embedded_header))
    r = _run([compiler, "-std=c++17", "-fsyntax-only", *_arch_flags(compiler), *WARNINGS,
              "-Wpedantic", f"-I{SHIM}", "-x", "c++", str(src)])
    assert r.returncode == 0, r.stdout + r.stderr


def _mlx_include() -> Path:
    pytest.importorskip("mlx.core", reason="mlx not installed")
    r = _run([sys.executable, "-m", "mlx", "--cmake-dir"])
    include = Path(r.stdout.strip()) / "include"
    if r.returncode != 0 or not (include / "mlx" / "backend" / "metal" / "device.h").exists():
        pytest.skip("the installed mlx ships no Metal headers")
    return include


def test_eval_gpu_code_type_checks_against_mlx_headers(tmp_path):
    """metal_eval.cpp in both library modes, and primitives.cpp calling it,
    as the macOS build compiles them (-D_METAL_ comes from MLX's CMake
    config there), against this MLX's headers."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not installed")
    include = _mlx_include()
    embedded_header = tmp_path / "dcn_metal_source.h"
    if _cmake() is not None:
        _write_header(embedded_header)
    else:  # the declaration metal_eval.cpp uses, without the generator
        embedded_header.write_text('namespace dcn_mlx {\ninline constexpr const char kMetalSource[] = "";\n}\n')
    base = ["g++", "-std=c++20", "-fsyntax-only", *WARNINGS, "-D_METAL_", "-DDCN_MLX_METAL=1",
            '-DDCN_METAL_LIBRARY_NAME="dcn_kernels"', "-isystem", str(METAL_CPP_STUB),
            "-isystem", str(include), f"-I{ROOT / 'core' / 'include'}"]
    bindings = ROOT / "bindings" / "mlx"
    jobs = {
        "metal_eval.cpp (metallib)": base + [str(bindings / "metal_eval.cpp")],
        "metal_eval.cpp (run-time source)": base + [
            "-DDCN_METAL_EMBEDDED_SOURCE=1", f"-I{embedded_header.parent}",
            str(bindings / "metal_eval.cpp")],
        "primitives.cpp": base + [str(bindings / "primitives.cpp")],
    }
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, cmd in jobs.items()}
    failures = []
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            failures.append(f"{name}:\n{out[-4000:]}")
    assert not failures, "\n".join(failures)


def test_type_check_catches_a_wrong_mlx_call(tmp_path):
    """The check bites: an encoder call with the wrong arguments fails."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not installed")
    include = _mlx_include()
    bad = tmp_path / "metal_eval.cpp"
    text = (ROOT / "bindings" / "mlx" / "metal_eval.cpp").read_text()
    assert "enc.set_output_array(out, 3);" in text
    bad.write_text(text.replace("enc.set_output_array(out, 3);", "enc.set_output_array(out);", 1))
    r = _run(["g++", "-std=c++20", "-fsyntax-only", "-D_METAL_", "-DDCN_MLX_METAL=1",
              '-DDCN_METAL_LIBRARY_NAME="dcn_kernels"', "-isystem", str(METAL_CPP_STUB),
              "-isystem", str(include), f"-I{ROOT / 'core' / 'include'}",
              f"-I{ROOT / 'bindings' / 'mlx'}", str(bad)])
    assert r.returncode != 0 and "set_output_array" in r.stderr, r.stderr[-3000:]
