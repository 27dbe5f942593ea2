// Device-side pieces shared by the CUDA kernels: storage types, the index
// type chosen per launch, the per-sample coordinate read, and the launch and
// error plumbing. The sampling math itself is dcn/sampling.h (shared with
// the CPU and Metal kernels); nothing here re-derives corners or weights.
//
// The kernels are plain CUDA without shared memory, warp intrinsics or
// barriers, so tests/cuda/shim can compile these unmodified sources as C++
// and run them over an emulated grid on the CPU (DCN_LAUNCH below is the one
// hook it replaces).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "dcn/cuda.h"
#include "dcn/sampling.h"

// kernel<<<blocks, threads, 0, stream>>>(args...). `kernel` is a plain name
// (a function pointer for a template instance) so the macro's commas stay
// unambiguous.
#ifndef DCN_LAUNCH
#define DCN_LAUNCH(kernel, blocks, threads, stream, ...) \
  kernel<<<(blocks), (threads), 0, static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__)
#endif

namespace dcn::cuda::detail {

// ---- storage and accumulation types ----------------------------------------
template <typename S> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename S> using acc_t = typename Acc<S>::type;

__host__ __device__ __forceinline__ float load(float v) { return v; }
__host__ __device__ __forceinline__ double load(double v) { return v; }
__host__ __device__ __forceinline__ float load(__half v) { return __half2float(v); }
__host__ __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename S> struct Store;
template <> struct Store<float> {
  __host__ __device__ static __forceinline__ float from(float v) { return v; }
};
template <> struct Store<double> {
  __host__ __device__ static __forceinline__ double from(double v) { return v; }
};
template <> struct Store<__half> {
  __host__ __device__ static __forceinline__ __half from(float v) { return __float2half_rn(v); }
};
template <> struct Store<__nv_bfloat16> {
  __host__ __device__ static __forceinline__ __nv_bfloat16 from(float v) {
    return __float2bfloat16_rn(v);
  }
};
template <typename S>
__host__ __device__ __forceinline__ S store(acc_t<S> v) { return Store<S>::from(v); }

// Calls fn(storage_tag) for a DType.
template <typename Fn>
void dispatch_storage(DType d, Fn&& fn) {
  switch (d) {
    case DType::Float32: fn(float{}); break;
    case DType::Float64: fn(double{}); break;
    case DType::Float16: fn(__half{}); break;
    case DType::BFloat16: fn(__nv_bfloat16{}); break;
    default: throw std::invalid_argument("dcn: unsupported dtype");
  }
}

// ---- index type ---------------------------------------------------------------
// Geometry and strides in the launch's index type I (int32_t or int64_t).
template <typename I>
struct Geo {
  I N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, G, Ho, Wo;
  I K, P, cpg;  // kernel points, output pixels, channels per offset group
};

template <typename I>
struct S4 {
  I n, c, y, x;
};

template <typename I>
struct Cols {
  I n, block_stride, c, k, p, block;
  __host__ __device__ __forceinline__ I channel(I ch) const {
    return (ch / block) * block_stride + (ch % block) * c;
  }
};

template <typename I>
Geo<I> geo_as(const Geometry& g) {
  return Geo<I>{I(g.batch), I(g.channels), I(g.height), I(g.width), I(g.kernel_h),
                I(g.kernel_w), I(g.stride_h), I(g.stride_w), I(g.pad_h), I(g.pad_w),
                I(g.dilation_h), I(g.dilation_w), I(g.offset_groups), I(g.out_h), I(g.out_w),
                I(g.kernel_points()), I(g.out_pixels()), I(g.channels_per_offset_group())};
}
template <typename I>
S4<I> strides_as(Strides4 s) { return S4<I>{I(s.n), I(s.c), I(s.y), I(s.x)}; }
template <typename I>
Cols<I> cols_as(ColumnStrides s) {
  return Cols<I>{I(s.n), I(s.block_stride), I(s.c), I(s.k), I(s.p), I(s.block)};
}

// Largest |element offset| + 1 of each array a kernel touches, from the
// geometry and its strides (0 for an absent array): the launch uses 32-bit
// indices only when all of them fit.
inline int64_t extent4(const int64_t (&shape)[4], Strides4 s) {
  const int64_t st[4] = {s.n, s.c, s.y, s.x};
  int64_t e = 0;
  for (int i = 0; i < 4; ++i) {
    if (shape[i] == 0) return 0;
    e += (shape[i] - 1) * (st[i] < 0 ? -st[i] : st[i]);
  }
  return e + 1;
}
// (N, C, H, W): input and grad_input
inline int64_t image_extent(const Geometry& g, Strides4 s) {
  const int64_t shape[4] = {g.batch, g.channels, g.height, g.width};
  return extent4(shape, s);
}
// (N, 2*G*K, Ho, Wo): offset and grad_offset
inline int64_t offset_extent(const Geometry& g, Strides4 s) {
  const int64_t shape[4] = {g.batch, 2 * g.offset_groups * g.kernel_points(), g.out_h, g.out_w};
  return extent4(shape, s);
}
// (N, G*K, Ho, Wo): mask and grad_mask, when present
inline int64_t mask_extent(const Geometry& g, const void* mask, Strides4 s) {
  const int64_t shape[4] = {g.batch, g.offset_groups * g.kernel_points(), g.out_h, g.out_w};
  return mask ? extent4(shape, s) : 0;
}
// (N, C, K, P) columns
inline int64_t columns_extent(const Geometry& g, ColumnStrides s) {
  if (g.batch == 0) return 0;
  const int64_t blocks = (g.channels + s.block - 1) / s.block;
  return (g.batch - 1) * s.n + (blocks - 1) * s.block_stride + (s.block - 1) * s.c +
         (g.kernel_points() - 1) * s.k + (g.out_pixels() - 1) * s.p + 1;
}

// Calls fn(int32_t{}) when every value in `sizes` (extents and thread
// counts) fits in int32 with room for a grid-stride step, else fn(int64_t{}).
// (The CPU emulation lowers the limit to run the 64-bit path on tiny cases.)
#ifndef DCN_CUDA_INT32_LIMIT
#define DCN_CUDA_INT32_LIMIT (int64_t(1) << 30)
#endif
template <typename Fn>
void dispatch_index(std::initializer_list<int64_t> sizes, Fn&& fn) {
  bool small = true;
  for (int64_t s : sizes) small = small && s < int64_t(DCN_CUDA_INT32_LIMIT);
  if (small) fn(int32_t{});
  else fn(int64_t{});
}

// ---- threads -------------------------------------------------------------------
constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `total` items: enough to fill an H200
// several times over; the loop covers the rest. (The CPU emulation lowers
// the cap so the grid-stride steps run on tiny cases too.)
#ifndef DCN_CUDA_MAX_BLOCKS
#define DCN_CUDA_MAX_BLOCKS 65535
#endif
inline unsigned blocks_for(int64_t total) {
  const int64_t b = (total + kThreads - 1) / kThreads;
  const int64_t cap = DCN_CUDA_MAX_BLOCKS;
  return unsigned(b < 1 ? 1 : (b > cap ? cap : b));
}

template <typename I>
__device__ __forceinline__ I thread_index() {
  return I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x);
}
template <typename I>
__device__ __forceinline__ I thread_stride() {
  return I(blockDim.x) * I(gridDim.x);
}

