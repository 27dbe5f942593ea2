// Forward sampling (deformable im2col) on CUDA: columns = mask * bilinear.
//
// One thread per (image, offset group, channel chunk, kernel point, output
// pixel): it reads the offsets and mask once, computes the corners once
// (dcn::bilinear_corners) and sweeps its channels, so the coordinate math is
// done once per sample, not once per channel as in torchvision's kernel.
#include "common.cuh"

namespace dcn::cuda {
namespace {

using namespace detail;

template <typename S, typename I>
__global__ void im2col_kernel(Geo<I> g, const S* __restrict__ input, S4<I> is,
                              const S* __restrict__ offset, S4<I> os, const S* __restrict__ mask,
                              S4<I> ms, S* __restrict__ columns, Cols<I> cs, I chunk, I chunks,
                              I total) {
  using A = acc_t<S>;
  for (I t = thread_index<I>(); t < total; t += thread_stride<I>()) {
    const Task<I> s = task_of(g, chunk, chunks, t);
    const SamplePoint<A> pt = sample_point<A>(g, s, offset, os, mask, ms);
    const Corners<A, I> cr = bilinear_corners<A, I>(pt.y, pt.x, g.H, g.W, is.y, is.x, pt.m, false);
    const unsigned valid = value_corners(cr);
    const S* image = input + s.n * is.n;
    S* out = columns + s.n * cs.n + s.k * cs.k + s.p * cs.p;
    for (I c = s.c0; c < s.c1; ++c) {
      const A v = valid != 0u ? gather<A>(cr, valid, image + c * is.c) : A(0);
      out[cs.channel(c)] = store<S>(v);
    }
  }
}

}  // namespace

void im2col(DType dtype, const Geometry& geo, const void* input, Strides4 input_s,
            const void* offset, Strides4 offset_s, const void* mask, Strides4 mask_s,
            void* columns, ColumnStrides columns_s, Launch launch) {
  const int64_t samples = geo.batch * geo.offset_groups * geo.kernel_points() * geo.out_pixels();
  if (samples == 0 || geo.channels == 0) return;
  DeviceGuard guard(launch.device);
  const ChannelSplit split = split_channels(samples, geo.channels_per_offset_group());
  const int64_t total = samples * split.chunks;
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    dispatch_index({total, image_extent(geo, input_s), offset_extent(geo, offset_s),
                    mask_extent(geo, mask, mask_s), columns_extent(geo, columns_s)},
                   [&](auto itag) {
      using I = decltype(itag);
      auto* kernel = &im2col_kernel<S, I>;
      DCN_LAUNCH(kernel, blocks_for(total), kThreads, launch.stream, geo_as<I>(geo),
                 static_cast<const S*>(input), strides_as<I>(input_s),
                 static_cast<const S*>(offset), strides_as<I>(offset_s),
                 static_cast<const S*>(mask), strides_as<I>(mask_s), static_cast<S*>(columns),
                 cols_as<I>(columns_s), I(split.chunk), I(split.chunks), I(total));
    });
  });
  check(cudaGetLastError(), "im2col launch");
}

}  // namespace dcn::cuda
