// See coord_lanes.h. Built for AVX-512 and AVX2 as well as the baseline where
// clones.h allows; the fixed 8 lanes make every clone compute the same bits.
#include "lanes8.h"  // first: its -Wpsabi note

#include "coord_lanes.h"

#include <cstring>

#include "dcn/sampling.h"
#include "clones.h"

namespace dcn::cpu {
namespace {

using namespace lanes8;
static_assert(kCoordLanes == 8, "the lane type holds kCoordLanes floats");

// The fixed tree over the lanes (coord_lanes.h),
// ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)), as three shuffled adds
// whose lane 0 follows that tree exactly (a + b and b + a round alike). On
// the scalar lanes through memory it cost 15% of this kernel.
#if defined(__clang__)
#define DCN_SHUFFLE8(v, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
#else
#define DCN_SHUFFLE8(v, ...) __builtin_shuffle(v, v8i{__VA_ARGS__})
#endif
DCN_INLINE float reduce8(v8f a) {
  const v8f pairs = a + DCN_SHUFFLE8(a, 1, 0, 3, 2, 5, 4, 7, 6);              // lane 0: a0+a1
  const v8f quads = pairs + DCN_SHUFFLE8(pairs, 2, 3, 0, 1, 6, 7, 4, 5);      // lane 4: (a4+a5)+(a6+a7)
  const v8f all = quads + DCN_SHUFFLE8(quads, 4, 5, 6, 7, 0, 1, 2, 3);
  return all[0];
}

// A sample's three lane sums into its gradients: the offset gradient is
// the mask times the sum, exactly 0 outside the gradient region (even when
// the mask there is NaN or inf); the mask gradient is the sum itself.
DCN_INLINE void finish_sample(const GradEntry<float>& e, v8f ay, v8f ax, v8f am, float* gy,
                              float* gx, float* gm) {
  const bool outside = e.valid == 0u;
  *gy = outside ? 0.f : e.mask * reduce8(ay);
  *gx = outside ? 0.f : e.mask * reduce8(ax);
  *gm = reduce8(am);
}

}  // namespace

namespace {

// An interior sample's numbers as lanes, taken out of its plan entry once
// per sample: read through the entry inside the channel loop, they would be
// reloaded after every column store (a float store may alias them).
struct InteriorLanes {
  int64_t base;
  v8f fy, fx, w0, w1, w2, w3;
};

DCN_INLINE InteriorLanes interior_lanes_of(const GradEntry<float>& e) {
  return {e.base, splat(e.fy), splat(e.fx), splat(e.wm[0]), splat(e.wm[1]), splat(e.wm[2]),
          splat(e.wm[3])};
}

// Eight channels of an interior sample into the lane sums (lane l: channel l
// of img, g and o): interior_value_and_grad on 8 channels.
DCN_INLINE void interior_step(const InteriorLanes& s, const float* img, const CornerOffsets& co,
                              const float* g, float* o, v8f& ay, v8f& ax, v8f& am) {
  const float* r0 = img + s.base;
  const float* r1 = r0 + co.at[2];
  const int64_t sx = co.at[1];
  const v8f v0 = load8(r0), v1 = load8(r0 + sx), v2 = load8(r1), v3 = load8(r1 + sx);
  const v8f gv = load8(g);
  const SampleGrad<v8f> r = interior_value_and_grad(v0, v1, v2, v3, s.fy, s.fx);
  ay += gv * r.dy;
  ax += gv * r.dx;
  am += gv * r.value;
  if (o) store8(o, weighted_sum4(s.w0, s.w1, s.w2, s.w3, v0, v1, v2, v3));
}

// Eight channels of a border sample: coord_step's corner-by-corner
// arithmetic (scalar weights, vector values), so every lane computes
// exactly what coord_step does for its channel. A corner outside the plane
// is never read and counts as 0.
DCN_INLINE void border_step(const GradEntry<float>& e, const float* img, const CornerOffsets& co,
                            const float* g, float* o, v8f& ay, v8f& ax, v8f& am) {
  const Corners<float, int64_t>& k = e.corners;
  v8f v[4];
  for (int q = 0; q < 4; ++q) v[q] = (e.valid >> q & 1u) ? load8(img + e.base + co.at[q]) : v8f{};
  const v8f gv = load8(g);
  const SampleGrad<v8f> r = corner_value_and_grad(k, v[0], v[1], v[2], v[3]);
  ay += gv * r.dy;
  ax += gv * r.dx;
  am += gv * r.value;
  if (o) store8(o, border_column(k, e.mask, v[0], v[1], v[2], v[3], v8f{}));
}

// Channels [c0, c1) of a run through the scalar coord_step, channel c into
// lane c % 8 (the lanes spilled to memory and back).
DCN_INLINE void scalar_channels(const GradEntry<float>& e, const float* image, int64_t c0,
                                int64_t c1, const CornerOffsets& co, const float* g, float* out,
                                v8f& ay, v8f& ax, v8f& am) {
  if (c0 >= c1) return;
  float ly[8], lx[8], lm[8];
  std::memcpy(ly, &ay, sizeof ly);
  std::memcpy(lx, &ax, sizeof lx);
  std::memcpy(lm, &am, sizeof lm);
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t l = c % kCoordLanes;
    coord_step(e, image + c, co, g[c], ly[l], lx[l], lm[l], out ? out + c : nullptr);
  }
  std::memcpy(&ay, ly, sizeof ly);
  std::memcpy(&ax, lx, sizeof lx);
  std::memcpy(&am, lm, sizeof lm);
}

// One sample (e) over the cpg channels: its offset and mask gradients
// (finish_sample) into *ay, *ax, *am.
// Channel c goes into lane c % 8 in every path, vector or scalar.
DCN_INLINE void sample_lanes(const GradEntry<float>& e, const float* image, int64_t cpg,
                             const CornerOffsets& co, const float* g, float* out,
                             float* ay_out, float* ax_out, float* am_out) {
  const int64_t full = cpg - cpg % kCoordLanes;
  v8f ay{}, ax{}, am{};
  if (e.valid == 15u) {
    // Interior: interior_value_and_grad on 8 channels at a time.
    const float* r0 = image + e.base;
    const float* r1 = r0 + co.at[2];
    const int64_t sx = co.at[1];
    const v8f fy = splat(e.fy), fx = splat(e.fx);
    const v8f w0 = splat(e.wm[0]), w1 = splat(e.wm[1]), w2 = splat(e.wm[2]), w3 = splat(e.wm[3]);
    for (int64_t c = 0; c < full; c += kCoordLanes) {
      const v8f v0 = load8(r0 + c), v1 = load8(r0 + sx + c);
      const v8f v2 = load8(r1 + c), v3 = load8(r1 + sx + c);
      const v8f gv = load8(g + c);
      const SampleGrad<v8f> r = interior_value_and_grad(v0, v1, v2, v3, fy, fx);
      ay += gv * r.dy;
      ax += gv * r.dx;
      am += gv * r.value;
      if (out) store8(out + c, weighted_sum4(w0, w1, w2, w3, v0, v1, v2, v3));
    }
  } else if (e.valid != 0u) {
    // Border: coord_step's corner-by-corner arithmetic on 8 channels at a
    // time (scalar weights, vector values), so every lane computes exactly
    // what coord_step does for its channel. A corner outside the plane is
    // never read and counts as 0.
    const Corners<float, int64_t>& k = e.corners;
    for (int64_t c = 0; c < full; c += kCoordLanes) {
      v8f v[4];
      for (int q = 0; q < 4; ++q)
        v[q] = (e.valid >> q & 1u) ? load8(image + e.base + co.at[q] + c) : v8f{};
      const v8f gv = load8(g + c);
      const SampleGrad<v8f> r = corner_value_and_grad(k, v[0], v[1], v[2], v[3]);
      ay += gv * r.dy;
      ax += gv * r.dx;
      am += gv * r.value;
      if (out) store8(out + c, border_column(k, e.mask, v[0], v[1], v[2], v[3], v8f{}));
    }
  } else {
    // Outside both regions: column 0, nothing to sum.
    if (out) std::memset(out, 0, size_t(cpg) * sizeof(float));
    *ay_out = *ax_out = *am_out = 0.f;
    return;
  }
  // The last cpg % 8 channels: the scalar step, lane c % 8 (behind the
  // test here, not only inside: called unconditionally, the spill measured
  // 8% of this kernel with 8 channels per offset group).
  if (full < cpg) scalar_channels(e, image, full, cpg, co, g, out, ay, ax, am);
  finish_sample(e, ay, ax, am, ay_out, ax_out, am_out);
}

// One sample (e) over the group's channels given as runs (with weight
// groups, a group's channels are contiguous in the columns only within each
// weight-group block): the same lanes, each taking its channels in the same
// order, as sample_lanes. Kept apart from it because sample_lanes written
// with these per-vector steps measured 10% slower (1x64x32x32: 0.207 ->
// 0.226 ms).
DCN_INLINE void sample_lanes_runs(const GradEntry<float>& e, const float* image,
                                  const CornerOffsets& co, const float* g, float* out,
                                  const ChannelRun* runs, int64_t nruns, float* ay_out,
                                  float* ax_out, float* am_out) {
  if (e.valid == 0u) {
    // Outside both regions: column 0, nothing to sum.
    if (out)
      for (int64_t r = 0; r < nruns; ++r)
        std::memset(out + runs[r].col, 0, size_t(runs[r].n) * sizeof(float));
    *ay_out = *ax_out = *am_out = 0.f;
    return;
  }
  v8f ay{}, ax{}, am{};
  // The runs in order, vectors where a run starts on a lane boundary (always
  // with weight groups of a multiple of 8 channels), the rest scalar;
  // step(c, gr, outr) takes channels [c, c + 8) of the run's columns gr,
  // shifted so that the group's channel c is at gr[c]. The sample's kind is
  // decided once, outside the runs.
  auto each_run = [&](auto&& step) {
    for (int64_t r = 0; r < nruns; ++r) {
      const int64_t c0 = runs[r].c, n = runs[r].n;
      const float* gr = g + runs[r].col - c0;
      float* outr = out ? out + runs[r].col - c0 : nullptr;
      const int64_t c_vec = c0 + (c0 % kCoordLanes == 0 ? n - n % kCoordLanes : 0);
      for (int64_t c = c0; c < c_vec; c += kCoordLanes) step(c, gr, outr);
      if (c_vec < c0 + n) scalar_channels(e, image, c_vec, c0 + n, co, gr, outr, ay, ax, am);
    }
  };
  if (e.valid == 15u) {
    const InteriorLanes il = interior_lanes_of(e);
    each_run([&](int64_t c, const float* gr, float* outr) {
      interior_step(il, image + c, co, gr + c, outr ? outr + c : nullptr, ay, ax, am);
    });
  } else {
    each_run([&](int64_t c, const float* gr, float* outr) {
      border_step(e, image + c, co, gr + c, outr ? outr + c : nullptr, ay, ax, am);
    });
  }
  finish_sample(e, ay, ax, am, ay_out, ax_out, am_out);
}

}  // namespace

