// The per-tile sampling plan shared by the three CPU kernels.
//
// A task owns one (image n, offset group g, kernel point k, pixel tile). It
// evaluates the shared sampling math (dcn/sampling.h) once per output pixel
// of the tile and then reuses the corner indices and weights for every
// channel of the group: the work that does not depend on the channel is done
// once, not C/G times.
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "dcn/cpu.h"
#include "dcn/sampling.h"
#include "dcn/storage.h"

namespace dcn::cpu {

// Output pixels per task: the plan (~48 bytes a pixel) stays in L1/L2.
constexpr int64_t kTile = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls fn(dtype_tag) with a value of the storage type for `d`.
template <typename Fn>
void dispatch_storage(DType d, Fn&& fn) {
  switch (d) {
    case DType::Float32: fn(float{}); break;
    case DType::Float64: fn(double{}); break;
    case DType::Float16: fn(f16{}); break;
    case DType::BFloat16: fn(bf16{}); break;
    default: throw std::invalid_argument("dcn: unsupported dtype");
  }
}

// Position of one task in the (n, g, k, tile) grid.
struct TileTask {
  int64_t n, g, k, p0, p1;
};

inline int64_t num_tile_tasks(const Geometry& geo) {
  return geo.batch * geo.offset_groups * geo.kernel_points() *
         ceil_div(geo.out_pixels(), kTile);
}

inline TileTask tile_task(const Geometry& geo, int64_t t) {
  const int64_t tiles = ceil_div(geo.out_pixels(), kTile);
  const int64_t K = geo.kernel_points();
  TileTask r;
  const int64_t tile = t % tiles;
  t /= tiles;
  r.k = t % K;
  t /= K;
  r.g = t % geo.offset_groups;
  r.n = t / geo.offset_groups;
  r.p0 = tile * kTile;
  r.p1 = r.p0 + kTile < geo.out_pixels() ? r.p0 + kTile : geo.out_pixels();
  return r;
}

// The planes of a task's (image, offset group, kernel point) in the offset
// layout (N, G*2*K, Ho, Wo) and the mask layout (N, G*K, Ho, Wo): the dy and
// dx planes and the mask plane (null without one), with the kernel point's
// row and column in the kernel and the task's first output pixel (oy, ox).
// P is const S* to read offsets and mask, S* to write their gradients
// (which have the same layouts).
template <typename P>
struct TaskPlanes {
  int64_t ki, kj;
  P y, x, m;
  int64_t oy, ox;
};

template <typename P>
inline TaskPlanes<P> task_planes(const Geometry& geo, const TileTask& task, P offset,
                                 Strides4 os, P mask, Strides4 ms) {
  const int64_t K = geo.kernel_points();
  TaskPlanes<P> t;
  t.ki = task.k / geo.kernel_w;
  t.kj = task.k % geo.kernel_w;
  t.y = offset + task.n * os.n + (task.g * 2 * K + 2 * task.k) * os.c;
  t.x = t.y + os.c;
  t.m = mask ? mask + task.n * ms.n + (task.g * K + task.k) * ms.c : nullptr;
  t.oy = task.p0 / geo.out_w;
  t.ox = task.p0 - t.oy * geo.out_w;
  return t;
}

// Calls fn(i, oy, ox, len) for the task's pixels [i, i + len) that lie in
// output row oy from column ox: the task's pixels a row segment at a time.
template <typename Fn>
inline void for_each_row_segment(const Geometry& geo, const TileTask& task, Fn&& fn) {
  int64_t oy = task.p0 / geo.out_w;
  int64_t ox = task.p0 - oy * geo.out_w;
  for (int64_t i = 0; i < task.p1 - task.p0;) {
    const int64_t len = std::min(task.p1 - task.p0 - i, geo.out_w - ox);
    fn(i, oy, ox, len);
    i += len;
    ox = 0;
    ++oy;
  }
}

// Calls fn(i, y, x, m) for each output pixel p0+i of the task with the sample
// coordinates (y, x) of kernel point k and its mask value m (1 without mask),
// all in the accumulation type A.
template <typename A, typename S, typename Fn>
inline void for_each_sample(const Geometry& geo, const TileTask& task, const S* offset,
                            Strides4 os, const S* mask, Strides4 ms, Fn&& fn) {
  const TaskPlanes<const S*> src = task_planes(geo, task, offset, os, mask, ms);
  const int64_t ki = src.ki, kj = src.kj;
  const S *off_y = src.y, *off_x = src.x, *m_ptr = src.m;
  int64_t oy = src.oy, ox = src.ox;
  for (int64_t p = task.p0; p < task.p1; ++p) {
    const int64_t o_at = oy * os.y + ox * os.x;
    const A dy = load(off_y[o_at]);
    const A dx = load(off_x[o_at]);
    const A m = m_ptr ? A(load(m_ptr[oy * ms.y + ox * ms.x])) : A(1);
    const A y = sample_coord<A, int64_t>(oy, geo.stride_h, geo.pad_h, ki, geo.dilation_h, dy);
    const A x = sample_coord<A, int64_t>(ox, geo.stride_w, geo.pad_w, kj, geo.dilation_w, dx);
    fn(p - task.p0, y, x, m);
    if (++ox == geo.out_w) {
      ox = 0;
      ++oy;
    }
  }
}

// Value weights only: what im2col and col2im need. Corner q of a sample
// sits at plane[base + corner[q]], corner = {0, sx, sy, sy + sx}.
template <typename A>
struct PlanEntry {
  int64_t base;
  A w[4];
  unsigned valid;  // bit q: corner q is read (inside the plane, nonzero weight region)
};

struct CornerOffsets {
  int64_t at[4];
  CornerOffsets(int64_t sy, int64_t sx) : at{0, sx, sy, sy + sx} {}
};

template <typename A>
inline PlanEntry<A> plan_entry(const Corners<A, int64_t>& c) {
  PlanEntry<A> e;
  e.base = c.base;
  for (int q = 0; q < 4; ++q) e.w[q] = c.w[q];
  // Outside the forward's region every weight is 0: read nothing at all.
  e.valid = (c.w[0] != A(0) || c.w[1] != A(0) || c.w[2] != A(0) || c.w[3] != A(0)) ? c.valid : 0u;
  return e;
}

// True, with *pt set, when all four corners of the sample at (y, x) lie
// inside the plane (most samples): the plans then take the weights straight
// from the shared math, without bilinear_corners' per-corner bookkeeping
// (the same numbers; measured half a plan's cost).
template <typename A>
inline bool interior_sample(const Geometry& geo, A y, A x, BilinearPoint<A, int64_t>* pt) {
  if (!inside_forward(y, x, geo.height, geo.width)) return false;  // also keeps NaN out
  *pt = bilinear_point<A, int64_t>(y, x);
  return all_corners_inside(*pt, geo.height, geo.width);
}

// The value plan entry of one sample at (y, x) with mask value m, corners
// in a plane of element strides (sy, sx).
template <typename A>
inline PlanEntry<A> value_entry(const Geometry& geo, A y, A x, A m, int64_t sy, int64_t sx) {
  BilinearPoint<A, int64_t> pt;
  if (interior_sample(geo, y, x, &pt)) {
    const Weights4<A> w = bilinear_weights(pt.ly, pt.lx, m);
    PlanEntry<A> e;
    e.base = pt.y0 * sy + pt.x0 * sx;
    for (int q = 0; q < 4; ++q) e.w[q] = w.w[q];
    // As plan_entry: a sample whose weights are all 0 (mask 0) reads nothing.
    e.valid = (w.w[0] != A(0) || w.w[1] != A(0) || w.w[2] != A(0) || w.w[3] != A(0)) ? 15u : 0u;
    return e;
  }
  return plan_entry(bilinear_corners<A, int64_t>(y, x, geo.height, geo.width, sy, sx, m, false));
}

// float32 value plans, 8 pixels at a time (plan_lanes.h).
bool plan_lanes_apply(const Geometry& geo);
void build_value_plan_f32(const Geometry& geo, const TileTask& task, const float* offset,
                          Strides4 os, const float* mask, Strides4 ms, int64_t sy, int64_t sx,
                          PlanEntry<float>* plan);

// The value plan of one task (what im2col and col2im need): plan[i] for
// output pixel p0 + i, corners in a plane of element strides (sy, sx).
template <typename A, typename S>
inline void build_value_plan(const Geometry& geo, const TileTask& task, const S* offset,
                             Strides4 os, const S* mask, Strides4 ms, int64_t sy, int64_t sx,
                             PlanEntry<A>* plan) {
  if constexpr (std::is_same_v<S, float>) {
    if (plan_lanes_apply(geo))
      return build_value_plan_f32(geo, task, offset, os, mask, ms, sy, sx, plan);
  }
  for_each_sample<A>(geo, task, offset, os, mask, ms, [&](int64_t i, A y, A x, A m) {
    plan[i] = value_entry(geo, y, x, m, sy, sx);
  });
}

// sum_q w[q] * plane[base + corner[q]] over the valid corners, never reading
// the others (an inf/NaN pixel elsewhere must not leak in as 0 * inf).
template <typename A, typename S>
inline A gather(const PlanEntry<A>& e, const S* plane, const CornerOffsets& co) {
  // Indices are formed as integers first: base alone may point before the
  // plane (y_low = -1), which is fine as an integer, not as a pointer.
  const int64_t b = e.base;
  if (e.valid == 15u) {
    return weighted_sum4(e.w[0], e.w[1], e.w[2], e.w[3], A(load(plane[b + co.at[0]])),
                         A(load(plane[b + co.at[1]])), A(load(plane[b + co.at[2]])),
                         A(load(plane[b + co.at[3]])));
  }
  A v = A(0);
  for (int q = 0; q < 4; ++q)
    if (e.valid >> q & 1u) v += e.w[q] * A(load(plane[b + co.at[q]]));
  return v;
}

// Channels processed together so one plan load serves several planes.
constexpr int64_t kChannelBlock = 4;

}  // namespace dcn::cpu
