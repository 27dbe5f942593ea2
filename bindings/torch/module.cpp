// dcn_torch._C: the core's kernels over DLPack arrays (zero-copy torch
// tensors, read through tensor_view.h), CPU and, when built with DCN_CUDA,
// CUDA: each call runs on the
// device its arrays live on (all on one device, or ValueError). It links no
// framework: torch users need neither libtorch headers nor MLX. The GEMMs
// and the batch chunking live in dcn_torch; CUDA calls take the stream to
// launch on (torch's current stream) from there, as an integer handle.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "dcn/cpu.h"
#include "dcn/params.h"
#if defined(DCN_WITH_CUDA)
#include "dcn/cuda.h"
#endif
#include "../common/conv_args.h"
#include "tensor_view.h"

namespace nb = nanobind;
using Array = dcn_bind::TensorView;  // any device: checked by on_device()
using dcn_bind::Pair;
using dcn_bind::fill_params;
using dcn_bind::resolve_or_throw;

namespace {

dcn::DType dtype_of(const Array& a) {
  const nb::dlpack::dtype d = a.dtype();
  if (d.lanes != 1) return dcn::DType::Other;
  if (d.code == uint8_t(nb::dlpack::dtype_code::Float)) {
    if (d.bits == 32) return dcn::DType::Float32;
    if (d.bits == 64) return dcn::DType::Float64;
    if (d.bits == 16) return dcn::DType::Float16;
  }
  if (d.code == uint8_t(nb::dlpack::dtype_code::Bfloat) && d.bits == 16)
    return dcn::DType::BFloat16;
  return dcn::DType::Other;
}

dcn::DType dtype_from_name(const std::string& s) {
  if (s == "float32") return dcn::DType::Float32;
  if (s == "float64") return dcn::DType::Float64;
  if (s == "float16") return dcn::DType::Float16;
  if (s == "bfloat16") return dcn::DType::BFloat16;
  return dcn::DType::Other;
}

dcn::TensorDesc desc_of_shape(const std::vector<int64_t>& shape, dcn::DType dt) {
  if (shape.size() > size_t(dcn::TensorDesc::kMaxRank))
    throw std::invalid_argument("expected 4-D tensors (1-D bias), got a " +
                                std::to_string(shape.size()) + "-D tensor");
  dcn::TensorDesc t;
  t.rank = int(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) t.shape[i] = shape[i];
  t.dtype = dt;
  return t;
}

dcn::TensorDesc desc_of(const Array& a) {
  std::vector<int64_t> s(a.ndim());
  for (size_t i = 0; i < a.ndim(); ++i) s[i] = int64_t(a.shape(i));
  return desc_of_shape(s, dtype_of(a));
}

dcn::Strides4 strides4(const Array& a) {
  return dcn::Strides4{a.stride(0), a.stride(1), a.stride(2), a.stride(3)};
}

// Where a call runs: every array on the CPU, or every array on the same
// CUDA device (the stream is torch's current one, passed by the caller).
struct Place {
  bool cuda = false;
  int device = 0;
};

Place on_device(std::initializer_list<std::pair<const char*, const Array*>> arrays) {
  Place place;
  bool first = true;
  for (const auto& [name, a] : arrays) {
    if (a == nullptr) continue;
    const int type = a->device_type();
    const bool cuda = type == nb::device::cuda::value;
    if (!cuda && type != nb::device::cpu::value)
      throw std::invalid_argument(std::string(name) + ": expected a CPU or CUDA array");
    if (first) {
      place = Place{cuda, cuda ? int(a->device_id()) : 0};
      first = false;
    } else if (cuda != place.cuda || (cuda && int(a->device_id()) != place.device)) {
      throw std::invalid_argument(std::string(name) +
                                  ": expected every array on the same device as the first");
    }
  }
#if !defined(DCN_WITH_CUDA)
  if (place.cuda)
    throw std::invalid_argument(
        "dcn: this build has no CUDA kernels (dcn_torch.build_info() lists the backends)");
#endif
  return place;
}

#if defined(DCN_WITH_CUDA)
dcn::cuda::Launch launch_of(const Place& p, uintptr_t stream) {
  return dcn::cuda::Launch{p.device, reinterpret_cast<void*>(stream)};
}
#endif

template <typename T>
const Array* opt(const std::optional<T>& a) {
  return a ? &*a : nullptr;
}

// Geometry of a kernel call: the sampling does not depend on the weight
// beyond its kernel size, so a (1, C, kh, kw) stand-in is validated.
dcn::Geometry kernel_geometry(const Array& input_like, dcn::DType dtype, const Array& offset,
                              const std::optional<Array>& mask, Pair kernel, Pair stride,
                              Pair padding, Pair dilation) {
  dcn::ConvArgs args;
  args.input = desc_of(input_like);
  args.input.dtype = dtype;
  args.weight = args.input;
  args.weight.shape[0] = 1;
  args.weight.shape[2] = std::get<0>(kernel);
  args.weight.shape[3] = std::get<1>(kernel);
  args.offset = desc_of(offset);
  if (mask) args.mask = desc_of(*mask);
  fill_params(args, stride, padding, dilation);
  return resolve_or_throw(args);
}

// Columns in one of three C-contiguous layouts, in the storage dtype:
//   channel-major (N, C*kh*kw, out_h, out_w), element (c*K + k, p): torch's
//     im2col layout, the GEMM's right operand as is;
//   pixel-major (N, out_h, out_w, kh*kw*C), element (p, k*C + c): every
//     sample's channels are contiguous, so with a channels-last input the
//     CPU kernels sweep them as vectors;
//   pixel-major by weight group (N, groups, out_h, out_w, kh*kw*C/groups),
//     element (g, p, k*Cg + c) for channel g*Cg + c: each group's columns
//     one (P, kh*kw*Cg) matrix of a batched GEMM, and within a group the
//     channels still contiguous.
dcn::ColumnStrides column_strides(const Array& cols, const dcn::Geometry& g, dcn::DType dtype,
                                  const char* name, bool pixel_major) {
  const int64_t K = g.kernel_points(), P = g.out_pixels(), CK = g.channels * K;
  const bool grouped = pixel_major && cols.ndim() == 5;
  const int64_t groups = grouped ? int64_t(cols.shape(1)) : 1;
  const bool divides = groups >= 1 && g.channels % groups == 0;
  const int64_t Cg = divides ? g.channels / groups : g.channels;
  std::vector<int64_t> want;
  if (!pixel_major) want = {g.batch, CK, g.out_h, g.out_w};
  else if (grouped) want = {g.batch, groups, g.out_h, g.out_w, K * Cg};
  else want = {g.batch, g.out_h, g.out_w, CK};
  bool ok = divides && int64_t(cols.ndim()) == int64_t(want.size()) && dtype_of(cols) == dtype;
  for (size_t i = 0; ok && i < want.size(); ++i) ok = int64_t(cols.shape(i)) == want[i];
  int64_t stride = 1;
  for (size_t i = want.size() - 1; ok && i >= 1; --i) {
    ok = want[i] == 1 || int64_t(cols.stride(i)) == stride;
    stride *= want[i];
  }
  ok = ok && (g.batch <= 1 || cols.stride(0) == CK * P);
  if (!ok) {
    throw std::invalid_argument(std::string(name) + ": expected a contiguous " +
                                (pixel_major ? "(N, out_h, out_w, kh*kw*C) or (N, groups, out_h, "
                                               "out_w, kh*kw*C/groups)"
                                             : "(N, C*kh*kw, out_h, out_w)") +
                                " array in the input's dtype");
  }
  dcn::ColumnStrides cs;
  cs.n = CK * P;
  cs.block = Cg;  // one block per weight group (one block without groups)
  cs.block_stride = grouped ? P * K * Cg : 0;
  cs.c = pixel_major ? 1 : K * P;
  cs.k = pixel_major ? Cg : P;
  cs.p = pixel_major ? K * Cg : 1;
  return cs;
}

void require_shape(const Array& a, const int64_t (&want)[4], const char* name) {
  bool ok = a.ndim() == 4;
  for (int i = 0; ok && i < 4; ++i) ok = int64_t(a.shape(i)) == want[i];
  if (!ok) throw std::invalid_argument(std::string(name) + ": output array has the wrong shape");
}

nb::dict geometry(std::vector<int64_t> input, std::vector<int64_t> weight,
                  std::vector<int64_t> offset, std::optional<std::vector<int64_t>> mask,
                  std::optional<std::vector<int64_t>> bias, std::vector<std::string> dtypes,
                  Pair stride, Pair padding, Pair dilation, const std::string& layout) {
  if (dtypes.size() != 5) throw std::invalid_argument("dtypes: expected 5 names");
  dcn::ConvArgs args;
  args.input = desc_of_shape(input, dtype_from_name(dtypes[0]));
  args.weight = desc_of_shape(weight, dtype_from_name(dtypes[1]));
  args.offset = desc_of_shape(offset, dtype_from_name(dtypes[2]));
  if (mask) args.mask = desc_of_shape(*mask, dtype_from_name(dtypes[3]));
  if (bias) args.bias = desc_of_shape(*bias, dtype_from_name(dtypes[4]));
  fill_params(args, stride, padding, dilation);
  if (layout == "NHWC") args.layout = dcn::Layout::NHWC;
  else if (layout != "NCHW") throw std::invalid_argument("layout: expected 'NCHW' or 'NHWC'");
  const dcn::Geometry g = resolve_or_throw(args);
  return dcn_bind::geometry_dict(g);
}

void im2col(const Array& input, const Array& offset, std::optional<Array> mask, Array columns,
            Pair kernel, Pair stride, Pair padding, Pair dilation, uintptr_t stream,
            bool pixel_major) {
  const Place place = on_device({{"input", &input}, {"offset", &offset}, {"mask", opt(mask)},
                                 {"columns", &columns}});
  const dcn::DType dt = dtype_of(input);
  const dcn::Geometry g = kernel_geometry(input, dt, offset, mask, kernel, stride, padding, dilation);
  const dcn::ColumnStrides cs = column_strides(columns, g, dt, "columns", pixel_major);
  const dcn::Strides4 ms = mask ? strides4(*mask) : dcn::Strides4{};
  nb::gil_scoped_release release;
#if defined(DCN_WITH_CUDA)
  if (place.cuda) {
    dcn::cuda::im2col(dt, g, input.data(), strides4(input), offset.data(), strides4(offset),
                      mask ? mask->data() : nullptr, ms, columns.data(), cs,
                      launch_of(place, stream));
    return;
  }
#endif
  (void)stream;
  dcn::cpu::im2col(dt, g, input.data(), strides4(input), offset.data(), strides4(offset),
                   mask ? mask->data() : nullptr, ms, columns.data(), cs);
}

// CPU: dst = src in channels-last order. dst is (N, C, H, W) with
// channels-last strides over contiguous memory (an (N, H, W, C) buffer
// permuted), src the same shape and dtype with any strides.
void to_channels_last(const Array& src, Array dst) {
  const Place place = on_device({{"src", &src}, {"dst", &dst}});
  if (place.cuda) throw std::invalid_argument("to_channels_last: CPU tensors only");
  if (src.ndim() != 4 || dst.ndim() != 4)
    throw std::invalid_argument("to_channels_last: expected 4-D arrays");
  const dcn::cpu::Shape4 shape{src.shape(0), src.shape(1), src.shape(2), src.shape(3)};
  bool ok = dtype_of(dst) == dtype_of(src);
  for (size_t i = 0; ok && i < 4; ++i) ok = dst.shape(i) == src.shape(i);
  const int64_t C = shape.c, W = shape.w;
  ok = ok && (C == 1 || dst.stride(1) == 1) && (W == 1 || dst.stride(3) == C) &&
       (shape.h == 1 || dst.stride(2) == W * C) && (shape.n == 1 || dst.stride(0) == shape.h * W * C);
  if (!ok)
    throw std::invalid_argument(
        "dst: expected src's shape and dtype with contiguous channels-last strides");
  const dcn::DType dt = dtype_of(src);
  if (dt == dcn::DType::Other)
    throw std::invalid_argument("src: expected float32, float64, float16 or bfloat16");
  nb::gil_scoped_release release;
  dcn::cpu::to_channels_last(dt, shape, src.data(), strides4(src), dst.data());
}

bool c_contiguous(const Array& a) {
  int64_t expect = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expect) return false;
    expect *= a.shape(i);
  }
  return true;
}

