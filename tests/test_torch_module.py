"""``dcn_torch.DeformConv2d``: a drop-in for ``torchvision.ops.DeformConv2d``.

Parameter names/shapes, state_dict, default initialisation (same as
``nn.Conv2d``), ``repr``, constructor variants, save/load, a training step and
the usual DCN pattern (offsets and mask predicted by a regular conv).
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

import dcn_torch
from dcn_torch import DeformConv2d


def _offsets(N, G, kh, kw, Ho, Wo, dtype=torch.float32, seed=0, mask=True):
    g = torch.Generator().manual_seed(seed)
    off = torch.randn(N, 2 * G * kh * kw, Ho, Wo, generator=g).to(dtype)
    m = torch.rand(N, G * kh * kw, Ho, Wo, generator=g).to(dtype) if mask else None
    return off, m


# ---------------------------------------------------------------------------
# parameters and state_dict
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,wshape", [
    (dict(in_channels=4, out_channels=6, kernel_size=3), (6, 4, 3, 3)),
    (dict(in_channels=4, out_channels=6, kernel_size=(2, 3)), (6, 4, 2, 3)),
    (dict(in_channels=4, out_channels=6, kernel_size=[1, 5], groups=2), (6, 2, 1, 5)),
    (dict(in_channels=6, out_channels=3, kernel_size=3, groups=3, bias=False), (3, 2, 3, 3)),
])
def test_parameters_and_state_dict(kwargs, wshape):
    m = DeformConv2d(**kwargs)
    has_bias = kwargs.get("bias", True)
    names = ["weight", "bias"] if has_bias else ["weight"]
    assert [n for n, _ in m.named_parameters()] == names
    assert list(m.state_dict().keys()) == names
    assert m.weight.shape == wshape
    assert isinstance(m.weight, nn.Parameter) and m.weight.requires_grad
    if has_bias:
        assert m.bias.shape == (kwargs["out_channels"],)
        assert isinstance(m.bias, nn.Parameter)
    else:
        assert m.bias is None
    assert m.weight.dtype == torch.float32
    assert list(m.buffers()) == []
    # attributes as torchvision stores them
    k = kwargs["kernel_size"]
    assert m.kernel_size == (tuple(k) if not isinstance(k, int) else (k, k))
    assert m.in_channels == kwargs["in_channels"]
    assert m.out_channels == kwargs["out_channels"]
    assert m.groups == kwargs.get("groups", 1)


def test_int_and_tuple_hyperparameters_stored_as_pairs():
    a = DeformConv2d(2, 2, 3, stride=2, padding=1, dilation=2)
    b = DeformConv2d(2, 2, (3, 3), stride=(2, 2), padding=(1, 1), dilation=(2, 2))
    for m in (a, b):
        assert m.kernel_size == (3, 3) and m.stride == (2, 2)
        assert m.padding == (1, 1) and m.dilation == (2, 2)
    c = DeformConv2d(2, 2, (1, 3), stride=(1, 2), padding=(0, 1), dilation=(3, 1))
    assert (c.kernel_size, c.stride, c.padding, c.dilation) == ((1, 3), (1, 2), (0, 1), (3, 1))


# ---------------------------------------------------------------------------
# initialisation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=8, out_channels=4, kernel_size=(2, 3), groups=2),
    dict(in_channels=3, out_channels=5, kernel_size=1),
])
def test_init_matches_conv2d_under_same_seed(kwargs):
    conv_kw = dict(kwargs)
    torch.manual_seed(1234)
    ref = nn.Conv2d(**conv_kw)
    torch.manual_seed(1234)
    m = DeformConv2d(**kwargs)
    assert torch.equal(m.weight, ref.weight)
    assert torch.equal(m.bias, ref.bias)


def test_init_matches_conv2d_without_bias():
    torch.manual_seed(7)
    ref = nn.Conv2d(4, 4, 3, groups=2, bias=False)
    torch.manual_seed(7)
    m = DeformConv2d(4, 4, 3, groups=2, bias=False)
    assert torch.equal(m.weight, ref.weight)


def test_init_distribution_bounds():
    torch.manual_seed(0)
    m = DeformConv2d(64, 256, 3, groups=2)
    fan_in = (64 // 2) * 3 * 3
    # kaiming_uniform(a=sqrt(5)): bound = gain*sqrt(3/fan_in) = 1/sqrt(fan_in)
    bound = 1.0 / math.sqrt(fan_in)
    w = m.weight.detach().double()
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.99 * bound  # fills the interval
    assert abs(w.mean().item()) < 0.02 * bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    b = m.bias.detach().double()
    assert b.abs().max() <= bound
    assert b.abs().max() > 0.9 * bound
    assert b.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)


def test_reset_parameters_redraws():
    torch.manual_seed(0)
    m = DeformConv2d(4, 4, 3)
    w0, b0 = m.weight.detach().clone(), m.bias.detach().clone()
    m.reset_parameters()
    assert not torch.equal(m.weight, w0) and not torch.equal(m.bias, b0)
    torch.manual_seed(0)
    m2 = DeformConv2d(4, 4, 3)
    assert torch.equal(m2.weight, w0) and torch.equal(m2.bias, b0)


# ---------------------------------------------------------------------------
# repr
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,text", [
    (dict(in_channels=4, out_channels=6, kernel_size=3),
     "DeformConv2d(4, 6, kernel_size=(3, 3), stride=(1, 1))"),
    (dict(in_channels=4, out_channels=6, kernel_size=(2, 3), stride=2, padding=1),
     "DeformConv2d(4, 6, kernel_size=(2, 3), stride=(2, 2), padding=(1, 1))"),
    (dict(in_channels=4, out_channels=6, kernel_size=3, dilation=(2, 1), groups=2,
          bias=False),
     "DeformConv2d(4, 6, kernel_size=(3, 3), stride=(1, 1), dilation=(2, 1), groups=2, "
     "bias=False)"),
])
def test_repr(kwargs, text):
    assert repr(DeformConv2d(**kwargs)) == text


# ---------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
    dict(kernel_size=3, padding=1, groups=2),
    dict(kernel_size=3, padding=1, groups=4, bias=False),
])
@pytest.mark.parametrize("offset_groups", [1, 2])
@pytest.mark.parametrize("use_mask", [True, False])
def test_forward_equals_functional(kwargs, offset_groups, use_mask):
    torch.manual_seed(0)
    m = DeformConv2d(4, 8, **kwargs)
    x = torch.randn(2, 4, 7, 6)
    kh, kw = m.kernel_size
    Ho = (7 + 2 * m.padding[0] - m.dilation[0] * (kh - 1) - 1) // m.stride[0] + 1
    Wo = (6 + 2 * m.padding[1] - m.dilation[1] * (kw - 1) - 1) // m.stride[1] + 1
    off, mask = _offsets(2, offset_groups, kh, kw, Ho, Wo, mask=use_mask)
    y = m(x, off, mask) if use_mask else m(x, off)
    assert y.shape == (2, 8, Ho, Wo)
    ref = dcn_torch.deform_conv2d(x, off, m.weight, m.bias, stride=m.stride, padding=m.padding,
                                  dilation=m.dilation, mask=mask)
    assert torch.equal(y, ref)
    y.sum().backward()
    assert m.weight.grad is not None and m.weight.grad.shape == m.weight.shape
    if m.bias is not None:
        assert torch.equal(m.bias.grad, torch.full_like(m.bias, Ho * Wo * 2.0))


def test_zero_offsets_full_mask_equal_conv2d():
    """With zero offsets and mask 1 the module is an nn.Conv2d."""
    torch.manual_seed(3)
    m = DeformConv2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 1), dilation=(2, 1),
                     groups=2).double()
    conv = nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 1), dilation=(2, 1),
                     groups=2).double()
    conv.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(2, 4, 8, 9, dtype=torch.float64)
    ref = conv(x)
    off = torch.zeros(2, 2 * 6, *ref.shape[2:], dtype=torch.float64)
    torch.testing.assert_close(m(x, off), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m(x, off, torch.ones(2, 6, *ref.shape[2:], dtype=torch.float64)),
                               ref, rtol=1e-12, atol=1e-12)


def test_module_dtype_conversion():
    m = DeformConv2d(2, 2, 3).double()
    assert m.weight.dtype == torch.float64 and m.bias.dtype == torch.float64
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    off = torch.zeros(1, 18, 3, 3, dtype=torch.float64)
    assert m(x, off).dtype == torch.float64


# ---------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_roundtrip(bias):
    torch.manual_seed(1)
    a = DeformConv2d(4, 6, (3, 2), padding=1, groups=2, bias=bias)
    torch.manual_seed(2)
    b = DeformConv2d(4, 6, (3, 2), padding=1, groups=2, bias=bias)
    x = torch.randn(2, 4, 6, 6)
    off, mask = _offsets(2, 2, 3, 2, 6, 7)
    assert not torch.equal(a(x, off, mask), b(x, off, mask))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    res = b.load_state_dict(sd, strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    assert torch.equal(a(x, off, mask), b(x, off, mask))


def test_state_dict_strict_mismatch():
    a = DeformConv2d(4, 6, 3, bias=True)
    b = DeformConv2d(4, 6, 3, bias=False)
    with pytest.raises(RuntimeError):
        b.load_state_dict(a.state_dict(), strict=True)
    with pytest.raises(RuntimeError):
        DeformConv2d(4, 6, 2).load_state_dict(a.state_dict(), strict=True)


def test_whole_module_pickles():
    torch.manual_seed(0)
    a = DeformConv2d(2, 3, 3, padding=1)
    buf = io.BytesIO()
    torch.save(a, buf)
    buf.seek(0)
    b = torch.load(buf, weights_only=False)
    x = torch.randn(1, 2, 4, 4)
    off, mask = _offsets(1, 1, 3, 3, 4, 4)
    assert repr(a) == repr(b)
    assert torch.equal(a(x, off, mask), b(x, off, mask))


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------


def _dcn_block(C, O, groups=1, offset_groups=1):
    """The usual DCNv2 pattern: a regular conv predicts offsets and mask."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            K = 9
            self.G = offset_groups
            self.offset_conv = nn.Conv2d(C, 3 * offset_groups * K, 3, padding=1)
            self.dcn = DeformConv2d(C, O, 3, padding=1, groups=groups)

        def forward(self, x):
            o = self.offset_conv(x)
            n = 2 * self.G * 9
            return self.dcn(x, o[:, :n], torch.sigmoid(o[:, n:]))

    return Block()


