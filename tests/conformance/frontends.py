"""Frontend adapters: the only place that knows a framework.

A test gives an adapter float64 NCHW numpy arrays (``cases.CaseArrays``), the
``Case`` (geometry, ``non_contiguous``) and a dtype name from
``cases.DTYPES``; the adapter converts to its framework, its dtype and its
layout, calls the library, checks the dtype/shape it got back, and returns
float64 NCHW numpy arrays.  The arrays a test passes are already rounded to
the dtype (``Case.make(dtype)``), so the conversion is exact.

Adding a frontend (e.g. ``dcn_mlx``, whose arrays are NHWC) means adding one
class here and listing it in ``ALL_FRONTENDS``; no test file changes.  The
adapter must do every layout conversion itself: NCHW -> its layout on the way
in (x, offset, mask; weight (O, C/groups, kh, kw) -> its own weight layout)
and back to NCHW on the way out (output and every gradient).

``FRONTENDS`` lists the available instances.  Tests parametrise over
``frontend_params()`` / ``frontend_dtype_params()``, which also list the
unavailable ones with a skip mark, so a run's report shows them as skipped.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

try:
    from .cases import DTYPES, Case, CaseArrays
except ImportError:  # pragma: no cover - imported as a top-level module
    from cases import DTYPES, Case, CaseArrays

__all__ = [
    "Frontend",
    "TorchFrontend",
    "MLXFrontend",
    "ALL_FRONTENDS",
    "FRONTENDS",
    "frontend_params",
    "frontend_dtype_params",
]


class Frontend:
    """Adapter interface (override everything below)."""

    #: short id used in test names
    name: str = "?"
    #: dtype names (from ``cases.DTYPES``) the frontend supports
    dtypes: Tuple[str, ...] = ()

    def available(self) -> bool:
        return self.unavailable_reason() is None

    def unavailable_reason(self) -> Optional[str]:
        """None when usable, else a sentence for the skip report."""
        raise NotImplementedError

    def forward(self, arrs: CaseArrays, case: Case, dtype: str) -> np.ndarray:
        """Output as a float64 NCHW numpy array (N, O, Ho, Wo)."""
        raise NotImplementedError

    def grads(self, arrs: CaseArrays, case: Case, dtype: str, grad_out: np.ndarray) -> Dict[str, np.ndarray]:
        """Gradients of ``sum(forward * grad_out)`` as float64 NCHW numpy
        arrays under "input", "offset", "weight" and, when present in
        ``arrs``, "mask" and "bias".  A gradient the framework did not
        produce is returned as None (the tests then fail on it)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def _import_error(module: str) -> Optional[str]:
    try:
        importlib.import_module(module)
    except Exception as e:  # ImportError, or a broken build raising anything
        return f"{module} not importable ({type(e).__name__}: {e})"
    return None


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------


