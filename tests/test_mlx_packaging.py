"""Packaging of the two frontends: torch users never load MLX, and dcn_mlx._C
uses the libmlx of the installed mlx (one copy in the process)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

linux_only = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")


def _run(code: str) -> str:
    # outside the repository, so that the installed packages are imported
    # (not the source directories, which have no built _C)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.abspath(os.sep)))
    assert r.returncode == 0, r.stderr
    return r.stdout


@linux_only
def test_import_dcn_torch_does_not_load_mlx():
    pytest.importorskip("dcn_torch", reason="dcn_torch not installed")
    out = _run(
        "import sys, torch, dcn_torch\n"
        "x = torch.randn(1, 2, 4, 4); off = torch.zeros(1, 18, 4, 4); w = torch.randn(2, 2, 3, 3)\n"
        "dcn_torch.deform_conv2d(x, off, w, padding=1)\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('libmlx' in maps, any(m == 'mlx' or m.startswith('mlx.') for m in sys.modules))\n")
    assert out.split() == ["False", "False"]


@linux_only
def test_dcn_mlx_shares_the_installed_libmlx():
    pytest.importorskip("mlx.core", reason="mlx not installed")
    pytest.importorskip("dcn_mlx", reason="dcn_mlx not installed")
    out = _run(
        "import mlx.core as mx, dcn_mlx\n"
        "a = mx.zeros((1, 4, 4, 2)); o = mx.zeros((1, 4, 4, 18)); w = mx.ones((2, 3, 3, 2))\n"
        "mx.eval(dcn_mlx.deform_conv2d(a, o, w, padding=1))\n"
        "paths = {l.split()[-1] for l in open('/proc/self/maps') if 'libmlx' in l}\n"
        "print(len(paths))\n")
    assert out.strip() == "1"
