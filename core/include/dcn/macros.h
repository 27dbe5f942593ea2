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

