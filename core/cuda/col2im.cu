// Gradient w.r.t. input on CUDA: the adjoint of im2col, in two flavours.
//
// col2im (default): one thread per (image, offset group, channel chunk,
// kernel point, output pixel), corners computed once and swept over the
// chunk's channels, each contribution added with atomicAdd. Fast; the order
// of the adds, so the last bits, vary from run to run.
//
// col2im_deterministic: the scatter turned into a gather.
//   1. entries: every (sample, corner q) is entry e = sample*4 + q, keyed by
//      the input pixel it lands on ((n, g) plane and y*W + x; corners that
//      read nothing get a key past the end), its weight kept in weights[e];
//   2. a stable radix sort of (key, e): entries of one pixel become
//      contiguous and stay in e order, i.e. (kernel point, pixel, corner),
//      the order the CPU kernel adds in;
//   3. ranges: where each pixel's run starts and ends;
//   4. one thread per input element (n, c, y, x) sums its run in order.
// Every element is written by exactly one thread in a fixed order: the same
// bits every run, and the CPU kernel's bits.
#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"

namespace dcn::cuda {
namespace {

using namespace detail;

template <typename A, typename I>
__global__ void zero_kernel(Geo<I> g, A* __restrict__ out, S4<I> os, I total) {
  for (I t = thread_index<I>(); t < total; t += thread_stride<I>()) {
    I r = t;
    const I x = r % g.W;
    r /= g.W;
    const I y = r % g.H;
    r /= g.H;
    const I c = r % g.C;
    const I n = r / g.C;
    out[n * os.n + c * os.c + y * os.y + x * os.x] = A(0);
  }
}

template <typename S, typename I>
__global__ void col2im_atomic_kernel(Geo<I> g, const S* __restrict__ grad_columns, Cols<I> cs,
                                     const S* __restrict__ offset, S4<I> os,
                                     const S* __restrict__ mask, S4<I> ms,
                                     acc_t<S>* __restrict__ grad_input, S4<I> gs, I chunk,
                                     I chunks, I total) {
  using A = acc_t<S>;
  for (I t = thread_index<I>(); t < total; t += thread_stride<I>()) {
    const Task<I> s = task_of(g, chunk, chunks, t);
    const SamplePoint<A> pt = sample_point<A>(g, s, offset, os, mask, ms);
    const Corners<A, I> cr = bilinear_corners<A, I>(pt.y, pt.x, g.H, g.W, gs.y, gs.x, pt.m, false);
    const unsigned valid = value_corners(cr);
    if (valid == 0u) continue;
    const S* gcol = grad_columns + s.n * cs.n + s.k * cs.k + s.p * cs.p;
    A* image = grad_input + s.n * gs.n;
    for (I c = s.c0; c < s.c1; ++c) {
      const A gv = A(load(gcol[cs.channel(c)]));
      A* plane = image + c * gs.c;
      for (int q = 0; q < 4; ++q)
        if (valid >> q & 1u) atomicAdd(plane + cr.idx[q], cr.w[q] * gv);
    }
  }
}

// Step 1: four entries per sample (one thread per sample, p fastest).
template <typename S, typename I>
__global__ void entries_kernel(Geo<I> g, const S* __restrict__ offset, S4<I> os,
                               const S* __restrict__ mask, S4<I> ms, uint32_t* __restrict__ keys,
                               uint32_t* __restrict__ ids, acc_t<S>* __restrict__ weights,
                               uint32_t past_end, I total) {
  using A = acc_t<S>;
  for (I t = thread_index<I>(); t < total; t += thread_stride<I>()) {
    const Task<I> s = task_of(g, I(1), I(1), t);
    const SamplePoint<A> pt = sample_point<A>(g, s, offset, os, mask, ms);
    // Strides (W, 1): idx[q] is the corner's pixel index y*W + x.
    const Corners<A, I> cr = bilinear_corners<A, I>(pt.y, pt.x, g.H, g.W, g.W, I(1), pt.m, false);
    const unsigned valid = value_corners(cr);
    const uint32_t plane = uint32_t((s.n * g.G + s.g) * g.H * g.W);
    for (int q = 0; q < 4; ++q) {
      const I e = t * 4 + q;
      keys[e] = (valid >> q & 1u) ? plane + uint32_t(cr.idx[q]) : past_end;
      ids[e] = uint32_t(e);
      weights[e] = cr.w[q];
    }
  }
}

// Step 3: run boundaries of the sorted keys (each written once).
template <typename I>
__global__ void ranges_kernel(const uint32_t* __restrict__ keys, uint32_t past_end,
                              uint32_t* __restrict__ start, uint32_t* __restrict__ end, I total) {
  for (I i = thread_index<I>(); i < total; i += thread_stride<I>()) {
    const uint32_t key = keys[i];
    if (key == past_end) continue;
    if (i == 0 || keys[i - 1] != key) start[key] = uint32_t(i);
    if (i == total - 1 || keys[i + 1] != key) end[key] = uint32_t(i + 1);
  }
}

// Step 4: one thread per input element, pixels fastest.
template <typename S, typename I>
__global__ void gather_kernel(Geo<I> g, const S* __restrict__ grad_columns, Cols<I> cs,
                              const uint32_t* __restrict__ ids,
                              const acc_t<S>* __restrict__ weights,
                              const uint32_t* __restrict__ start,
                              const uint32_t* __restrict__ end, acc_t<S>* __restrict__ grad_input,
                              S4<I> gs, I total) {
  using A = acc_t<S>;
  const I HW = g.H * g.W;
  for (I t = thread_index<I>(); t < total; t += thread_stride<I>()) {
    const I pix = t % HW;
    const I c = (t / HW) % g.C;
    const I n = t / (HW * g.C);
    const uint32_t key = uint32_t((n * g.G + c / g.cpg) * HW + pix);
    const S* gcol = grad_columns + n * cs.n + cs.channel(c);
    A acc = A(0);
    for (uint32_t i = start[key]; i < end[key]; ++i) {
      const uint32_t e = ids[i];
      const I sample = I(e / 4u);
      const I p = sample % g.P;
      const I k = (sample / g.P) % g.K;
      acc += weights[e] * A(load(gcol[k * cs.k + p * cs.p]));
    }
    const I y = pix / g.W;
    grad_input[n * gs.n + c * gs.c + y * gs.y + (pix - y * g.W) * gs.x] = acc;
  }
}

// Bytes of each scratch array, 256-byte aligned, in the order they sit in
// the workspace.
struct Scratch {
  int64_t entries = 0, pixels = 0;
  int bits = 0;
  uint32_t past_end = 0;
  std::size_t keys_in = 0, keys_out = 0, ids_in = 0, ids_out = 0, weights = 0, start = 0,
              end = 0, sort = 0, sort_bytes = 0, total = 0;
};

std::size_t align256(std::size_t b) { return (b + 255) / 256 * 256; }

Scratch scratch_layout(DType dtype, const Geometry& geo, int device) {
  Scratch s;
  s.entries = 4 * geo.batch * geo.offset_groups * geo.kernel_points() * geo.out_pixels();
  s.pixels = geo.batch * geo.offset_groups * geo.height * geo.width;
  // Entry ids are uint32 and CUB's item count an int; pixel keys are uint32
  // with one value past the end. The frontend chunks batches to stay inside.
  if (s.entries >= (int64_t(1) << 31) || s.pixels >= (int64_t(1) << 32) - 1)
    throw std::invalid_argument(
        "dcn: batch chunk too large for the deterministic CUDA col2im (4*N*G*kh*kw*out_h*out_w "
        "must be < 2^31 and N*G*H*W < 2^32 - 1); process fewer images at a time");
  s.past_end = uint32_t(s.pixels);
  while (s.bits < 32 && (uint64_t(1) << s.bits) <= uint64_t(s.past_end)) ++s.bits;
  const std::size_t e = std::size_t(s.entries);
  const std::size_t acc = dtype == DType::Float64 ? sizeof(double) : sizeof(float);
  std::size_t at = 0;
  auto take = [&](std::size_t bytes) {
    const std::size_t here = at;
    at += align256(bytes);
    return here;
  };
  s.keys_in = take(e * 4);
  s.keys_out = take(e * 4);
  s.ids_in = take(e * 4);
  s.ids_out = take(e * 4);
  s.weights = take(e * acc);
  s.start = take(std::size_t(s.pixels) * 4);
  s.end = take(std::size_t(s.pixels) * 4);
  if (s.entries > 0) {
    DeviceGuard guard(device);
    check(cub::DeviceRadixSort::SortPairs(nullptr, s.sort_bytes, (const uint32_t*)nullptr,
                                          (uint32_t*)nullptr, (const uint32_t*)nullptr,
                                          (uint32_t*)nullptr, int(s.entries), 0, s.bits),
          "radix sort size query");
  }
  s.sort = take(s.sort_bytes);
  s.total = at;
  return s;
}

template <typename T>
T* at(void* base, std::size_t offset) {
  return static_cast<T*>(static_cast<void*>(static_cast<char*>(base) + offset));
}

}  // namespace

void col2im(DType dtype, const Geometry& geo, const void* grad_columns, ColumnStrides columns_s,
            const void* offset, Strides4 offset_s, const void* mask, Strides4 mask_s,
            void* grad_input, Strides4 grad_input_s, Launch launch) {
  const int64_t elements = geo.batch * geo.channels * geo.height * geo.width;
  if (elements == 0) return;
  DeviceGuard guard(launch.device);
  const int64_t samples = geo.batch * geo.offset_groups * geo.kernel_points() * geo.out_pixels();
  const ChannelSplit split = split_channels(samples, geo.channels_per_offset_group());
  const int64_t total = samples * split.chunks;
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    using A = acc_t<S>;
    dispatch_index({total, elements, image_extent(geo, grad_input_s),
                    offset_extent(geo, offset_s), mask_extent(geo, mask, mask_s),
                    columns_extent(geo, columns_s)},
                   [&](auto itag) {
      using I = decltype(itag);
      auto* zero = &zero_kernel<A, I>;
      DCN_LAUNCH(zero, blocks_for(elements), kThreads, launch.stream, geo_as<I>(geo),
                 static_cast<A*>(grad_input), strides_as<I>(grad_input_s), I(elements));
      if (total == 0) return;
      auto* kernel = &col2im_atomic_kernel<S, I>;
      DCN_LAUNCH(kernel, blocks_for(total), kThreads, launch.stream, geo_as<I>(geo),
                 static_cast<const S*>(grad_columns), cols_as<I>(columns_s),
                 static_cast<const S*>(offset), strides_as<I>(offset_s),
                 static_cast<const S*>(mask), strides_as<I>(mask_s), static_cast<A*>(grad_input),
                 strides_as<I>(grad_input_s), I(split.chunk), I(split.chunks), I(total));
    });
  });
  check(cudaGetLastError(), "col2im launch");
}

