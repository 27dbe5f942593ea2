// MLX primitives of dcn: the deformable sampling (DeformSample) and its
// adjoint (DeformSampleGrad), evaluated on the CPU by the framework-free core
// (core/cpu) through MLX's CPU command encoder. The weight product is not
// here: dcn_mlx composes it from mx.matmul in the graph, so MLX's own
// autodiff gives the weight and bias gradients.
//
// Layouts (MLX convention, channels last):
//   x        (N, H, W, C)
//   offset   (N, Ho, Wo, 2*G*kh*kw)   (dy, dx) per (offset group, kernel point)
//   mask     (N, Ho, Wo, G*kh*kw)     optional
//   columns  (groups, N, Ho, Wo, kh*kw*Cg), Cg = C/groups: for weight group g,
//            columns[g, n, oy, ox, k*Cg + cg] = mask * bilinear(x[n, :, :, g*Cg + cg])
//            at kernel point k. columns[g] (..., K*Cg) @ weight[g*Og:(g+1)*Og]
//            reshaped (Og, K*Cg) transposed is the convolution of group g: the
//            (O, kh, kw, C/groups) weight of mx.conv2d needs no reordering.
// On the CPU every input may be strided (views are read in place; the core
// is stride-aware) and outputs are row-contiguous. On a GPU stream the
// builders hand the Metal kernels dense inputs and the columns are a strided
// view over the kernels' order (metal_contract.h; evaluation in
// metal_eval.cpp, macOS only).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <vector>

#include "mlx/array.h"
#include "mlx/primitives.h"
#include "mlx/utils.h"

#include "dcn/params.h"

namespace dcn_mlx {

namespace mx = mlx::core;

// Everything a sampling call needs besides the arrays.
struct SampleParams {
  int64_t kernel_h = 1, kernel_w = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t groups = 1;  // weight groups: the column layout's leading axis

  bool operator==(const SampleParams& o) const {
    return kernel_h == o.kernel_h && kernel_w == o.kernel_w && stride_h == o.stride_h &&
           stride_w == o.stride_w && pad_h == o.pad_h && pad_w == o.pad_w &&
           dilation_h == o.dilation_h && dilation_w == o.dilation_w && groups == o.groups;
  }
};

// mx dtype -> the core's dtype (DType::Other for non-floating types).
dcn::DType to_dcn_dtype(mx::Dtype d);

// A core descriptor of a (<= 4-D) array; a higher rank raises
// std::invalid_argument naming the argument, its expected rank and axes.
dcn::TensorDesc to_desc(const mx::array& a, const char* name, int rank, const char* axes);

// Validates the arrays of a sampling call with dcn::resolve_geometry (NHWC)
// and returns the geometry; throws std::invalid_argument (Python ValueError).
dcn::Geometry sample_geometry(const mx::array& x, const mx::array& offset,
                              const std::optional<mx::array>& mask, const SampleParams& p);

// Shape of the columns for an input of shape (N, H, W, C).
mx::Shape columns_shape(const mx::Shape& x_shape, const SampleParams& p);

// columns = DeformSample(x, offset, mask): validates, then builds the node.
mx::array deform_sample(const mx::array& x, const mx::array& offset,
                        const std::optional<mx::array>& mask, const SampleParams& p,
                        mx::StreamOrDevice s = {});

// The adjoint of deform_sample for a cotangent grad_columns (shape of the
// columns). Returns, in this order, grad_x (when need_input) and grad_offset,
// grad_mask (grad_mask only with a mask) (when need_coords), all in x's
// dtype. The node reads the determinism setting below when it is built.
std::vector<mx::array> deform_sample_grad(const mx::array& grad_columns, const mx::array& x,
                                          const mx::array& offset,
                                          const std::optional<mx::array>& mask,
                                          const SampleParams& p, bool need_input,
                                          bool need_coords, mx::StreamOrDevice s = {});

// Whether gradient graphs built from now on use the deterministic GPU
// kernel for grad_x (bitwise reproducible, slower) instead of atomic adds.
// The CPU kernels are always deterministic. A function already traced by
// mx.compile keeps the setting it was traced with.
void set_deterministic(bool deterministic);
bool deterministic();

class DeformSample : public mx::UnaryPrimitive {
 public:
  DeformSample(mx::Stream stream, SampleParams params)
      : mx::UnaryPrimitive(stream), params_(params) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;

  // Gradients for x, offset and mask (inputs 0, 1, 2) from one
  // DeformSampleGrad node.
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals,
                             const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums,
                             const std::vector<mx::array>& outputs) override;
  // Forward mode for x and mask (the columns are linear in each); offset
  // raises: it needs a kernel for the derivative of the bilinear weights
  // per channel, which the core does not have.
  std::vector<mx::array> jvp(const std::vector<mx::array>& primals,
                             const std::vector<mx::array>& tangents,
                             const std::vector<int>& argnums) override;
  // The batch axis of the sampling absorbs the vmapped axis.
  std::pair<std::vector<mx::array>, std::vector<int>> vmap(
      const std::vector<mx::array>& inputs, const std::vector<int>& axes) override;

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  bool is_equivalent(const mx::Primitive& other) const override;
  const char* name() const override { return "DeformSample"; }

  const SampleParams& params() const { return params_; }

 private:
  SampleParams params_;
};

class DeformSampleGrad : public mx::Primitive {
 public:
  DeformSampleGrad(mx::Stream stream, SampleParams params, bool need_input, bool need_coords,
                   bool deterministic)
      : mx::Primitive(stream),
        params_(params),
        need_input_(need_input),
        need_coords_(need_coords),
        deterministic_(deterministic) {}

  // inputs: grad_columns, x, offset[, mask]
  // outputs: [grad_x] [grad_offset[, grad_mask]]; on a GPU stream grad_x is
  // float32 (the kernels accumulate in it) and deform_sample_grad casts it.
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;

  // Second order is not implemented: raises with a clear message.
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals,
                             const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums,
                             const std::vector<mx::array>& outputs) override;
  std::vector<mx::array> jvp(const std::vector<mx::array>& primals,
                             const std::vector<mx::array>& tangents,
                             const std::vector<int>& argnums) override;
  std::pair<std::vector<mx::array>, std::vector<int>> vmap(
      const std::vector<mx::array>& inputs, const std::vector<int>& axes) override;

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  bool is_equivalent(const mx::Primitive& other) const override;
  const char* name() const override { return "DeformSampleGrad"; }

 private:
  SampleParams params_;
  bool need_input_;
  bool need_coords_;
  bool deterministic_;  // GPU grad_x kernel (the CPU is deterministic anyway)
};

}  // namespace dcn_mlx
