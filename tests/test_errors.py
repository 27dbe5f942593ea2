"""Bad arguments raise ValueError/TypeError naming the argument; never a crash.

Every case starts from one valid call
    input (2, 4, 6, 6), weight (6, 2, 3, 3) (groups 2),
    offset (2, 36, 4, 4) (offset groups 2), mask (2, 18, 4, 4), bias (6,)
and changes one thing. The same cases go through ``dcn_torch.deform_conv2d``
and, where the argument can be expressed in the op schema, through
``torch.ops.dcn.deform_conv2d`` and ``torch.ops.dcn.deform_conv2d_backward``
directly, and through ``torch.compile``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dcn_torch

N, C, H, W, O, KH, KW, G = 2, 4, 6, 6, 6, 3, 3, 2
HO = WO = 4


def valid():
    torch.manual_seed(0)
    return dict(
        input=torch.randn(N, C, H, W),
        offset=torch.randn(N, 2 * G * KH * KW, HO, WO),
        weight=torch.randn(O, C // 2, KH, KW),
        bias=torch.randn(O),
        stride=(1, 1),
        padding=(0, 0),
        dilation=(1, 1),
        mask=torch.rand(N, G * KH * KW, HO, WO),
    )


def t(*shape, dtype=torch.float32):
    return torch.ones(shape, dtype=dtype)


VE, TE = ValueError, TypeError
EITHER = (ValueError, TypeError)

# name -> (overrides, expected exception type(s), argument name in the message)
CASES = {
    # ---------------------------------------------------------------- ranks
    "input_rank3": (dict(input=t(C, H, W)), VE, "input"),
    "input_rank5": (dict(input=t(N, C, H, W, 1)), VE, "input"),
    "input_rank0": (dict(input=torch.tensor(1.0)), VE, "input"),
    "weight_rank3": (dict(weight=t(O, 2, KH)), VE, "weight"),
    "weight_rank5": (dict(weight=t(O, 2, KH, KW, 1)), VE, "weight"),
    "offset_rank3": (dict(offset=t(36, HO, WO)), VE, "offset"),
    "offset_rank5": (dict(offset=t(N, 36, HO, WO, 1)), VE, "offset"),
    "mask_rank3": (dict(mask=t(18, HO, WO)), VE, "mask"),
    "mask_rank2": (dict(mask=t(HO, WO)), VE, "mask"),
    "bias_rank2": (dict(bias=t(O, 1)), VE, "bias"),
    "bias_rank0": (dict(bias=torch.tensor(1.0)), VE, "bias"),
    # ------------------------------------------------------- channel counts
    "weight_cin_not_dividing_C": (dict(weight=t(O, 3, KH, KW)), VE, "weight"),
    "weight_cin_larger_than_C": (dict(weight=t(O, 8, KH, KW)), VE, "weight"),
    "out_channels_not_divisible_by_groups": (dict(weight=t(5, 2, KH, KW), bias=t(5)), VE,
                                             "weight"),
    "weight_zero_out_channels": (dict(weight=t(0, 2, KH, KW), bias=None), VE, "weight"),
    "weight_zero_kernel": (dict(weight=t(O, 2, 0, KW)), VE, "weight"),
    "input_zero_channels": (dict(input=t(N, 0, H, W)), EITHER, "input"),
    "offset_channels_not_multiple_of_2K": (dict(offset=t(N, 35, HO, WO)), VE, "offset"),
    "offset_channels_odd_multiple_of_K": (dict(offset=t(N, 27, HO, WO)), VE, "offset"),
    "offset_channels_zero": (dict(offset=t(N, 0, HO, WO)), VE, "offset"),
    "offset_groups_not_dividing_C": (dict(offset=t(N, 54, HO, WO), mask=t(N, 27, HO, WO)), VE,
                                     "offset"),
    "mask_channels_wrong": (dict(mask=t(N, 9, HO, WO)), VE, "mask"),
    "mask_channels_for_other_G": (dict(mask=t(N, 36, HO, WO)), VE, "mask"),
    # ------------------------------------------------- spatial sizes / batch
    "offset_height_mismatch": (dict(offset=t(N, 36, HO + 1, WO)), VE, "offset"),
    "offset_width_mismatch": (dict(offset=t(N, 36, HO, WO - 1)), VE, "offset"),
    "offset_full_res_instead_of_out": (dict(offset=t(N, 36, H, W)), VE, "offset"),
    "mask_height_mismatch": (dict(mask=t(N, 18, HO - 1, WO)), VE, "mask"),
    "mask_width_mismatch": (dict(mask=t(N, 18, HO, WO + 2)), VE, "mask"),
    "offset_batch_mismatch": (dict(offset=t(N - 1, 36, HO, WO)), VE, "offset"),
    "mask_batch_mismatch": (dict(mask=t(N + 1, 18, HO, WO)), VE, "mask"),
    "bias_too_short": (dict(bias=t(O - 1)), VE, "bias"),
    "bias_too_long": (dict(bias=t(O + 1)), VE, "bias"),
    "bias_empty": (dict(bias=t(0)), VE, "bias"),
    # ------------------------------------------------------------ parameters
    "stride_zero": (dict(stride=0), VE, "stride"),
    "stride_zero_w": (dict(stride=(1, 0)), VE, "stride"),
    "stride_negative": (dict(stride=-1), VE, "stride"),
    "stride_negative_h": (dict(stride=(-2, 1)), VE, "stride"),
    "dilation_zero": (dict(dilation=0), VE, "dilation"),
    "dilation_zero_w": (dict(dilation=(1, 0)), VE, "dilation"),
    "dilation_negative": (dict(dilation=(-1, 1)), VE, "dilation"),
    "padding_minus_one": (dict(padding=-1), VE, "padding"),
    "padding_minus_one_w": (dict(padding=(0, -1)), VE, "padding"),
    "stride_huge": (dict(stride=(2 ** 40, 1)), VE, "stride"),
    "padding_huge": (dict(padding=(0, 2 ** 40)), VE, "padding"),
    "dilation_huge": (dict(dilation=2 ** 40), VE, "dilation"),
    # ------------------------------------------------------ empty output size
    "kernel_larger_than_input": (dict(input=t(N, C, 2, 2)), VE, "input"),
    "kernel_larger_than_input_w": (dict(input=t(N, C, 6, 2)), VE, "input"),
    "dilated_kernel_larger_than_input": (dict(dilation=3), VE, "input"),
    "empty_image_no_padding": (dict(input=t(N, C, 0, W)), VE, "input"),
    # ---------------------------------------------------------------- dtypes
    "input_int64": (dict(input=t(N, C, H, W, dtype=torch.int64)), TE, "input"),
    "input_int32": (dict(input=t(N, C, H, W, dtype=torch.int32)), TE, "input"),
    "input_uint8": (dict(input=t(N, C, H, W, dtype=torch.uint8)), TE, "input"),
    "input_bool": (dict(input=t(N, C, H, W, dtype=torch.bool)), TE, "input"),
    "input_complex": (dict(input=t(N, C, H, W, dtype=torch.complex64)), TE, "input"),
    "weight_int64": (dict(weight=t(O, 2, KH, KW, dtype=torch.int64)), TE, "weight"),
    "offset_int64": (dict(offset=t(N, 36, HO, WO, dtype=torch.int64)), TE, "offset"),
    "offset_int32": (dict(offset=t(N, 36, HO, WO, dtype=torch.int32)), TE, "offset"),
    "mask_bool": (dict(mask=t(N, 18, HO, WO, dtype=torch.bool)), TE, "mask"),
    "bias_int64": (dict(bias=t(O, dtype=torch.int64)), TE, "bias"),
    "mixed_weight_f64": (dict(weight=t(O, 2, KH, KW, dtype=torch.float64)), EITHER, "weight"),
    "mixed_offset_f64": (dict(offset=t(N, 36, HO, WO, dtype=torch.float64)), EITHER, "offset"),
    "mixed_mask_f16": (dict(mask=t(N, 18, HO, WO, dtype=torch.float16)), EITHER, "mask"),
    "mixed_bias_bf16": (dict(bias=t(O, dtype=torch.bfloat16)), EITHER, "bias"),
    # ----------------------------------------------------- non-tensor values
    "input_numpy": (dict(input=np.ones((N, C, H, W), np.float32)), TE, "input"),
    "input_list": (dict(input=[[1.0]]), TE, "input"),
    "input_none": (dict(input=None), TE, "input"),
    "weight_none": (dict(weight=None), TE, "weight"),
    "weight_numpy": (dict(weight=np.ones((O, 2, KH, KW), np.float32)), TE, "weight"),
    "offset_none": (dict(offset=None), TE, "offset"),
    "offset_float": (dict(offset=0.5), TE, "offset"),
    "mask_float": (dict(mask=1.0), TE, "mask"),
    "mask_list": (dict(mask=[1.0] * 18), TE, "mask"),
    "bias_list": (dict(bias=[0.0] * O), TE, "bias"),
    "bias_true": (dict(bias=True), TE, "bias"),
    # ------------------------------------------------- malformed parameters
    "stride_triple": (dict(stride=(1, 1, 1)), TE, "stride"),
    "padding_triple": (dict(padding=(0, 0, 0)), TE, "padding"),
    "dilation_triple": (dict(dilation=[1, 1, 1]), TE, "dilation"),
    "stride_single_tuple": (dict(stride=(1,)), TE, "stride"),
    "stride_float": (dict(stride=1.0), TE, "stride"),
    "stride_float_pair": (dict(stride=(1.5, 1)), TE, "stride"),
    "padding_string": (dict(padding="same"), TE, "padding"),
    "padding_none": (dict(padding=None), TE, "padding"),
    "dilation_bool": (dict(dilation=True), TE, "dilation"),
    "dilation_tensor_pair": (dict(dilation=torch.tensor([1, 1])), TE, "dilation"),
}


def _apply(over):
    kw = valid()
    kw.update(over)
    return kw


def _check(exc_info, name):
    msg = str(exc_info.value)
    assert name in msg, f"message does not name {name!r}: {msg!r}"
    assert "Traceback" not in msg


@pytest.mark.parametrize("case", list(CASES))
def test_functional_errors(case):
    over, exc, name = CASES[case]
    kw = _apply(over)
    with pytest.raises(exc) as ei:
        dcn_torch.deform_conv2d(kw.pop("input"), kw.pop("offset"), kw.pop("weight"), **kw)
    _check(ei, name)


def test_valid_call_passes():
    kw = valid()
    out = dcn_torch.deform_conv2d(kw.pop("input"), kw.pop("offset"), kw.pop("weight"), **kw)
    assert out.shape == (N, O, HO, WO)


def test_case_count():
    # keep the report's count honest
    assert len(CASES) == 84


# Cases expressible in the op schema (tensors or None, int pairs): the op
# itself (no Python front door) must also raise, never crash.
def _op_expressible(over):
    for k, v in over.items():
        if k in ("input", "weight", "offset") and not isinstance(v, torch.Tensor):
            return False
        if k in ("mask", "bias") and v is not None and not isinstance(v, torch.Tensor):
            return False
        if k in ("stride", "padding", "dilation"):
            if isinstance(v, bool) or not (isinstance(v, int) or (
                    isinstance(v, (tuple, list)) and len(v) == 2
                    and all(isinstance(x, int) and not isinstance(x, bool) for x in v))):
                return False
            if any(abs(x) >= 2 ** 62 for x in ((v, v) if isinstance(v, int) else v)):
                return False
    return True


OP_CASES = [c for c in CASES if _op_expressible(CASES[c][0])]


def _pair(v):
    return [v, v] if isinstance(v, int) else list(v)


def _op_args(kw):
    return (kw["input"], kw["weight"], kw["offset"], kw["mask"], kw["bias"],
            _pair(kw["stride"]), _pair(kw["padding"]), _pair(kw["dilation"]))


@pytest.mark.parametrize("case", OP_CASES)
def test_op_errors(case):
    over, exc, name = CASES[case]
    with pytest.raises((ValueError, TypeError, RuntimeError)) as ei:
        torch.ops.dcn.deform_conv2d(*_op_args(_apply(over)))
    _check(ei, name)


@pytest.mark.parametrize("case", OP_CASES)
def test_backward_op_errors(case):
    over, exc, name = CASES[case]
    grad = torch.ones(N, O, HO, WO)
    with pytest.raises((ValueError, TypeError, RuntimeError)) as ei:
        torch.ops.dcn.deform_conv2d_backward(grad, *_op_args(_apply(over)), [True] * 5)
    _check(ei, name)


COMPILE_CASES = ["input_rank3", "weight_cin_not_dividing_C", "offset_channels_not_multiple_of_2K",
                 "offset_height_mismatch", "mask_batch_mismatch", "bias_too_short",
                 "stride_zero", "padding_minus_one", "kernel_larger_than_input",
                 "mixed_weight_f64", "input_int64", "stride_triple"]


@pytest.mark.parametrize("case", COMPILE_CASES)
def test_compiled_errors(case):
    """Under torch.compile the fake kernel validates; dynamo may wrap the error
    (TorchRuntimeError) but the message must still name the argument."""
    over, exc, name = CASES[case]
    torch._dynamo.reset()
    kw = _apply(over)

    def fn(input, offset, weight, bias, mask):
        return dcn_torch.deform_conv2d(input, offset, weight, bias, stride=kw["stride"],
                                       padding=kw["padding"], dilation=kw["dilation"], mask=mask)

    f = torch.compile(fn, backend="eager", fullgraph=True)
    with pytest.raises(Exception) as ei:
        f(kw["input"], kw["offset"], kw["weight"], kw["bias"], kw["mask"])
    assert isinstance(ei.value, (ValueError, TypeError, RuntimeError)), type(ei.value)
    _check(ei, name)


def test_devices_mismatch():
    kw = valid()
    kw["weight"] = kw["weight"].to("meta")
    with pytest.raises(ValueError) as ei:
        dcn_torch.deform_conv2d(kw.pop("input"), kw.pop("offset"), kw.pop("weight"), **kw)
    assert "weight" in str(ei.value) and "meta" in str(ei.value)


# ---------------------------------------------------------------- module / config


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(in_channels=5, out_channels=4, kernel_size=3, groups=2), VE, "in_channels"),
    (dict(in_channels=4, out_channels=5, kernel_size=3, groups=2), VE, "out_channels"),
    (dict(in_channels=4, out_channels=4, kernel_size=(3, 3, 3)), TE, "kernel_size"),
    (dict(in_channels=4, out_channels=4, kernel_size=3, stride=(1, 1, 1)), TE, "stride"),
    (dict(in_channels=4, out_channels=4, kernel_size=3, padding="same"), TE, "padding"),
    (dict(in_channels=4, out_channels=4, kernel_size=3, dilation=1.5), TE, "dilation"),
])
def test_module_constructor_errors(kwargs, exc, name):
    with pytest.raises(exc) as ei:
        dcn_torch.DeformConv2d(**kwargs)
    _check(ei, name)


def test_module_forward_errors_name_argument():
    m = dcn_torch.DeformConv2d(4, 6, 3, groups=2)
    x = torch.randn(2, 4, 6, 6)
    with pytest.raises(ValueError) as ei:
        m(x, torch.randn(2, 17, 4, 4))
    _check(ei, "offset")
    with pytest.raises(ValueError) as ei:
        m(x, torch.randn(2, 18, 4, 4), torch.rand(2, 18, 4, 4))
    _check(ei, "mask")
    with pytest.raises(ValueError) as ei:
        m(torch.randn(2, 3, 6, 6), torch.randn(2, 18, 4, 4))
    _check(ei, "weight")
    with pytest.raises(ValueError) as ei:
        m.double()(x.double(), torch.randn(2, 18, 4, 4))
    _check(ei, "offset")


@pytest.mark.parametrize("fn,arg", [
    (dcn_torch.set_num_threads, -1),
    (dcn_torch.set_num_threads, 1.5),
    (dcn_torch.set_num_threads, "2"),
    (dcn_torch.set_workspace_limit, 0),
    (dcn_torch.set_workspace_limit, -4096),
    (dcn_torch.set_workspace_limit, 1e6),
])
def test_config_errors(fn, arg):
    threads, limit = dcn_torch.get_num_threads(), dcn_torch.get_workspace_limit()
    with pytest.raises((ValueError, TypeError)) as ei:
        fn(arg)
    assert fn.__name__ in str(ei.value)
    assert dcn_torch.get_num_threads() == threads
    assert dcn_torch.get_workspace_limit() == limit


def test_errors_leave_library_usable():
    for case in CASES:
        over, exc, name = CASES[case]
        kw = _apply(over)
        try:
            dcn_torch.deform_conv2d(kw.pop("input"), kw.pop("offset"), kw.pop("weight"), **kw)
        except (ValueError, TypeError):
            pass
    kw = valid()
    out = dcn_torch.deform_conv2d(kw.pop("input"), kw.pop("offset"), kw.pop("weight"), **kw)
    assert out.shape == (N, O, HO, WO) and torch.isfinite(out).all()
