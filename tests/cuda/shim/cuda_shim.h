// Lets the unmodified CUDA sources of core/cuda compile as C++ (g++ or
// clang) and run on the CPU: force-included (-include cuda_shim.h) before
// them, with this directory first on the include path so that
// <cuda_runtime.h>, <cuda_fp16.h>, <cuda_bf16.h> and CUB's radix sort
// resolve to the stand-ins next to this file.
//
// What is emulated: the execution-space keywords (empty), the built-in
// thread indices (thread-local variables the launcher sets before running
// each emulated thread), kernel launches (DCN_LAUNCH: a grid of emulated
// threads, serial, shuffled or spread over host threads, see launch()),
// float/double atomicAdd (a compare-and-swap loop on the bits, so
// ThreadSanitizer sees real atomics), the stream API as synchronous host
// calls. The kernels use no shared memory, barriers or warp functions, so
// each emulated thread can run to completion on its own.
// Needs tests/emulation on the include path.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "dispatch.h"  // tests/emulation: the grid orders, shared with the Metal shim

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;

namespace dcn_emu {

using Mode = dcn_shim::Mode;
inline Mode mode = Mode::Serial;
inline int workers = 4;
inline unsigned seed = 1;
inline uint64_t launches = 0;

// Runs body() once per thread of a (blocks x threads) 1-D grid, with the
// built-in indices set, in the order `mode` says (tests/emulation/dispatch.h:
// serial, shuffled, or blocks spread over host threads).
inline void launch(unsigned blocks, unsigned threads, const std::function<void()>& body) {
  if (blocks == 0 || threads == 0 || threads > 1024) {
    std::fprintf(stderr, "emulated launch: bad configuration %u x %u\n", blocks, threads);
    std::abort();
  }
  ++launches;
  dcn_shim::dispatch_threads(
      uint64_t(blocks) * threads, threads, mode,
      [&](uint32_t t) {
        blockIdx = dim3(t / threads);
        threadIdx = dim3(t % threads);
        blockDim = dim3(threads);
        gridDim = dim3(blocks);
        body();
      },
      workers, seed + unsigned(launches));
}

template <typename T, typename U>
inline T atomic_add_bits(T* address, T value) {
  static_assert(sizeof(T) == sizeof(U), "bit type");
  U* bits = reinterpret_cast<U*>(address);
  U old = __atomic_load_n(bits, __ATOMIC_RELAXED);
  for (;;) {
    T cur;
    std::memcpy(&cur, &old, sizeof(T));
    const T next = cur + value;
    U next_bits;
    std::memcpy(&next_bits, &next, sizeof(T));
    if (__atomic_compare_exchange_n(bits, &old, next_bits, true, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED))
      return cur;
  }
}

}  // namespace dcn_emu

#define DCN_LAUNCH(kernel, blocks, threads, stream, ...) \
  ((void)(stream), dcn_emu::launch((blocks), (threads), [&] { kernel(__VA_ARGS__); }))

inline float atomicAdd(float* address, float value) {
  return dcn_emu::atomic_add_bits<float, uint32_t>(address, value);
}
inline double atomicAdd(double* address, double value) {
  return dcn_emu::atomic_add_bits<double, uint64_t>(address, value);
}
