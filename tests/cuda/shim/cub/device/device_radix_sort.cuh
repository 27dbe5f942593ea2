// Stand-in for CUB's DeviceRadixSort::SortPairs: a stable sort on the host
// with CUB's contract checked, so the emulation catches what the real radix
// sort would silently get wrong: a key with bits at or above end_bit (CUB
// ignores them), or scratch smaller than the size query returned.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <vector>

#include <cuda_runtime.h>

namespace cub {

struct DeviceRadixSort {
  static constexpr std::size_t kScratch = 16;

  template <typename K, typename V, typename N>
  static cudaError_t SortPairs(void* temp, std::size_t& temp_bytes, const K* keys_in,
                               K* keys_out, const V* values_in, V* values_out, N count,
                               int begin_bit = 0, int end_bit = int(sizeof(K) * 8),
                               cudaStream_t = nullptr) {
    if (temp == nullptr) {
      temp_bytes = kScratch;
      return cudaSuccess;
    }
    if (temp_bytes < kScratch || begin_bit != 0 || end_bit < 0 || end_bit > int(sizeof(K) * 8)) {
      std::fprintf(stderr, "cub shim: bad SortPairs arguments\n");
      std::abort();
    }
    const std::size_t n = std::size_t(count);
    for (std::size_t i = 0; i < n; ++i) {
      if (end_bit < int(sizeof(K) * 8) && (keys_in[i] >> end_bit) != 0) {
        std::fprintf(stderr, "cub shim: key %llu has bits above end_bit %d\n",
                     (unsigned long long)keys_in[i], end_bit);
        std::abort();
      }
    }
    std::vector<std::size_t> order(n);
    std::iota(order.begin(), order.end(), std::size_t(0));
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return keys_in[a] < keys_in[b]; });
    std::vector<K> k(n);
    std::vector<V> v(n);
    for (std::size_t i = 0; i < n; ++i) {
      k[i] = keys_in[order[i]];
      v[i] = values_in[order[i]];
    }
    std::copy(k.begin(), k.end(), keys_out);
    std::copy(v.begin(), v.end(), values_out);
    return cudaSuccess;
  }
};

}  // namespace cub