// ---- one sample -------------------------------------------------------------------
// (image n, offset group g, kernel point k, output pixel p) and the channel
// range [c0, c1) a thread sweeps.
template <typename I>
struct Task {
  I n, g, k, p, oy, ox, c0, c1;
};

// Thread t of a grid over (n, g, channel chunk, k, p), p fastest: neighbouring
// threads read neighbouring offsets and write neighbouring columns (torch's
// column layout has unit pixel stride). `chunks` chunks of `chunk` channels
// split each offset group's channels when there are too few samples to fill
// the GPU; chunks == 1 sweeps the whole group.
template <typename I>
__device__ __forceinline__ Task<I> task_of(const Geo<I>& g, I chunk, I chunks, I t) {
  Task<I> s;
  s.p = t % g.P;
  t /= g.P;
  s.k = t % g.K;
  t /= g.K;
  const I cb = t % chunks;
  t /= chunks;
  s.g = t % g.G;
  s.n = t / g.G;
  s.oy = s.p / g.Wo;
  s.ox = s.p - s.oy * g.Wo;
  s.c0 = s.g * g.cpg + cb * chunk;
  const I end = (s.g + 1) * g.cpg;
  s.c1 = s.c0 + chunk < end ? s.c0 + chunk : end;
  return s;
}

