// Eight float32 (or int32) lanes as a GCC/Clang vector type, for the .cpp
// files built as AVX-512/AVX2/baseline clones (clones.h): every operation is
// written out, with no FMA contraction, so each clone computes the same bits.
//
// Include this first in such a file and only there: the lane type is a
// 32-byte vector, and only inlined helpers take it by value, so the baseline
// ABI note about passing it (-Wpsabi) concerns no interface.
#pragma once
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wpsabi"
#elif defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#include <cstdint>
#include <cstring>

// Inlined into each clone, so they are compiled for the clone's ISA.
#define DCN_INLINE inline __attribute__((always_inline))

namespace dcn::cpu::lanes8 {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

DCN_INLINE v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

DCN_INLINE v8i load8i(const int32_t* p) {
  v8i v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

DCN_INLINE void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }
DCN_INLINE void store8(int32_t* p, v8i v) { std::memcpy(p, &v, sizeof v); }

DCN_INLINE v8f splat(float x) { return v8f{} + x; }

}  // namespace dcn::cpu::lanes8
