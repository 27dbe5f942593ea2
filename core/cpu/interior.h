// The float32 fast path of coord_grad: the samples of a tile
// whose four corners all lie inside the plane, as a structure of arrays, so
// that one channel's work over the whole tile is a branch-free loop the
// compiler turns into vector gathers (interior.cpp is built for AVX2 as well
// as the baseline, chosen at run time).
//
// Every element gets exactly the scalar kernels' operations in the same
// order (no FMA contraction: the build uses -ffp-contract=off), so the fast
// path changes no bit of any result. The other samples of the tile (border,
// outside, mask 0) are listed in `border` and go through the scalar code.
//
// Conditions (checked by interior_eligible): float32, unit x stride, pixel-
// contiguous columns, H >= 2 and W >= 2 (every pixel's (0, 0) stand-in
// corners exist), and plane offsets that fit in int32.
#pragma once
#include <cstdint>

#include "plan.h"

namespace dcn::cpu {

struct InteriorPlan {
  int32_t off[kTile];   // y_low*sy + x_low; 0 for border pixels
  float w[4][kTile];    // value weights, mask folded in; 0 for border pixels
  float fy[kTile];      // fractional parts; 0 for border pixels
  float fx[kTile];
  int32_t border[kTile];  // the tile's other pixels, ascending
  int32_t nborder = 0;
};

inline bool interior_eligible(const Geometry& geo, Strides4 is, ColumnStrides cs) {
  return is.x == 1 && cs.p == 1 && geo.height >= 2 && geo.width >= 2 && is.y > 0 &&
         (geo.height - 1) * is.y + geo.width < (int64_t(1) << 31);
}

// Entry i of the interior plan from a sample's corners (valid == 15 marks an
// interior sample; w: the weights the value uses, fy/fx its fractions).
inline void interior_set(InteriorPlan& ip, int64_t i, bool interior, int64_t base,
                         const float (&w)[4], float fy, float fx) {
  if (interior) {
    ip.off[i] = int32_t(base);
    for (int q = 0; q < 4; ++q) ip.w[q][i] = w[q];
    ip.fy[i] = fy;
    ip.fx[i] = fx;
  } else {
    ip.off[i] = 0;
    for (int q = 0; q < 4; ++q) ip.w[q][i] = 0.0f;
    ip.fy[i] = ip.fx[i] = 0.0f;
    ip.border[ip.nborder++] = int32_t(i);
  }
}

// For i < len: value and coordinate derivatives of the sample in this
// channel (dcn::interior_value_and_grad), added times gcol[i] into ay, ax,
// am; when cols is not null also cols[i] = the masked value (im2col's).
// Border pixels get garbage in all of them: the caller keeps their sums
// apart.
void interior_coord_f32(const InteriorPlan& ip, int64_t len, const float* plane, int64_t sy,
                        const float* gcol, float* ay, float* ax, float* am, float* cols);

}  // namespace dcn::cpu
