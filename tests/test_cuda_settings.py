"""The CUDA backend's settings and build report, checked without a GPU:
the deterministic switch, how batch chunks are bounded for the
deterministic kernel's 32-bit keys, and what build_info() says."""

from __future__ import annotations

import pytest
import torch

import dcn_torch
from dcn_torch import _config, ops


@pytest.fixture(autouse=True)
def _restore():
    old = _config._deterministic
    old_torch = torch.are_deterministic_algorithms_enabled()
    yield
    dcn_torch.set_deterministic(old)
    torch.use_deterministic_algorithms(old_torch)


def test_deterministic_follows_torch_by_default():
    dcn_torch.set_deterministic(None)
    torch.use_deterministic_algorithms(False)
    assert dcn_torch.get_deterministic() is False
    torch.use_deterministic_algorithms(True)
    assert dcn_torch.get_deterministic() is True
    assert dcn_torch.build_info()["deterministic"] is True


def test_explicit_switch_overrides_torch():
    torch.use_deterministic_algorithms(True)
    dcn_torch.set_deterministic(False)
    assert dcn_torch.get_deterministic() is False
    torch.use_deterministic_algorithms(False)
    dcn_torch.set_deterministic(True)
    assert dcn_torch.get_deterministic() is True


@pytest.mark.parametrize("bad", [1, "yes", 0.5])
def test_switch_rejects_non_bool(bad):
    with pytest.raises(TypeError, match="set_deterministic"):
        dcn_torch.set_deterministic(bad)


def _geo(N, G, kh, kw, Ho, Wo, H, W):
    return dict(batch=N, offset_groups=G, kernel=(kh, kw), out_size=(Ho, Wo), height=H, width=W)


def test_deterministic_chunks_keep_sort_keys_in_32_bits():
    # 4*G*K*P entries per image = 4*1*9*512*512 = 9.4M: at most 228 images
    # per chunk for entry ids < 2^31, whatever the workspace budget says.
    geo = _geo(1000, 1, 3, 3, 512, 512, 512, 512)
    cuda = torch.device("cuda")
    old = dcn_torch.get_workspace_limit()
    try:
        dcn_torch.set_workspace_limit(1 << 60)
        assert ops._chunk(geo, 1, cuda, deterministic=False) == 1000
        chunk = ops._chunk(geo, 1, cuda, deterministic=True)
        assert chunk == (2**31 - 1) // (4 * 9 * 512 * 512) == 227
        assert 4 * chunk * 9 * 512 * 512 < 2**31
        # the CPU kernel needs no keys: only the budget bounds its chunks
        assert ops._chunk(geo, 1, torch.device("cpu"), deterministic=True) == 1000
    finally:
        dcn_torch.set_workspace_limit(old)


def test_build_info_reports_cuda_when_compiled_in():
    info = dcn_torch.build_info()
    assert info["backends"][0] == "cpu"
    if "cuda" in info["backends"]:
        cuda = info["cuda"]
        major, minor = (int(v) for v in cuda["version"].split("."))
        assert major >= 11 and minor >= 0
        assert cuda["architectures"] and all(a >= 80 for a in cuda["architectures"])
    else:
        assert "cuda" not in info