class TorchFrontend(Frontend):
    """``dcn_torch.deform_conv2d`` (NCHW, torchvision's signature), on CPU.

    ``workspace_bytes`` / ``num_threads``, when given, are applied around each
    call (e.g. a 1-byte workspace forces one image per batch chunk).
    With ``case.non_contiguous`` the tensors are strided views: input
    channels-last, offset a channel slice, mask H/W-transposed, weight
    permuted, bias a stride-2 slice, grad_out H/W-transposed.
    """

    _DT = {"float64": "float64", "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}

    def __init__(
        self,
        name: str = "torch",
        dtypes: Sequence[str] = DTYPES,
        workspace_bytes: Optional[int] = None,
        num_threads: Optional[int] = None,
    ):
        self.name = name
        self.dtypes = tuple(dtypes)
        self.workspace_bytes = workspace_bytes
        self.num_threads = num_threads

    def unavailable_reason(self) -> Optional[str]:
        return _import_error("torch") or _import_error("dcn_torch")

    # -- conversions ------------------------------------------------------
    def _dtype(self, dtype: str):
        import torch

        return getattr(torch, self._DT[dtype])

    def _tensor(self, a: Optional[np.ndarray], dtype: str, role: str, strided: bool):
        """NCHW float64 array -> torch tensor of ``dtype`` (exact: ``a`` is
        already representable), as a strided view when ``strided``."""
        import torch

        if a is None:
            return None
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).to(self._dtype(dtype))
        if not strided:
            return t.contiguous()
        if role == "x":
            return t.contiguous(memory_format=torch.channels_last)
        if role == "offset":  # every other channel of a twice-as-wide buffer
            n, c, h, w = t.shape
            base = torch.full((n, 2 * c, h, w), float("nan"), dtype=t.dtype)
            base[:, ::2] = t
            return base[:, ::2]
        if role in ("mask", "grad_out"):  # H and W swapped in memory
            return t.transpose(2, 3).contiguous().transpose(2, 3)
        if role == "weight":  # stored (kh, kw, Cpg, O)
            return t.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)
        if role == "bias":
            base = torch.full((2 * t.shape[0],), float("nan"), dtype=t.dtype)
            base[::2] = t
            return base[::2]
        raise ValueError(role)

    @staticmethod
    def _numpy(t) -> np.ndarray:
        import torch

        return t.detach().to(torch.float64).contiguous().numpy()

    @contextlib.contextmanager
    def _settings(self):
        import dcn_torch

        old_ws, old_threads = dcn_torch.get_workspace_limit(), None
        if self.num_threads is not None:
            import dcn_torch._config as cfg

            old_threads = cfg._threads_override
            dcn_torch.set_num_threads(self.num_threads)
        if self.workspace_bytes is not None:
            dcn_torch.set_workspace_limit(self.workspace_bytes)
        try:
            yield
        finally:
            dcn_torch.set_workspace_limit(old_ws)
            if old_threads is not None:
                dcn_torch.set_num_threads(old_threads)

    def _inputs(self, arrs: CaseArrays, case: Case, dtype: str, requires_grad: bool):
        nc = case.non_contiguous
        ts = dict(
            input=self._tensor(arrs.x, dtype, "x", nc),
            offset=self._tensor(arrs.offset, dtype, "offset", nc),
            weight=self._tensor(arrs.weight, dtype, "weight", nc),
            mask=self._tensor(arrs.mask, dtype, "mask", nc),
            bias=self._tensor(arrs.bias, dtype, "bias", nc),
        )
        if requires_grad:
            for t in ts.values():
                if t is not None:
                    t.requires_grad_(True)  # strided views of plain tensors are leaves
        return ts

    def _call(self, ts, case: Case):
        import dcn_torch

        return dcn_torch.deform_conv2d(
            ts["input"], ts["offset"], ts["weight"], ts["bias"],
            stride=tuple(case.stride), padding=tuple(case.padding),
            dilation=tuple(case.dilation), mask=ts["mask"],
        )

    def _check(self, t, dtype: str, shape, what: str) -> None:
        if t.dtype != self._dtype(dtype):
            raise AssertionError(f"{self.name}: {what} has dtype {t.dtype}, expected {dtype}")
        if tuple(t.shape) != tuple(shape):
            raise AssertionError(f"{self.name}: {what} has shape {tuple(t.shape)}, expected {tuple(shape)}")

    # -- API --------------------------------------------------------------
    def forward(self, arrs: CaseArrays, case: Case, dtype: str) -> np.ndarray:
        import torch

        ts = self._inputs(arrs, case, dtype, requires_grad=False)
        with self._settings(), torch.no_grad():
            out = self._call(ts, case)
        self._check(out, dtype, (arrs.x.shape[0], arrs.weight.shape[0]) + case.out_size, "output")
        return self._numpy(out)

    def grads(self, arrs: CaseArrays, case: Case, dtype: str, grad_out: np.ndarray) -> Dict[str, np.ndarray]:
        ts = self._inputs(arrs, case, dtype, requires_grad=True)
        g = self._tensor(grad_out, dtype, "grad_out", case.non_contiguous)
        with self._settings():
            out = self._call(ts, case)
            out.backward(g)
        result = {}
        for key, t in ts.items():
            if t is None:
                continue
            if t.grad is None:
                result[key] = None
                continue
            self._check(t.grad, dtype, t.shape, f"grad[{key}]")
            result[key] = self._numpy(t.grad)
        return result


# ---------------------------------------------------------------------------
# MLX (placeholder: the adapter is not written yet)
# ---------------------------------------------------------------------------


class MLXFrontend(Frontend):
    """Placeholder for the ``dcn_mlx`` adapter, reported as skipped.

    To implement: set ``implemented = True``; ``forward`` / ``grads`` convert
    x, offset, mask from NCHW to NHWC (and weight to dcn_mlx's layout), call
    ``dcn_mlx``, and transpose the output and every gradient back to NCHW.
    For ``case.non_contiguous`` feed strided views where MLX has them.
    """

    name = "mlx"
    dtypes = ("float32", "float16", "bfloat16")
    implemented = False

    def unavailable_reason(self) -> Optional[str]:
        if not self.implemented:
            return "dcn_mlx adapter not written yet"
        return _import_error("mlx.core") or _import_error("dcn_mlx")


# ---------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------

ALL_FRONTENDS = [
    TorchFrontend(),
    # same frontend, one image per batch chunk and one thread: the chunk
    # loop and the single-threaded kernel paths, checked on the whole table
    TorchFrontend(name="torch_ws1_t1", dtypes=("float64", "float32"), workspace_bytes=1, num_threads=1),
    MLXFrontend(),
]

FRONTENDS = [f for f in ALL_FRONTENDS if f.available()]


def _skip_marks(fe: Frontend):
    import pytest

    reason = fe.unavailable_reason()
    return () if reason is None else (pytest.mark.skip(reason=f"frontend {fe.name}: {reason}"),)


def frontend_params():
    """``pytest.param(frontend)`` for every frontend, unavailable ones skipped."""
    import pytest

    return [pytest.param(fe, id=fe.name, marks=_skip_marks(fe)) for fe in ALL_FRONTENDS]


def frontend_dtype_params(dtypes: Sequence[str] = DTYPES):
    """``pytest.param(frontend, dtype)`` for every frontend and every dtype it
    supports (restricted to ``dtypes``); unavailable frontends are skipped."""
    import pytest

    return [
        pytest.param(fe, dt, id=f"{fe.name}-{dt}", marks=_skip_marks(fe))
        for fe in ALL_FRONTENDS
        for dt in fe.dtypes
        if dt in dtypes
    ]
