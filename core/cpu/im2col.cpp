// Forward: the deformable im2col, columns[n, c, k, p] = mask * bilinear(input[n, c]).
#include <vector>

#include "parallel.h"
#include "plan.h"

namespace dcn::cpu {
namespace {

template <typename S>
void im2col_impl(const Geometry& geo, const S* input, Strides4 is, const S* offset, Strides4 os,
                 const S* mask, Strides4 ms, S* columns, ColumnStrides cs) {
  using A = acc_t<S>;
  const int64_t cpg = geo.channels_per_offset_group();
  parallel_for(num_tile_tasks(geo), [&](int64_t t) {
    const TileTask task = tile_task(geo, t);
    PlanEntry<A> plan[kTile];
    for_each_sample<A>(geo, task, offset, os, mask, ms, [&](int64_t i, A y, A x, A m) {
      plan[i] = plan_entry(bilinear_corners<A, int64_t>(y, x, geo.height, geo.width, is.y,
                                                         is.x, m, false));
    });
    const int64_t len = task.p1 - task.p0;
    for (int64_t cg = 0; cg < cpg; ++cg) {
      const int64_t c = task.g * cpg + cg;
      const S* plane = input + task.n * is.n + c * is.c;
      S* col = columns + task.n * cs.n + task.g * cs.g + cg * cs.cg + task.k * cs.k +
               task.p0 * cs.p;
      if (cs.p == 1) {
        for (int64_t i = 0; i < len; ++i) col[i] = store<S>(gather(plan[i], plane));
      } else {
        for (int64_t i = 0; i < len; ++i) col[i * cs.p] = store<S>(gather(plan[i], plane));
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
