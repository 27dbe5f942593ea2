// col2im's channels-last inner loop: for the samples of one (kernel point,
// pixel tile), image[corner q + c] += w[q] * gcol[i][c] over a run of n
// channels, every valid corner, pixels in order (the four runs of a sample
// are distinct pixels and never overlap). Element by element the same
// operations in the same order as the channel-major loop: bitwise equal.
#pragma once
#include <cstdint>

#include "plan.h"

namespace dcn::cpu {

// Pixel-major columns put consecutive pixels K*C elements apart, a stride
// the hardware prefetcher does not follow far enough ahead: fetching the
// run six pixels ahead measured 3.0 -> 2.65 ms (2 images of 8x64x56x56, one
// thread).
constexpr int64_t kScatterPrefetch = 6;

template <typename S>
inline void prefetch_run(const S* run, int64_t n) {
  const char* p = reinterpret_cast<const char*>(run);
  for (int64_t b = 0; b < n * int64_t(sizeof(S)); b += 64) __builtin_prefetch(p + b);
}

template <typename A, typename S>
inline void scatter_runs(const PlanEntry<A>* plan, int64_t len, A* image, const CornerOffsets& co,
                         const S* gcol, int64_t col_p, int64_t n) {
  for (int64_t i = 0; i < len; ++i) {
    const PlanEntry<A>& e = plan[i];
    const S* __restrict g = gcol + i * col_p;
    if (i + kScatterPrefetch < len) prefetch_run(g + kScatterPrefetch * col_p, n);
    if (e.valid == 15u) {
      // All four corners: each gradient vector loaded once for the four of
      // them (the corners are distinct pixels, so every element still gets
      // its additions in the same order as below).
      A* __restrict d0 = image + e.base + co.at[0];
      A* __restrict d1 = image + e.base + co.at[1];
      A* __restrict d2 = image + e.base + co.at[2];
      A* __restrict d3 = image + e.base + co.at[3];
      const A w0 = e.w[0], w1 = e.w[1], w2 = e.w[2], w3 = e.w[3];
      for (int64_t c = 0; c < n; ++c) {
        const A v = A(load(g[c]));
        d0[c] += w0 * v;
        d1[c] += w1 * v;
        d2[c] += w2 * v;
        d3[c] += w3 * v;
      }
      continue;
    }
    for (int q = 0; q < 4; ++q) {
      if (!(e.valid >> q & 1u)) continue;
      A* __restrict dst = image + e.base + co.at[q];
      const A w = e.w[q];
      for (int64_t c = 0; c < n; ++c) dst[c] += w * A(load(g[c]));
    }
  }
}

// float32, built for AVX-512 and AVX2 as well as the baseline (chosen at
// load time; wider vectors change no result: there is no reduction).
void scatter_runs_f32(const PlanEntry<float>* plan, int64_t len, float* image,
                      const CornerOffsets& co, const float* gcol, int64_t col_p, int64_t n);

}  // namespace dcn::cpu
