// Gradient w.r.t. offset and mask: for each sample, the sum over the
// group's channels of grad_column times d(value)/d(dy, dx) and times the
// unmodulated value. A task owns one (n, g, k, tile) and sums channels in
// order, so results are deterministic for any thread count.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "coord_lanes.h"
#include "coord_step.h"
#include "interior.h"
#include "parallel.h"
#include "plan.h"
#include "tasks.h"

namespace dcn::cpu {
namespace {

// The plan of one task: every sample's corners and weights.
template <typename A, typename S>
void build_plan(const Geometry& geo, const TileTask& task, const S* offset, Strides4 os,
                const S* mask, Strides4 ms, Strides4 is, GradEntry<A>* plan) {
  if constexpr (std::is_same_v<S, float>) {
    if (plan_lanes_apply(geo))
      return build_grad_plan_f32(geo, task, offset, os, mask, ms, is.y, is.x, plan);
  }
  for_each_sample<A>(geo, task, offset, os, mask, ms, [&](int64_t i, A y, A x, A m) {
    grad_entry(geo, y, x, m, is.y, is.x, &plan[i]);
  });
}

// Writes one task's sums into its kernel point's offset-gradient rows
// (the offsets' layout) and mask-gradient row, a row segment at a time.
template <typename A, typename S>
void write_back(const Geometry& geo, const TileTask& task, const GradEntry<A>* plan,
                const A* acc_y, const A* acc_x, const A* acc_m, S* goff, Strides4 gos, S* gmask,
                Strides4 gms) {
  const TaskPlanes<S*> to = task_planes(geo, task, goff, gos, gmask, gms);
  for_each_row_segment(geo, task, [&](int64_t i0, int64_t oy, int64_t ox, int64_t len) {
    S* ry = to.y + oy * gos.y + ox * gos.x;
    S* rx = to.x + oy * gos.y + ox * gos.x;
    S* rm = to.m ? to.m + oy * gms.y + ox * gms.x : nullptr;
    for (int64_t j = 0; j < len; ++j) {
      const int64_t i = i0 + j;
      // A sample outside the gradient region has exactly 0 offset gradient,
      // even when its mask is NaN or inf (0 * NaN would say otherwise).
      const bool outside = plan[i].valid == 0u;
      ry[j * gos.x] = store<S>(outside ? A(0) : plan[i].mask * acc_y[i]);
      rx[j * gos.x] = store<S>(outside ? A(0) : plan[i].mask * acc_x[i]);
      if (rm) rm[j * gms.x] = store<S>(acc_m[i]);
    }
  });
}

// As write_back for sums already finished (the mask applied, as the
// channels-last kernel does): a copy per row segment. Against write_back,
// which re-reads every plan entry for its mask (one thread, same-process
// A/B): 1x64x64x64 with 8 offset groups 9.2 -> 8.5 ms, 1x64x32x32 0.41 ->
// 0.40 ms.
void write_gradients(const Geometry& geo, const TileTask& task, const float* gy_sum,
                     const float* gx_sum, const float* gm_sum, float* goff, Strides4 gos,
                     float* gmask, Strides4 gms) {
  const TaskPlanes<float*> to = task_planes(geo, task, goff, gos, gmask, gms);
  for_each_row_segment(geo, task, [&](int64_t i, int64_t oy, int64_t ox, int64_t len) {
    float* ry = to.y + oy * gos.y + ox * gos.x;
    float* rx = to.x + oy * gos.y + ox * gos.x;
    for (int64_t j = 0; j < len; ++j) ry[j * gos.x] = gy_sum[i + j];
    for (int64_t j = 0; j < len; ++j) rx[j * gos.x] = gx_sum[i + j];
    if (to.m) {
      float* rm = to.m + oy * gms.y + ox * gms.x;
      for (int64_t j = 0; j < len; ++j) rm[j * gms.x] = gm_sum[i + j];
    }
  });
}

// float32 channels-last (coord_lanes.h): the group's channels contiguous in
// the input and, within each weight-group block, in the columns. A task owns
// (n, g, a tile of kLaneTile pixels) and every kernel point, so each pixel's
// columns are read front to back.
bool channels_last_f32(Strides4 is, ColumnStrides cs) { return is.c == 1 && cs.c == 1; }

Tasks coord_grad_channels_last_f32(const Geometry& geo, const float* gcol, ColumnStrides cs,
                                   const float* input, Strides4 is, const float* offset,
                                   Strides4 os, const float* mask, Strides4 ms, float* goff,
                                   Strides4 gos, float* gmask, Strides4 gms, float* cols_out) {
  const int64_t cpg = geo.channels_per_offset_group();
  const int64_t K = geo.kernel_points();
  const int64_t P = geo.out_pixels();
  const int64_t tiles = ceil_div(P, kLaneTile);
  const CornerOffsets co(is.y, is.x);
  Tasks tasks;
  tasks.count = geo.batch * geo.offset_groups * tiles;
  tasks.run = [=](int64_t t) {
    const int64_t tile = t % tiles;
    const int64_t g = (t / tiles) % geo.offset_groups;
    const int64_t n = t / (tiles * geo.offset_groups);
    const int64_t p0 = tile * kLaneTile, p1 = std::min(P, p0 + kLaneTile);
    thread_local std::vector<GradEntry<float>> plans;
    thread_local std::vector<float> acc;
    thread_local std::vector<ChannelRun> runs;
    channel_runs(cs, g * cpg, cpg, &runs);  // the group's channels, by weight group
    plans.resize(size_t(K * kLaneTile));
    acc.resize(size_t(3 * K * kLaneTile));
    float* acc_y = acc.data();
    float* acc_x = acc_y + K * kLaneTile;
    float* acc_m = acc_x + K * kLaneTile;
    for (int64_t k = 0; k < K; ++k)
      build_plan(geo, TileTask{n, g, k, p0, p1}, offset, os, mask, ms, is,
                 plans.data() + k * kLaneTile);
    const int64_t at = n * cs.n + cs.channel(g * cpg) + p0 * cs.p;
    coord_tile_channels_last_f32(plans.data(), K, p1 - p0, input + n * is.n + g * cpg, co,
                                 gcol + at, cols_out ? cols_out + at : nullptr, cs.k, cs.p,
                                 runs.data(), int64_t(runs.size()), acc_y, acc_x, acc_m);
    for (int64_t k = 0; k < K; ++k) {
      const int64_t j = k * kLaneTile;
      write_gradients(geo, TileTask{n, g, k, p0, p1}, acc_y + j, acc_x + j, acc_m + j, goff,
                      gos, gmask, gms);
    }
  };
  return tasks;
}

template <typename S>
Tasks coord_grad_impl(const Geometry& geo, const S* gcol, ColumnStrides cs, const S* input,
                      Strides4 is, const S* offset, Strides4 os, const S* mask, Strides4 ms,
                      S* goff, Strides4 gos, S* gmask, Strides4 gms, S* cols_out) {
  using A = acc_t<S>;
  const int64_t cpg = geo.channels_per_offset_group();
  if constexpr (std::is_same_v<S, float>) {
    if (channels_last_f32(is, cs))
      return coord_grad_channels_last_f32(geo, gcol, cs, input, is, offset, os, mask, ms, goff,
                                          gos, gmask, gms, cols_out);
  }
  const CornerOffsets co(is.y, is.x);
  Tasks tasks;
  tasks.count = num_tile_tasks(geo);
  tasks.run = [=](int64_t t) {
    const TileTask task = tile_task(geo, t);
    GradEntry<A> plan[kTile];
    A acc_y[kTile], acc_x[kTile], acc_m[kTile];
    build_plan(geo, task, offset, os, mask, ms, is, plan);
    for (int64_t i = 0; i < task.p1 - task.p0; ++i) acc_y[i] = acc_x[i] = acc_m[i] = A(0);
    const int64_t len = task.p1 - task.p0;
    const S* image = input + task.n * is.n + task.g * cpg * is.c;
    const int64_t col_at = task.n * cs.n + task.k * cs.k + task.p0 * cs.p;
    bool fast = false;
    if constexpr (std::is_same_v<S, float>) {
      fast = interior_eligible(geo, is, cs);
      if (fast) {
        // float32: interior pixels through the vector loop, one channel at a
        // time over the whole tile; the others (listed in ip.border) through
        // the scalar step, with their sums kept in acc_*_border.
        thread_local InteriorPlan ip;
        ip.nborder = 0;
        for (int64_t i = 0; i < len; ++i) {
          const GradEntry<A>& e = plan[i];
          interior_set(ip, i, e.valid == 15u, e.base, e.wm, e.fy, e.fx);
        }
        A acc_y_border[kTile], acc_x_border[kTile], acc_m_border[kTile];
        for (int32_t j = 0; j < ip.nborder; ++j) {
          const int32_t i = ip.border[j];
          acc_y_border[i] = acc_x_border[i] = acc_m_border[i] = A(0);
        }
        for (int64_t cg = 0; cg < cpg; ++cg) {
          const S* plane = image + cg * is.c;
          const int64_t col = col_at + cs.channel(task.g * cpg + cg);
          S* out = cols_out ? cols_out + col : nullptr;
          interior_coord_f32(ip, len, plane, is.y, gcol + col, acc_y, acc_x, acc_m, out);
          for (int32_t j = 0; j < ip.nborder; ++j) {
            const int32_t i = ip.border[j];
            coord_step(plan[i], plane, co, A(load(gcol[col + i])), acc_y_border[i],
                       acc_x_border[i], acc_m_border[i], out ? out + i : nullptr);
          }
        }
        for (int32_t j = 0; j < ip.nborder; ++j) {
          const int32_t i = ip.border[j];
          acc_y[i] = acc_y_border[i];
          acc_x[i] = acc_x_border[i];
          acc_m[i] = acc_m_border[i];
        }
      }
    }
    // Channels in blocks (one plan-entry load serves the block); within a
    // pixel the channels are summed in order, whatever the block size.
    for (int64_t cg0 = 0; !fast && cg0 < cpg; cg0 += kChannelBlock) {
      const int64_t nb = std::min(kChannelBlock, cpg - cg0);
      const S* planes[kChannelBlock];
      int64_t col_of[kChannelBlock];
      for (int64_t j = 0; j < nb; ++j) {
        planes[j] = image + (cg0 + j) * is.c;
        col_of[j] = col_at + cs.channel(task.g * cpg + cg0 + j);
      }
      for (int64_t i = 0; i < len; ++i) {
        const GradEntry<A>& e = plan[i];
        A ay = acc_y[i], ax = acc_x[i], am = acc_m[i];
        for (int64_t j = 0; j < nb; ++j)
          coord_step(e, planes[j], co, A(load(gcol[col_of[j] + i * cs.p])), ay, ax, am,
                     cols_out ? cols_out + col_of[j] + i * cs.p : nullptr);
        acc_y[i] = ay;
        acc_x[i] = ax;
        acc_m[i] = am;
      }
    }
    write_back(geo, task, plan, acc_y, acc_x, acc_m, goff, gos, gmask, gms);
  };
  return tasks;
}

}  // namespace

Tasks coord_grad_tasks(DType dtype, const Geometry& geo, const void* grad_columns,
                       ColumnStrides columns_s, const void* input, Strides4 input_s,
                       const void* offset, Strides4 offset_s, const void* mask, Strides4 mask_s,
                       void* grad_offset, Strides4 grad_offset_s, void* grad_mask,
                       Strides4 grad_mask_s, void* columns_out) {
  Tasks tasks;
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    tasks = coord_grad_impl<S>(geo, static_cast<const S*>(grad_columns), columns_s,
                               static_cast<const S*>(input), input_s,
                               static_cast<const S*>(offset), offset_s,
                               static_cast<const S*>(mask), mask_s, static_cast<S*>(grad_offset),
                               grad_offset_s, static_cast<S*>(grad_mask), grad_mask_s,
                               static_cast<S*>(columns_out));
  });
  return tasks;
}