// CPU: dst (N, C, H, W) = src (N, H, W, C) + bias[c], both contiguous.
void from_channels_last(const Array& src, std::optional<Array> bias, Array dst) {
  const Place place = on_device({{"src", &src}, {"bias", opt(bias)}, {"dst", &dst}});
  if (place.cuda) throw std::invalid_argument("from_channels_last: CPU tensors only");
  if (src.ndim() != 4 || dst.ndim() != 4)
    throw std::invalid_argument("from_channels_last: expected 4-D arrays");
  const dcn::cpu::Shape4 shape{dst.shape(0), dst.shape(1), dst.shape(2), dst.shape(3)};
  const dcn::DType dt = dtype_of(dst);
  if (dt == dcn::DType::Other)
    throw std::invalid_argument("dst: expected float32, float64, float16 or bfloat16");
  if (dtype_of(src) != dt || src.shape(0) != shape.n || src.shape(1) != shape.h ||
      src.shape(2) != shape.w || src.shape(3) != shape.c || !c_contiguous(src))
    throw std::invalid_argument("src: expected a contiguous (N, H, W, C) array in dst's dtype");
  if (!c_contiguous(dst)) throw std::invalid_argument("dst: expected a contiguous array");
  if (bias && (dtype_of(*bias) != dt || bias->ndim() != 1 || bias->shape(0) != shape.c ||
               !c_contiguous(*bias)))
    throw std::invalid_argument("bias: expected a contiguous (C,) array in dst's dtype");
  nb::gil_scoped_release release;
  dcn::cpu::from_channels_last(dt, shape, src.data(), bias ? bias->data() : nullptr, dst.data());
}

