// Copies between NCHW and channels-last (NHWC) order, for the torch CPU path
// whose kernels and GEMM work channels-last while its tensors are NCHW:
//   to_channels_last:   the input, before the kernels sample it (channels_last.h);
//   from_channels_last: the GEMM's (N, H*W, O) output into the NCHW output,
//                       with the bias added on the way.
//
// Both are transposes of each image's (C, H*W) matrix, done in 8x8 tiles:
// eight rows' runs of eight elements are read and written as eight runs of
// eight the other way, so both sides move whole vectors and the tile stays
// in registers. A task owns one image's span of 64 pixels across every
// channel. torch's own copy (x.contiguous(memory_format=torch.channels_last))
// measured 2 GB/s here on 1x64x32x32 and 1x256x64x64 (whose 16 KB plane
// stride keeps hitting the same cache sets), 5 GB/s on 4x64x56x56.
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wpsabi"
#elif defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "clones.h"
#include "dcn/cpu.h"
#include "parallel.h"
#include "plan.h"

namespace dcn::cpu {
namespace {

constexpr int64_t kTile = 8;   // rows x columns of one register tile
constexpr int64_t kSpan = 64;  // pixels per task

// dst[j * dst_row + i] = src[i * src_row + j] for i, j < kTile. T is an
// unsigned integer as wide as the element: a copy moves bits only.
template <typename T>
inline void transpose_tile(const T* __restrict src, int64_t src_row, T* __restrict dst,
                           int64_t dst_row) {
  T tile[kTile][kTile];
  for (int64_t i = 0; i < kTile; ++i)
    for (int64_t j = 0; j < kTile; ++j) tile[i][j] = src[i * src_row + j];
  for (int64_t j = 0; j < kTile; ++j)
    for (int64_t i = 0; i < kTile; ++i) dst[j * dst_row + i] = tile[i][j];
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
  const int64_t rows_full = rows - rows % kTile, cols_full = cols - cols % kTile;
  for (int64_t j = 0; j < cols_full; j += kTile) {
    for (int64_t i = 0; i < rows_full; i += kTile)
      transpose_tile(src + i * src_row + j, src_row, dst + j * dst_row + i, dst_row);
    for (int64_t i = rows_full; i < rows; ++i)
      for (int64_t jj = j; jj < j + kTile; ++jj) dst[jj * dst_row + i] = src[i * src_row + jj];
  }
  for (int64_t j = cols_full; j < cols; ++j)
    for (int64_t i = 0; i < rows; ++i) dst[j * dst_row + i] = src[i * src_row + j];
}

// Built for AVX-512 and AVX2 too (clones.h).
DCN_CLONES void transpose_block_32(const uint32_t* src, int64_t src_row, uint32_t* dst,
                                   int64_t dst_row, int64_t rows, int64_t cols) {
  transpose_block(src, src_row, dst, dst_row, rows, cols);
}

template <typename T>
inline void transpose(const T* src, int64_t src_row, T* dst, int64_t dst_row, int64_t rows,
                      int64_t cols) {
  if constexpr (sizeof(T) == 4) transpose_block_32(src, src_row, dst, dst_row, rows, cols);
  else transpose_block(src, src_row, dst, dst_row, rows, cols);
}

// The unsigned integer as wide as a storage type.
template <typename S> struct Bits;
template <> struct Bits<float> { using type = uint32_t; };
template <> struct Bits<double> { using type = uint64_t; };
template <> struct Bits<f16> { using type = uint16_t; };
template <> struct Bits<bf16> { using type = uint16_t; };

template <typename S>
void to_channels_last_impl(const Shape4& shape, const S* src_s, Strides4 s, S* dst_s) {
  using T = typename Bits<S>::type;
  const T* src = reinterpret_cast<const T*>(src_s);
  T* dst = reinterpret_cast<T*>(dst_s);
  const int64_t C = shape.c, W = shape.w, P = shape.h * shape.w;
  const int64_t spans = (P + kSpan - 1) / kSpan;
  const bool planes_contiguous = s.x == 1 && s.y == W;
  parallel_for(shape.n * spans, [&](int64_t t) {
    const int64_t n = t / spans;
    const int64_t p0 = (t % spans) * kSpan, p1 = std::min(P, p0 + kSpan);
    const T* image = src + n * s.n;
    T* out = dst + n * P * C;
    if (planes_contiguous)  // rows: channels (stride s.c); columns: the span's pixels
      return transpose(image + p0, s.c, out + p0 * C, C, C, p1 - p0);
    for (int64_t p = p0; p < p1; ++p) {  // any other strides: element by element
      const T* at = image + (p / W) * s.y + (p % W) * s.x;
      for (int64_t c = 0; c < C; ++c) out[p * C + c] = at[c * s.c];
    }
  });
}

template <typename S>
void from_channels_last_impl(const Shape4& shape, const S* src_s, const S* bias, S* dst_s) {
  using T = typename Bits<S>::type;
  using A = acc_t<S>;
  const T* src = reinterpret_cast<const T*>(src_s);
  T* dst = reinterpret_cast<T*>(dst_s);
  const int64_t C = shape.c, P = shape.h * shape.w;
  const int64_t spans = (P + kSpan - 1) / kSpan;
  parallel_for(shape.n * spans, [&](int64_t t) {
    const int64_t n = t / spans;
    const int64_t p0 = (t % spans) * kSpan, len = std::min(P, p0 + kSpan) - p0;
    // rows: the span's pixels (stride C); columns: channels
    T* out = dst + n * C * P + p0;
    transpose(src + (n * P + p0) * C, C, out, P, len, C);
    if (bias == nullptr) return;
    // The span's rows are still in cache: add each channel's bias there,
    // rounding once, as an add of the bias after the GEMM would.
    S* rows = dst_s + n * C * P + p0;
    for (int64_t c = 0; c < C; ++c) {
      const A b = A(load(bias[c]));
      S* row = rows + c * P;
      for (int64_t i = 0; i < len; ++i) row[i] = store<S>(A(load(row[i])) + b);
    }
  });
}

}  // namespace

void to_channels_last(DType dtype, const Shape4& shape, const void* src, Strides4 src_s,
                      void* dst) {
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    to_channels_last_impl(shape, static_cast<const S*>(src), src_s, static_cast<S*>(dst));
  });
}

void from_channels_last(DType dtype, const Shape4& shape, const void* src, const void* bias,
                        void* dst) {
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    from_channels_last_impl(shape, static_cast<const S*>(src), static_cast<const S*>(bias),
                            static_cast<S*>(dst));
  });
}

}  // namespace dcn::cpu
