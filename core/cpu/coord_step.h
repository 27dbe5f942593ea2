// One sample of the coordinate gradient, shared by coord_grad's loops: the
// per-pixel plan entry and the per-channel step.
#pragma once
#include <cstdint>

#include "plan.h"

namespace dcn::cpu {

// Fields the interior path reads come first (one cache line for float);
// the full corner set only serves border samples.
template <typename A>
struct GradEntry {
  int64_t base;
  unsigned valid;
  A fy, fx;
  A wm[4];  // mask * w, rounded exactly as im2col's plan: identical columns
  A mask;
  Corners<A, int64_t> corners;  // unmodulated weights and their derivatives;
                                // set only when valid != 15 (the only readers)
};

// One sample, one channel: adds grad_column gv times d(value)/dy, d/dx and
// the unmodulated value to ay, ax, am, and writes the forward's column to
// *col_out when given. Interior samples interpolate along x, then y (the
// derivatives fall out of the same differences); border samples go corner
// by corner with torchvision's per-corner weights; outside samples add
// nothing and have column 0.
template <typename A, typename S>
inline void coord_step(const GradEntry<A>& e, const S* plane, const CornerOffsets& co, A gv,
                       A& ay, A& ax, A& am, S* col_out) {
  if (e.valid == 0u) {
    if (col_out) *col_out = store<S>(A(0));
    return;
  }
  if (e.valid == 15u) {
    const A v0 = A(load(plane[e.base + co.at[0]])), v1 = A(load(plane[e.base + co.at[1]]));
    const A v2 = A(load(plane[e.base + co.at[2]])), v3 = A(load(plane[e.base + co.at[3]]));
    const SampleGrad<A> r = interior_value_and_grad(v0, v1, v2, v3, e.fy, e.fx);
    ay += gv * r.dy;
    ax += gv * r.dx;
    am += gv * r.value;
    if (col_out) *col_out = store<S>(weighted_sum4(e.wm[0], e.wm[1], e.wm[2], e.wm[3], v0, v1, v2, v3));
    return;
  }
  A v[4];
  for (int q = 0; q < 4; ++q) v[q] = (e.valid >> q & 1u) ? A(load(plane[e.base + co.at[q]])) : A(0);
  const SampleGrad<A> r = corner_value_and_grad(e.corners, v[0], v[1], v[2], v[3]);
  ay += gv * r.dy;
  ax += gv * r.dx;
  am += gv * r.value;
  if (col_out) *col_out = store<S>(border_column(e.corners, e.mask, v[0], v[1], v[2], v[3], A(0)));
}

}  // namespace dcn::cpu
