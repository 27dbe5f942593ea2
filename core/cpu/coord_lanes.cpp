// See coord_lanes.h. Built for AVX-512 and AVX2 as well as the baseline where
// clones.h allows; the fixed 8 lanes make every clone compute the same bits.
#include "coord_lanes.h"

#include <cstring>

#include "dcn/sampling.h"

// The lane type is a 32-byte vector; only inlined helpers take it by value,
// so the baseline ABI note about passing it does not concern any interface.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#include "clones.h"

// Inlined into each clone, so they are compiled for the clone's ISA.
#define DCN_INLINE inline __attribute__((always_inline))

namespace dcn::cpu {
namespace {

typedef float v8f __attribute__((vector_size(32)));
static_assert(kCoordLanes == 8, "the lane type holds kCoordLanes floats");

DCN_INLINE v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

DCN_INLINE void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }

DCN_INLINE v8f splat(float x) { return v8f{} + x; }

// The fixed tree over the lanes (coord_lanes.h).
DCN_INLINE float reduce8(const float (&a)[8]) {
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

}  // namespace

namespace {

// One sample (e) over the cpg channels: the lane sums into *ay, *ax, *am.
DCN_INLINE void sample_lanes(const GradEntry<float>& e, const float* image, int64_t cpg,
                         const CornerOffsets& co, const float* g, float* out, float* ay_out,
                         float* ax_out, float* am_out) {
  const int64_t full = cpg - cpg % kCoordLanes;
  float ly[8] = {}, lx[8] = {}, lm[8] = {};
  if (e.valid == 15u) {
    // Interior: interior_value_and_grad on 8 channels at a time.
    const float* r0 = image + e.base;
    const float* r1 = r0 + co.at[2];
    const int64_t sx = co.at[1];
    const v8f fy = splat(e.fy), fx = splat(e.fx);
    const v8f w0 = splat(e.wm[0]), w1 = splat(e.wm[1]), w2 = splat(e.wm[2]), w3 = splat(e.wm[3]);
    v8f ay{}, ax{}, am{};
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
    std::memcpy(ly, &ay, sizeof ly);
    std::memcpy(lx, &ax, sizeof lx);
    std::memcpy(lm, &am, sizeof lm);
    for (int64_t c = full; c < cpg; ++c) {  // the last cpg % 8 channels, lane c % 8
      const int64_t l = c % kCoordLanes;
      coord_step(e, image + c, co, g[c], ly[l], lx[l], lm[l], out ? out + c : nullptr);
    }
  } else {
    // Border or outside: the scalar step, channel c into lane c % 8.
    for (int64_t c = 0; c < cpg; ++c) {
      const int64_t l = c % kCoordLanes;
      coord_step(e, image + c, co, g[c], ly[l], lx[l], lm[l], out ? out + c : nullptr);
    }
  }
  *ay_out = reduce8(ly);
  *ax_out = reduce8(lx);
  *am_out = reduce8(lm);
}

}  // namespace

DCN_CLONES
void coord_tile_channels_last_f32(const GradEntry<float>* plans, int64_t K, int64_t len,
                                  const float* image, int64_t cpg, const CornerOffsets& co,
                                  const float* gcol, float* cols_out, int64_t col_k,
                                  int64_t col_p, float* acc_y, float* acc_x, float* acc_m) {
  for (int64_t i = 0; i < len; ++i) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t at = i * col_p + k * col_k, j = k * kLaneTile + i;
      sample_lanes(plans[j], image, cpg, co, gcol + at, cols_out ? cols_out + at : nullptr,
                   acc_y + j, acc_x + j, acc_m + j);
    }
  }
}

}  // namespace dcn::cpu