// Validated arguments of col2im / coord_grad (shared by the fused call).
struct Col2imArgs {
  dcn::DType dt;
  dcn::Geometry g;
  dcn::ColumnStrides cs;
  dcn::Strides4 ms;
};

Col2imArgs col2im_args(const Array& grad_columns, const Array& offset,
                       const std::optional<Array>& mask, const Array& grad_input, Pair kernel,
                       Pair stride, Pair padding, Pair dilation, bool pixel_major) {
  Col2imArgs a;
  a.dt = dtype_of(grad_columns);
  a.g = kernel_geometry(grad_input, a.dt, offset, mask, kernel, stride, padding, dilation);
  a.cs = column_strides(grad_columns, a.g, a.dt, "grad_columns", pixel_major);
  const dcn::DType acc = a.dt == dcn::DType::Float64 ? dcn::DType::Float64 : dcn::DType::Float32;
  if (dtype_of(grad_input) != acc)
    throw std::invalid_argument(std::string("grad_input: expected accumulation dtype ") +
                                dcn::dtype_name(acc));
  a.ms = mask ? strides4(*mask) : dcn::Strides4{};
  return a;
}

struct CoordArgs {
  dcn::DType dt;
  dcn::Geometry g;
  dcn::ColumnStrides cs;
  dcn::Strides4 ms, gms;
};

