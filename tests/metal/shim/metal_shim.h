// A stand-in for <metal_stdlib> so that Metal Shading Language kernels
// compile, unmodified, as C++17 with g++ or clang and run on the host.
//
// Order matters: every standard header first (the keyword macros at the end
// would break them), then the MSL types and functions, then the keywords.
// Code that includes this and then needs std::thread etc. again must include
// metal_shim_end.h (it removes the keyword macros).
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <typeindex>
#include <vector>

#ifndef __METAL_VERSION__
#define __METAL_VERSION__ 310  // MSL 3.1: atomic_float on device memory, bfloat
#endif
#define __HAVE_BFLOAT__ 1

#if defined(__clang__)
#pragma clang diagnostic ignored "-Wunknown-attributes"
#else
#pragma GCC diagnostic ignored "-Wattributes"
#endif

typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;

// ---------------------------------------------------------------- half
#if defined(DCN_SHIM_ADDRESS_SPACES)
// Address-space lint (compile only, see the keywords below): a class's
// member functions cannot be called on an object in a numbered address
// space, so half and bfloat become distinct plain scalars here. Only the
// types of pointers and references are being checked.
typedef long double half;
typedef double bfloat;
#define DCN_SHIM_SCALAR_16 1
#elif defined(__FLT16_MANT_DIG__)
// g++ >= 12, clang >= 15 on x86-64: real IEEE binary16 arithmetic, float
// promotions as in MSL.
typedef _Float16 half;
#else
// Older clang: __fp16 is storage-only (it cannot be a parameter or a return
// type), so wrap it; arithmetic in float, rounded back to half as MSL does.
// On x86-64 its conversions need F16C instructions (or compiler-rt).
#if defined(__x86_64__) && !defined(__F16C__)
#error "this compiler has no _Float16 here: build with -mf16c for __fp16 conversions"
#endif
struct half {
  __fp16 v;
  half() = default;
  half(float f) : v(f) {}
  operator float() const { return float(v); }
  half& operator+=(float o) { v = float(v) + o; return *this; }
  half& operator-=(float o) { v = float(v) - o; return *this; }
  half& operator*=(float o) { v = float(v) * o; return *this; }
};
#endif
#if !defined(DCN_SHIM_SCALAR_16)
static_assert(sizeof(half) == 2, "half must be 2 bytes");

// ---------------------------------------------------------------- bfloat
// The top 16 bits of a float; float -> bfloat rounds to nearest even, NaN
// stays NaN. Arithmetic happens in float (MSL promotes bfloat the same way).
// The float constructor is explicit: a kernel must write T(v), as it should.
struct bfloat {
  uint16_t bits;
  bfloat() = default;
  explicit bfloat(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) {
      bits = uint16_t((u >> 16) | 0x0040u);
    } else {
      const uint32_t lsb = (u >> 16) & 1u;
      bits = uint16_t((u + 0x7fffu + lsb) >> 16);
    }
  }
  explicit bfloat(double d) : bfloat(float(d)) {}
  explicit bfloat(int i) : bfloat(float(i)) {}
  operator float() const {
    const uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  bfloat& operator+=(float o) { return *this = bfloat(float(*this) + o); }
  bfloat& operator-=(float o) { return *this = bfloat(float(*this) - o); }
  bfloat& operator*=(float o) { return *this = bfloat(float(*this) * o); }
};
static_assert(sizeof(bfloat) == 2, "bfloat must be 2 bytes");
#endif

