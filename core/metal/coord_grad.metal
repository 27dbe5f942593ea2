// Gradient w.r.t. offset and mask, NHWC: see kernels.h.
//
// One thread per (n, output pixel, offset group, kernel point): corners and
// their derivative weights computed once (dcn::bilinear_corners with the
// gradient, torchvision's border rule: nonzero for -1 <= y < H, -1 <= x < W),
// then the group's channels summed in order, so the result is deterministic.
// The arithmetic is the CPU kernel's (core/cpu/coord_grad.cpp):
//   grad_dy = mask * sum_c gcol[c] * sum_q wy[q] * v_c[q]   (likewise dx)
//   grad_mask = sum_c gcol[c] * bilinear(v_c)
// Buffers: 0 grad_columns, 1 input, 2 offset, 3 mask, 4 grad_offset,
// 5 grad_mask (3 and 5: any buffers when has_mask == 0; neither is touched),
// 6 params.
#include "kernels.h"

template <typename T>
[[kernel]] void dcn_coord_grad(device const T* grad_columns [[buffer(0)]],
                               device const T* input [[buffer(1)]],
                               device const T* offset [[buffer(2)]],
                               device const T* mask [[buffer(3)]],
                               device T* grad_offset [[buffer(4)]],
                               device T* grad_mask [[buffer(5)]],
                               constant DcnParams& prm [[buffer(6)]],
                               uint gid [[thread_position_in_grid]]) {
  const int t = int(gid);
  if (t >= dcn_sample_threads(prm)) return;
  const SampleIdx s = dcn_sample_idx(prm, t);
  const int o = dcn_offset_at(prm, s);
  const float y = dcn_sample_y(prm, s, float(offset[o]));
  const float x = dcn_sample_x(prm, s, float(offset[o + 1]));
  const int mi = dcn_mask_at(prm, s);
  const float m = prm.has_mask != 0 ? float(mask[mi]) : 1.0f;
  // Unmodulated weights: the mask scales the offset gradient at the end and
  // does not enter the mask's own gradient.
  const dcn::Corners<float, int> cr = dcn_corners(prm, y, x, 1.0f, true);

  float acc_y = 0.0f, acc_x = 0.0f, acc_m = 0.0f;
  if (cr.valid != 0u) {
    const int cpg = prm.channels / prm.offset_groups;
    const int c0 = s.g * cpg;
    device const T* image = input + s.n * prm.height * prm.width * prm.channels;
    for (int c = c0; c < c0 + cpg; ++c) {
      const float gv = float(grad_columns[dcn_column_at(prm, s.n, s.p, c, s.k)]);
      if (cr.valid == 15u) {
        // All four corners inside: the shared interior formula.
        const float v0 = float(image[cr.idx[0] + c]), v1 = float(image[cr.idx[1] + c]);
        const float v2 = float(image[cr.idx[2] + c]), v3 = float(image[cr.idx[3] + c]);
        const dcn::SampleGrad<float> r = dcn::interior_value_and_grad(v0, v1, v2, v3, cr.fy, cr.fx);
        acc_y += gv * r.dy;
        acc_x += gv * r.dx;
        acc_m += gv * r.value;
      } else {
        float v[4];
        for (int q = 0; q < 4; ++q)
          v[q] = ((cr.valid >> q) & 1u) ? float(image[cr.idx[q] + c]) : 0.0f;
        const dcn::SampleGrad<float> r = dcn::corner_value_and_grad(cr, v[0], v[1], v[2], v[3]);
        acc_y += gv * r.dy;
        acc_x += gv * r.dx;
        acc_m += gv * r.value;
      }
    }
  }
  // Outside the gradient region the offset gradient is exactly 0, even for a
  // NaN or inf mask (the CPU kernel's rule).
  grad_offset[o] = T(cr.valid != 0u ? m * acc_y : 0.0f);
  grad_offset[o + 1] = T(cr.valid != 0u ? m * acc_x : 0.0f);
  if (prm.has_mask != 0) grad_mask[mi] = T(acc_m);
}

instantiate_kernel("dcn_coord_grad_float32", dcn_coord_grad, float)
instantiate_kernel("dcn_coord_grad_float16", dcn_coord_grad, half)
#if defined(DCN_HAVE_BFLOAT)
instantiate_kernel("dcn_coord_grad_bfloat16", dcn_coord_grad, bfloat)
#endif