// Channel split for `samples` = N*G*K*P sampling threads: aim for ~2^18
// threads in flight, never a chunk of zero channels.
struct ChannelSplit {
  int64_t chunk, chunks;
};
inline ChannelSplit split_channels(int64_t samples, int64_t cpg) {
  const int64_t target = int64_t(1) << 18;
  int64_t want = samples > 0 ? (target + samples - 1) / samples : 1;
  want = want < 1 ? 1 : (want > cpg ? cpg : want);
  const int64_t chunk = (cpg + want - 1) / want;
  return ChannelSplit{chunk, (cpg + chunk - 1) / chunk};
}

// Sample coordinates (y, x) and mask value m (1 without a mask) of a task,
// in the accumulation type, exactly as the CPU's for_each_sample forms them.
template <typename A>
struct SamplePoint {
  A y, x, m;
};

template <typename A, typename S, typename I>
__device__ __forceinline__ SamplePoint<A> sample_point(const Geo<I>& g, const Task<I>& s,
                                                       const S* offset, S4<I> os,
                                                       const S* mask, S4<I> ms) {
  const I ki = s.k / g.kw;
  const I kj = s.k - ki * g.kw;
  const I at = s.n * os.n + (s.g * 2 * g.K + 2 * s.k) * os.c + s.oy * os.y + s.ox * os.x;
  const A dy = A(load(offset[at]));
  const A dx = A(load(offset[at + os.c]));
  SamplePoint<A> r;
  r.m = mask ? A(load(mask[s.n * ms.n + (s.g * g.K + s.k) * ms.c + s.oy * ms.y + s.ox * ms.x]))
             : A(1);
  r.y = sample_coord<A, I>(s.oy, g.sh, g.ph, ki, g.dh, dy);
  r.x = sample_coord<A, I>(s.ox, g.sw, g.pw, kj, g.dw, dx);
  return r;
}

// The corners a value (im2col, col2im) reads or writes: none outside the
// forward's region or when every weight is 0 (mask == 0), so an inf/NaN
// pixel never leaks in as 0 * inf. The CPU plan's rule (core/cpu/plan.h).
template <typename A, typename I>
__host__ __device__ __forceinline__ unsigned value_corners(const Corners<A, I>& c) {
  return (c.w[0] != A(0) || c.w[1] != A(0) || c.w[2] != A(0) || c.w[3] != A(0)) ? c.valid : 0u;
}

// sum over the valid corners of w[q] * plane[idx[q]], in corner order: the
// CPU gather's arithmetic, so columns agree bit for bit.
template <typename A, typename S, typename I>
__device__ __forceinline__ A gather(const Corners<A, I>& c, unsigned valid, const S* plane) {
  if (valid == 15u)
    return weighted_sum4(c.w[0], c.w[1], c.w[2], c.w[3], A(load(plane[c.idx[0]])),
                         A(load(plane[c.idx[1]])), A(load(plane[c.idx[2]])),
                         A(load(plane[c.idx[3]])));
  A v = A(0);
  for (int q = 0; q < 4; ++q)
    if (valid >> q & 1u) v += c.w[q] * A(load(plane[c.idx[q]]));
  return v;
}

// ---- host plumbing --------------------------------------------------------------------
inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("dcn: CUDA error in ") + what + ": " +
                             cudaGetErrorString(e));
}

// Makes `device` current for the calls in scope and restores the caller's.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
    restore_ = previous_ != device;
  }
  ~DeviceGuard() {
    if (restore_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool restore_ = false;
};

}  // namespace dcn::cuda::detail
