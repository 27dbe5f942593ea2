// Host-side storage types: float16 and bfloat16 as 16-bit patterns with
// exact round-to-nearest-even conversions, and the accumulation type of each
// storage type (float for the half types and float32, double for float64).
// CUDA and Metal use their native half types instead of this header.
#pragma once
#include <cstdint>
#include <cstring>

namespace dcn {

struct f16 { uint16_t bits; };
struct bf16 { uint16_t bits; };

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float to_float(bf16 v) { return bits_to_float(uint32_t(v.bits) << 16); }
inline bf16 to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

inline float to_float(f16 v) {
  const uint32_t sign = uint32_t(v.bits & 0x8000u) << 16;
  const uint32_t exp = (v.bits >> 10) & 0x1fu;
  const uint32_t man = v.bits & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp == 0) {
    // zero or subnormal: man * 2^-24, exact in float
    const float mag = float(man) * (1.0f / 16777216.0f);
    return sign ? -mag : mag;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

inline f16 to_f16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return f16{uint16_t(sign | 0x7e00u)};  // NaN
  if (a >= 0x477ff000u) return f16{uint16_t(sign | 0x7c00u)};  // rounds to >= 65520: inf
  if (a < 0x38800000u) {
    // result is subnormal (or zero): round |f| * 2^24 to an integer, ties to even
    const float scaled = bits_to_float(a) * 16777216.0f;
    uint32_t m = uint32_t(scaled);
    const float rem = scaled - float(m);
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
    return f16{uint16_t(sign | m)};
  }
  // normal: drop 13 mantissa bits with round-to-nearest-even
  uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
  r -= 112u << 23;
  return f16{uint16_t(sign | (r >> 13))};
}

// load/store between a storage type and its accumulation type.
template <typename S> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename S> using acc_t = typename Acc<S>::type;

inline float load(float v) { return v; }
inline double load(double v) { return v; }
inline float load(f16 v) { return to_float(v); }
inline float load(bf16 v) { return to_float(v); }

template <typename S> inline S store(acc_t<S> v);
template <> inline float store<float>(float v) { return v; }
template <> inline double store<double>(double v) { return v; }
template <> inline f16 store<f16>(float v) { return to_f16(v); }
template <> inline bf16 store<bf16>(float v) { return to_bf16(v); }

}  // namespace dcn
