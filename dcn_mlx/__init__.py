"""dcn_mlx: deformable convolution v2 for MLX on dcn's C++ core.

* :func:`deform_conv2d` -- ``torchvision.ops.deform_conv2d``'s semantics in
  MLX's channels-last layout (input ``(N, H, W, C)``, weight
  ``(O, kh, kw, C/groups)`` as ``mx.conv2d``).
* :class:`DeformConv2d` -- an ``mlx.nn`` layer written like ``mlx.nn.Conv2d``.
* :mod:`dcn_mlx.port` -- load torch weights, move arrays between NCHW and NHWC.

The sampling is an MLX primitive (``DeformSample``, with a ``vjp`` building
``DeformSampleGrad``) evaluated by the dcn core's kernels: on the CPU, and on
the Apple GPU (Metal) in macOS builds (float32, float16, bfloat16); the
weight product is ``mx.matmul``. Works with ``mx.grad``,
``nn.value_and_grad``, ``mx.vmap`` and ``mx.compile`` (also
``shapeless=True``). :func:`set_deterministic` makes the GPU input gradient
bitwise reproducible (the CPU always is).
"""
import mlx.core  # noqa: F401  (registers mx.array with nanobind before _C loads)

try:
    from . import _C
except ImportError as e:  # built without MLX, or against another libmlx
    raise ImportError(
        f"dcn_mlx: the compiled module dcn_mlx._C could not be loaded ({e}). It is built only "
        "when MLX is installed at build time, and links that exact MLX release: install "
        "'mlx[cpu]==0.32.4' (Linux) / 'mlx==0.32.4' (macOS), then reinstall dcn "
        "(pip install --force-reinstall --no-deps .)") from e


def _check_mlx_version() -> None:
    built, running = _C.mlx_build_version, mlx.core.__version__
    if built.split(".")[:3] != running.split("+")[0].split(".")[:3]:
        raise ImportError(
            f"dcn_mlx was compiled against MLX {built} but MLX {running} is installed; MLX's C++ "
            f"ABI changes between releases. Install mlx=={built} or rebuild dcn against {running}.")


_check_mlx_version()
from .functional import deform_conv2d
from .layers import DeformConv2d
from .port import from_torch, load_torch_state_dict, nchw_to_nhwc, nhwc_to_nchw, torch_state_dict


def set_num_threads(n: int) -> None:
    """Threads of the dcn CPU kernels used by dcn_mlx (0: all cores)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"set_num_threads: expected an int >= 0, got {n!r}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    return _C.get_num_threads()


def set_deterministic(deterministic: bool) -> None:
    """Compute the input gradient on the GPU with the deterministic kernel.

    By default the GPU adds the input gradient with atomic float adds: fast,
    but their order, hence the last bits of the result, varies from run to
    run. With ``True`` one thread owns each channel plane and adds in a fixed
    order, so the gradient is the same bits every run (and slower; the
    offset, mask, weight and bias gradients are deterministic either way).
    The CPU kernels are always deterministic.

    Read when a gradient graph is built (``mx.grad``, ``mx.vjp``): graphs built
    afterwards use the setting; a function already traced by ``mx.compile``
    keeps the one it was traced with.
    """
    if not isinstance(deterministic, bool):
        raise TypeError(f"set_deterministic: expected a bool, got {deterministic!r}")
    _C.set_deterministic(deterministic)


def get_deterministic() -> bool:
    return _C.get_deterministic()


__all__ = [
    "deform_conv2d",
    "DeformConv2d",
    "load_torch_state_dict",
    "from_torch",
    "torch_state_dict",
    "nchw_to_nhwc",
    "nhwc_to_nchw",
    "set_num_threads",
    "get_num_threads",
    "set_deterministic",
    "get_deterministic",
]
