// Forward sampling (deformable im2col), NHWC: see kernels.h for layouts.
//
// One thread per (n, output pixel, offset group, kernel point): it reads the
// offsets and mask once, computes the corners once (dcn::bilinear_corners)
// and sweeps the group's channels, writing
//   columns[n, p, c, k] = mask * bilinear(input[n, :, :, c], y, x).
// Buffers: 0 input, 1 offset, 2 mask (any buffer when has_mask == 0),
// 3 columns, 4 params.
#include "kernels.h"

// sum over the valid corners of w[q] * image[idx[q] + c], in corner order,
// exactly as the CPU's gather (core/cpu/plan.h).
template <typename P>
inline float dcn_gather(P image, dcn::Corners<float, int> cr, unsigned valid, int c) {
  if (valid == 15u) {
    return dcn::weighted_sum4(cr.w[0], cr.w[1], cr.w[2], cr.w[3], float(image[cr.idx[0] + c]),
                              float(image[cr.idx[1] + c]), float(image[cr.idx[2] + c]),
                              float(image[cr.idx[3] + c]));
  }
  float v = 0.0f;
  for (int q = 0; q < 4; ++q)
    if ((valid >> q) & 1u) v += cr.w[q] * float(image[cr.idx[q] + c]);
  return v;
}

template <typename T>
[[kernel]] void dcn_im2col(device const T* input [[buffer(0)]],
                           device const T* offset [[buffer(1)]],
                           device const T* mask [[buffer(2)]],
                           device T* columns [[buffer(3)]],
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

  const int cpg = prm.channels / prm.offset_groups;
  const int c0 = s.g * cpg;
  device const T* image = input + s.n * prm.height * prm.width * prm.channels;
  for (int c = c0; c < c0 + cpg; ++c) {
    const float v = valid != 0u ? dcn_gather(image, cr, valid, c) : 0.0f;
    columns[dcn_column_at(prm, s.n, s.p, c, s.k)] = T(v);
  }
}

instantiate_kernel("dcn_im2col_float32", dcn_im2col, float)
instantiate_kernel("dcn_im2col_float16", dcn_im2col, half)
#if defined(DCN_HAVE_BFLOAT)
instantiate_kernel("dcn_im2col_bfloat16", dcn_im2col, bfloat)
#endif
