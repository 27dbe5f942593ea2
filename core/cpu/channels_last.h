// Channels-last im2col (MLX's NHWC layout).
//
// When the input's channel stride is 1 and so is the columns' (within a
// weight group), the four corners of a sample are four contiguous runs of
// channels. The loop below sweeps those runs with unit stride, so the
// compiler vectorises it (SSE2 on any x86-64, NEON on arm64): the plan is
// still computed once per (offset group, kernel point, pixel), and each
// channel costs a few vector lanes instead of a scalar gather. Measured here
// (1x256x64x64, 3x3): 3.1 ms against 6.3 ms for the channel-major loop.
// Same arithmetic, in the same order, as gather(): bitwise equal columns.
//
// The backward's channels-last loops are col2im's scatter_runs and
// coord_grad's coord_lanes.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "parallel.h"
#include "plan.h"

namespace dcn::cpu {

// Runs of channels [c, c_end) of one offset group that stay inside one
// weight-group block of the columns (contiguous there). fn(c0, c1).
template <typename Fn>
inline void for_each_channel_run(const ColumnStrides& cs, int64_t c_begin, int64_t c_end, Fn&& fn) {
  for (int64_t c = c_begin; c < c_end;) {
    const int64_t block_end = (c / cs.block + 1) * cs.block;
    const int64_t c1 = std::min(c_end, block_end);
    fn(c, c1);
    c = c1;
  }
}

// Channels [c, c + n) of a group, counted from a first channel, lie at
// column offset `col` from that channel's column: one run per weight-group
// block the group meets (with weight groups, columns are contiguous within
// a block only).
struct ChannelRun {
  int64_t c, n, col;
};

// The runs of channels [first, first + count) into *runs.
inline void channel_runs(const ColumnStrides& cs, int64_t first, int64_t count,
                         std::vector<ChannelRun>* runs) {
  runs->clear();
  for_each_channel_run(cs, first, first + count, [&](int64_t a, int64_t b) {
    runs->push_back(ChannelRun{a - first, b - a, cs.channel(a) - cs.channel(first)});
  });
}

// columns[c] = sum_q w[q] * corner_q[c] for a run of channels.
template <typename A, typename S>
inline void sample_run(const PlanEntry<A>& e, const S* __restrict image, int64_t n_ch,
                       const CornerOffsets& co, S* __restrict out) {
  if (e.valid == 15u) {
    const S* __restrict r0 = image + e.base + co.at[0];
    const S* __restrict r1 = image + e.base + co.at[1];
    const S* __restrict r2 = image + e.base + co.at[2];
    const S* __restrict r3 = image + e.base + co.at[3];
    const A w0 = e.w[0], w1 = e.w[1], w2 = e.w[2], w3 = e.w[3];
    for (int64_t c = 0; c < n_ch; ++c)
      out[c] = store<S>(weighted_sum4(w0, w1, w2, w3, A(load(r0[c])), A(load(r1[c])),
                                      A(load(r2[c])), A(load(r3[c]))));
    return;
  }
  if (e.valid == 0u) {  // outside the image, or mask 0: a run of zeros
    for (int64_t c = 0; c < n_ch; ++c) out[c] = store<S>(A(0));
    return;
  }
  // A corner outside the plane: gather()'s sum, 0 + w[q] * corner_q over the
  // valid corners in order, taken corner by corner over a block of channels
  // so each pass is a vector loop (one scalar pass per channel measured a
  // third of the whole im2col on 1x64x32x32, where a fifth of the samples
  // touch the border). Every lane computes exactly gather()'s expression.
  constexpr int64_t kBlock = 64;
  for (int64_t c0 = 0; c0 < n_ch; c0 += kBlock) {
    const int64_t m = std::min(kBlock, n_ch - c0);
    A acc[kBlock];
    for (int64_t j = 0; j < m; ++j) acc[j] = A(0);
    for (int q = 0; q < 4; ++q) {
      if (!(e.valid >> q & 1u)) continue;
      const S* __restrict r = image + e.base + co.at[q] + c0;
      const A w = e.w[q];
      for (int64_t j = 0; j < m; ++j) acc[j] += w * A(load(r[j]));
    }
    for (int64_t j = 0; j < m; ++j) out[c0 + j] = store<S>(acc[j]);
  }
}

// sample_run for the pixels of one (kernel point, tile): columns of pixel i
// at col + i * col_p, channels [0, n) of the run.
template <typename A, typename S>
inline void sample_runs(const PlanEntry<A>* plan, int64_t len, const S* image,
                        const CornerOffsets& co, S* col, int64_t col_p, int64_t n) {
  for (int64_t i = 0; i < len; ++i) sample_run(plan[i], image, n, co, col + i * col_p);
}

// float32, built for AVX-512 and AVX2 as well as the baseline (chosen at
// load time, clones.h). No reduction across channels, so every width gives
// the same bits. Measured (im2col, 2 threads): 1x64x32x32 164 -> 143 us,
// 1x256x64x64 1.90 -> 1.80 ms (the plain build vectorises for SSE2 only).
void sample_runs_f32(const PlanEntry<float>* plan, int64_t len, const float* image,
                     const CornerOffsets& co, float* col, int64_t col_p, int64_t n);

template <typename S>
void im2col_channels_last(const Geometry& geo, const S* input, Strides4 is, const S* offset,
                          Strides4 os, const S* mask, Strides4 ms, S* columns, ColumnStrides cs) {
  using A = acc_t<S>;
  const int64_t cpg = geo.channels_per_offset_group();
  const CornerOffsets co(is.y, is.x);
  const int64_t P = geo.out_pixels();
  const int64_t K = geo.kernel_points();
  // A task owns (n, g, a tile of kPixels pixels) and every kernel point, so
  // a pixel's row of pixel-major columns is written front to back by one
  // thread. Measured (2 threads) against a task per (kernel point, 256
  // pixels): 1x64x32x32 219 -> 192 us, 1x256x64x64 3.0 -> 2.07 ms,
  // 2x64x56x56 1.38 -> 1.15 ms; tiles of 16 to 128 pixels measured alike.
  constexpr int64_t kPixels = 64;
  const int64_t tiles = ceil_div(P, kPixels);
  parallel_for(geo.batch * geo.offset_groups * tiles, [&](int64_t t) {
    const int64_t tile = t % tiles;
    const int64_t g = (t / tiles) % geo.offset_groups;
    const int64_t n = t / (tiles * geo.offset_groups);
    const int64_t c0 = g * cpg;
    const S* image = input + n * is.n + c0;
    PlanEntry<A> plan[kPixels];
    for (int64_t k = 0; k < K; ++k) {
      const TileTask task{n, g, k, tile * kPixels, std::min(P, (tile + 1) * kPixels)};
      build_value_plan(geo, task, offset, os, mask, ms, is.y, is.x, plan);
      S* col = columns + n * cs.n + k * cs.k + task.p0 * cs.p;
      const int64_t len = task.p1 - task.p0;
      for_each_channel_run(cs, c0, c0 + cpg, [&](int64_t a, int64_t b) {
        if constexpr (std::is_same_v<S, float>)
          sample_runs_f32(plan, len, image + (a - c0), co, col + cs.channel(a), cs.p, b - a);
        else
          sample_runs(plan, len, image + (a - c0), co, col + cs.channel(a), cs.p, b - a);
      });
    }
  });
}

}  // namespace dcn::cpu
