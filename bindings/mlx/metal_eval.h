// GPU evaluation of the primitives: the Metal kernels of core/metal encoded
// on the stream's MLX command encoder (metal_eval.cpp). Compiled on macOS
// only, where cmake/dcn_metal.cmake defines DCN_MLX_METAL; elsewhere the
// primitives' eval_gpu raises instead of calling these.
#pragma once

#include <vector>

#include "mlx/array.h"
#include "mlx/stream.h"

#include "primitives.h"

namespace dcn_mlx::gpu {

// DeformSample: inputs x, offset[, mask], dense NHWC; `out` gets the columns
// (groups, N, Ho, Wo, K*Cg) as a strided view over the kernels' order
// (metal_contract::kernel_columns_strides).
void eval_sample(const mx::Stream& s, const SampleParams& p, const std::vector<mx::array>& inputs,
                 mx::array& out);

// DeformSampleGrad: inputs grad_columns (in the kernels' order), x, offset
// [, mask] (dense NHWC); outputs [grad_x (float32)] [grad_offset[, grad_mask]].
// `deterministic` picks the col2im kernel that gives each channel plane to
// one thread (bitwise reproducible) over the atomic one.
void eval_sample_grad(const mx::Stream& s, const SampleParams& p, bool need_input,
                      bool need_coords, bool deterministic, const std::vector<mx::array>& inputs,
                      std::vector<mx::array>& outputs);

}  // namespace dcn_mlx::gpu
