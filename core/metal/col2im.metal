// Gradient w.r.t. input (the adjoint of im2col), NHWC: see kernels.h.
// grad_input is float32 (the accumulation type) for every storage dtype; the
// host casts it to the storage dtype afterwards.
//
// Two kernels:
// * dcn_col2im_<dtype> (default): one thread per (n, output pixel, offset
//   group, kernel point), corners computed once and swept over the group's
//   channels, each contribution added with a relaxed atomic float add.
//   grad_input must be zeroed first (dcn_zero_float32). Fast, but the order
//   of the adds, so the last bits of the result, vary from run to run.
// * dcn_col2im_deterministic_<dtype>: one thread owns one channel plane
//   (n, c): it zeroes it and adds every sample's contributions in the fixed
//   order (kernel point, output pixel, corner), the CPU kernel's order, so
//   the result is the same bits every run. The price: only N*C threads, each
//   doing K*P samples serially, and the corners are recomputed per channel
//   instead of once per offset group (C/G times the coordinate math). Use it
//   when reproducibility matters more than speed.
// Buffers: 0 grad_columns, 1 offset, 2 mask (any buffer when has_mask == 0),
// 3 grad_input (float), 4 params.
#include "kernels.h"

template <typename T>
[[kernel]] void dcn_col2im(device const T* grad_columns [[buffer(0)]],
                           device const T* offset [[buffer(1)]],
                           device const T* mask [[buffer(2)]],
                           device float* grad_input [[buffer(3)]],
                           constant DcnParams& prm [[buffer(4)]],
                           uint gid [[thread_position_in_grid]]) {
  const int t = int(gid);
  if (t >= dcn_sample_threads(prm)) return;
  const SampleIdx s = dcn_sample_idx(prm, t);
  const int o = dcn_offset_at(prm, s);
  const float y = dcn_sample_y(prm, s, float(offset[o]));
  const float x = dcn_sample_x(prm, s, float(offset[o + 1]));
  const float m = prm.has_mask != 0 ? float(mask[dcn_mask_at(prm, s)]) : 1.0f;
  const dcn::Corners<float, int> cr = dcn_corners(prm, y, x, m, false);
  const unsigned valid = dcn_value_corners(cr);
  if (valid == 0u) return;

  const int cpg = prm.channels / prm.offset_groups;
  const int c0 = s.g * cpg;
  device float* image = grad_input + s.n * prm.height * prm.width * prm.channels;
  for (int c = c0; c < c0 + cpg; ++c) {
    const float gv = float(grad_columns[dcn_column_at(prm, s.n, s.p, c, s.k)]);
    for (int q = 0; q < 4; ++q) {
      if ((valid >> q) & 1u) {
        atomic_fetch_add_explicit((device atomic_float*)(image + cr.idx[q] + c), cr.w[q] * gv,
                                  memory_order_relaxed);
      }
    }
  }
}

template <typename T>
[[kernel]] void dcn_col2im_deterministic(device const T* grad_columns [[buffer(0)]],
                                         device const T* offset [[buffer(1)]],
                                         device const T* mask [[buffer(2)]],
                                         device float* grad_input [[buffer(3)]],
                                         constant DcnParams& prm [[buffer(4)]],
                                         uint gid [[thread_position_in_grid]]) {
  const int t = int(gid);
  if (t >= prm.batch * prm.channels) return;
  const int n = t / prm.channels;
  const int c = t - n * prm.channels;
  const int g = c / (prm.channels / prm.offset_groups);
  const int HW = prm.height * prm.width;
  device float* image = grad_input + n * HW * prm.channels;
  for (int i = 0; i < HW; ++i) image[i * prm.channels + c] = 0.0f;

  const int K = prm.kernel_h * prm.kernel_w;
  const int P = prm.out_h * prm.out_w;
  for (int k = 0; k < K; ++k) {
    for (int p = 0; p < P; ++p) {
      SampleIdx s;
      s.n = n;
      s.p = p;
      s.g = g;
      s.k = k;
      s.oy = p / prm.out_w;
      s.ox = p - s.oy * prm.out_w;
      s.ki = k / prm.kernel_w;
      s.kj = k - s.ki * prm.kernel_w;
      const int o = dcn_offset_at(prm, s);
      const float y = dcn_sample_y(prm, s, float(offset[o]));
      const float x = dcn_sample_x(prm, s, float(offset[o + 1]));
      const float m = prm.has_mask != 0 ? float(mask[dcn_mask_at(prm, s)]) : 1.0f;
      const dcn::Corners<float, int> cr = dcn_corners(prm, y, x, m, false);
      const unsigned valid = dcn_value_corners(cr);
      if (valid == 0u) continue;
      const float gv = float(grad_columns[dcn_column_at(prm, n, p, c, k)]);
      for (int q = 0; q < 4; ++q)
        if ((valid >> q) & 1u) image[cr.idx[q] + c] += cr.w[q] * gv;
    }
  }
}

// out[i] = 0 for i < count (buffer 1: one int, the element count).
[[kernel]] void dcn_zero_float32(device float* out [[buffer(0)]],
                                 constant int& count [[buffer(1)]],
                                 uint gid [[thread_position_in_grid]]) {
  if (int(gid) < count) out[gid] = 0.0f;
}

instantiate_kernel("dcn_col2im_float32", dcn_col2im, float)
instantiate_kernel("dcn_col2im_float16", dcn_col2im, half)
instantiate_kernel("dcn_col2im_deterministic_float32", dcn_col2im_deterministic, float)
instantiate_kernel("dcn_col2im_deterministic_float16", dcn_col2im_deterministic, half)
#if defined(DCN_HAVE_BFLOAT)
instantiate_kernel("dcn_col2im_bfloat16", dcn_col2im, bfloat)
instantiate_kernel("dcn_col2im_deterministic_bfloat16", dcn_col2im_deterministic, bfloat)
#endif
