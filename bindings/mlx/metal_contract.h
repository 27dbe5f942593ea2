// The host side of the Metal kernels' contract (core/metal/kernels.h is the
// kernel side): the dtypes they exist for, the layouts they read and write,
// their 32-bit index limit and their parameter block; and the graph ops that
// hand the kernels arrays in that form on a GPU stream.
//
// Portable and header-only: the graph builders (primitives.cpp) use it on
// every platform, eval_gpu (metal_eval.cpp, macOS only) at evaluation.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "mlx/array.h"
#include "mlx/ops.h"

#include "dcn/params.h"
#include "../../core/metal/params.h"  // DcnParams, the kernels' own definition

namespace dcn_mlx::metal_contract {

namespace mx = mlx::core;

inline bool on_gpu(const mx::Stream& s) { return s.device == mx::Device::gpu; }

// Kernels exist for float32, float16 and bfloat16 (the last where the Metal
// compiler has bfloat, MSL 3.1). MLX's GPU has no float64 at all, so the
// builders refuse it up front instead of failing at evaluation.
inline void check_dtype(mx::Dtype d) {
  if (d == mx::float32 || d == mx::float16 || d == mx::bfloat16) return;
  throw std::invalid_argument(
      "dcn: the GPU kernels support float32, float16 and bfloat16 (MLX's Metal backend has no "
      "float64); run float64 on the CPU: pass stream=mx.cpu");
}

// Host-name suffix of a kernel instantiated for d (see instantiate_kernel).
inline const char* dtype_suffix(mx::Dtype d) {
  if (d == mx::float16) return "float16";
  if (d == mx::bfloat16) return "bfloat16";
  return "float32";
}

// The primitives' columns are (groups, N, Ho, Wo, K*Cg); the kernels store
// them as (N, Ho, Wo, groups, K*Cg), i.e. [image, pixel][weight group]
// [kernel point][channel in group]. Same elements, permuted axes: these are
// the element strides of the primitives' shape over the kernels' memory, so
// the GPU columns are a strided view, never a transposing copy.
inline mx::Strides kernel_columns_strides(const mx::Shape& cols) {
  const int64_t kcg = cols[4], row = int64_t(cols[0]) * kcg;  // row = C*K
  return {kcg, int64_t(cols[2]) * cols[3] * row, int64_t(cols[3]) * row, row, 1};
}

// True when a's strides are `strides` on every axis longer than 1 (an axis of
// length 1 is never stepped along, so its stride is irrelevant).
inline bool has_strides(const mx::array& a, const mx::Strides& strides) {
  for (size_t i = 0; i < a.ndim(); ++i)
    if (a.shape(int(i)) != 1 && a.strides()[i] != strides[i]) return false;
  return true;
}

// The kernels read inputs as dense row-major NHWC. A no-op on an array that
// already is (MLX's Contiguous shares the buffer then).
inline mx::array dense(const mx::array& a, mx::Stream s) { return mx::contiguous(a, false, s); }

// Columns of any layout -> the kernels' order, still shaped
// (groups, N, Ho, Wo, K*Cg): copied only when not already in that order,
// e.g. for a cotangent that arrives row-major with groups > 1.
inline mx::array kernel_columns(const mx::array& cols, mx::Stream s) {
  return mx::moveaxis(dense(mx::moveaxis(cols, 0, 3, s), s), 3, 0, s);
}

// The kernels index with int32: every buffer (input, offset, mask, columns,
// gradients) must have fewer than 2^31 elements, and every integer they form
// (the parameters, a sample's grid coordinate oy*stride - pad + i*dilation)
// must fit as well. Throws std::invalid_argument naming the quantity.
inline void check_index_range(const dcn::Geometry& g) {
  constexpr int64_t limit = int64_t(1) << 31;
  // Products of sizes, saturated at the limit so nothing overflows.
  auto product = [&](std::initializer_list<int64_t> factors) {
    int64_t p = 1;
    for (int64_t f : factors) {
      f = f < 0 ? 0 : f;
      p = (f != 0 && p > (limit - 1) / f) ? limit : p * f;
    }
    return p;
  };
  auto span = [&](int64_t out, int64_t stride, int64_t k, int64_t dilation, int64_t pad) {
    return product({out - 1, stride}) + product({k - 1, dilation}) + product({pad});
  };
  const int64_t K = g.kernel_points(), P = g.out_pixels();
  const struct {
    const char* what;
    int64_t value;
  } quantities[] = {
      {"input's element count", product({g.batch, g.height, g.width, g.channels})},
      {"offset's element count", product({g.batch, P, 2 * g.offset_groups, K})},
      {"mask's element count", product({g.batch, P, g.offset_groups, K})},
      {"columns' element count (N*out_h*out_w*C*kh*kw)", product({g.batch, P, g.channels, K})},
      {"largest sample row (out_h-1)*stride + (kh-1)*dilation + padding",
       span(g.out_h, g.stride_h, g.kernel_h, g.dilation_h, g.pad_h)},
      {"largest sample column (out_w-1)*stride + (kw-1)*dilation + padding",
       span(g.out_w, g.stride_w, g.kernel_w, g.dilation_w, g.pad_w)},
      {"stride", product({std::max(g.stride_h, g.stride_w)})},
      {"dilation", product({std::max(g.dilation_h, g.dilation_w)})},
  };
  for (const auto& q : quantities) {
    if (q.value >= limit) {
      throw std::invalid_argument(
          std::string("dcn: the GPU kernels use 32-bit indices, but the ") + q.what +
          " is >= 2^31: split the batch, or run on the CPU (stream=mx.cpu)");
    }
  }
}

// The kernels' parameter block (bound with setBytes). Call check_index_range
// first: every field then fits in an int.
inline DcnParams kernel_params(const dcn::Geometry& g) {
  DcnParams p;
  p.batch = int(g.batch);
  p.channels = int(g.channels);
  p.height = int(g.height);
  p.width = int(g.width);
  p.kernel_h = int(g.kernel_h);
  p.kernel_w = int(g.kernel_w);
  p.stride_h = int(g.stride_h);
  p.stride_w = int(g.stride_w);
  p.pad_h = int(g.pad_h);
  p.pad_w = int(g.pad_w);
  p.dilation_h = int(g.dilation_h);
  p.dilation_w = int(g.dilation_w);
  p.offset_groups = int(g.offset_groups);
  p.groups = int(g.groups);
  p.out_h = int(g.out_h);
  p.out_w = int(g.out_w);
  p.has_mask = g.has_mask ? 1 : 0;
  return p;
}

// Threads of the per-sample kernels (im2col, atomic col2im, coord_grad): one
// per (image, output pixel, offset group, kernel point).
inline int64_t sample_threads(const dcn::Geometry& g) {
  return g.batch * g.out_pixels() * g.offset_groups * g.kernel_points();
}

}  // namespace dcn_mlx::metal_contract