namespace metal {

template <typename T>
constexpr bool is_msl_float_v = std::is_floating_point<T>::value ||
                                std::is_same<T, half>::value ||
                                std::is_same<T, bfloat>::value;
template <typename T>
using if_float = std::enable_if_t<is_msl_float_v<T>, int>;
template <typename T>
using if_arith = std::enable_if_t<is_msl_float_v<T> || std::is_integral<T>::value, int>;

// Constrained templates: under `using namespace metal;` an unqualified call
// never silently picks a glibc overload of another type.
template <typename T, if_float<T> = 0> inline T floor(T v) { return T(std::floor(float(v))); }
template <typename T, if_float<T> = 0> inline T ceil(T v) { return T(std::ceil(float(v))); }
template <typename T, if_float<T> = 0> inline T trunc(T v) { return T(std::trunc(float(v))); }
template <typename T, if_float<T> = 0> inline T sqrt(T v) { return T(std::sqrt(float(v))); }
template <typename T, if_float<T> = 0> inline T exp(T v) { return T(std::exp(float(v))); }
template <typename T, if_float<T> = 0> inline T fma(T a, T b, T c) {
  return T(std::fma(float(a), float(b), float(c)));
}
template <typename T, if_float<T> = 0> inline bool isnan(T v) { return std::isnan(float(v)); }
template <typename T, if_float<T> = 0> inline bool isinf(T v) { return std::isinf(float(v)); }
template <typename T, if_float<T> = 0> inline bool isfinite(T v) { return std::isfinite(float(v)); }
template <typename T, if_arith<T> = 0> inline T min(T a, T b) { return b < a ? b : a; }
template <typename T, if_arith<T> = 0> inline T max(T a, T b) { return a < b ? b : a; }
template <typename T, if_arith<T> = 0> inline T clamp(T v, T lo, T hi) { return min(max(v, lo), hi); }
template <typename T, if_arith<T> = 0> inline T abs(T v) { return v < T(0) ? T(-v) : v; }

// Small vector types with MSL's sizes; no swizzles (a compile error if a
// kernel uses one, never silently wrong).
template <typename T, int N>
struct alignas(sizeof(T) * (N == 3 ? 4 : N)) vec {
  T v[N == 3 ? 4 : N];
  T& operator[](int i) { return v[i]; }
  const T& operator[](int i) const { return v[i]; }
};
typedef vec<float, 2> float2;
typedef vec<float, 3> float3;
typedef vec<float, 4> float4;
typedef vec<int, 2> int2;
typedef vec<uint, 2> uint2;
typedef vec<uint, 3> uint3;
static_assert(sizeof(float3) == 16, "MSL float3 is 16 bytes");

// Atomics: the layout of T, so `(device atomic_float*)p` is valid; the
// operations are GCC/Clang __atomic builtins, which ThreadSanitizer models.
enum memory_order { memory_order_relaxed = __ATOMIC_RELAXED };

template <typename T>
struct atomic {
  T value;
};
typedef atomic<float> atomic_float;
typedef atomic<int> atomic_int;
typedef atomic<uint> atomic_uint;
static_assert(sizeof(atomic_float) == sizeof(float), "atomic_float has float's layout");

template <typename T>
inline T atomic_load_explicit(atomic<T>* a, memory_order) {
  T out;
  __atomic_load(&a->value, &out, __ATOMIC_RELAXED);
  return out;
}
template <typename T>
inline void atomic_store_explicit(atomic<T>* a, T v, memory_order) {
  __atomic_store(&a->value, &v, __ATOMIC_RELAXED);
}
template <typename T, std::enable_if_t<std::is_integral<T>::value, int> = 0>
inline T atomic_fetch_add_explicit(atomic<T>* a, T v, memory_order) {
  return __atomic_fetch_add(&a->value, v, __ATOMIC_RELAXED);
}
// Float add: a compare-and-swap loop, as GPUs without native float atomics do.
#if defined(DCN_SHIM_ADDRESS_SPACES)
// Lint mode: the atomic may live in device or threadgroup memory; only the
// types are checked (this build is never run).
template <typename A>
inline float atomic_fetch_add_explicit(A* a, float v, memory_order) {
  static_assert(std::is_same<std::remove_cv_t<A>, atomic<float>>::value ||
                    sizeof(A) == sizeof(float),
                "atomic_fetch_add_explicit(float) needs an atomic_float");
  (void)a;
  return v;
}
#endif
inline float atomic_fetch_add_explicit(atomic<float>* a, float v, memory_order) {
  float old;
  __atomic_load(&a->value, &old, __ATOMIC_RELAXED);
  float desired = old + v;
  while (!__atomic_compare_exchange(&a->value, &old, &desired, /*weak=*/true, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED)) {
    desired = old + v;
  }
  return old;
}

}  // namespace metal

// ---------------------------------------------------------------- registry
// instantiate_kernel(name, func, type) instantiates a kernel template and
// registers it under the host name eval_gpu uses, so tests fetch kernels by
// the same names.
namespace dcn_shim {

struct KernelEntry {
  std::type_index type;
  void (*fn)();
};

inline std::map<std::string, KernelEntry>& registry() {
  static std::map<std::string, KernelEntry> r;
  return r;
}

template <typename F>
inline bool register_kernel(const char* name, F* fn) {
  registry().emplace(name, KernelEntry{std::type_index(typeid(F*)), reinterpret_cast<void (*)()>(fn)});
  return true;
}

// The kernel registered as `name`, whose type must be F* (nullptr otherwise).
template <typename F>
inline F* find_kernel(const std::string& name) {
  auto it = registry().find(name);
  if (it == registry().end() || it->second.type != std::type_index(typeid(F*))) return nullptr;
  return reinterpret_cast<F*>(it->second.fn);
}

}  // namespace dcn_shim

#define DCN_SHIM_CAT2(a, b) a##b
#define DCN_SHIM_CAT(a, b) DCN_SHIM_CAT2(a, b)
#define instantiate_kernel(name, func, type)                                       \
  template decltype(func<type>) func<type>;                                        \
  [[maybe_unused]] static const bool DCN_SHIM_CAT(dcn_shim_reg_, __COUNTER__) =    \
      ::dcn_shim::register_kernel(name, &func<type>);

// ---------------------------------------------------------------- keywords
// Address spaces vanish; `threadgroup` becomes `volatile`, the one expansion
// valid both as a qualifier and inside [[threadgroup(0)]]. `constant` is
// `const` on clang; g++ rejects the `const const` that `constant const T&`
// would make, so there it vanishes. Attributes are never macros.
//
// With DCN_SHIM_ADDRESS_SPACES (clang, compile only: -fsyntax-only) the
// address spaces become clang's numbered address spaces instead, so passing
// a device pointer where a thread or constant one is expected, or dropping
// an address space in a cast, is a compile error as under Apple's compiler.
#define kernel
#if defined(DCN_SHIM_ADDRESS_SPACES)
#if !defined(__clang__)
#error "DCN_SHIM_ADDRESS_SPACES needs clang"
#endif
#define device __attribute__((address_space(1)))
#define constant __attribute__((address_space(2))) const
#define threadgroup __attribute__((address_space(3)))
#define thread
#else
#define device
#define thread
#define threadgroup volatile
#if defined(__clang__)
#define constant const
#else
#define constant
#endif
#endif
