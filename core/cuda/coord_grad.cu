// Gradient w.r.t. offset and mask on CUDA: for each sample, the sum over
// its offset group's channels of grad_column times d(value)/d(dy, dx) and
// times the unmodulated value.
//
// One thread per (image, offset group, kernel point, output pixel) sums the
// channels in order with the CPU kernel's arithmetic (interior samples
// through dcn::interior_value_and_grad, border samples corner by corner), so
// the result is deterministic and equal to the CPU's. It reads every corner
// anyway, so it can also write the forward's columns (columns_out) for the
// weight gradient.
#include "common.cuh"

namespace dcn::cuda {
namespace {

using namespace detail;

template <typename S, typename I>
__global__ void coord_grad_kernel(Geo<I> g, const S* __restrict__ grad_columns, Cols<I> cs,
                                  const S* __restrict__ input, S4<I> is,
                                  const S* __restrict__ offset, S4<I> os,
                                  const S* __restrict__ mask, S4<I> ms, S* __restrict__ goff,
                                  S4<I> gos, S* __restrict__ gmask, S4<I> gms,
                                  S* __restrict__ columns_out, I total) {
  using A = acc_t<S>;
  for (I t = thread_index<I>(); t < total; t += thread_stride<I>()) {
    const Task<I> s = task_of(g, g.cpg, I(1), t);
    const SamplePoint<A> pt = sample_point<A>(g, s, offset, os, mask, ms);
    // Unmodulated weights: the mask scales the offset gradient at the end
    // and does not enter the mask's own gradient.
    const Corners<A, I> cr = bilinear_corners<A, I>(pt.y, pt.x, g.H, g.W, is.y, is.x, A(1), true);
    A wm[4];
    for (int q = 0; q < 4; ++q) wm[q] = pt.m * cr.w[q];
    const I col_at = s.n * cs.n + s.k * cs.k + s.p * cs.p;
    A ay = A(0), ax = A(0), am = A(0);
    if (cr.valid == 0u) {
      if (columns_out)
        for (I c = s.c0; c < s.c1; ++c) columns_out[col_at + cs.channel(c)] = store<S>(A(0));
    } else if (cr.valid == 15u) {
      // All four corners inside: interpolate along x, then y; the
      // derivatives fall out of the same differences.
      for (I c = s.c0; c < s.c1; ++c) {
        const S* plane = input + s.n * is.n + c * is.c;
        const A v0 = A(load(plane[cr.idx[0]])), v1 = A(load(plane[cr.idx[1]]));
        const A v2 = A(load(plane[cr.idx[2]])), v3 = A(load(plane[cr.idx[3]]));
        const A gv = A(load(grad_columns[col_at + cs.channel(c)]));
        const SampleGrad<A> r = interior_value_and_grad(v0, v1, v2, v3, cr.fy, cr.fx);
        ay += gv * r.dy;
        ax += gv * r.dx;
        am += gv * r.value;
        if (columns_out)
          columns_out[col_at + cs.channel(c)] =
              store<S>(weighted_sum4(wm[0], wm[1], wm[2], wm[3], v0, v1, v2, v3));
      }
    } else {
      for (I c = s.c0; c < s.c1; ++c) {
        const S* plane = input + s.n * is.n + c * is.c;
        A v[4];
        for (int q = 0; q < 4; ++q) v[q] = (cr.valid >> q & 1u) ? A(load(plane[cr.idx[q]])) : A(0);
        const A gv = A(load(grad_columns[col_at + cs.channel(c)]));
        const SampleGrad<A> r = corner_value_and_grad(cr, v[0], v[1], v[2], v[3]);
        ay += gv * r.dy;
        ax += gv * r.dx;
        am += gv * r.value;
        if (columns_out)
          columns_out[col_at + cs.channel(c)] =
              store<S>(border_column(cr, pt.m, v[0], v[1], v[2], v[3], A(0)));
      }
    }
    // A sample outside the gradient region has exactly 0 offset gradient,
    // even when its mask is NaN or inf (0 * NaN would say otherwise).
    const bool outside = cr.valid == 0u;
    const I at = s.n * gos.n + (s.g * 2 * g.K + 2 * s.k) * gos.c + s.oy * gos.y + s.ox * gos.x;
    goff[at] = store<S>(outside ? A(0) : pt.m * ay);
    goff[at + gos.c] = store<S>(outside ? A(0) : pt.m * ax);
    if (gmask)
      gmask[s.n * gms.n + (s.g * g.K + s.k) * gms.c + s.oy * gms.y + s.ox * gms.x] = store<S>(am);
  }
}

}  // namespace

void coord_grad(DType dtype, const Geometry& geo, const void* grad_columns,
                ColumnStrides columns_s, const void* input, Strides4 input_s, const void* offset,
                Strides4 offset_s, const void* mask, Strides4 mask_s, void* grad_offset,
                Strides4 grad_offset_s, void* grad_mask, Strides4 grad_mask_s,
                void* columns_out, Launch launch) {
  const int64_t total = geo.batch * geo.offset_groups * geo.kernel_points() * geo.out_pixels();
  if (total == 0) return;
  DeviceGuard guard(launch.device);
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    dispatch_index({total, image_extent(geo, input_s), offset_extent(geo, offset_s),
                    offset_extent(geo, grad_offset_s), mask_extent(geo, mask, mask_s),
                    mask_extent(geo, grad_mask, grad_mask_s), columns_extent(geo, columns_s)},
                   [&](auto itag) {
      using I = decltype(itag);
      auto* kernel = &coord_grad_kernel<S, I>;
      DCN_LAUNCH(kernel, blocks_for(total), kThreads, launch.stream, geo_as<I>(geo),
                 static_cast<const S*>(grad_columns), cols_as<I>(columns_s),
                 static_cast<const S*>(input), strides_as<I>(input_s),
                 static_cast<const S*>(offset), strides_as<I>(offset_s),
                 static_cast<const S*>(mask), strides_as<I>(mask_s), static_cast<S*>(grad_offset),
                 strides_as<I>(grad_offset_s), static_cast<S*>(grad_mask),
                 strides_as<I>(grad_mask_s), static_cast<S*>(columns_out), I(total));
    });
  });
  check(cudaGetLastError(), "coord_grad launch");
}

}  // namespace dcn::cuda
