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
    """``dcn_torch.deform_conv2d`` (NCHW, torchvision's signature), on
    ``device`` ("cpu", or "cuda": unavailable without a GPU and a CUDA build).

    ``workspace_bytes`` / ``num_threads`` / ``deterministic``, when given, are
    applied around each call (e.g. a 1-byte workspace forces one image per
    batch chunk; deterministic=True the sort-based CUDA input gradient).
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
        device: str = "cpu",
        deterministic: Optional[bool] = None,
    ):
        self.name = name
        self.dtypes = tuple(dtypes)
        self.workspace_bytes = workspace_bytes
        self.num_threads = num_threads
        self.device = device
        self.deterministic = deterministic

    def unavailable_reason(self) -> Optional[str]:
        reason = _import_error("torch") or _import_error("dcn_torch")
        if reason is None and self.device != "cpu":
            import torch

            import dcn_torch

            if not torch.cuda.is_available():
                reason = f"no CUDA device (torch {torch.__version__})"
            elif "cuda" not in dcn_torch.build_info()["backends"]:
                reason = "dcn_torch was built without CUDA kernels"
        return reason

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
        t = t.to(self.device)
        if not strided:
            return t.contiguous()
        if role == "x":
            return t.contiguous(memory_format=torch.channels_last)
        if role == "offset":  # every other channel of a twice-as-wide buffer
            n, c, h, w = t.shape
            base = torch.full((n, 2 * c, h, w), float("nan"), dtype=t.dtype, device=t.device)
            base[:, ::2] = t
            return base[:, ::2]
        if role in ("mask", "grad_out"):  # H and W swapped in memory
            return t.transpose(2, 3).contiguous().transpose(2, 3)
        if role == "weight":  # stored (kh, kw, Cpg, O)
            return t.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)
        if role == "bias":
            base = torch.full((2 * t.shape[0],), float("nan"), dtype=t.dtype, device=t.device)
            base[::2] = t
            return base[::2]
        raise ValueError(role)

    @staticmethod
    def _numpy(t) -> np.ndarray:
        import torch

        return t.detach().cpu().to(torch.float64).contiguous().numpy()

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
        old_det = dcn_torch._config._deterministic
        if self.deterministic is not None:
            dcn_torch.set_deterministic(self.deterministic)
        try:
            yield
        finally:
            dcn_torch.set_workspace_limit(old_ws)
            dcn_torch.set_deterministic(old_det)
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
# MLX
# ---------------------------------------------------------------------------


class MLXFrontend(Frontend):
    """``dcn_mlx.deform_conv2d`` (NHWC, weight ``(O, kh, kw, C/groups)``) on
    MLX's CPU stream; gradients from ``mx.grad`` over all present arguments.

    NCHW -> NHWC on the way in (x, offset, mask, grad_out; weight
    ``(O, C/g, kh, kw)`` -> ``(O, kh, kw, C/g)``), back to NCHW on the way out.
    With ``case.non_contiguous`` the arrays are MLX views read in place by the
    primitive: input an NCHW buffer transposed to NHWC, offset every other
    channel of a NaN-filled buffer, mask and grad_out H/W-transposed, weight
    stored ``(kh, kw, C/g, O)``, bias a stride-2 slice.
    ``compile=True`` runs forward and gradient under ``mx.compile``.

    float64 runs too: MLX's CPU backend has float64 matmul (0.32.4); only
    MLX's GPU backends lack float64.
    """

    _DT = ("float64", "float32", "float16", "bfloat16")

    def __init__(self, name: str = "mlx", dtypes: Sequence[str] = DTYPES, compile: bool = False,
                 device: str = "cpu"):
        self.name = name
        self.dtypes = tuple(dtypes)
        self.compile = compile
        self.device = device  # "cpu", or "gpu": MLX's Metal stream (Apple silicon)

    def unavailable_reason(self) -> Optional[str]:
        reason = _import_error("mlx.core") or _import_error("dcn_mlx")
        if reason is None:
            import dcn_mlx

            if not hasattr(dcn_mlx, "deform_conv2d"):
                reason = "dcn_mlx has no deform_conv2d"
        if reason is None and self.device == "gpu":
            import mlx.core as mx

            if not mx.metal.is_available():
                reason = "no Metal GPU (MLX's GPU stream needs Apple silicon)"
        return reason

    def _stream(self):
        """The stream every call of this adapter runs on."""
        import mlx.core as mx

        return mx.stream(mx.gpu if self.device == "gpu" else mx.cpu)

    # -- conversions ------------------------------------------------------
    @staticmethod
    def _dtype(dtype: str):
        import mlx.core as mx

        return getattr(mx, dtype)

    def _array(self, a: Optional[np.ndarray], dtype: str, role: str, strided: bool):
        """NCHW float64 numpy array -> mx.array of ``dtype`` in dcn_mlx's
        layout (exact: ``a`` is already representable in ``dtype``)."""
        import mlx.core as mx

        if a is None:
            return None
        a = np.ascontiguousarray(a, dtype=np.float64)
        dt = self._dtype(dtype)
        # (mx.array(float64 numpy) alone would give float32)
        m = mx.array(a, dtype=mx.float64).astype(dt)
        if role == "bias":
            if not strided:
                return m
            base = mx.full((2 * m.shape[0],), float("nan"), dtype=dt)
            base[::2] = m
            return base[::2]
        if role == "weight":  # (O, C/g, kh, kw) -> (O, kh, kw, C/g)
            if not strided:
                return mx.contiguous(mx.transpose(m, (0, 2, 3, 1)))
            stored = mx.contiguous(mx.transpose(m, (2, 3, 1, 0)))  # (kh, kw, C/g, O) in memory
            return mx.transpose(stored, (3, 0, 1, 2))
        # activations: (N, C, H, W) -> (N, H, W, C)
        if not strided:
            return mx.contiguous(mx.transpose(m, (0, 2, 3, 1)))
        if role == "x":  # the NCHW buffer itself, viewed as NHWC
            return mx.transpose(m, (0, 2, 3, 1))
        if role == "offset":  # every other channel of a twice-as-wide buffer
            n, c, h, w = m.shape
            base = mx.full((n, h, w, 2 * c), float("nan"), dtype=dt)
            base[..., ::2] = mx.transpose(m, (0, 2, 3, 1))
            return base[..., ::2]
        if role in ("mask", "grad_out"):  # stored (N, W, H, C): H and W swapped in memory
            stored = mx.contiguous(mx.transpose(m, (0, 3, 2, 1)))
            return mx.swapaxes(stored, 1, 2)
        raise ValueError(role)

    @staticmethod
    def _numpy(a, role: str) -> np.ndarray:
        import mlx.core as mx

        if a.dtype != mx.float64:
            a = a.astype(mx.float32)
        out = np.array(a, dtype=np.float64)
        if role == "weight":
            return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
        if role == "bias":
            return out
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def _inputs(self, arrs: CaseArrays, case: Case, dtype: str):
        nc = case.non_contiguous
        return dict(
            input=self._array(arrs.x, dtype, "x", nc),
            offset=self._array(arrs.offset, dtype, "offset", nc),
            weight=self._array(arrs.weight, dtype, "weight", nc),
            mask=self._array(arrs.mask, dtype, "mask", nc),
            bias=self._array(arrs.bias, dtype, "bias", nc),
        )

    def _fn(self, case: Case):
        import dcn_mlx

        def fn(input, offset, weight, mask, bias):
            return dcn_mlx.deform_conv2d(
                input, offset, weight, bias, stride=tuple(case.stride),
                padding=tuple(case.padding), dilation=tuple(case.dilation), mask=mask)

        return fn

    def _check(self, a, dtype: str, shape, what: str) -> None:
        if a.dtype != self._dtype(dtype):
            raise AssertionError(f"{self.name}: {what} has dtype {a.dtype}, expected {dtype}")
        if tuple(a.shape) != tuple(shape):
            raise AssertionError(f"{self.name}: {what} has shape {tuple(a.shape)}, expected {tuple(shape)}")

    # -- API --------------------------------------------------------------
    def forward(self, arrs: CaseArrays, case: Case, dtype: str) -> np.ndarray:
        with self._stream():
            return self._forward(arrs, case, dtype)

    def grads(self, arrs: CaseArrays, case: Case, dtype: str, grad_out: np.ndarray) -> Dict[str, np.ndarray]:
        with self._stream():
            return self._grads(arrs, case, dtype, grad_out)

    def _forward(self, arrs: CaseArrays, case: Case, dtype: str) -> np.ndarray:
        import mlx.core as mx

        ins = self._inputs(arrs, case, dtype)
        fn = self._fn(case)
        if self.compile:
            fn = mx.compile(fn)
        out = fn(ins["input"], ins["offset"], ins["weight"], ins["mask"], ins["bias"])
        mx.eval(out)
        N, O = arrs.x.shape[0], arrs.weight.shape[0]
        self._check(out, dtype, (N,) + case.out_size + (O,), "output")
        return self._numpy(out, "output")

    def _grads(self, arrs: CaseArrays, case: Case, dtype: str, grad_out: np.ndarray) -> Dict[str, np.ndarray]:
        import mlx.core as mx

        ins = self._inputs(arrs, case, dtype)
        g = self._array(grad_out, dtype, "grad_out", case.non_contiguous)
        keys = [k for k in ("input", "offset", "weight", "mask", "bias") if ins[k] is not None]
        fn = self._fn(case)

        def loss(*args):
            kw = dict(zip(keys, args))
            out = fn(kw["input"], kw["offset"], kw["weight"], kw.get("mask"), kw.get("bias"))
            return mx.sum(out * g)

        grad_fn = mx.grad(loss, argnums=tuple(range(len(keys))))
        if self.compile:
            grad_fn = mx.compile(grad_fn)
        grads = grad_fn(*(ins[k] for k in keys))
        mx.eval(grads)
        result = {}
        for key, gr in zip(keys, grads):
            self._check(gr, dtype, ins[key].shape, f"grad[{key}]")
            result[key] = self._numpy(gr, key)
        return result


# ---------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------

ALL_FRONTENDS = [
    TorchFrontend(),
    # same frontend, one image per batch chunk and one thread: the chunk
    # loop and the single-threaded kernel paths, checked on the whole table
    TorchFrontend(name="torch_ws1_t1", dtypes=("float64", "float32"), workspace_bytes=1, num_threads=1),
    # CUDA tensors (skipped, with the reason, without a GPU): the default
    # atomic input gradient, and the deterministic one with one image per chunk
    TorchFrontend(name="torch_cuda", device="cuda"),
    TorchFrontend(name="torch_cuda_det_ws1", dtypes=("float64", "float32", "bfloat16"),
                  device="cuda", deterministic=True, workspace_bytes=1),
    MLXFrontend(),
    # the same calls under mx.compile (forward and mx.grad)
    MLXFrontend(name="mlx_compiled", dtypes=("float32", "bfloat16"), compile=True),
    # the Metal kernels through eval_gpu (skipped, with the reason, off Apple
    # silicon); MLX's GPU has no float64
    MLXFrontend(name="mlx_gpu", dtypes=("float32", "float16", "bfloat16"), device="gpu"),
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
