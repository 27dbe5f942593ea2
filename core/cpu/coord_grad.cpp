// Gradient w.r.t. offset and mask: for each sample, the sum over the
// group's channels of grad_column times d(value)/d(dy, dx) and times the
// unmodulated value. A task owns one (n, g, k, tile) and sums channels in
// order, so results are deterministic for any thread count.
#include <algorithm>

#include <type_traits>

#include "interior.h"
#include "parallel.h"
#include "plan.h"

namespace dcn::cpu {
namespace {

// Fields the interior path reads come first (one cache line for float);
// the full corner set only serves border samples.
template <typename A>
struct GradEntry {
  int64_t base;
  unsigned valid;
  A fy, fx;
  A wm[4];  // mask * w, rounded exactly as im2col's plan: identical columns
  A mask;
  Corners<A, int64_t> corners;  // unmodulated weights and their derivatives
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
  if (col_out) {
    // The forward's column with im2col's exact arithmetic (valid corners,
    // masked weights; 0 when every weight is 0).
    A col = A(0);
    for (int q = 0; q < 4; ++q)
      if (e.valid >> q & 1u) col += e.wm[q] * v[q];
    const A* w = e.corners.w;
    *col_out = store<S>(w[0] != A(0) || w[1] != A(0) || w[2] != A(0) || w[3] != A(0) ? col : A(0));
  }
}

template <typename S>
void coord_grad_impl(const Geometry& geo, const S* gcol, ColumnStrides cs, const S* input,
                     Strides4 is, const S* offset, Strides4 os, const S* mask, Strides4 ms,
                     S* goff, Strides4 gos, S* gmask, Strides4 gms, S* cols_out) {
  using A = acc_t<S>;
  const int64_t cpg = geo.channels_per_offset_group();
  const int64_t K = geo.kernel_points();
  const CornerOffsets co(is.y, is.x);
  parallel_for(num_tile_tasks(geo), [&](int64_t t) {
    const TileTask task = tile_task(geo, t);
    GradEntry<A> plan[kTile];
    A acc_y[kTile], acc_x[kTile], acc_m[kTile];
    for_each_sample<A>(geo, task, offset, os, mask, ms, [&](int64_t i, A y, A x, A m) {
      // Unmodulated weights: the mask scales the offset gradient at the end
      // and does not enter the mask's own gradient.
      const Corners<A, int64_t> c =
          bilinear_corners<A, int64_t>(y, x, geo.height, geo.width, is.y, is.x, A(1), true);
      GradEntry<A>& e = plan[i];
      e.base = c.base;
      for (int q = 0; q < 4; ++q) e.wm[q] = m * c.w[q];
      e.corners = c;
      e.fy = c.fy;
      e.fx = c.fx;
      e.valid = c.valid;
      e.mask = m;
      acc_y[i] = acc_x[i] = acc_m[i] = A(0);
    });
    const int64_t len = task.p1 - task.p0;
    const S* image = input + task.n * is.n + task.g * cpg * is.c;
    const int64_t col_at = task.n * cs.n + task.k * cs.k + task.p0 * cs.p;
    bool fast = false;
    if constexpr (std::is_same_v<S, float>) {
      fast = interior_eligible(geo, is, cs);
      if (fast) {
        // float32: interior pixels through the vector loop, one channel at a
        // time over the whole tile; the others (listed in ip.border) through
        // the scalar step, with their sums kept in acc_*_border.
        thread_local InteriorPlan ip;
        ip.nborder = 0;
        for (int64_t i = 0; i < len; ++i) {
          const GradEntry<A>& e = plan[i];
          interior_set(ip, i, e.valid == 15u, e.base, e.wm, e.fy, e.fx);
        }
        A acc_y_border[kTile], acc_x_border[kTile], acc_m_border[kTile];
        for (int32_t j = 0; j < ip.nborder; ++j) {
          const int32_t i = ip.border[j];
          acc_y_border[i] = acc_x_border[i] = acc_m_border[i] = A(0);
        }
        for (int64_t cg = 0; cg < cpg; ++cg) {
          const S* plane = image + cg * is.c;
          const int64_t col = col_at + cs.channel(task.g * cpg + cg);
          S* out = cols_out ? cols_out + col : nullptr;
          interior_coord_f32(ip, len, plane, is.y, gcol + col, acc_y, acc_x, acc_m, out);
          for (int32_t j = 0; j < ip.nborder; ++j) {
            const int32_t i = ip.border[j];
            coord_step(plan[i], plane, co, A(load(gcol[col + i])), acc_y_border[i],
                       acc_x_border[i], acc_m_border[i], out ? out + i : nullptr);
          }
        }
        for (int32_t j = 0; j < ip.nborder; ++j) {
          const int32_t i = ip.border[j];
          acc_y[i] = acc_y_border[i];
          acc_x[i] = acc_x_border[i];
          acc_m[i] = acc_m_border[i];
        }
      }
    }
    // Channels in blocks (one plan-entry load serves the block); within a
    // pixel the channels are summed in order, whatever the block size.
    for (int64_t cg0 = 0; !fast && cg0 < cpg; cg0 += kChannelBlock) {
      const int64_t nb = std::min(kChannelBlock, cpg - cg0);
      const S* planes[kChannelBlock];
      int64_t col_of[kChannelBlock];
      for (int64_t j = 0; j < nb; ++j) {
        planes[j] = image + (cg0 + j) * is.c;
        col_of[j] = col_at + cs.channel(task.g * cpg + cg0 + j);
      }
      for (int64_t i = 0; i < len; ++i) {
        const GradEntry<A>& e = plan[i];
        A ay = acc_y[i], ax = acc_x[i], am = acc_m[i];
        for (int64_t j = 0; j < nb; ++j)
          coord_step(e, planes[j], co, A(load(gcol[col_of[j] + i * cs.p])), ay, ax, am,
                     cols_out ? cols_out + col_of[j] + i * cs.p : nullptr);
        acc_y[i] = ay;
        acc_x[i] = ax;
        acc_m[i] = am;
      }
    }
    // Write back: pixel p -> (oy, ox).
    S* gy = goff + task.n * gos.n + (task.g * 2 * K + 2 * task.k) * gos.c;
    S* gx = gy + gos.c;
    S* gm = gmask ? gmask + task.n * gms.n + (task.g * K + task.k) * gms.c : nullptr;
    for (int64_t i = 0; i < len; ++i) {
      const int64_t p = task.p0 + i;
      const int64_t oy = p / geo.out_w;
      const int64_t ox = p - oy * geo.out_w;
      // A sample outside the gradient region has exactly 0 offset gradient,
      // even when its mask is NaN or inf (0 * NaN would say otherwise).
      const bool outside = plan[i].valid == 0u;
      gy[oy * gos.y + ox * gos.x] = store<S>(outside ? A(0) : plan[i].mask * acc_y[i]);
      gx[oy * gos.y + ox * gos.x] = store<S>(outside ? A(0) : plan[i].mask * acc_x[i]);
      if (gm) gm[oy * gms.y + ox * gms.x] = store<S>(acc_m[i]);
    }
  });
}

}  // namespace

void coord_grad(DType dtype, const Geometry& geo, const void* grad_columns,
                ColumnStrides columns_s, const void* input, Strides4 input_s, const void* offset,
                Strides4 offset_s, const void* mask, Strides4 mask_s, void* grad_offset,
                Strides4 grad_offset_s, void* grad_mask, Strides4 grad_mask_s,
                void* columns_out) {
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    coord_grad_impl<S>(geo, static_cast<const S*>(grad_columns), columns_s,
                       static_cast<const S*>(input), input_s, static_cast<const S*>(offset),
                       offset_s, static_cast<const S*>(mask), mask_s,
                       static_cast<S*>(grad_offset), grad_offset_s, static_cast<S*>(grad_mask),
                       grad_mask_s, static_cast<S*>(columns_out));
  });
}

}  // namespace dcn::cpu
