// CUDA entry points: the same three kernels as dcn/cpu.h, on device memory.
// Framework-free: raw device pointers, element strides (dcn/layout.h) and a
// Geometry from resolve_geometry(); no CUDA header is needed to call them.
//
// Every call is asynchronous on `stream` (a cudaStream_t, 0 for the legacy
// default stream) of device `device`: no host synchronisation and no
// allocation, so the calls can be captured in a CUDA graph. Scratch memory
// (the deterministic col2im's) comes from the caller. Errors (a failed
// launch, a geometry too large) throw std::runtime_error / invalid_argument.
//
// Index math is 32-bit when every array's largest element offset and every
// thread count fit in int32, 64-bit otherwise, chosen per call.
//
// Numerics are the CPU kernels', operation for operation (the kernels are
// compiled without FMA contraction): im2col, coord_grad and the
// deterministic col2im give the CPU's bits; the default col2im adds with
// atomics, so its last bits depend on the order the GPU happens to run in.
#pragma once
#include <cstddef>
#include <cstdint>

#include "dcn/layout.h"
#include "dcn/params.h"

namespace dcn::cuda {

struct Launch {
  int device = 0;
  void* stream = nullptr;  // cudaStream_t
};

// columns = mask * bilinear(input, offset).
void im2col(DType dtype, const Geometry& geo, const void* input, Strides4 input_s,
            const void* offset, Strides4 offset_s, const void* mask, Strides4 mask_s,
            void* columns, ColumnStrides columns_s, Launch launch);

// grad_input (accumulation dtype: float, or double for f64) = adjoint of
// im2col applied to grad_columns; written whole. Atomic adds: fast, but the
// last bits vary from run to run.
void col2im(DType dtype, const Geometry& geo, const void* grad_columns,
            ColumnStrides columns_s, const void* offset, Strides4 offset_s, const void* mask,
            Strides4 mask_s, void* grad_input, Strides4 grad_input_s, Launch launch);

// The same gradient, bitwise reproducible (and equal to the CPU kernel's):
// every (sample, corner) contribution is keyed by the input pixel it lands
// on, the keys are radix-sorted (stable, so ties keep the CPU's
// (kernel point, pixel, corner) order), and each input element then sums its
// own contributions in that order. `workspace` must hold
// col2im_deterministic_workspace(dtype, geo) bytes of device memory.
std::size_t col2im_deterministic_workspace(DType dtype, const Geometry& geo, int device);
void col2im_deterministic(DType dtype, const Geometry& geo, const void* grad_columns,
                          ColumnStrides columns_s, const void* offset, Strides4 offset_s,
                          const void* mask, Strides4 mask_s, void* grad_input,
                          Strides4 grad_input_s, void* workspace, std::size_t workspace_bytes,
                          Launch launch);

// grad_offset, grad_mask (nullptr without a mask) in the storage dtype, and,
// when columns_out is not null, the forward's columns (the weight gradient
// then needs no second im2col). Deterministic: one thread per sample sums
// the group's channels in order.
void coord_grad(DType dtype, const Geometry& geo, const void* grad_columns,
                ColumnStrides columns_s, const void* input, Strides4 input_s,
                const void* offset, Strides4 offset_s, const void* mask, Strides4 mask_s,
                void* grad_offset, Strides4 grad_offset_s, void* grad_mask,
                Strides4 grad_mask_s, void* columns_out, Launch launch);

// What was compiled in: the CUDA runtime version (e.g. 13000) and the
// architectures (e.g. 80, 86, 89, 90) the kernels were built for.
int runtime_version();
const char* architectures();  // e.g. "80;86;89;90", set by CMake

}  // namespace dcn::cuda
