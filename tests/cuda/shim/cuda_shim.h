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

enum class Mode { Serial, Shuffled, Parallel };
inline Mode mode = Mode::Serial;
inline int workers = 4;
inline unsigned seed = 1;
inline uint64_t launches = 0;

// Runs body() once per thread of a (blocks x threads) 1-D grid, with the
// built-in indices set.
inline void launch(unsigned blocks, unsigned threads, const std::function<void()>& body) {
  if (blocks == 0 || threads == 0 || threads > 1024) {
    std::fprintf(stderr, "emulated launch: bad configuration %u x %u\n", blocks, threads);
    std::abort();
  }
  ++launches;
  const uint64_t total = uint64_t(blocks) * threads;
  auto run = [&](uint64_t t) {
    blockIdx = dim3(unsigned(t / threads));
    threadIdx = dim3(unsigned(t % threads));
    blockDim = dim3(threads);
    gridDim = dim3(blocks);
    body();
  };
  switch (mode) {
    case Mode::Serial:
      for (uint64_t t = 0; t < total; ++t) run(t);
      break;
    case Mode::Shuffled: {
      std::vector<uint64_t> order(total);
      std::iota(order.begin(), order.end(), uint64_t(0));
      std::mt19937 rng(seed + unsigned(launches));
      std::shuffle(order.begin(), order.end(), rng);
      for (uint64_t t : order) run(t);
      break;
    }
    case Mode::Parallel: {
      // Block b runs on worker b % workers; all workers start together and
      // the start line creates no happens-before edge (relaxed), so
      // ThreadSanitizer reports any unsynchronised access two blocks share.
      std::atomic<int> started{0};
      auto work = [&](int w) {
        started.fetch_add(1, std::memory_order_relaxed);
        while (started.load(std::memory_order_relaxed) < workers) std::this_thread::yield();
        for (uint64_t b = uint64_t(w); b < blocks; b += uint64_t(workers))
          for (uint64_t t = b * threads; t < (b + 1) * threads; ++t) run(t);
      };
      std::vector<std::thread> pool;
      for (int w = 0; w < workers; ++w) pool.emplace_back(work, w);
      for (auto& th : pool) th.join();
      break;
    }
  }
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
