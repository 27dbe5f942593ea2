// Shared pieces of the Metal kernels (Metal Shading Language).
//
// Layout is MLX's NHWC, every array contiguous:
//   input       (N, H, W, C)
//   offset      (N, Ho, Wo, 2*G*K)   channel (g*K + k)*2 + {0: dy, 1: dx}
//   mask        (N, Ho, Wo, G*K)     channel g*K + k (optional: has_mask)
//   columns     (N, Ho, Wo, C*K)     element (n, p, c, k) at
//               (n*P + p)*C*K + (c / Cw)*K*Cw + k*Cw + (c % Cw),  Cw = C / groups
//               i.e. [weight group][kernel point][channel in weight group],
//               matching an (O, kh, kw, C/groups) weight (dcn::ColumnStrides
//               with block = Cw, block_stride = K*Cw, c = 1, k = Cw, p = C*K).
//   grad_input  (N, H, W, C) float32 (the accumulation type)
//   grad_offset, grad_mask: like offset and mask, storage dtype.
// K = kh*kw, P = Ho*Wo, G = offset groups. Indices are 32-bit: the host must
// check that every buffer has fewer than 2^31 elements.
//
// The sampling math is dcn/sampling.h, shared with the CPU and CUDA kernels;
// nothing here re-derives corners or weights.
#pragma once

#include <metal_stdlib>

#include "dcn/sampling.h"

using namespace metal;

#include "params.h"  // DcnParams, bound with setBytes (also included by the host)

// One sampling thread: (n, output pixel p, offset group g, kernel point k),
// flattened with k fastest so neighbouring threads read neighbouring offsets.
struct SampleIdx {
  int n, p, g, k;
  int oy, ox, ki, kj;
};

inline int dcn_sample_threads(constant DcnParams& prm) {
  return prm.batch * prm.out_h * prm.out_w * prm.offset_groups * prm.kernel_h * prm.kernel_w;
}

inline SampleIdx dcn_sample_idx(constant DcnParams& prm, int t) {
  const int K = prm.kernel_h * prm.kernel_w;
  const int P = prm.out_h * prm.out_w;
  SampleIdx s;
  s.k = t % K;
  t /= K;
  s.g = t % prm.offset_groups;
  t /= prm.offset_groups;
  s.p = t % P;
  s.n = t / P;
  s.oy = s.p / prm.out_w;
  s.ox = s.p - s.oy * prm.out_w;
  s.ki = s.k / prm.kernel_w;
  s.kj = s.k - s.ki * prm.kernel_w;
  return s;
}

// Index of the sample's dy in the offset buffer (dx follows it).
inline int dcn_offset_at(constant DcnParams& prm, SampleIdx s) {
  const int GK = prm.offset_groups * prm.kernel_h * prm.kernel_w;
  return ((s.n * prm.out_h * prm.out_w + s.p) * GK + s.g * prm.kernel_h * prm.kernel_w + s.k) * 2;
}

// Index of the sample's mask value (also of grad_mask).
inline int dcn_mask_at(constant DcnParams& prm, SampleIdx s) {
  const int GK = prm.offset_groups * prm.kernel_h * prm.kernel_w;
  return (s.n * prm.out_h * prm.out_w + s.p) * GK + s.g * prm.kernel_h * prm.kernel_w + s.k;
}

// Index of column element (n, p, channel c, k).
inline int dcn_column_at(constant DcnParams& prm, int n, int p, int c, int k) {
  const int K = prm.kernel_h * prm.kernel_w;
  const int cw = prm.channels / prm.groups;
  return (n * prm.out_h * prm.out_w + p) * prm.channels * K + (c / cw) * K * cw + k * cw +
         (c % cw);
}

// The sample's coordinates (float32 whatever the storage type).
inline float dcn_sample_y(constant DcnParams& prm, SampleIdx s, float dy) {
  return dcn::sample_coord<float, int>(s.oy, prm.stride_h, prm.pad_h, s.ki, prm.dilation_h, dy);
}
inline float dcn_sample_x(constant DcnParams& prm, SampleIdx s, float dx) {
  return dcn::sample_coord<float, int>(s.ox, prm.stride_w, prm.pad_w, s.kj, prm.dilation_w, dx);
}

// Corners of a sample in an NHWC image: element strides (W*C, C) per pixel;
// a channel c of corner q is at image[idx[q] + c].
inline dcn::Corners<float, int> dcn_corners(constant DcnParams& prm, float y, float x,
                                            float scale, bool with_grad) {
  return dcn::bilinear_corners<float, int>(y, x, prm.height, prm.width,
                                           prm.width * prm.channels, prm.channels, scale,
                                           with_grad);
}

// The CPU plan's rule (core/cpu/plan.h): outside the forward's region, or
// with every weight 0 (mask == 0), no corner is read at all, so an inf/NaN
// pixel never leaks in as 0 * inf.
inline unsigned dcn_value_corners(dcn::Corners<float, int> c) {
  return (c.w[0] != 0.0f || c.w[1] != 0.0f || c.w[2] != 0.0f || c.w[3] != 0.0f) ? c.valid
                                                                                  : 0u;
}

// Instantiation of a kernel template under the host name eval_gpu asks for.
// The emulation shim (tests/metal) defines its own version that also
// registers the function under that name.
#ifndef instantiate_kernel
#define instantiate_kernel(name, func, type) \
  template [[host_name(name)]] [[kernel]] decltype(func<type>) func<type>;
#endif

// bfloat needs MSL 3.1 (macOS 14); __HAVE_BFLOAT__ says it is there.
#if defined(__HAVE_BFLOAT__)
#define DCN_HAVE_BFLOAT 1
#endif
