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

// The entry of one sample at (y, x) with mask value m, corners in a plane
// of element strides (sy, sx).
template <typename A>
inline void grad_entry(const Geometry& geo, A y, A x, A m, int64_t sy, int64_t sx,
                       GradEntry<A>* out) {
  GradEntry<A>& e = *out;
  BilinearPoint<A, int64_t> pt;
  if (interior_sample(geo, y, x, &pt)) {
    const Weights4<A> w = bilinear_weights(pt.ly, pt.lx, A(1));
    e.base = pt.y0 * sy + pt.x0 * sx;
    for (int q = 0; q < 4; ++q) e.wm[q] = m * w.w[q];
    e.fy = pt.ly;
    e.fx = pt.lx;
    e.valid = 15u;
    e.mask = m;
    return;
  }
  // Unmodulated weights: the mask scales the offset gradient at the end
  // and does not enter the mask's own gradient.
  const Corners<A, int64_t> c =
      bilinear_corners<A, int64_t>(y, x, geo.height, geo.width, sy, sx, A(1), true);
  e.base = c.base;
  for (int q = 0; q < 4; ++q) e.wm[q] = m * c.w[q];
  // Only samples with a corner outside the plane read the per-corner
  // weights (coord_step); the copy (~120 bytes) is a fifth of the plan's
  // cost, so interior samples skip it.
  if (c.valid != 15u) e.corners = c;
  e.fy = c.fy;
  e.fx = c.fx;
  e.valid = c.valid;
  e.mask = m;
}

// float32 plans, 8 pixels at a time (plan_lanes.cpp).
void build_grad_plan_f32(const Geometry& geo, const TileTask& task, const float* offset,
                         Strides4 os, const float* mask, Strides4 ms, int64_t sy, int64_t sx,
                         GradEntry<float>* plan);

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