std::size_t col2im_deterministic_workspace(DType dtype, const Geometry& geo, int device) {
  return scratch_layout(dtype, geo, device).total;
}

void col2im_deterministic(DType dtype, const Geometry& geo, const void* grad_columns,
                          ColumnStrides columns_s, const void* offset, Strides4 offset_s,
                          const void* mask, Strides4 mask_s, void* grad_input,
                          Strides4 grad_input_s, void* workspace, std::size_t workspace_bytes,
                          Launch launch) {
  const int64_t elements = geo.batch * geo.channels * geo.height * geo.width;
  if (elements == 0) return;
  const Scratch sc = scratch_layout(dtype, geo, launch.device);
  if (workspace_bytes < sc.total || (sc.total > 0 && workspace == nullptr))
    throw std::invalid_argument("dcn: col2im_deterministic: workspace of " +
                                std::to_string(workspace_bytes) + " bytes, needs " +
                                std::to_string(sc.total));
  DeviceGuard guard(launch.device);
  const cudaStream_t stream = static_cast<cudaStream_t>(launch.stream);
  const int64_t samples = sc.entries / 4;
  uint32_t* keys_in = at<uint32_t>(workspace, sc.keys_in);
  uint32_t* keys_out = at<uint32_t>(workspace, sc.keys_out);
  uint32_t* ids_in = at<uint32_t>(workspace, sc.ids_in);
  uint32_t* ids_out = at<uint32_t>(workspace, sc.ids_out);
  uint32_t* start = at<uint32_t>(workspace, sc.start);
  uint32_t* end = at<uint32_t>(workspace, sc.end);
  // Pixels no entry lands on keep the empty run [0, 0).
  check(cudaMemsetAsync(start, 0, std::size_t(sc.pixels) * 4, stream), "memset");
  check(cudaMemsetAsync(end, 0, std::size_t(sc.pixels) * 4, stream), "memset");
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    using A = acc_t<S>;
    A* weights = at<A>(workspace, sc.weights);
    dispatch_index({sc.entries, sc.pixels, elements, image_extent(geo, grad_input_s),
                    offset_extent(geo, offset_s), mask_extent(geo, mask, mask_s),
                    columns_extent(geo, columns_s)},
                   [&](auto itag) {
      using I = decltype(itag);
      if (samples > 0) {
        auto* entries = &entries_kernel<S, I>;
        DCN_LAUNCH(entries, blocks_for(samples), kThreads, launch.stream, geo_as<I>(geo),
                   static_cast<const S*>(offset), strides_as<I>(offset_s),
                   static_cast<const S*>(mask), strides_as<I>(mask_s), keys_in, ids_in, weights,
                   sc.past_end, I(samples));
        std::size_t sort_bytes = sc.sort_bytes;
        check(cub::DeviceRadixSort::SortPairs(at<void>(workspace, sc.sort), sort_bytes, keys_in,
                                              keys_out, ids_in, ids_out, int(sc.entries), 0,
                                              sc.bits, stream),
              "radix sort");
        auto* ranges = &ranges_kernel<I>;
        DCN_LAUNCH(ranges, blocks_for(sc.entries), kThreads, launch.stream, keys_out,
                   sc.past_end, start, end, I(sc.entries));
      }
      auto* gather = &gather_kernel<S, I>;
      DCN_LAUNCH(gather, blocks_for(elements), kThreads, launch.stream, geo_as<I>(geo),
                 static_cast<const S*>(grad_columns), cols_as<I>(columns_s), ids_out, weights,
                 start, end, static_cast<A*>(grad_input), strides_as<I>(grad_input_s),
                 I(elements));
    });
  });
  check(cudaGetLastError(), "col2im_deterministic launch");
}

}  // namespace dcn::cuda
