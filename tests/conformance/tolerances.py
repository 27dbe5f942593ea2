"""Per-dtype tolerances of the conformance suite, and the one comparison helper.

Every comparison is scale-aware, per tensor:

    max |got - ref|  <=  TOL[dtype] * max |ref|

with ``ref`` the float64 reference evaluated on the inputs *already rounded
to dtype* (``Case.make(dtype)``), so input rounding is not part of the error:
what is measured is the frontend's internal arithmetic only.  A reference
that is exactly zero everywhere (far offsets, empty batch) demands an exactly
zero result.

Why these values (u = unit roundoff of the dtype):

* float64 (u = 1.1e-16): 1e-12.  Sums have at most ~650 terms here, so even
  the worst-case bound n*u is ~1e-13; observed errors are ~6e-16.  Anything
  above 1e-12 is a real difference, not rounding.
* float32 (u = 6.0e-8): 1e-5.  Observed <= 1.1e-6 (the largest cases, where
  the sample position base + offset is itself rounded to float32 and the
  weight gradient sums 650 products); 1e-5 leaves ~10x headroom for other
  summation orders (BLAS, GPU) and still catches any semantic slip, which
  shows up at 1e-2 .. 1.
* float16 (u = 2^-11 = 4.9e-4): 5e-3, i.e. ~10 u.  The columns, the column
  gradients and the result are each rounded to float16 (accumulation in
  float32); observed <= 1.6 u (7.5e-4).
* bfloat16 (u = 2^-8 = 3.9e-3): 4e-2, i.e. ~10 u, by the same argument;
  observed <= 1.9 u (7.2e-3).

The half-type gradients use the same values (observed errors are of the
same size as the forward's, in units of u).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["TOL", "assert_close"]

TOL = {
    "float64": 1e-12,
    "float32": 1e-5,
    "float16": 5e-3,
    "bfloat16": 4e-2,
}


def assert_close(got: Optional[np.ndarray], ref: np.ndarray, dtype: str, what: str, factor: float = 1.0) -> None:
    """``got`` within ``factor * TOL[dtype] * max|ref|`` of ``ref`` (float64
    arrays of the same shape); exact when ``ref`` is all zeros."""
    assert got is not None, f"{what}: not produced"
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    if ref.size == 0:
        return
    bad = ~np.isfinite(got)
    assert not bad.any(), f"{what}: {int(bad.sum())} non-finite values, first at {np.argwhere(bad)[0].tolist()}"
    scale = float(np.abs(ref).max())
    err = np.abs(got - ref)
    if scale == 0.0:
        if err.max() > 0:
            idx = np.unravel_index(int(np.argmax(err)), err.shape)
            raise AssertionError(
                f"{what} [{dtype}]: reference is exactly 0 everywhere, got max |value| "
                f"{err.max():.3e} at {list(idx)} ({int((err > 0).sum())}/{err.size} nonzero)"
            )
        return
    tol = factor * TOL[dtype]
    rel = err / scale
    if rel.max() > tol:
        idx = np.unravel_index(int(np.argmax(rel)), rel.shape)
        raise AssertionError(
            f"{what} [{dtype}]: max |got - ref| / max|ref| = {rel.max():.3e} > {tol:.1e} "
            f"at index {list(idx)} (got {got[idx]!r}, ref {ref[idx]!r}, max|ref| {scale:.4g}); "
            f"{int((rel > tol).sum())}/{rel.size} elements out of tolerance"
        )
