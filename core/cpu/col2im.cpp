// Gradient w.r.t. input: the adjoint of im2col, a scatter of grad_columns
// into the four corners of every sample.
//
// Races are avoided by ownership, not atomics: a task owns a block of
// channel planes of one (image, offset group) and accumulates into them in a
// fixed (k, pixel) order, so the result is bitwise the same for any thread
// count and any run. The plan is computed once per (k, tile) for the whole
// block of channels.
#include <algorithm>
#include <atomic>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#include "channels_last.h"  // for_each_channel_run
#include "parallel.h"
#include "plan.h"
#include "scatter_runs.h"
#include "tasks.h"
#include "transpose.h"

namespace dcn::cpu {
namespace {

// Channels per block of the channels-last scatter. Measured (2 threads): 1x256x64x64
// 5.3 ms at 128 (12.6 at 32, 8.3 at 256; 6.6 channel-major); 8x64x56x56 1.4 ms/image.
constexpr int64_t kRunChannels = 128;
constexpr int64_t kMinRunChannels = 32;

// The scratch (H*W pixels, `block` floats apart, channels [0, nch)) into
// grad_input's layout, a tile of pixels at a time: the tile's rows of the
// scratch stay in L1 while each channel plane takes its run.
template <typename A>
void write_out(const A* scratch, int64_t block, int64_t nch, A* first_plane, Strides4 gs,
               int64_t H, int64_t W) {
  if (gs.x == 1 && gs.y == W) {
    // Contiguous planes (NCHW): the (H*W, nch) scratch transposed in 8x8
    // register tiles (transpose.h). 1x64x32x32: 0.10 -> 0.03 ms.
    return transpose(scratch, block, first_plane, gs.c, H * W, nch);
  }
  constexpr int64_t kOutTile = 32;
  int64_t at[kOutTile];
  for (int64_t p0 = 0; p0 < H * W; p0 += kOutTile) {
    const int64_t len = std::min(H * W - p0, kOutTile);
    for (int64_t i = 0; i < len; ++i) {
      const int64_t yy = (p0 + i) / W;
      at[i] = yy * gs.y + (p0 + i - yy * W) * gs.x;
    }
    const A* src = scratch + p0 * block;
    for (int64_t c = 0; c < nch; ++c) {
      A* plane = first_plane + c * gs.c;
      for (int64_t i = 0; i < len; ++i) plane[at[i]] = src[i * block + c];
    }
  }
}

template <typename S>
Tasks col2im_impl(const Geometry& geo, const S* gcol, ColumnStrides cs, const S* offset,
                  Strides4 os, const S* mask, Strides4 ms, acc_t<S>* grad, Strides4 gs,
                  bool split_for_threads) {
  using A = acc_t<S>;
  const int64_t cpg = geo.channels_per_offset_group();
  const int64_t K = geo.kernel_points();
  const int64_t P = geo.out_pixels();
  const int64_t tiles = ceil_div(P, kTile);
  // Enough channel blocks to keep every thread busy; the split only decides
  // who computes a plane, never the order in which a plane is summed.
  const int64_t outer = geo.batch * geo.offset_groups;
  const int64_t want = ceil_div(4 * int64_t(get_num_threads()), std::max<int64_t>(outer, 1));
  // Pixel-major columns (unit channel stride): a sample's column is a run
  // of channels (one per weight-group block the task's channels meet),
  // scattered as vectors into runs of channels of the image, in blocks of
  // up to kRunChannels. Into grad_input itself when its channels are
  // contiguous too (channels-last); otherwise into a per-task channels-last
  // scratch, written out in grad_input's layout at the end of the task,
  // which spares the caller a transposing copy (1x256x64x64: 2.5 ms with
  // torch).
  const bool runs = cs.c == 1;
  const bool channels_last = runs && gs.c == 1;
  const bool via_scratch = runs && gs.c != 1;
  // Runs: blocks of at most kRunChannels, and with fewer (image, group)
  // pairs than threads (one image, say) split further, down to
  // kMinRunChannels, so that every thread gets a block instead of waiting
  // for one core's scatter. 1x64x32x32 (2 threads), col2im alone: 0.44-0.49
  // -> 0.26-0.29 ms.
  const int64_t per_thread =
      split_for_threads ? ceil_div(int64_t(get_num_threads()), std::max<int64_t>(outer, 1)) : 1;
  // With weight groups smaller than the offset group (runs of cs.block
  // channels), a block per weight group: each task then scatters one run
  // into an image of its own channels only, which stays in cache, instead
  // of one pass per run over a wide image.
  const bool by_weight_group = runs && cs.block < cpg && cpg % cs.block == 0;
  const int64_t blocks =
      by_weight_group ? cpg / cs.block
      : runs          ? std::max(ceil_div(cpg, kRunChannels),
                                 std::min(ceil_div(cpg, kMinRunChannels), per_thread))
                      : std::min(cpg, std::max<int64_t>(want, 1));
  const int64_t block = ceil_div(cpg, blocks);
  // The image the scatter adds into: grad_input, or the scratch (H, W, block).
  const Strides4 is = via_scratch ? Strides4{0, 1, geo.width * block, block} : gs;

  // With several blocks per (image, group), build the plans once, in
  // parallel, and share them (otherwise each block would recompute all
  // K*P of them: measured ~25% of this kernel on 1x256x64x64).
  // Owned by the tasks (they outlive this call); uninitialised, as every
  // entry is written before it is read.
  const bool shared = blocks > 1;
  std::shared_ptr<PlanEntry<A>[]> plans;
  if (shared) {
    plans.reset(new PlanEntry<A>[size_t(outer * K * P)]);
    PlanEntry<A>* all = plans.get();
    parallel_for(outer * K * tiles, [&](int64_t t) {
      const int64_t tile = t % tiles;
      const int64_t k = (t / tiles) % K;
      const int64_t ng = t / (tiles * K);
      const TileTask task{ng / geo.offset_groups, ng % geo.offset_groups, k, tile * kTile,
                          std::min(P, (tile + 1) * kTile)};
      build_value_plan(geo, task, offset, os, mask, ms, is.y, is.x,
                       all + (ng * K + k) * P + task.p0);
    });
  }

  Tasks tasks;
  tasks.count = outer * blocks;
  auto out_of_memory = std::make_shared<std::atomic<bool>>(false);
  tasks.finish = [out_of_memory] {
    if (*out_of_memory) throw std::bad_alloc();
  };
  tasks.run = [=](int64_t t) {
    const int64_t b = t % blocks;
    const int64_t g = (t / blocks) % geo.offset_groups;
    const int64_t n = t / (blocks * geo.offset_groups);
    const int64_t cg0 = b * block;
    const int64_t cg1 = std::min(cpg, cg0 + block);
    if (cg0 >= cg1) return;
    const int64_t HW = geo.height * geo.width;
    std::unique_ptr<A[]> scratch;
    if (via_scratch) {
      scratch.reset(new (std::nothrow) A[size_t(HW * block)]);
      if (!scratch) {
        *out_of_memory = true;  // thrown by finish(), on the calling thread
        return;
      }
      std::fill_n(scratch.get(), HW * block, A(0));
    } else if (channels_last) {
      A* first = grad + n * gs.n + g * cpg + cg0;
      for (int64_t yy = 0; yy < geo.height; ++yy)
        for (int64_t xx = 0; xx < geo.width; ++xx)
          std::fill_n(first + yy * gs.y + xx * gs.x, cg1 - cg0, A(0));
    } else {
      for (int64_t cg = cg0; cg < cg1; ++cg) {
        A* plane = grad + n * gs.n + (g * cpg + cg) * gs.c;
        for (int64_t yy = 0; yy < geo.height; ++yy)
          for (int64_t xx = 0; xx < geo.width; ++xx) plane[yy * gs.y + xx * gs.x] = A(0);
      }
    }
    PlanEntry<A> local[kTile];
    const CornerOffsets co(is.y, is.x);
    const bool unit_x = gs.x == 1;
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t tile = 0; tile < tiles; ++tile) {
        TileTask task{n, g, k, tile * kTile, std::min(P, (tile + 1) * kTile)};
        const PlanEntry<A>* plan = local;
        if (shared) {
          plan = plans.get() + ((n * geo.offset_groups + g) * K + k) * P + task.p0;
        } else {
          build_value_plan(geo, task, offset, os, mask, ms, is.y, is.x, local);
        }
        const int64_t len = task.p1 - task.p0;
        if (runs) {
          // The same (k, pixel) order as below, so the same sums bit for bit.
          A* image = via_scratch ? scratch.get() : grad + n * gs.n + g * cpg + cg0;
          // One run per weight-group block: the columns' channels are
          // contiguous within a block only (each element still takes its
          // additions in (k, pixel) order, so the bits do not depend on it).
          for_each_channel_run(cs, g * cpg + cg0, g * cpg + cg1, [&](int64_t a, int64_t b) {
            A* dst = image + (a - g * cpg - cg0);
            const S* gc = gcol + n * cs.n + cs.channel(a) + k * cs.k + task.p0 * cs.p;
            if constexpr (std::is_same_v<S, float>)
              scatter_runs_f32(plan, len, dst, co, gc, cs.p, b - a);
            else
              scatter_runs(plan, len, dst, co, gc, cs.p, b - a);
          });
          continue;
        }
        // Blocks of channels per plan entry: independent read-modify-write
        // chains on different planes overlap in the pipeline.
        for (int64_t cb = cg0; cb < cg1; cb += kChannelBlock) {
          const int64_t nb = std::min(kChannelBlock, cg1 - cb);
          A* planes[kChannelBlock];
          const S* cols[kChannelBlock];
          for (int64_t j = 0; j < nb; ++j) {
            planes[j] = grad + n * gs.n + (g * cpg + cb + j) * gs.c;
            cols[j] = gcol + n * cs.n + cs.channel(g * cpg + cb + j) + k * cs.k + task.p0 * cs.p;
          }
          for (int64_t i = 0; i < len; ++i) {
            const PlanEntry<A> e = plan[i];
            if (e.valid == 0u) continue;
            const int64_t b = e.base;
            if (e.valid == 15u && nb == kChannelBlock && unit_x) {
              // Unit x stride: the two corners of a row are adjacent, and the
              // compiler pairs their read-modify-writes into one 8-byte access
              // (stores, not arithmetic, bound this loop).
              A gv[kChannelBlock];
              for (int64_t j = 0; j < kChannelBlock; ++j) gv[j] = A(load(cols[j][i * cs.p]));
              for (int64_t j = 0; j < kChannelBlock; ++j) {
                A* r0 = planes[j] + b;
                r0[0] += e.w[0] * gv[j];
                r0[1] += e.w[1] * gv[j];
              }
              for (int64_t j = 0; j < kChannelBlock; ++j) {
                A* r1 = planes[j] + b + gs.y;
                r1[0] += e.w[2] * gv[j];
                r1[1] += e.w[3] * gv[j];
              }
            } else if (e.valid == 15u && nb == kChannelBlock) {
              A gv[kChannelBlock];
              for (int64_t j = 0; j < kChannelBlock; ++j) gv[j] = A(load(cols[j][i * cs.p]));
              for (int q = 0; q < 4; ++q)
                for (int64_t j = 0; j < kChannelBlock; ++j) planes[j][b + co.at[q]] += e.w[q] * gv[j];
            } else {
              for (int64_t j = 0; j < nb; ++j) {
                const A gv = A(load(cols[j][i * cs.p]));
                for (int q = 0; q < 4; ++q)
                  if (e.valid >> q & 1u) planes[j][b + co.at[q]] += e.w[q] * gv;
              }
            }
          }
        }
      }
    }
    if (via_scratch)
      write_out(scratch.get(), block, cg1 - cg0, grad + n * gs.n + (g * cpg + cg0) * gs.c, gs,
                geo.height, geo.width);
  };
  return tasks;
}

}  // namespace

Tasks col2im_tasks(DType dtype, const Geometry& geo, const void* grad_columns,
                   ColumnStrides columns_s, const void* offset, Strides4 offset_s,
                   const void* mask, Strides4 mask_s, void* grad_input, Strides4 grad_input_s,
                   bool split_for_threads) {
  Tasks tasks;
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    tasks = col2im_impl<S>(geo, static_cast<const S*>(grad_columns), columns_s,
                           static_cast<const S*>(offset), offset_s, static_cast<const S*>(mask),
                           mask_s, static_cast<acc_t<S>*>(grad_input), grad_input_s,
                           split_for_threads);
  });
  return tasks;
}

void col2im(DType dtype, const Geometry& geo, const void* grad_columns, ColumnStrides columns_s,
            const void* offset, Strides4 offset_s, const void* mask, Strides4 mask_s,
            void* grad_input, Strides4 grad_input_s) {
  const Tasks tasks = col2im_tasks(dtype, geo, grad_columns, columns_s, offset, offset_s, mask,
                                   mask_s, grad_input, grad_input_s);
  parallel_for(tasks.count, tasks.run);
  tasks.finish();
}

}  // namespace dcn::cpu
