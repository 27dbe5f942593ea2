// Stand-in for <cuda_bf16.h>: __nv_bfloat16 as its 16-bit pattern (see
// cuda_fp16.h).
#pragma once
#include <cstdint>

#include "dcn/storage.h"

struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 h) { return dcn::to_float(dcn::bf16{h.bits}); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{dcn::to_bf16(f).bits}; }
