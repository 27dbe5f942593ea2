// Copies between NCHW and channels-last (NHWC) order, for the torch CPU path
// whose kernels and GEMM work channels-last while its tensors are NCHW:
//   to_channels_last:   the input, before the kernels sample it (channels_last.h);
//   from_channels_last: the GEMM's (N, H*W, O) output into the NCHW output,
//                       with the bias added on the way.
//
// Both are transposes of each image's (C, H*W) matrix in 8x8 register
// tiles (transpose.h). A task owns one image's span of 64 pixels across
// every channel. torch's own copy (x.contiguous(memory_format=torch.channels_last))
// measured 2 GB/s here on 1x64x32x32 and 1x256x64x64 (whose 16 KB plane
// stride keeps hitting the same cache sets), 5 GB/s on 4x64x56x56.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "clones.h"
#include "dcn/cpu.h"
#include "parallel.h"
#include "plan.h"
#include "transpose.h"

namespace dcn::cpu {
namespace {

constexpr int64_t kSpan = 64;  // pixels per task

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
      for (int64_t c = 0; c < C; ++c) move_element(out + p * C + c, at + c * s.c);
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

// Built for AVX-512 and AVX2 too (clones.h).
DCN_CLONES void transpose_block_32(const uint32_t* src, int64_t src_row, uint32_t* dst,
                                   int64_t dst_row, int64_t rows, int64_t cols) {
  transpose_block(src, src_row, dst, dst_row, rows, cols);
}

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
