"""The conformance case table, in framework-free terms.

Every frontend (``frontends.py``) is checked against the same table.  A
``Case`` only describes geometry and data; ``Case.arrays(seed)`` returns
float64 numpy arrays in NCHW (torchvision's layout), and ``Case.make(dtype)``
the same arrays rounded to a dtype, so that the float64 reference can be
evaluated on exactly the values a frontend receives.

Layouts (NCHW, as ``tests/reference.py``):

* x       (N, C, H, W)
* weight  (O, C // groups, kh, kw)
* offset  (N, 2 * offset_groups * kh * kw, Ho, Wo), (dy, dx) per kernel point
* mask    (N, offset_groups * kh * kw, Ho, Wo) or None
* bias    (O,) or None

Offset kinds:

* ``random``  ``offset_scale * N(0, 1)``: fractional positions, partly outside.
* ``far``     ``+-offset_scale + U(0, 1)``: every sample far outside the image
  (output is exactly the bias, every input/offset/mask/weight gradient 0).
* ``integer`` integers in [-3, 3]: samples exactly on pixels (or outside).
* ``zero``    all zeros: a plain convolution; with padding, samples lie exactly
  on y = -1 / x = -1 (and on the last row/column).
* ``border``  sample positions placed exactly on y = -1, y = H-1, y = H,
  x = -1, x = W-1, x = W, on interior pixels, or on multiples of 1/8 inside
  (-1, H) x (-1, W).  There torchvision's offset-gradient rule (no early exit,
  pytorch/vision#6885) differs from the one-sided derivatives, see
  ``tests/reference.py``.

``integer``, ``zero`` and ``border`` offsets are multiples of 1/8 below 32 in
magnitude, hence exact in float16 and bfloat16 too: those cases sample the
same exact positions in every dtype.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import zlib
from typing import Dict, Optional, Tuple

import numpy as np

try:
    from reference import deform_conv2d_ref, deform_conv2d_ref_grads, output_size
except ImportError:  # pragma: no cover - depends on pytest's import mode
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from reference import deform_conv2d_ref, deform_conv2d_ref_grads, output_size

__all__ = [
    "Case",
    "CaseArrays",
    "CASES",
    "CASES_BY_NAME",
    "DTYPES",
    "GRAD_KEYS",
    "quantize",
    "quantize_arrays",
]

#: dtype names used throughout the suite (frontends map them to their own).
DTYPES = ("float64", "float32", "float16", "bfloat16")

#: gradient keys, in torchvision's argument naming ("input", not "x").
GRAD_KEYS = ("input", "offset", "weight", "mask", "bias")

OFFSET_KINDS = ("random", "far", "integer", "zero", "border")


# ---------------------------------------------------------------------------
# rounding to a dtype, in numpy only
# ---------------------------------------------------------------------------


def _round_bfloat16(a: np.ndarray) -> np.ndarray:
    """Round to the nearest bfloat16 (ties to even), returned as float64.

    Goes through float32 first; the result is a bfloat16 value either way,
    which is all that matters here (frontends then convert it exactly).
    """
    f = np.ascontiguousarray(a, dtype=np.float32)
    bits = f.view(np.uint32).astype(np.uint64)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    out = bits.astype(np.uint32).view(np.float32)
    # keep non-finite values (inf from float32 overflow) as they are
    out = np.where(np.isfinite(f), out, f)
    return out.astype(np.float64)


def quantize(a: Optional[np.ndarray], dtype: str) -> Optional[np.ndarray]:
    """``a`` rounded to ``dtype`` and returned as float64 (None stays None).

    Values that overflow the dtype become +-inf; callers skip such cases.
    """
    if a is None:
        return None
    a = np.asarray(a, dtype=np.float64)
    if dtype == "float64":
        return a.copy()
    if dtype == "float32":
        with np.errstate(over="ignore"):
            return a.astype(np.float32).astype(np.float64)
    if dtype == "float16":
        with np.errstate(over="ignore"):
            return a.astype(np.float16).astype(np.float64)
    if dtype == "bfloat16":
        with np.errstate(over="ignore"):
            return _round_bfloat16(a)
    raise ValueError(f"unknown dtype {dtype!r}")


@dataclasses.dataclass(frozen=True)
class CaseArrays:
    """float64 NCHW arrays of one case (mask / bias None when absent)."""

    x: np.ndarray
    weight: np.ndarray
    offset: np.ndarray
    mask: Optional[np.ndarray]
    bias: Optional[np.ndarray]

    def as_dict(self) -> Dict[str, Optional[np.ndarray]]:
        return dict(x=self.x, weight=self.weight, offset=self.offset, mask=self.mask, bias=self.bias)

    def all_finite(self) -> bool:
        return all(a is None or bool(np.all(np.isfinite(a))) for a in self.as_dict().values())


def quantize_arrays(arrs: CaseArrays, dtype: str) -> CaseArrays:
    return CaseArrays(*(quantize(a, dtype) for a in (arrs.x, arrs.weight, arrs.offset, arrs.mask, arrs.bias)))


# ---------------------------------------------------------------------------
# the case description
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    N: int
    C: int
    H: int
    W: int
    O: int
    kernel: Tuple[int, int] = (3, 3)
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1  # weight groups
    offset_groups: int = 1
    with_mask: bool = True
    with_bias: bool = True
    offset_kind: str = "random"
    offset_scale: float = 1.5  # std for "random", distance for "far"
    #: frontends feed strided views (channels-last, sliced, transposed)
    #: instead of contiguous arrays; how is up to each adapter.
    non_contiguous: bool = False
    seed: Optional[int] = None  # default: derived from the name

    def __post_init__(self):
        if self.offset_kind not in OFFSET_KINDS:
            raise ValueError(f"{self.name}: offset_kind {self.offset_kind!r}")
        if self.C % self.groups or self.O % self.groups or self.C % self.offset_groups:
            raise ValueError(f"{self.name}: inconsistent groups")
        if min(self.out_size) < 1:
            raise ValueError(f"{self.name}: empty output")

    # -- geometry ---------------------------------------------------------
    @property
    def K(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def out_size(self) -> Tuple[int, int]:
        return output_size(self.H, self.W, *self.kernel, self.stride, self.padding, self.dilation)

    @property
    def shapes(self) -> Dict[str, Optional[Tuple[int, ...]]]:
        Ho, Wo = self.out_size
        G, K = self.offset_groups, self.K
        return dict(
            x=(self.N, self.C, self.H, self.W),
            weight=(self.O, self.C // self.groups) + tuple(self.kernel),
            offset=(self.N, 2 * G * K, Ho, Wo),
            mask=(self.N, G * K, Ho, Wo) if self.with_mask else None,
            bias=(self.O,) if self.with_bias else None,
            out=(self.N, self.O, Ho, Wo),
        )

    @property
    def conv_args(self) -> Dict[str, Tuple[int, int]]:
        return dict(stride=tuple(self.stride), padding=tuple(self.padding), dilation=tuple(self.dilation))

    def base_positions(self):
        """Un-offset sample positions ``(by, bx)``, each broadcastable to
        (K, Ho, Wo): ``oy*sh - ph + i*dh`` and ``ox*sw - pw + j*dw``."""
        kh, kw = self.kernel
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        Ho, Wo = self.out_size
        i = np.repeat(np.arange(kh), kw)[:, None, None]
        j = np.tile(np.arange(kw), kh)[:, None, None]
        by = np.arange(Ho)[None, :, None] * sh - ph + i * dh
        bx = np.arange(Wo)[None, None, :] * sw - pw + j * dw
        return by, bx

    def sample_positions(self, offset):
        """Absolute sample positions ``(ys, xs)``, each (N, G, K, Ho, Wo)."""
        Ho, Wo = self.out_size
        o = np.asarray(offset, np.float64).reshape(self.N, self.offset_groups, self.K, 2, Ho, Wo)
        by, bx = self.base_positions()
        return by + o[:, :, :, 0], bx + o[:, :, :, 1]

    # -- data -------------------------------------------------------------
    @property
    def default_seed(self) -> int:
        return self.seed if self.seed is not None else zlib.crc32(self.name.encode()) & 0x7FFFFFFF

    def _offsets(self, rng) -> np.ndarray:
        shape = self.shapes["offset"]
        N, _, Ho, Wo = shape
        kind = self.offset_kind
        if kind == "random":
            return self.offset_scale * rng.standard_normal(shape)
        if kind == "far":
            sign = rng.choice([-1.0, 1.0], size=shape)
            return sign * self.offset_scale + rng.random(shape)
        if kind == "integer":
            return rng.integers(-3, 4, size=shape).astype(np.float64)
        if kind == "zero":
            return np.zeros(shape)
        # "border": pick absolute targets, offset = target - base (exact)
        pshape = (N, self.offset_groups, self.K, Ho, Wo)
        by, bx = self.base_positions()
        ty = _border_targets(rng, self.H, pshape)
        tx = _border_targets(rng, self.W, pshape)
        off = np.empty((N, self.offset_groups, self.K, 2, Ho, Wo))
        off[:, :, :, 0] = ty - by
        off[:, :, :, 1] = tx - bx
        return off.reshape(shape)

    def arrays(self, seed: Optional[int] = None) -> CaseArrays:
        """float64 NCHW inputs of this case (deterministic for a seed)."""
        rng = np.random.default_rng(self.default_seed if seed is None else seed)
        s = self.shapes
        x = rng.standard_normal(s["x"])
        weight = rng.standard_normal(s["weight"])
        offset = self._offsets(rng)
        mask = rng.uniform(-0.5, 1.5, s["mask"]) if self.with_mask else None
        bias = rng.standard_normal(s["bias"]) if self.with_bias else None
        return CaseArrays(x, weight, offset, mask, bias)

    def make(self, dtype: str = "float64", seed: Optional[int] = None) -> CaseArrays:
        """``arrays(seed)`` rounded to ``dtype`` (still float64 arrays)."""
        return quantize_arrays(self.arrays(seed), dtype)

    def grad_out(self, dtype: str = "float64", seed: Optional[int] = None) -> np.ndarray:
        """A random output cotangent, rounded to ``dtype``."""
        rng = np.random.default_rng((self.default_seed if seed is None else seed) + 7919)
        return quantize(rng.standard_normal(self.shapes["out"]), dtype)

    # -- oracles ----------------------------------------------------------
    def ref(self, arrs: CaseArrays) -> np.ndarray:
        """float64 reference forward on exactly these arrays."""
        return deform_conv2d_ref(arrs.x, arrs.weight, arrs.offset, arrs.mask, arrs.bias, **self.conv_args)

    def ref_grads(self, arrs: CaseArrays, grad_out: np.ndarray) -> Dict[str, np.ndarray]:
        """float64 reference gradients (torchvision's rule); keys of absent
        mask / bias are dropped."""
        g = deform_conv2d_ref_grads(
            arrs.x, arrs.weight, arrs.offset, arrs.mask, arrs.bias, grad_out=grad_out, **self.conv_args
        )
        return {k: v for k, v in g.items() if v is not None}


def _border_targets(rng, size: int, shape) -> np.ndarray:
    """Absolute coordinates along one axis of length ``size``: exactly -1,
    size-1, size, an interior pixel, or a multiple of 1/8 in (-1, size)."""
    choice = rng.integers(0, 6, size=shape)
    pixel = rng.integers(0, size, size=shape).astype(np.float64)
    frac = -1.0 + rng.integers(1, 8 * (size + 1), size=shape) / 8.0
    return np.select(
        [choice == 0, choice == 1, choice == 2, choice == 3],
        [np.full(shape, -1.0), np.full(shape, size - 1.0), np.full(shape, float(size)), pixel],
        default=frac,
    )


# ---------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------

#: torchvision's own "odd" test configuration (test_ops.py TestDeformConv)
TV_ODD = dict(
    C=6, O=2, H=5, W=4, kernel=(3, 2), groups=2, offset_groups=3,
    stride=(2, 1), padding=(1, 0), dilation=(2, 1),
)

CASES = (
    # torchvision's configuration: batch 1, 0 and 33, with/without mask & bias
    Case("tv_odd_n1", N=1, **TV_ODD),
    Case("tv_odd_n1_plain", N=1, with_mask=False, with_bias=False, **TV_ODD),
    Case("tv_odd_n0", N=0, **TV_ODD),
    Case("tv_odd_n33", N=33, **TV_ODD),
    Case("tv_odd_n3_noncontig", N=3, non_contiguous=True, **TV_ODD),
    # far outside the image: output is exactly the bias (or 0)
    Case("far_1e3", N=2, C=4, O=3, H=5, W=5, padding=(1, 1), offset_groups=2,
         offset_kind="far", offset_scale=1e3),
    Case("far_6e4_no_mask", N=1, C=2, O=2, H=4, W=6, kernel=(2, 3), with_mask=False,
         offset_kind="far", offset_scale=6e4),  # still finite in float16
    # beyond int32 after floor(); overflows float16 (skipped there)
    Case("far_1e10_no_bias", N=2, C=3, O=2, H=3, W=4, kernel=(2, 2), padding=(1, 0),
         with_bias=False, offset_kind="far", offset_scale=1e10),
    # samples exactly on pixels
    Case("integer", N=2, C=4, O=4, H=5, W=6, padding=(1, 1), groups=2, offset_groups=2,
         offset_kind="integer"),
    Case("integer_strided_dilated_no_mask", N=1, C=2, O=2, H=6, W=5, kernel=(2, 2),
         stride=(2, 2), padding=(1, 0), dilation=(2, 2), with_mask=False, offset_kind="integer"),
    Case("zero_offsets", N=2, C=3, O=5, H=6, W=7, kernel=(3, 2), stride=(2, 1),
         padding=(1, 2), dilation=(1, 2), offset_kind="zero"),
    Case("zero_offsets_plain_noncontig", N=1, C=4, O=2, H=5, W=5, padding=(1, 1),
         with_mask=False, with_bias=False, offset_kind="zero", non_contiguous=True),
    # samples exactly on the y=-1 / H-1 / H and x=-1 / W-1 / W lines
    Case("border", N=2, C=4, O=3, H=5, W=6, padding=(1, 1), offset_groups=2,
         offset_kind="border"),
    Case("border_no_mask_noncontig", N=1, C=3, O=2, H=4, W=7, kernel=(2, 3), stride=(1, 2),
         with_mask=False, offset_kind="border", non_contiguous=True),
    Case("border_thin_h1", N=2, C=2, O=2, H=1, W=9, kernel=(1, 3), padding=(0, 1),
         offset_kind="border"),
    # shapes
    Case("non_square", N=1, C=3, O=4, H=7, W=5, kernel=(2, 3), stride=(1, 2),
         padding=(2, 1), dilation=(1, 2), with_bias=False, offset_scale=2.0),
    Case("kernel_1x1", N=2, C=4, O=3, H=4, W=5, kernel=(1, 1), offset_groups=2),
    Case("kernel_1x1_strided_noncontig", N=2, C=3, O=5, H=7, W=6, kernel=(1, 1),
         stride=(2, 3), with_mask=False, non_contiguous=True),
    Case("kernel_larger_than_input", N=1, C=2, O=3, H=2, W=3, kernel=(5, 4),
         padding=(2, 1), offset_scale=2.0),
    Case("single_output_pixel", N=3, C=2, O=2, H=3, W=3),
    Case("wide_offsets", N=1, C=3, O=2, H=6, W=6, padding=(1, 1), offset_scale=6.0),
    # groups
    Case("depthwise", N=3, C=4, O=4, H=6, W=6, padding=(1, 1), groups=4, offset_groups=4,
         with_mask=False, offset_scale=3.0),
    Case("depthwise_multiplier_2", N=1, C=3, O=6, H=5, W=7, kernel=(3, 3), groups=3,
         padding=(1, 1), offset_groups=1),
    Case("offset_groups_4", N=2, C=8, O=4, H=5, W=5, padding=(1, 1), offset_groups=4),
    Case("offset_groups_4_weight_groups_2_noncontig", N=1, C=8, O=6, H=6, W=5,
         kernel=(2, 2), groups=2, offset_groups=4, non_contiguous=True),
    # weight groups of 8+ channels: the CPU's channels-last path with columns
    # by weight group (runs of 12 channels; an offset group across groups)
    Case("weight_groups_of_12", N=2, C=24, O=6, H=6, W=7, padding=(1, 1), groups=2),
    Case("offset_groups_across_weight_groups", N=1, C=48, O=6, H=5, W=6, padding=(1, 1),
         groups=3, offset_groups=2),
    # large enough that 256-pixel tiles / chunking matter (Ho*Wo = 323)
    Case("large_tiled", N=2, C=16, O=8, H=17, W=19, padding=(1, 1), offset_groups=2),
    Case("large_tiled_dilated_noncontig", N=1, C=8, O=4, H=20, W=21, padding=(2, 2),
         dilation=(2, 2), with_bias=False, non_contiguous=True),
)

CASES_BY_NAME = {c.name: c for c in CASES}
assert len(CASES_BY_NAME) == len(CASES), "case names must be unique"
