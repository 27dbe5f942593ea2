// Compile-only check that the shared sampling math builds as CUDA device
// code (DCN_FN = __host__ __device__) with 32- and 64-bit indices. CI runs
// `nvcc -c` on it on every commit; the CUDA kernels (core/cuda/) include the
// same header.
#include "dcn/sampling.h"

template <typename T, typename I>
__global__ void sample_all(const T* plane, I H, I W, const T* ys, const T* xs, T* out, I n) {
  const I i = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x);
  if (i >= n) return;
  const dcn::Corners<T, I> c =
      dcn::bilinear_corners<T, I>(ys[i], xs[i], H, W, W, I(1), T(1), true);
  T v = T(0);
  for (int q = 0; q < 4; ++q)
    if (c.valid >> q & 1u) v += c.w[q] * plane[c.idx[q]] + c.wy[q] + c.wx[q];
  out[i] = v + dcn::sample_coord<T, I>(i, I(1), I(0), I(0), I(1), T(0)) +
           T(dcn::conv_out_size<I>(H, I(3), I(1), I(1), I(1)));
}

template __global__ void sample_all<float, int>(const float*, int, int, const float*, const float*, float*, int);
template __global__ void sample_all<float, long long>(const float*, long long, long long, const float*, const float*, float*, long long);
template __global__ void sample_all<double, long long>(const double*, long long, long long, const double*, const double*, double*, long long);
