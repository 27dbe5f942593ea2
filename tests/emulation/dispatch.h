// Emulated GPU grid dispatch for kernels compiled through the Metal shim
// (tests/metal) or the CUDA shim (tests/cuda).
//
// dispatch_threads(total, group, mode, fn) calls fn(gid) for every thread of
// a 1-D grid rounded up to whole threadgroups (as dispatchThreadgroups does),
// so the kernels' own `gid >= count` guards are exercised:
//   Serial   - in order, on the calling thread
//   Shuffled - every thread once, in a seeded random order (a kernel that
//              depends on thread order disagrees with itself)
//   Parallel - threadgroups spread round-robin over several host threads,
//              so atomics really contend (run this under ThreadSanitizer)
// None of the kernels uses threadgroup memory, barriers or simd functions,
// so a host thread per GPU thread is never needed.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

namespace dcn_shim {

enum class Mode { Serial, Shuffled, Parallel };

inline const char* mode_name(Mode m) {
  return m == Mode::Serial ? "serial" : m == Mode::Shuffled ? "shuffled" : "parallel";
}

template <typename Fn>
void dispatch_threads(uint64_t total, uint32_t group, Mode mode, Fn&& fn, int workers = 4,
                      uint32_t seed = 1) {
  if (group == 0 || group > 1024) {
    std::fprintf(stderr, "dispatch: threadgroup size %u outside 1..1024\n", group);
    std::abort();
  }
  const uint64_t groups = (total + group - 1) / group;
  const uint64_t grid = groups * group;
  if (grid > 0xffffffffull) {
    std::fprintf(stderr, "dispatch: grid of %llu threads exceeds uint\n",
                 (unsigned long long)grid);
    std::abort();
  }
  switch (mode) {
    case Mode::Serial:
      for (uint64_t t = 0; t < grid; ++t) fn(uint32_t(t));
      break;
    case Mode::Shuffled: {
      std::vector<uint32_t> order(grid);
      std::iota(order.begin(), order.end(), 0u);
      std::mt19937 rng(seed);
      std::shuffle(order.begin(), order.end(), rng);
      for (uint32_t t : order) fn(t);
      break;
    }
    case Mode::Parallel: {
      // Threadgroup g runs on worker g % workers, and every worker waits
      // until all have started, so neighbouring groups really run on
      // different host threads. The start line and the hand-out are
      // relaxed atomics: they create no happens-before edge, so
      // ThreadSanitizer reports any access two groups make to the same
      // memory without atomics, however the threads happen to interleave.
      std::atomic<int> started{0};
      auto work = [&](int w) {
        started.fetch_add(1, std::memory_order_relaxed);
        while (started.load(std::memory_order_relaxed) < workers) std::this_thread::yield();
        for (uint64_t g = uint64_t(w); g < groups; g += uint64_t(workers))
          for (uint64_t t = g * group; t < (g + 1) * group; ++t) fn(uint32_t(t));
      };
      std::vector<std::thread> pool;
      for (int w = 0; w < workers; ++w) pool.emplace_back(work, w);
      for (auto& th : pool) th.join();
      break;
    }
  }
}

}  // namespace dcn_shim
