// Element strides of the arrays every backend's kernels take. Framework-free
// and backend-neutral: the CPU kernels (dcn/cpu.h) and the CUDA kernels
// (dcn/cuda.h) accept arbitrary strides through these, so frontends never
// copy to reorder.
#pragma once
#include <cstdint>

namespace dcn {

struct Strides4 {
  int64_t n = 0, c = 0, y = 0, x = 0;
};

// Column element (n, c, k, p) lives at
//   n*n_stride + (c / block)*block_stride + (c % block)*c_stride + k*k_stride + p*p_stride
// where `block` is the channel count of one weight group. One kernel thus
// serves torch's (N, C*K, P) layout (block = C, c_stride = K*P, k_stride = P)
// and MLX's (N, P, [weight group, k, channel in group]) layout that matches
// an (O, kh, kw, C/groups) weight (c_stride = 1, k_stride = C/groups).
struct ColumnStrides {
  int64_t n = 0, block_stride = 0, c = 0, k = 0, p = 0;
  int64_t block = 1;  // channels per weight group (>= 1)
  int64_t channel(int64_t ch) const { return (ch / block) * block_stride + (ch % block) * c; }
};

}  // namespace dcn
