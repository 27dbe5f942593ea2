// float32 plans (plan.h's build_value_plan, coord_grad's build_plan) eight
// pixels at a time.
//
// The scalar builders evaluate the shared sampling math once per pixel:
// coordinates, the interior test, floor, fractions and four weights, some
// thirty dependent scalar operations, which measured 40% of im2col and of
// col2im on 1x64x32x32. Here the interior samples (all four corners inside
// the image, most of them) take those operations in vector lanes: the same
// IEEE operations in the same order (no FMA contraction; floor by
// truncation as floor_to_int), so every entry is bitwise the scalar one.
// Any other sample (a corner outside, outside the image, NaN) is built by
// the scalar value_entry / grad_entry from the same y, x and m.
//
// Built for AVX-512 and AVX2 as well as the baseline (clones.h).
#include "lanes8.h"  // first: its -Wpsabi note

#include <algorithm>
#include <cstdint>

#include "clones.h"
#include "coord_step.h"
#include "plan.h"

namespace dcn::cpu {
namespace {

using namespace lanes8;
constexpr int kLanes = 8;

// The lanes' int32 floor and corner tests are exact while the image sides
// are below 2^24 (float coordinates are integers exactly up to there).
constexpr int64_t kMaxSide = int64_t(1) << 24;

// The scalar inputs of the math for up to kTile pixels of a task, as
// for_each_sample computes them, padded to whole lanes.
struct TileInputs {
  float y[kTile], x[kTile], m[kTile];
};
static_assert(kTile % kLanes == 0, "a tile is whole lanes");

// Interior results of eight pixels: lane l is valid where inside[l] != 0.
struct LaneInterior {
  int32_t inside[kLanes];
  int32_t y0[kLanes], x0[kLanes];
  float ly[kLanes], lx[kLanes];
  float hy_hx[kLanes], hy_lx[kLanes], ly_hx[kLanes], ly_lx[kLanes];  // unmodulated weights
};

// Per lane, what an interior entry takes besides the weights: its corner
// index base (y0 * sy + x0 * sx) and whether any weight is nonzero, both
// computed in lanes (one thread, same-process A/B, 1x64x64x64 with 8 offset
// groups: im2col 4.38 -> 3.85 ms, col2im 4.66 -> 4.40 ms, coord_grad 9.43 ->
// 9.08 ms; per lane they were two 64-bit products and four compares).
struct LaneEntries {
  int64_t base[kLanes];
  int32_t nonzero[kLanes];
};

// interior_sample + bilinear_point + the unmodulated bilinear_weights, in lanes.
DCN_INLINE void interior_lanes(const Geometry& geo, const float* y_in, const float* x_in,
                               LaneInterior* out) {
  const v8f y = load8(y_in), x = load8(x_in);
  const v8f zero{}, one = zero + 1.0f, minus_one = zero - 1.0f;
  const v8f Hf = zero + float(geo.height), Wf = zero + float(geo.width);
  // inside_forward; NaN compares false, as there.
  const v8i fwd = (y > minus_one) & (y < Hf) & (x > minus_one) & (x < Wf);
  // Lanes outside take 0 before the conversion (which is exact inside).
  const v8f ys = fwd ? y : zero, xs = fwd ? x : zero;
  const v8i ty = __builtin_convertvector(ys, v8i), tx = __builtin_convertvector(xs, v8i);
  // floor_to_int: the truncation, minus one where it rounded up (the
  // comparison's true is -1).
  const v8i y0 = ty + (__builtin_convertvector(ty, v8f) > ys);
  const v8i x0 = tx + (__builtin_convertvector(tx, v8f) > xs);
  const v8f ly = ys - __builtin_convertvector(y0, v8f);
  const v8f lx = xs - __builtin_convertvector(x0, v8f);
  const v8i H = v8i{} + int32_t(geo.height), W = v8i{} + int32_t(geo.width);
  const v8i inside = fwd & (y0 >= v8i{}) & (y0 + 1 < H) & (x0 >= v8i{}) & (x0 + 1 < W);
  const v8f hy = one - ly, hx = one - lx;
  store8(out->inside, inside);
  store8(out->y0, y0);
  store8(out->x0, x0);
  store8(out->ly, ly);
  store8(out->lx, lx);
  store8(out->hy_hx, hy * hx);
  store8(out->hy_lx, hy * lx);
  store8(out->ly_hx, ly * hx);
  store8(out->ly_lx, ly * lx);
}

// for_each_sample's y, x and m for the pixels of a task (at most kTile),
// the same values by the same operations: sample_coord's integer part is
// exact in int64 and converted once, then the offset is added. Walked a row
// of output pixels at a time, so the row's integer part of y is one
// conversion and that of x steps by the stride (for_each_sample's per-pixel
// index products measured about half of a plan with 8 channels per offset
// group, where plans are a fifth of im2col); rows whose offsets and mask are
// contiguous (NCHW) become vector loops.
DCN_INLINE void gather_inputs(const Geometry& geo, const TileTask& task, const float* offset,
                              Strides4 os, const float* mask, Strides4 ms, TileInputs* in) {
  const TaskPlanes<const float*> src = task_planes(geo, task, offset, os, mask, ms);
  for_each_row_segment(geo, task, [&](int64_t i, int64_t oy, int64_t ox, int64_t len) {
    const float yb = float(oy * geo.stride_h - geo.pad_h + src.ki * geo.dilation_h);
    const int64_t xb = ox * geo.stride_w - geo.pad_w + src.kj * geo.dilation_w;
    const int64_t sw = geo.stride_w;
    const float* dy = src.y + oy * os.y + ox * os.x;
    const float* dx = src.x + oy * os.y + ox * os.x;
    float* __restrict y = in->y + i;
    float* __restrict x = in->x + i;
    float* __restrict m = in->m + i;
    // The integer x in int32 lanes when the row's values (and so j * sw)
    // stay within 2^30: the same values, so the same floats, and AVX2
    // converts int32 lanes, not int64.
    constexpr int64_t kInt32Safe = int64_t(1) << 30;
    const int64_t x_last = xb + (len - 1) * sw;
    if (os.x == 1 && xb >= -kInt32Safe && x_last <= kInt32Safe) {
      const int32_t xb32 = int32_t(xb), sw32 = int32_t(sw);
      for (int64_t j = 0; j < len; ++j) {
        y[j] = yb + dy[j];
        x[j] = float(xb32 + int32_t(j) * sw32) + dx[j];
      }
    } else {
      for (int64_t j = 0; j < len; ++j) {
        y[j] = yb + dy[j * os.x];
        x[j] = float(xb + j * sw) + dx[j * os.x];
      }
    }
    if (src.m == nullptr) {
      for (int64_t j = 0; j < len; ++j) m[j] = 1.0f;
    } else {
      const float* mr = src.m + oy * ms.y + ox * ms.x;
      if (ms.x == 1) {
        for (int64_t j = 0; j < len; ++j) m[j] = mr[j];
      } else {
        for (int64_t j = 0; j < len; ++j) m[j] = mr[j * ms.x];
      }
    }
  });
}

// scale * w, as bilinear_weights with scale m (value plans) or as m * w
// after scale 1 (grad plans): the same product either way. Also, per lane,
// whether any of the four is nonzero (NaN counts as nonzero, as in
// value_entry's scalar test).
DCN_INLINE void modulated(const LaneInterior& in, const float* m, float (*w)[kLanes],
                          int32_t* nonzero) {
  const v8f mv = load8(m);
  const v8f w0 = mv * load8(in.hy_hx), w1 = mv * load8(in.hy_lx);
  const v8f w2 = mv * load8(in.ly_hx), w3 = mv * load8(in.ly_lx);
  store8(w[0], w0);
  store8(w[1], w1);
  store8(w[2], w2);
  store8(w[3], w3);
  const v8f zero{};
  store8(nonzero, (w0 != zero) | (w1 != zero) | (w2 != zero) | (w3 != zero));
}

// y0 * sy + x0 * sx of the eight lanes in int32 arithmetic: exact when
// base32_safe(geo, sy, sx) holds (checked once per task by the caller).
DCN_INLINE void bases32(const LaneInterior& in, int32_t sy, int32_t sx, int32_t* base) {
  store8(base, load8i(in.y0) * sy + load8i(in.x0) * sx);
}

// Whether every interior corner index of the image fits in int32: an
// interior sample has 0 <= y0 < height and 0 <= x0 < width.
bool base32_safe(const Geometry& geo, int64_t sy, int64_t sx) {
  constexpr int64_t kMax = (int64_t(1) << 31) - 1;
  const int64_t ay = sy < 0 ? -sy : sy, ax = sx < 0 ? -sx : sx;
  return ay < kMax && ax < kMax && geo.height * ay + geo.width * ax < kMax;
}

// A task's plan entries, eight pixels at a time: entry(e, l, m, r, w) fills
// *e from lane l of an interior sample (m: its mask value, w: its modulated
// weights); fallback(e, y, x, m) builds any other sample with the scalar code.
template <typename Entry, typename Interior, typename Fallback>
DCN_INLINE void build_plan_lanes(const Geometry& geo, const TileTask& task, const float* offset,
                                 Strides4 os, const float* mask, Strides4 ms, int64_t sy,
                                 int64_t sx, Entry* plan, Interior&& entry, Fallback&& fallback) {
  TileInputs in;
  LaneInterior r;
  LaneEntries x;
  float w[4][kLanes];
  const bool narrow = base32_safe(geo, sy, sx);
  for (int64_t s0 = task.p0; s0 < task.p1; s0 += kTile) {
    TileTask sub = task;
    sub.p0 = s0;
    sub.p1 = task.p1 - s0 < kTile ? task.p1 : s0 + kTile;
    const int64_t len = sub.p1 - sub.p0;
    gather_inputs(geo, sub, offset, os, mask, ms, &in);
    for (int64_t i = len; i % kLanes != 0; ++i) in.y[i] = in.x[i] = -2.0f, in.m[i] = 0.0f;
    Entry* e = plan + (s0 - task.p0);
    for (int64_t i0 = 0; i0 < len; i0 += kLanes) {
      interior_lanes(geo, in.y + i0, in.x + i0, &r);
      modulated(r, in.m + i0, w, x.nonzero);
      if (narrow) {
        int32_t base32[kLanes];
        bases32(r, int32_t(sy), int32_t(sx), base32);
        for (int l = 0; l < kLanes; ++l) x.base[l] = base32[l];
      } else {
        for (int l = 0; l < kLanes; ++l) x.base[l] = int64_t(r.y0[l]) * sy + int64_t(r.x0[l]) * sx;
      }
      for (int l = 0; l < kLanes && i0 + l < len; ++l) {
        const int64_t i = i0 + l;
        if (r.inside[l])
          entry(&e[i], l, in.m[i], r, x, w);
        else
          fallback(&e[i], in.y[i], in.x[i], in.m[i]);
      }
    }
  }
}

}  // namespace

bool plan_lanes_apply(const Geometry& geo) {
  return geo.height < kMaxSide && geo.width < kMaxSide;
}

DCN_CLONES
void build_value_plan_f32(const Geometry& geo, const TileTask& task, const float* offset,
                          Strides4 os, const float* mask, Strides4 ms, int64_t sy, int64_t sx,
                          PlanEntry<float>* plan) {
  build_plan_lanes(
      geo, task, offset, os, mask, ms, sy, sx, plan,
      [&](PlanEntry<float>* e, int l, float, const LaneInterior&, const LaneEntries& x,
          const float (*w)[kLanes]) {
        e->base = x.base[l];
        for (int q = 0; q < 4; ++q) e->w[q] = w[q][l];
        // As value_entry: a sample whose weights are all 0 (mask 0) reads nothing.
        e->valid = x.nonzero[l] ? 15u : 0u;
      },
      [&](PlanEntry<float>* e, float y, float x, float m) {
        *e = value_entry(geo, y, x, m, sy, sx);
      });
}

DCN_CLONES
void build_grad_plan_f32(const Geometry& geo, const TileTask& task, const float* offset,
                         Strides4 os, const float* mask, Strides4 ms, int64_t sy, int64_t sx,
                         GradEntry<float>* plan) {
  build_plan_lanes(
      geo, task, offset, os, mask, ms, sy, sx, plan,
      [&](GradEntry<float>* e, int l, float m, const LaneInterior& r, const LaneEntries& x,
          const float (*w)[kLanes]) {
        e->base = x.base[l];
        for (int q = 0; q < 4; ++q) e->wm[q] = w[q][l];
        e->fy = r.ly[l];
        e->fx = r.lx[l];
        e->valid = 15u;
        e->mask = m;
      },
      [&](GradEntry<float>* e, float y, float x, float m) {
        grad_entry(geo, y, x, m, sy, sx, e);
      });
}

}  // namespace dcn::cpu
