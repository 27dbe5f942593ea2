// Matrix transposes in 8x8 register tiles, shared by the channels-last
// copies (channels_last_copy.cpp) and col2im's write-out of its
// channels-last scratch (col2im.cpp): eight rows' runs of eight elements are
// read and written as eight runs of eight the other way, so both sides move
// whole vectors and the tile stays in registers.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace dcn::cpu {

constexpr int64_t kTransposeTile = 8;  // rows x columns of one register tile

// T is an unsigned integer as wide as the element: a transpose moves bits
// only. The memory may hold floats (or halves), so every access is a
// memcpy, which the aliasing rules allow (and compilers turn into a move).
template <typename T>
inline void move_element(T* dst, const T* src) {
  std::memcpy(dst, src, sizeof(T));
}

// dst[j * dst_row + i] = src[i * src_row + j] for i, j < kTransposeTile.
template <typename T>
inline void transpose_tile(const T* __restrict src, int64_t src_row, T* __restrict dst,
                           int64_t dst_row) {
  T tile[kTransposeTile][kTransposeTile];
  for (int64_t i = 0; i < kTransposeTile; ++i)
    for (int64_t j = 0; j < kTransposeTile; ++j) move_element(&tile[i][j], src + i * src_row + j);
  for (int64_t j = 0; j < kTransposeTile; ++j)
    for (int64_t i = 0; i < kTransposeTile; ++i) move_element(dst + j * dst_row + i, &tile[i][j]);
}

// 32-bit elements: the tile as eight 8-lane vectors, transposed by the usual
// three rounds of two-vector shuffles (interleave pairs, then pairs of
// pairs, then halves), which compilers map onto unpack/shuffle/permute
// instructions; written with the compilers' generic vector extensions so
// every ISA builds it. (The plain loop above compiles to scalar moves.)
typedef uint32_t v8u __attribute__((vector_size(32)));
#if defined(__clang__)
#define DCN_SHUFFLE2(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define DCN_SHUFFLE2(a, b, ...) __builtin_shuffle(a, b, v8u{__VA_ARGS__})
#endif

template <>
inline __attribute__((always_inline)) void transpose_tile<uint32_t>(
    const uint32_t* __restrict src, int64_t src_row, uint32_t* __restrict dst, int64_t dst_row) {
  v8u r[8], s[8], u[8];
  for (int i = 0; i < 8; ++i) std::memcpy(&r[i], src + i * src_row, sizeof(v8u));
  for (int i = 0; i < 8; i += 2) {  // s[i]: lanes of r[i], r[i+1] paired, per 4-lane half
    s[i] = DCN_SHUFFLE2(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    s[i + 1] = DCN_SHUFFLE2(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {  // u: four rows' elements per column, per half
    u[i] = DCN_SHUFFLE2(s[i], s[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 1] = DCN_SHUFFLE2(s[i], s[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[i + 2] = DCN_SHUFFLE2(s[i + 1], s[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 3] = DCN_SHUFFLE2(s[i + 1], s[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int j = 0; j < 4; ++j) {  // column j from the low halves, j + 4 from the high
    const v8u lo = DCN_SHUFFLE2(u[j], u[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    const v8u hi = DCN_SHUFFLE2(u[j], u[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    std::memcpy(dst + j * dst_row, &lo, sizeof(v8u));
    std::memcpy(dst + (j + 4) * dst_row, &hi, sizeof(v8u));
  }
}
#undef DCN_SHUFFLE2

// dst[j * dst_row + i] = src[i * src_row + j] for i < rows, j < cols: full
// tiles, then the ragged edges element by element.
template <typename T>
inline void transpose_block(const T* src, int64_t src_row, T* dst, int64_t dst_row, int64_t rows,
                            int64_t cols) {
  const int64_t rows_full = rows - rows % kTransposeTile, cols_full = cols - cols % kTransposeTile;
  for (int64_t j = 0; j < cols_full; j += kTransposeTile) {
    for (int64_t i = 0; i < rows_full; i += kTransposeTile)
      transpose_tile(src + i * src_row + j, src_row, dst + j * dst_row + i, dst_row);
    for (int64_t i = rows_full; i < rows; ++i)
      for (int64_t jj = j; jj < j + kTransposeTile; ++jj)
        move_element(dst + jj * dst_row + i, src + i * src_row + jj);
  }
  for (int64_t j = cols_full; j < cols; ++j)
    for (int64_t i = 0; i < rows; ++i) move_element(dst + j * dst_row + i, src + i * src_row + j);
}

// transpose_block for 32-bit elements, built for AVX-512 and AVX2 too
// (clones.h; defined in channels_last_copy.cpp).
void transpose_block_32(const uint32_t* src, int64_t src_row, uint32_t* dst, int64_t dst_row,
                        int64_t rows, int64_t cols);

// dst[j * dst_row + i] = src[i * src_row + j] for i < rows, j < cols, for
// any element type (moved as its bits).
template <typename T>
inline void transpose(const T* src, int64_t src_row, T* dst, int64_t dst_row, int64_t rows,
                      int64_t cols) {
  static_assert(std::is_trivially_copyable_v<T>, "a transpose moves bits");
  if constexpr (sizeof(T) == 4)
    transpose_block_32(reinterpret_cast<const uint32_t*>(src), src_row,
                       reinterpret_cast<uint32_t*>(dst), dst_row, rows, cols);
  else
    transpose_block(src, src_row, dst, dst_row, rows, cols);
}

}  // namespace dcn::cpu
