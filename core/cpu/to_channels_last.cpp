// The input in channels-last order (N, H, W, C), for the kernels that sample
// it channels-last (channels_last.h) when the frontend's input is NCHW.
//
// A transpose of each image's (C, H*W) planes, done in 8x8 tiles: eight
// channels' runs of eight pixels are read (unit stride in each plane) and
// written as eight pixels' runs of eight channels, so both sides move whole
// vectors and the tile stays in registers. A task owns one image's 64-pixel
// span across every channel: its output (64 * C elements) is one contiguous
// stretch, written once. torch's own copy (x.contiguous(channels_last))
// measured 2 GB/s here on 1x64x32x32 and 1x256x64x64 (where the 16 KB plane
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

namespace dcn::cpu {
namespace {

constexpr int64_t kTile = 8;    // channels x pixels of one register tile
constexpr int64_t kSpan = 64;   // pixels per task

// dst[p * C + c] = src[c * plane + p] for a kTile x kTile tile. T is an
// unsigned integer as wide as the element: the copy moves bits only.
template <typename T>
inline void transpose_tile(const T* __restrict src, int64_t plane, T* __restrict dst, int64_t C) {
  T tile[kTile][kTile];
  for (int64_t c = 0; c < kTile; ++c)
    for (int64_t p = 0; p < kTile; ++p) tile[c][p] = src[c * plane + p];
  for (int64_t p = 0; p < kTile; ++p)
    for (int64_t c = 0; c < kTile; ++c) dst[p * C + c] = tile[c][p];
}

// Pixels [p0, p1) of one image whose planes are contiguous (x stride 1,
// y stride W): full tiles, then the ragged channel and pixel edges.
template <typename T>
inline void span_contiguous(const T* src, int64_t plane, int64_t C, int64_t p0, int64_t p1,
                            T* dst) {
  const int64_t c_full = C - C % kTile;
  int64_t p = p0;
  for (; p + kTile <= p1; p += kTile) {
    for (int64_t c = 0; c < c_full; c += kTile)
      transpose_tile(src + c * plane + p, plane, dst + p * C + c, C);
    for (int64_t c = c_full; c < C; ++c)
      for (int64_t q = p; q < p + kTile; ++q) dst[q * C + c] = src[c * plane + q];
  }
  for (; p < p1; ++p)
    for (int64_t c = 0; c < C; ++c) dst[p * C + c] = src[c * plane + p];
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
    const uint32_t* __restrict src, int64_t plane, uint32_t* __restrict dst, int64_t C) {
  v8u r[8], s[8], u[8];
  for (int c = 0; c < 8; ++c) std::memcpy(&r[c], src + c * plane, sizeof(v8u));
  for (int i = 0; i < 8; i += 2) {  // s[i] lane pairs (r[i], r[i+1]) per 4-lane half
    s[i] = DCN_SHUFFLE2(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    s[i + 1] = DCN_SHUFFLE2(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {  // u: four channels per pixel, per half
    u[i] = DCN_SHUFFLE2(s[i], s[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 1] = DCN_SHUFFLE2(s[i], s[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[i + 2] = DCN_SHUFFLE2(s[i + 1], s[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 3] = DCN_SHUFFLE2(s[i + 1], s[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int p = 0; p < 4; ++p) {  // pixel p from the low halves, p + 4 from the high
    const v8u lo = DCN_SHUFFLE2(u[p], u[p + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    const v8u hi = DCN_SHUFFLE2(u[p], u[p + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    std::memcpy(dst + p * C, &lo, sizeof(v8u));
    std::memcpy(dst + (p + 4) * C, &hi, sizeof(v8u));
  }
}
#undef DCN_SHUFFLE2

// Built for AVX-512 and AVX2 too (clones.h).
DCN_CLONES void span_contiguous_32(const uint32_t* src, int64_t plane, int64_t C, int64_t p0,
                                   int64_t p1, uint32_t* dst) {
  span_contiguous(src, plane, C, p0, p1, dst);
}

template <typename T>
inline void span(const T* src, int64_t plane, int64_t C, int64_t p0, int64_t p1, T* dst) {
  if constexpr (sizeof(T) == 4) span_contiguous_32(src, plane, C, p0, p1, dst);
  else span_contiguous(src, plane, C, p0, p1, dst);
}

template <typename T>
void to_channels_last_impl(const Shape4& shape, const T* src, Strides4 s, T* dst) {
  const int64_t C = shape.c, W = shape.w, P = shape.h * shape.w;
  const int64_t spans = (P + kSpan - 1) / kSpan;
  const bool planes_contiguous = s.x == 1 && s.y == W;
  parallel_for(shape.n * spans, [&](int64_t t) {
    const int64_t n = t / spans;
    const int64_t p0 = (t % spans) * kSpan, p1 = std::min(P, p0 + kSpan);
    const T* image = src + n * s.n;
    T* out = dst + n * P * C;
    if (planes_contiguous) return span(image, s.c, C, p0, p1, out);
    for (int64_t p = p0; p < p1; ++p) {  // any other strides: element by element
      const T* at = image + (p / W) * s.y + (p % W) * s.x;
      for (int64_t c = 0; c < C; ++c) out[p * C + c] = at[c * s.c];
    }
  });
}

}  // namespace

void to_channels_last(DType dtype, const Shape4& shape, const void* src, Strides4 src_s,
                      void* dst) {
  switch (dtype) {
    case DType::Float32:
      return to_channels_last_impl(shape, static_cast<const uint32_t*>(src), src_s,
                                   static_cast<uint32_t*>(dst));
    case DType::Float64:
      return to_channels_last_impl(shape, static_cast<const uint64_t*>(src), src_s,
                                   static_cast<uint64_t*>(dst));
    case DType::Float16:
    case DType::BFloat16:
      return to_channels_last_impl(shape, static_cast<const uint16_t*>(src), src_s,
                                   static_cast<uint16_t*>(dst));
    default:
      throw std::invalid_argument("dcn: unsupported dtype");
  }
}

}  // namespace dcn::cpu
