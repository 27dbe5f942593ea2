// CPU entry points. Framework-free: raw pointers, element strides and a
// Geometry from resolve_geometry(). Every array may have arbitrary strides
// (NCHW, NHWC, or any view), so frontends never copy to reorder.
//
// Shapes in logical terms (K = kh*kw, G = offset groups, P = out_h*out_w):
//   input      (N, C, H, W)            strides Strides4 {n, c, y, x}
//   offset     (N, 2*G*K, out_h, out_w) strides Strides4 {n, channel, y, x}
//   mask       (N, G*K, out_h, out_w)   optional (nullptr when absent)
//   columns    (N, C, K, P)             strides ColumnStrides (dcn/layout.h)
// Storage dtype is one of DType; accumulation is float (f32/f16/bf16) or
// double (f64). All indices are 64-bit.
#pragma once
#include <cstdint>

#include "dcn/layout.h"
#include "dcn/params.h"

namespace dcn {

namespace cpu {

// columns = mask * bilinear(input, offset): the deformable im2col.
void im2col(DType dtype, const Geometry& geo, const void* input, Strides4 input_s,
            const void* offset, Strides4 offset_s, const void* mask, Strides4 mask_s,
            void* columns, ColumnStrides columns_s);

// grad_input = adjoint of im2col applied to grad_columns. grad_input is
// written whole (zeroed first) in the accumulation type: float for
// f32/f16/bf16, double for f64. Deterministic: each channel plane is owned by
// one task and accumulated in a fixed order, whatever the thread count.
void col2im(DType dtype, const Geometry& geo, const void* grad_columns,
            ColumnStrides columns_s, const void* offset, Strides4 offset_s, const void* mask,
            Strides4 mask_s, void* grad_input, Strides4 grad_input_s);

// grad_offset and grad_mask (grad_mask may be nullptr; must be nullptr when
// there is no mask) from grad_columns, in the storage dtype. Deterministic.
// It reads every sample's corners anyway, so when columns_out is not null it
// also writes the forward's columns there (same layout as grad_columns): the
// weight gradient then needs no second im2col.
void coord_grad(DType dtype, const Geometry& geo, const void* grad_columns,
                ColumnStrides columns_s, const void* input, Strides4 input_s,
                const void* offset, Strides4 offset_s, const void* mask, Strides4 mask_s,
                void* grad_offset, Strides4 grad_offset_s, void* grad_mask,
                Strides4 grad_mask_s, void* columns_out = nullptr);

// col2im and coord_grad in one call, bitwise the same results: their tasks
// share one parallel region, so cores never wait at a barrier between the
// two (col2im has one long task per image and group; on one image the other
// cores would idle). Measured channels-last on 1x64x32x32, 2 threads: the
// two calls 0.75-0.80 ms, this one 0.55-0.56 ms.
void col2im_and_coord_grad(DType dtype, const Geometry& geo, const void* grad_columns,
                           ColumnStrides columns_s, const void* input, Strides4 input_s,
                           const void* offset, Strides4 offset_s, const void* mask,
                           Strides4 mask_s, void* grad_input, Strides4 grad_input_s,
                           void* grad_offset, Strides4 grad_offset_s, void* grad_mask,
                           Strides4 grad_mask_s, void* columns_out = nullptr);

// Logical sizes of a 4-D array.
struct Shape4 {
  int64_t n = 0, c = 0, h = 0, w = 0;
};

// dst (N, H, W, C), contiguous = src (N, C, H, W) with any strides: the
// input as the channels-last kernels read it, when a frontend holds NCHW.
// A copy of bits (every storage dtype); parallel over images and pixel spans.
void to_channels_last(DType dtype, const Shape4& shape, const void* src, Strides4 src_s,
                      void* dst);

// dst (N, C, H, W), contiguous = src (N, H, W, C), contiguous, plus bias[c]
// when bias is not null (added in the accumulation type, rounded once): a
// GEMM's channels-last output as an NCHW one.
void from_channels_last(DType dtype, const Shape4& shape, const void* src, const void* bias,
                        void* dst);

// Worker threads used by the kernels above (the caller's thread included).
// 0 restores the default: the hardware concurrency.
void set_num_threads(int n);
int get_num_threads();

}  // namespace cpu
}  // namespace dcn