DCN_CLONES
void coord_tile_channels_last_f32(const GradEntry<float>* plans, int64_t K, int64_t len,
                                  const float* image, const CornerOffsets& co,
                                  const float* gcol, float* cols_out, int64_t col_k,
                                  int64_t col_p, const ChannelRun* runs, int64_t nruns,
                                  float* acc_y, float* acc_x, float* acc_m) {
  // Two loops, not a branch per sample: with 8 channels per offset group
  // the branch measured 8% of this kernel.
  if (nruns == 1 && runs[0].c == 0 && runs[0].col == 0) {
    for (int64_t i = 0; i < len; ++i) {
      for (int64_t k = 0; k < K; ++k) {
        const int64_t at = i * col_p + k * col_k, j = k * kLaneTile + i;
        sample_lanes(plans[j], image, runs[0].n, co, gcol + at,
                     cols_out ? cols_out + at : nullptr, acc_y + j, acc_x + j, acc_m + j);
      }
    }
    return;
  }
  for (int64_t i = 0; i < len; ++i) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t at = i * col_p + k * col_k, j = k * kLaneTile + i;
      sample_lanes_runs(plans[j], image, co, gcol + at, cols_out ? cols_out + at : nullptr, runs,
                        nruns, acc_y + j, acc_x + j, acc_m + j);
    }
  }
}

}  // namespace dcn::cpu
