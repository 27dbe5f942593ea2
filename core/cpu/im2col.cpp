// Forward: the deformable im2col, columns[n, c, k, p] = mask * bilinear(input[n, c]).
#include "parallel.h"
#include "plan.h"

namespace dcn::cpu {
namespace {

template <typename S>
void im2col_impl(const Geometry& geo, const S* input, Strides4 is, const S* offset, Strides4 os,
                 const S* mask, Strides4 ms, S* columns, ColumnStrides cs) {
  using A = acc_t<S>;
  const int64_t cpg = geo.channels_per_offset_group();
  const CornerOffsets co(is.y, is.x);
  parallel_for(num_tile_tasks(geo), [&](int64_t t) {
    const TileTask task = tile_task(geo, t);
    PlanEntry<A> plan[kTile];
    for_each_sample<A>(geo, task, offset, os, mask, ms, [&](int64_t i, A y, A x, A m) {
      plan[i] = plan_entry(bilinear_corners<A, int64_t>(y, x, geo.height, geo.width, is.y,
                                                         is.x, m, false));
    });
    const int64_t len = task.p1 - task.p0;
    const S* image = input + task.n * is.n + task.g * cpg * is.c;
    S* col0 = columns + task.n * cs.n + task.k * cs.k + task.p0 * cs.p;
    int64_t cg = 0;
    // Blocks of channels share each plan entry load.
    for (; cg + kChannelBlock <= cpg; cg += kChannelBlock) {
      const S* planes[kChannelBlock];
      S* cols[kChannelBlock];
      for (int64_t j = 0; j < kChannelBlock; ++j) {
        planes[j] = image + (cg + j) * is.c;
        cols[j] = col0 + cs.channel(task.g * cpg + cg + j);
      }
      for (int64_t i = 0; i < len; ++i) {
        const PlanEntry<A> e = plan[i];
        for (int64_t j = 0; j < kChannelBlock; ++j)
          cols[j][i * cs.p] = store<S>(gather(e, planes[j], co));
      }
    }
    for (; cg < cpg; ++cg) {
      const S* plane = image + cg * is.c;
      S* col = col0 + cs.channel(task.g * cpg + cg);
      for (int64_t i = 0; i < len; ++i) col[i * cs.p] = store<S>(gather(plan[i], plane, co));
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
