// Forward: the deformable im2col, columns[n, c, k, p] = mask * bilinear(input[n, c]).
//
// A task owns (image n, offset group g, pixel tile, a slice of the group's
// channels). It builds the plan of every kernel point for its tile once,
// then walks its channels a block at a time and, for each block, all kernel
// points: the few input rows a block of channels touches stay in L1 across
// the kh*kw kernel points instead of being fetched again for each of them.
#include <algorithm>
#include <vector>

#include "channels_last.h"
#include "parallel.h"
#include "plan.h"

namespace dcn::cpu {
namespace {

// One row of a block: cols[j][i] for the kChannelBlock channels of planes[j].
template <typename A, typename S>
inline void sample_block(const PlanEntry<A>* plan, int64_t len, const S* const* planes,
                         S* const* cols, int64_t col_p, const CornerOffsets& co, bool paired) {
  if (paired) {
    // Unit x stride and contiguous columns: a row's two corners are adjacent
    // (one paired load). Same arithmetic, in the same order, as gather().
    const int64_t sy = co.at[2];
    for (int64_t i = 0; i < len; ++i) {
      const PlanEntry<A> e = plan[i];
      if (e.valid == 15u) {
        for (int64_t j = 0; j < kChannelBlock; ++j) {
          const S* r0 = planes[j] + e.base;
          const S* r1 = r0 + sy;
          cols[j][i] = store<S>(weighted_sum4(e.w[0], e.w[1], e.w[2], e.w[3], A(load(r0[0])),
                                              A(load(r0[1])), A(load(r1[0])), A(load(r1[1]))));
        }
      } else {
        for (int64_t j = 0; j < kChannelBlock; ++j) cols[j][i] = store<S>(gather(e, planes[j], co));
      }
    }
    return;
  }
  for (int64_t i = 0; i < len; ++i) {
    const PlanEntry<A> e = plan[i];
    for (int64_t j = 0; j < kChannelBlock; ++j) cols[j][i * col_p] = store<S>(gather(e, planes[j], co));
  }
}

template <typename S>
void im2col_impl(const Geometry& geo, const S* input, Strides4 is, const S* offset, Strides4 os,
                 const S* mask, Strides4 ms, S* columns, ColumnStrides cs) {
  using A = acc_t<S>;
  if (is.c == 1 && cs.c == 1)
    return im2col_channels_last(geo, input, is, offset, os, mask, ms, columns, cs);
  const int64_t cpg = geo.channels_per_offset_group();
  const int64_t K = geo.kernel_points();
  const int64_t P = geo.out_pixels();
  const int64_t tiles = ceil_div(P, kTile);
  const CornerOffsets co(is.y, is.x);
  const bool paired = is.x == 1 && cs.p == 1;
  // Split the channels only as far as needed to give every thread work; any
  // split gives the same columns (no reductions here).
  const int64_t outer = geo.batch * geo.offset_groups * tiles;
  const int64_t blocks_total = ceil_div(cpg, kChannelBlock);
  const int64_t want = ceil_div(4 * int64_t(get_num_threads()), std::max<int64_t>(outer, 1));
  const int64_t slices = std::min(blocks_total, std::max<int64_t>(want, 1));
  const int64_t slice_blocks = ceil_div(blocks_total, slices);

  parallel_for(outer * slices, [&](int64_t t) {
    const int64_t slice = t % slices;
    const int64_t tile = (t / slices) % tiles;
    const int64_t g = (t / (slices * tiles)) % geo.offset_groups;
    const int64_t n = t / (slices * tiles * geo.offset_groups);
    const int64_t p0 = tile * kTile, p1 = std::min(P, p0 + kTile), len = p1 - p0;
    const int64_t cg_begin = slice * slice_blocks * kChannelBlock;
    const int64_t cg_end = std::min(cpg, cg_begin + slice_blocks * kChannelBlock);
    if (cg_begin >= cg_end) return;

    // Plans of all K kernel points of the tile (heap: K*kTile entries can be
    // large for big kernels, and MLX runs this on a stream thread).
    thread_local std::vector<PlanEntry<A>> plans;
    plans.resize(size_t(K * kTile));
    for (int64_t k = 0; k < K; ++k) {
      build_value_plan(geo, TileTask{n, g, k, p0, p1}, offset, os, mask, ms, is.y, is.x,
                       plans.data() + k * kTile);
    }

    const S* image = input + n * is.n + g * cpg * is.c;
    S* col_n = columns + n * cs.n + p0 * cs.p;
    int64_t cg = cg_begin;
    for (; cg + kChannelBlock <= cg_end; cg += kChannelBlock) {
      const S* planes[kChannelBlock];
      S* cols[kChannelBlock];
      for (int64_t j = 0; j < kChannelBlock; ++j) planes[j] = image + (cg + j) * is.c;
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t j = 0; j < kChannelBlock; ++j)
          cols[j] = col_n + cs.channel(g * cpg + cg + j) + k * cs.k;
        sample_block(plans.data() + k * kTile, len, planes, cols, cs.p, co, paired);
      }
    }
    for (; cg < cg_end; ++cg) {  // the last few channels, one at a time
      const S* plane = image + cg * is.c;
      for (int64_t k = 0; k < K; ++k) {
        const PlanEntry<A>* plan = plans.data() + k * kTile;
        S* col = col_n + cs.channel(g * cpg + cg) + k * cs.k;
        for (int64_t i = 0; i < len; ++i) col[i * cs.p] = store<S>(gather(plan[i], plane, co));
      }
    }
  });
}

}  // namespace

void im2col(DType dtype, const Geometry& geo, const void* input, Strides4 input_s,
            const void* offset, Strides4 offset_s, const void* mask, Strides4 mask_s,
            void* columns, ColumnStrides columns_s) {
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    im2col_impl<S>(geo, static_cast<const S*>(input), input_s, static_cast<const S*>(offset),
                   offset_s, static_cast<const S*>(mask), mask_s, static_cast<S*>(columns),
                   columns_s);
  });
}

}  // namespace dcn::cpu