def test_training_step_decreases_loss():
    torch.manual_seed(0)
    model = _dcn_block(3, 4)
    target_model = _dcn_block(3, 4)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        target = target_model(x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]


def test_sgd_single_step_decreases_loss():
    torch.manual_seed(1)
    m = DeformConv2d(2, 2, 3, padding=1)
    x = torch.randn(2, 2, 5, 5)
    off, mask = _offsets(2, 1, 3, 3, 5, 5)
    target = torch.randn(2, 2, 5, 5)
    opt = torch.optim.SGD(m.parameters(), lr=1e-2)
    loss0 = nn.functional.mse_loss(m(x, off, mask), target)
    loss0.backward()
    opt.step()
    loss1 = nn.functional.mse_loss(m(x, off, mask), target)
    assert loss1.item() < loss0.item()


@pytest.mark.parametrize("groups,offset_groups", [(1, 1), (2, 2), (1, 4)])
def test_offsets_from_conv_backprop_through_both(groups, offset_groups):
    torch.manual_seed(2)
    block = _dcn_block(4, 4, groups=groups, offset_groups=offset_groups).double()
    # non-zero offset-conv init so offsets are not all equal
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=True)
    y = block(x)
    assert y.shape == (2, 4, 6, 7)
    y.square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0

    # chain rule through the offset conv: its grads equal backpropagating the
    # op's offset/mask gradients by hand through the conv
    o = block.offset_conv(x.detach())
    n = 2 * offset_groups * 9
    off = o[:, :n].detach().requires_grad_()
    mraw = o[:, n:].detach().requires_grad_()
    block.dcn(x.detach(), off, torch.sigmoid(mraw)).square().sum().backward()
    block.offset_conv.zero_grad()
    o2 = block.offset_conv(x.detach())
    (o2[:, :n] * off.grad).sum().add((o2[:, n:] * mraw.grad).sum()).backward()
    manual = block.offset_conv.weight.grad.clone()
    block.zero_grad()
    block(x.detach()).square().sum().backward()
    torch.testing.assert_close(block.offset_conv.weight.grad, manual, rtol=1e-10, atol=1e-12)


def test_zero_initialised_offset_conv_gets_gradient():
    """The common init (offset conv all zeros) still learns: the offset grad
    at integer sample points is torchvision's one-sided derivative."""
    torch.manual_seed(3)
    block = _dcn_block(2, 2)
    nn.init.zeros_(block.offset_conv.weight)
    nn.init.zeros_(block.offset_conv.bias)
    x = torch.randn(1, 2, 6, 6)
    block(x).square().sum().backward()
    assert block.offset_conv.weight.grad.abs().sum() > 0
