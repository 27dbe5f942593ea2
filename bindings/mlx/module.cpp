// dcn_mlx._C: the dcn primitives for MLX. Built with NB_DOMAIN mlx (and not
// the stable ABI) so that mx.array objects pass to and from mlx.core.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "mlx/array.h"
#include "mlx/utils.h"
#include "mlx/version.h"

#include "dcn/cpu.h"
#include "dcn/params.h"
#include "../common/conv_args.h"
#include "primitives.h"

namespace nb = nanobind;
using namespace nb::literals;
namespace mx = mlx::core;
using dcn_bind::Pair;
using dcn_bind::fill_params;

namespace {

// Full validation of a deform_conv2d call (NHWC), in the core.
nb::dict geometry(const mx::array& input, const mx::array& weight, const mx::array& offset,
                  const std::optional<mx::array>& mask, const std::optional<mx::array>& bias,
                  Pair stride, Pair padding, Pair dilation) {
  dcn::ConvArgs args;
  args.layout = dcn::Layout::NHWC;
  args.input = dcn_mlx::to_desc(input, "input", 4, "(N, H, W, C)");
  args.weight = dcn_mlx::to_desc(weight, "weight", 4, "(out_channels, kh, kw, C/groups)");
  args.offset = dcn_mlx::to_desc(offset, "offset", 4, "(N, out_h, out_w, 2*offset_groups*kh*kw)");
  if (mask) args.mask = dcn_mlx::to_desc(*mask, "mask", 4, "(N, out_h, out_w, offset_groups*kh*kw)");
  if (bias) args.bias = dcn_mlx::to_desc(*bias, "bias", 1, "(out_channels,)");
  fill_params(args, stride, padding, dilation);
  return dcn_bind::geometry_dict(dcn_bind::resolve_or_throw(args));
}

dcn_mlx::SampleParams make_params(Pair kernel, Pair stride, Pair padding, Pair dilation,
                                  int64_t groups) {
  dcn_mlx::SampleParams p;
  p.kernel_h = std::get<0>(kernel);
  p.kernel_w = std::get<1>(kernel);
  p.stride_h = std::get<0>(stride);
  p.stride_w = std::get<1>(stride);
  p.pad_h = std::get<0>(padding);
  p.pad_w = std::get<1>(padding);
  p.dilation_h = std::get<0>(dilation);
  p.dilation_w = std::get<1>(dilation);
  p.groups = groups;
  return p;
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "dcn primitives for MLX: DeformSample (deformable im2col) and DeformSampleGrad";

  m.def("geometry", &geometry, "input"_a, "weight"_a, "offset"_a, "mask"_a.none(),
        "bias"_a.none(), "stride"_a, "padding"_a, "dilation"_a,
        "Validate a deform_conv2d call (NHWC); return the inferred geometry or raise "
        "ValueError naming the argument.");

  m.def(
      "deform_sample",
      [](const mx::array& x, const mx::array& offset, const std::optional<mx::array>& mask,
         Pair kernel, Pair stride, Pair padding, Pair dilation, int64_t groups,
         mx::StreamOrDevice s) {
        return dcn_mlx::deform_sample(x, offset, mask,
                                      make_params(kernel, stride, padding, dilation, groups), s);
      },
      "x"_a, "offset"_a, "mask"_a.none(), "kernel"_a, "stride"_a, "padding"_a, "dilation"_a,
      "groups"_a = 1, nb::kw_only(), "stream"_a = nb::none(),
      R"(The deformable sampling (DeformSample primitive).

x (N, H, W, C), offset (N, Ho, Wo, 2*G*kh*kw), mask (N, Ho, Wo, G*kh*kw) or
None. Returns the columns (groups, N, Ho, Wo, kh*kw*C/groups): for weight
group g, columns[g] @ weight[g*Og:(g+1)*Og].reshape(Og, -1).T is that group's
convolution with an (O, kh, kw, C/groups) weight.)");

  m.def(
      "deform_sample_grad",
      [](const mx::array& grad_columns, const mx::array& x, const mx::array& offset,
         const std::optional<mx::array>& mask, Pair kernel, Pair stride, Pair padding,
         Pair dilation, int64_t groups, bool need_input, bool need_coords,
         mx::StreamOrDevice s) {
        return dcn_mlx::deform_sample_grad(grad_columns, x, offset, mask,
                                           make_params(kernel, stride, padding, dilation, groups),
                                           need_input, need_coords, s);
      },
      "grad_columns"_a, "x"_a, "offset"_a, "mask"_a.none(), "kernel"_a, "stride"_a,
      "padding"_a, "dilation"_a, "groups"_a = 1, "need_input"_a = true, "need_coords"_a = true,
      nb::kw_only(), "stream"_a = nb::none(),
      "The adjoint of deform_sample (DeformSampleGrad primitive): [grad_x] + "
      "[grad_offset[, grad_mask]].");

  // MLX's C++ ABI changes every release: dcn_mlx checks at import that the
  // mlx it runs with is the one it was compiled against.
  m.attr("mlx_build_version") = std::to_string(MLX_VERSION_MAJOR) + "." +
                                std::to_string(MLX_VERSION_MINOR) + "." +
                                std::to_string(MLX_VERSION_PATCH);
  m.def("mlx_runtime_version", [] { return std::string(mx::version()); },
        "Version of the libmlx this module is running with.");

  m.def("set_num_threads", &dcn::cpu::set_num_threads, "n"_a,
        "Threads of the dcn CPU kernels (0: hardware concurrency).");
  m.def("get_num_threads", &dcn::cpu::get_num_threads);

  m.def("set_deterministic", &dcn_mlx::set_deterministic, "deterministic"_a,
        "Gradient graphs built from now on compute grad_input on the GPU with the "
        "deterministic kernel (bitwise reproducible) instead of atomic adds.");
  m.def("get_deterministic", &dcn_mlx::deterministic);

  // How this build ships its GPU kernels (cmake/dcn_metal.cmake).
#if defined(DCN_METAL_EMBEDDED_SOURCE)
  m.attr("metal_kernels") = "source";  // compiled by MLX at first use
#elif defined(DCN_MLX_METAL)
  m.attr("metal_kernels") = "metallib";  // dcn_kernels.metallib beside this module
#else
  m.attr("metal_kernels") = "none";
#endif
}