CoordArgs coord_args(const Array& grad_columns, const Array& input, const Array& offset,
                     const std::optional<Array>& mask, const Array& grad_offset,
                     const std::optional<Array>& grad_mask, const std::optional<Array>& columns_out,
                     Pair kernel, Pair stride, Pair padding, Pair dilation, bool pixel_major) {
  CoordArgs a;
  a.dt = dtype_of(input);
  a.g = kernel_geometry(input, a.dt, offset, mask, kernel, stride, padding, dilation);
  a.cs = column_strides(grad_columns, a.g, a.dt, "grad_columns", pixel_major);
  if (columns_out) column_strides(*columns_out, a.g, a.dt, "columns_out", pixel_major);
  if (bool(mask) != bool(grad_mask))
    throw std::invalid_argument("grad_mask: must be given exactly when mask is given");
  const int64_t K = a.g.kernel_points();
  const int64_t off_shape[4] = {a.g.batch, 2 * a.g.offset_groups * K, a.g.out_h, a.g.out_w};
  require_shape(grad_offset, off_shape, "grad_offset");
  if (dtype_of(grad_offset) != a.dt) throw std::invalid_argument("grad_offset: wrong dtype");
  a.ms = dcn::Strides4{};
  a.gms = dcn::Strides4{};
  if (mask) {
    const int64_t m_shape[4] = {a.g.batch, a.g.offset_groups * K, a.g.out_h, a.g.out_w};
    require_shape(*grad_mask, m_shape, "grad_mask");
    if (dtype_of(*grad_mask) != a.dt) throw std::invalid_argument("grad_mask: wrong dtype");
    a.ms = strides4(*mask);
    a.gms = strides4(*grad_mask);
  }
  return a;
}

