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
#elif defined(__GNUC__) || defined(__clang__)
// Always inlined, as on CUDA: the CPU's vector-lane loops (coord_lanes.cpp)
// instantiate these with vector types inside functions built for several
// ISAs, and an out-of-line copy would pass those vectors under a different
// ABI than its caller expects.
#define DCN_FN inline __attribute__((always_inline))
#define DCN_HOST 1
#else
#define DCN_FN inline
#define DCN_HOST 1
#endif

