// Portability macros: the shared math in sampling.h compiles unchanged as
// C++ (CPU), CUDA (__host__ __device__) and Metal Shading Language.
#pragma once

#if defined(__METAL_VERSION__)
// Metal: every helper is a plain inline function; there is no host side.
#define DCN_FN inline
#define DCN_METAL 1
#elif defined(__CUDACC__) || defined(__HIPCC__)
#define DCN_FN __host__ __device__ __forceinline__
#define DCN_CUDA 1
#else
#define DCN_FN inline
#define DCN_HOST 1
#endif

#if defined(DCN_METAL)
// MSL has no <cstdint>; its `long` is 64-bit and `int` is 32-bit.
#define DCN_FLOOR(v) metal::floor(v)
#elif defined(DCN_CUDA)
#define DCN_FLOOR(v) floor(v)
#else
#include <cmath>
#define DCN_FLOOR(v) std::floor(v)
#endif