void col2im(const Array& grad_columns, const Array& offset, std::optional<Array> mask,
            Array grad_input, Pair kernel, Pair stride, Pair padding, Pair dilation,
            uintptr_t stream, std::optional<Array> workspace, bool pixel_major) {
  const Place place = on_device({{"grad_columns", &grad_columns}, {"offset", &offset},
                                 {"mask", opt(mask)}, {"grad_input", &grad_input},
                                 {"workspace", opt(workspace)}});
  const Col2imArgs a = col2im_args(grad_columns, offset, mask, grad_input, kernel, stride,
                                   padding, dilation, pixel_major);
  nb::gil_scoped_release release;
#if defined(DCN_WITH_CUDA)
  if (place.cuda) {
    if (workspace) {
      dcn::cuda::col2im_deterministic(
          a.dt, a.g, grad_columns.data(), a.cs, offset.data(), strides4(offset),
          mask ? mask->data() : nullptr, a.ms, grad_input.data(), strides4(grad_input),
          workspace->data(), workspace->nbytes(), launch_of(place, stream));
    } else {
      dcn::cuda::col2im(a.dt, a.g, grad_columns.data(), a.cs, offset.data(), strides4(offset),
                        mask ? mask->data() : nullptr, a.ms, grad_input.data(),
                        strides4(grad_input), launch_of(place, stream));
    }
    return;
  }
#endif
  (void)stream;  // the CPU kernel is deterministic: no workspace needed
  dcn::cpu::col2im(a.dt, a.g, grad_columns.data(), a.cs, offset.data(), strides4(offset),
                   mask ? mask->data() : nullptr, a.ms, grad_input.data(), strides4(grad_input));
}

void coord_grad(const Array& grad_columns, const Array& input, const Array& offset,
                std::optional<Array> mask, Array grad_offset, std::optional<Array> grad_mask,
                std::optional<Array> columns_out, Pair kernel, Pair stride, Pair padding,
                Pair dilation, uintptr_t stream, bool pixel_major) {
  const Place place = on_device({{"grad_columns", &grad_columns}, {"input", &input},
                                 {"offset", &offset}, {"mask", opt(mask)},
                                 {"grad_offset", &grad_offset}, {"grad_mask", opt(grad_mask)},
                                 {"columns_out", opt(columns_out)}});
  const CoordArgs a = coord_args(grad_columns, input, offset, mask, grad_offset, grad_mask,
                                 columns_out, kernel, stride, padding, dilation, pixel_major);
  nb::gil_scoped_release release;
#if defined(DCN_WITH_CUDA)
  if (place.cuda) {
    dcn::cuda::coord_grad(a.dt, a.g, grad_columns.data(), a.cs, input.data(), strides4(input),
                          offset.data(), strides4(offset), mask ? mask->data() : nullptr, a.ms,
                          grad_offset.data(), strides4(grad_offset),
                          grad_mask ? grad_mask->data() : nullptr, a.gms,
                          columns_out ? columns_out->data() : nullptr, launch_of(place, stream));
    return;
  }
#endif
  (void)stream;
  dcn::cpu::coord_grad(a.dt, a.g, grad_columns.data(), a.cs, input.data(), strides4(input),
                       offset.data(), strides4(offset), mask ? mask->data() : nullptr, a.ms,
                       grad_offset.data(), strides4(grad_offset),
                       grad_mask ? grad_mask->data() : nullptr, a.gms,
                       columns_out ? columns_out->data() : nullptr);
}

