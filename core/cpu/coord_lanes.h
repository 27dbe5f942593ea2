// The channels-last float32 path of coord_grad.
//
// With the input in NHWC and the columns' channels contiguous (MLX's layout,
// and torch's pixel-major CPU columns), a sample's four corners are four
// contiguous runs of channels, so the per-channel work is a vector loop over
// channels instead of a gather over pixels. Its sums over the channels
// (offset and mask gradients) use a fixed reduction order:
//
//   lane l = c % kCoordLanes accumulates channels l, l + 8, l + 16, ... in
//   order; the 8 lanes are then added as ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)).
//
// The lanes are GCC/Clang vector types with every operation in the scalar
// kernels' order and no FMA contraction, so the result is the same bits on
// every ISA (SSE2, AVX2, NEON) and every thread count; it differs from the
// channel-major loops' sequential sum only by rounding. The columns it writes
// are bitwise im2col's.
#pragma once
#include <cstdint>

#include "channels_last.h"  // ChannelRun
#include "coord_step.h"

namespace dcn::cpu {

constexpr int64_t kCoordLanes = 8;

// Pixels per channels-last task: its plans (all kernel points) stay in L1/L2.
constexpr int64_t kLaneTile = 32;

// One task: pixels [0, len) of a tile, every kernel point. plans[k*kLaneTile + i]
// is the entry of (k, pixel i); acc_y, acc_x [k*kLaneTile + i] receive the
// sample's offset gradient (the mask times the lane-ordered sum over the
// channels of the offset group, exactly 0 outside the gradient region) and
// acc_m the mask gradient (the sum itself); cols_out (when
// not null) gets the forward's columns. image: the group's first channel of
// image n; gcol/cols_out: the element (n, group channel 0, k 0, pixel 0) of
// the tile; col_k, col_p: their kernel-point and pixel strides; runs[0,
// nruns): the group's channels in order, each run at unit stride (one run
// of cpg channels at offset 0 without weight groups). Channel c goes into
// lane c % 8 whatever the runs, so the sums do not depend on them. Pixels
// outer, kernel points inner: the columns of a pixel are read front to back.
void coord_tile_channels_last_f32(const GradEntry<float>* plans, int64_t K, int64_t len,
                                  const float* image, const CornerOffsets& co,
                                  const float* gcol, float* cols_out, int64_t col_k,
                                  int64_t col_p, const ChannelRun* runs, int64_t nruns,
                                  float* acc_y, float* acc_x, float* acc_m);

}  // namespace dcn::cpu