void coord_grad(DType dtype, const Geometry& geo, const void* grad_columns,
                ColumnStrides columns_s, const void* input, Strides4 input_s, const void* offset,
                Strides4 offset_s, const void* mask, Strides4 mask_s, void* grad_offset,
                Strides4 grad_offset_s, void* grad_mask, Strides4 grad_mask_s,
                void* columns_out) {
  const Tasks tasks =
      coord_grad_tasks(dtype, geo, grad_columns, columns_s, input, input_s, offset, offset_s,
                       mask, mask_s, grad_offset, grad_offset_s, grad_mask, grad_mask_s,
                       columns_out);
  parallel_for(tasks.count, tasks.run);
  tasks.finish();
}

void col2im_and_coord_grad(DType dtype, const Geometry& geo, const void* grad_columns,
                           ColumnStrides columns_s, const void* input, Strides4 input_s,
                           const void* offset, Strides4 offset_s, const void* mask,
                           Strides4 mask_s, void* grad_input, Strides4 grad_input_s,
                           void* grad_offset, Strides4 grad_offset_s, void* grad_mask,
                           Strides4 grad_mask_s, void* columns_out) {
  // col2im's channel runs are not split further to give every thread a
  // task: coord_grad's tiles keep the other threads busy meanwhile, and the
  // split costs a shared plan pass (its own parallel region) and a scratch
  // per run. Same-process A/B, 2 threads: 1x64x32x32 0.90-0.92 -> 0.82 ms,
  // 1x128x32x32 1.36 -> 1.26 ms, 2x64x56x56 and 1x256x64x64 alike.
  const Tasks a = col2im_tasks(dtype, geo, grad_columns, columns_s, offset, offset_s, mask,
                               mask_s, grad_input, grad_input_s, false);
  const Tasks b =
      coord_grad_tasks(dtype, geo, grad_columns, columns_s, input, input_s, offset, offset_s,
                       mask, mask_s, grad_offset, grad_offset_s, grad_mask, grad_mask_s,
                       columns_out);
  // col2im's tasks first: they are few and long, and a core that finishes
  // one takes coord_grad's short tiles while another still scatters.
  parallel_for(a.count + b.count, [&](int64_t t) { t < a.count ? a.run(t) : b.run(t - a.count); });
  a.finish();
  b.finish();
}

}  // namespace dcn::cpu
