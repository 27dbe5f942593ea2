"""dcn_torch: deformable convolution v2 for PyTorch on dcn's C++ core.

``deform_conv2d`` and ``DeformConv2d`` match ``torchvision.ops`` exactly; the
op is ``torch.ops.dcn.deform_conv2d`` (fake kernel, autograd, torch.compile).
"""
from ._config import (
                      DEFAULT_WORKSPACE_BYTES,
                      get_num_threads,
                      get_workspace_limit,
                      set_deterministic,
                      set_num_threads,
                      set_workspace_limit,
)
from ._config import deterministic as get_deterministic
from ._workspace import empty_cache
from .functional import deform_conv2d
from .info import build_info
from .modules import DeformConv2d

__all__ = ["deform_conv2d", "DeformConv2d", "set_num_threads", "get_num_threads",
           "set_workspace_limit", "get_workspace_limit", "DEFAULT_WORKSPACE_BYTES", "build_info", "empty_cache",
           "set_deterministic", "get_deterministic"]