// CPU only: col2im and coord_grad in one parallel region (dcn/cpu.h).
void col2im_and_coord_grad(const Array& grad_columns, const Array& input, const Array& offset,
                           std::optional<Array> mask, Array grad_input, Array grad_offset,
                           std::optional<Array> grad_mask, std::optional<Array> columns_out,
                           Pair kernel, Pair stride, Pair padding, Pair dilation,
                           bool pixel_major) {
  const Place place = on_device({{"grad_columns", &grad_columns}, {"input", &input},
                                 {"offset", &offset}, {"mask", opt(mask)},
                                 {"grad_input", &grad_input}, {"grad_offset", &grad_offset},
                                 {"grad_mask", opt(grad_mask)}, {"columns_out", opt(columns_out)}});
  if (place.cuda)
    throw std::invalid_argument(
        "col2im_and_coord_grad: CPU tensors only (on CUDA call col2im and coord_grad)");
  const Col2imArgs c = col2im_args(grad_columns, offset, mask, grad_input, kernel, stride,
                                   padding, dilation, pixel_major);
  const CoordArgs a = coord_args(grad_columns, input, offset, mask, grad_offset, grad_mask,
                                 columns_out, kernel, stride, padding, dilation, pixel_major);
  if (c.dt != a.dt) throw std::invalid_argument("grad_columns: expected the input's dtype");
  nb::gil_scoped_release release;
  dcn::cpu::col2im_and_coord_grad(
      a.dt, a.g, grad_columns.data(), a.cs, input.data(), strides4(input), offset.data(),
      strides4(offset), mask ? mask->data() : nullptr, a.ms, grad_input.data(),
      strides4(grad_input), grad_offset.data(), strides4(grad_offset),
      grad_mask ? grad_mask->data() : nullptr, a.gms, columns_out ? columns_out->data() : nullptr);
}

// Bytes of device scratch the deterministic CUDA col2im needs for this call
// (0 on a build without CUDA: the CPU kernel needs none).
size_t col2im_workspace_size(const Array& grad_input, const Array& offset,
                             std::optional<Array> mask, Pair kernel, Pair stride, Pair padding,
                             Pair dilation) {
  const dcn::DType dt = dtype_of(offset);
  const dcn::Geometry g =
      kernel_geometry(grad_input, dt, offset, mask, kernel, stride, padding, dilation);
#if defined(DCN_WITH_CUDA)
  const Place place = on_device({{"grad_input", &grad_input}, {"offset", &offset},
                                 {"mask", opt(mask)}});
  if (place.cuda) return dcn::cuda::col2im_deterministic_workspace(dt, g, place.device);
#endif
  return 0;
}

