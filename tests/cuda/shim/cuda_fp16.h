// Stand-in for <cuda_fp16.h>: __half as its 16-bit pattern, converted with
// the core's exact round-to-nearest-even routines (dcn/storage.h), the same
// the CPU kernels use.
#pragma once
#include <cstdint>

#include "dcn/storage.h"

struct __half {
  uint16_t bits;
};
inline float __half2float(__half h) { return dcn::to_float(dcn::f16{h.bits}); }
inline __half __float2half_rn(float f) { return __half{dcn::to_f16(f).bits}; }
