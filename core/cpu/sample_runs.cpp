#include "lanes8.h"  // first: its -Wpsabi note

#include "channels_last.h"
#include "clones.h"
#include "dcn/sampling.h"

namespace dcn::cpu {
namespace {

using namespace lanes8;

// sample_run for float32 with the channel loop written in lanes, the same
// expression per element (weighted_sum4, or a border sample's 0 + w[q] *
// corner_q over its valid corners in order), so the same bits. Written out
// because with runs of 8 channels the compiler's loops spent more on their
// set-up per sample than on the arithmetic: im2col, one thread, 1x64x64x64
// with 8 offset groups 4.49 -> 4.16 ms (1x64x32x32 0.258 -> 0.250 ms).
DCN_INLINE void sample_run_lanes(const PlanEntry<float>& e, const float* image, int64_t n,
                                 const CornerOffsets& co, float* out) {
  const int64_t full = n - n % 8;
  if (e.valid == 15u) {
    const float* r0 = image + e.base + co.at[0];
    const float* r1 = image + e.base + co.at[1];
    const float* r2 = image + e.base + co.at[2];
    const float* r3 = image + e.base + co.at[3];
    const v8f w0 = splat(e.w[0]), w1 = splat(e.w[1]), w2 = splat(e.w[2]), w3 = splat(e.w[3]);
    for (int64_t c = 0; c < full; c += 8)
      store8(out + c, weighted_sum4(w0, w1, w2, w3, load8(r0 + c), load8(r1 + c),
                                    load8(r2 + c), load8(r3 + c)));
    for (int64_t c = full; c < n; ++c)
      out[c] = weighted_sum4(e.w[0], e.w[1], e.w[2], e.w[3], r0[c], r1[c], r2[c], r3[c]);
    return;
  }
  if (e.valid == 0u) {  // outside the image, or mask 0: a run of zeros
    for (int64_t c = 0; c < n; ++c) out[c] = 0.f;
    return;
  }
  // A corner outside the plane is never read, nor its address formed (it
  // may lie outside the image).
  const float* r[4] = {};
  for (int q = 0; q < 4; ++q)
    if (e.valid >> q & 1u) r[q] = image + e.base + co.at[q];
  for (int64_t c = 0; c < full; c += 8) {
    v8f acc{};
    for (int q = 0; q < 4; ++q)
      if (e.valid >> q & 1u) acc = acc + splat(e.w[q]) * load8(r[q] + c);
    store8(out + c, acc);
  }
  for (int64_t c = full; c < n; ++c) {
    float acc = 0.f;
    for (int q = 0; q < 4; ++q)
      if (e.valid >> q & 1u) acc += e.w[q] * r[q][c];
    out[c] = acc;
  }
}

}  // namespace

DCN_CLONES
void sample_runs_f32(const PlanEntry<float>* plan, int64_t len, const float* image,
                     const CornerOffsets& co, float* col, int64_t col_p, int64_t n) {
  for (int64_t i = 0; i < len; ++i) sample_run_lanes(plan[i], image, n, co, col + i * col_p);
}

}  // namespace dcn::cpu