// {"version": "13.0", "architectures": [80, 86, ...]} or None without CUDA.
nb::object cuda_info() {
#if defined(DCN_WITH_CUDA)
  nb::dict d;
  const int v = dcn::cuda::runtime_version();
  d["version"] = std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
  nb::list archs;
  std::string s = dcn::cuda::architectures();
  size_t at = 0;
  while (at < s.size()) {
    size_t end = s.find(';', at);
    if (end == std::string::npos) end = s.size();
    if (end > at) archs.append(std::stoi(s.substr(at, end - at)));
    at = end + 1;
  }
  d["architectures"] = archs;
  return d;
#else
  return nb::none();
#endif
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "dcn core kernels (CPU, and CUDA when built with it) over DLPack arrays";
  m.def("geometry", &geometry, nb::arg("input"), nb::arg("weight"), nb::arg("offset"),
        nb::arg("mask").none(), nb::arg("bias").none(), nb::arg("dtypes"), nb::arg("stride"),
        nb::arg("padding"), nb::arg("dilation"), nb::arg("layout") = "NCHW",
        "Validate shapes/dtypes/parameters; return the inferred geometry or raise ValueError.");
  m.def("im2col", &im2col, nb::arg("input").noconvert(), nb::arg("offset").noconvert(),
        nb::arg("mask").noconvert().none(), nb::arg("columns").noconvert(), nb::arg("kernel"),
        nb::arg("stride"), nb::arg("padding"), nb::arg("dilation"), nb::arg("stream") = 0,
        nb::arg("pixel_major") = false,
        "columns = mask * bilinear(input) per sample; pixel_major picks the columns' layout "
        "(N, out_h, out_w, kh*kw*C) instead of (N, C*kh*kw, out_h, out_w).");
  m.def("col2im", &col2im, nb::arg("grad_columns").noconvert(), nb::arg("offset").noconvert(),
        nb::arg("mask").noconvert().none(), nb::arg("grad_input").noconvert(), nb::arg("kernel"),
        nb::arg("stride"), nb::arg("padding"), nb::arg("dilation"), nb::arg("stream") = 0,
        nb::arg("workspace").noconvert().none() = nb::none(), nb::arg("pixel_major") = false,
        "grad_input = adjoint of im2col. On CUDA: atomic adds, or, given a workspace of "
        "col2im_workspace_size() bytes, the deterministic kernel.");
  m.def("col2im_workspace_size", &col2im_workspace_size, nb::arg("grad_input").noconvert(),
        nb::arg("offset").noconvert(), nb::arg("mask").noconvert().none(), nb::arg("kernel"),
        nb::arg("stride"), nb::arg("padding"), nb::arg("dilation"));
  m.def("cuda_info", &cuda_info);
  m.def("coord_grad", &coord_grad, nb::arg("grad_columns").noconvert(),
        nb::arg("input").noconvert(), nb::arg("offset").noconvert(),
        nb::arg("mask").noconvert().none(), nb::arg("grad_offset").noconvert(),
        nb::arg("grad_mask").noconvert().none(), nb::arg("columns_out").noconvert().none(),
        nb::arg("kernel"), nb::arg("stride"), nb::arg("padding"), nb::arg("dilation"),
        nb::arg("stream") = 0, nb::arg("pixel_major") = false);
  m.def("col2im_and_coord_grad", &col2im_and_coord_grad, nb::arg("grad_columns").noconvert(),
        nb::arg("input").noconvert(), nb::arg("offset").noconvert(),
        nb::arg("mask").noconvert().none(), nb::arg("grad_input").noconvert(),
        nb::arg("grad_offset").noconvert(), nb::arg("grad_mask").noconvert().none(),
        nb::arg("columns_out").noconvert().none(), nb::arg("kernel"), nb::arg("stride"),
        nb::arg("padding"), nb::arg("dilation"), nb::arg("pixel_major") = false,
        "CPU: col2im and coord_grad in one parallel region (the same results as the two "
        "calls; no core waits at a barrier between them).");
  m.def("to_channels_last", &to_channels_last, nb::arg("src").noconvert(),
        nb::arg("dst").noconvert(),
        "CPU: copy src (N, C, H, W), any strides, into dst, the same shape with "
        "contiguous channels-last strides.");
  m.def("from_channels_last", &from_channels_last, nb::arg("src").noconvert(),
        nb::arg("bias").noconvert().none(), nb::arg("dst").noconvert(),
        "CPU: dst (N, C, H, W) = src (N, H, W, C) + bias[c] (bias may be None), both "
        "contiguous.");
  m.def("set_num_threads", &dcn::cpu::set_num_threads, nb::arg("n"));
  m.def("get_num_threads", &dcn::cpu::get_num_threads);
}
