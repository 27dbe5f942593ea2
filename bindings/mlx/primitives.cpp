// DeformSample / DeformSampleGrad: graph construction, autodiff, vmap and the
// CPU evaluation through MLX's command encoder; the GPU evaluation is in
// metal_eval.cpp. See primitives.h.
#include "primitives.h"

#include <atomic>
#include <cstring>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"

#include "dcn/cpu.h"
#include "dcn/storage.h"
#include "metal_contract.h"
#include "metal_eval.h"

namespace dcn_mlx {
namespace {

std::string shape_str(const mx::Shape& s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  if (s.size() == 1) o << ",";
  o << ")";
  return o.str();
}

dcn::Strides4 nhwc_strides(const mx::array& a) {
  const auto& s = a.strides();
  return dcn::Strides4{s[0], s[3], s[1], s[2]};
}

int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

// Columns (groups, N, Ho, Wo, K*Cg) with element strides s[0..4] as the
// core's ColumnStrides. False when the two pixel axes cannot be walked with
// one stride (then the caller copies to a contiguous buffer first).
bool column_strides(const dcn::Geometry& g, int64_t groups, const int64_t* s,
                    dcn::ColumnStrides* out) {
  int64_t p_stride;
  if (g.out_w == 1) {
    p_stride = s[2];
  } else if (g.out_h == 1 || s[2] == g.out_w * s[3]) {
    p_stride = s[3];
  } else {
    return false;
  }
  const int64_t cg = g.channels / groups;
  dcn::ColumnStrides cs;
  cs.n = s[1];
  cs.block = cg;
  cs.block_stride = s[0];
  cs.c = s[4];
  cs.k = cg * s[4];
  cs.p = p_stride;
  *out = cs;
  return true;
}

// Row-major copy of a strided 5-D array (elements of `itemsize` bytes).
void copy_to_contiguous(const void* src, const mx::Shape& shape, const mx::Strides& strides,
                        size_t itemsize, void* dst) {
  const char* s = static_cast<const char*>(src);
  char* d = static_cast<char*>(dst);
  const int64_t n0 = shape[0], n1 = shape[1], n2 = shape[2], n3 = shape[3], n4 = shape[4];
  for (int64_t i0 = 0; i0 < n0; ++i0)
    for (int64_t i1 = 0; i1 < n1; ++i1)
      for (int64_t i2 = 0; i2 < n2; ++i2)
        for (int64_t i3 = 0; i3 < n3; ++i3) {
          const int64_t base =
              i0 * strides[0] + i1 * strides[1] + i2 * strides[2] + i3 * strides[3];
          for (int64_t i4 = 0; i4 < n4; ++i4) {
            std::memcpy(d, s + (base + i4 * strides[4]) * int64_t(itemsize), itemsize);
            d += itemsize;
          }
        }
}

std::optional<mx::array> mask_of(const std::vector<mx::array>& inputs, size_t at) {
  if (inputs.size() > at) return inputs[at];
  return std::nullopt;
}

#if !defined(DCN_MLX_METAL)
[[noreturn]] void no_gpu(const char* what) {
  throw std::runtime_error(
      std::string("dcn: this build of dcn_mlx has no GPU kernels (the Metal kernels are built on "
                  "macOS only): ") +
      what +
      " has no GPU implementation here. Run it on the CPU: pass stream=mx.cpu, or "
      "mx.set_default_device(mx.cpu).");
}
#endif

std::atomic<bool> g_deterministic{false};

// On a GPU stream: refuse what the Metal kernels cannot do while the graph
// is built (a clear error at the call, not at mx.eval).
void check_gpu_call(const dcn::Geometry& g, mx::Dtype dtype, mx::Stream s) {
  if (!metal_contract::on_gpu(s)) return;
  metal_contract::check_dtype(dtype);
  metal_contract::check_index_range(g);
}

// The inputs of a sampling node as its stream's kernels read them: as given
// on the CPU (the core is stride-aware), dense NHWC for the Metal kernels.
std::vector<mx::array> sample_inputs(const mx::array& x, const mx::array& offset,
                                     const std::optional<mx::array>& mask, mx::Stream s) {
  std::vector<mx::array> in{x, offset};
  if (mask) in.push_back(*mask);
  if (metal_contract::on_gpu(s))
    for (auto& a : in) a = metal_contract::dense(a, s);
  return in;
}

// The DeformSampleGrad node itself (its outputs as evaluated). On a GPU
// stream grad_columns goes in in the kernels' order and grad_x comes out in
// float32, the kernels' accumulation type; deform_sample_grad casts it.
std::vector<mx::array> sample_grad_node(const mx::array& grad_columns, const mx::array& x,
                                        const mx::array& offset,
                                        const std::optional<mx::array>& mask,
                                        const SampleParams& p, bool need_input,
                                        bool need_coords, bool deterministic, mx::Stream s) {
  const bool gpu = metal_contract::on_gpu(s);
  std::vector<mx::Shape> shapes;
  std::vector<mx::Dtype> dtypes;
  if (need_input) {
    shapes.push_back(x.shape());
    dtypes.push_back(gpu ? mx::float32 : x.dtype());
  }
  if (need_coords) {
    shapes.push_back(offset.shape());
    dtypes.push_back(x.dtype());
    if (mask) {
      shapes.push_back(mask->shape());
      dtypes.push_back(x.dtype());
    }
  }
  std::vector<mx::array> inputs{gpu ? metal_contract::kernel_columns(grad_columns, s)
                                    : grad_columns};
  for (auto& a : sample_inputs(x, offset, mask, s)) inputs.push_back(a);
  return mx::array::make_arrays(
      std::move(shapes), dtypes,
      std::make_shared<DeformSampleGrad>(s, p, need_input, need_coords, deterministic),
      std::move(inputs));
}

// The vmapped axis of every input moved next to (before) its batch axis,
// broadcast where the input is not vmapped, and merged with the batch axis.
// Returns the inputs and (B, N).
std::vector<mx::array> merge_vmap_axis(const std::vector<mx::array>& inputs,
                                       const std::vector<int>& axes,
                                       const std::vector<int>& batch_axis, int64_t* B,
                                       int64_t* N, mx::Stream s) {
  *B = -1;
  for (size_t i = 0; i < inputs.size(); ++i)
    if (axes[i] >= 0) *B = inputs[i].shape(axes[i]);
  if (*B < 0) throw std::invalid_argument("dcn: vmap without a vmapped input");
  std::vector<mx::array> out;
  *N = -1;
  for (size_t i = 0; i < inputs.size(); ++i) {
    mx::array a = inputs[i];
    const int b = batch_axis[i];
    if (axes[i] >= 0) {
      a = mx::moveaxis(a, axes[i], b, s);
    } else {
      a = mx::expand_dims(a, b, s);
      mx::Shape shape = a.shape();
      shape[b] = int(*B);
      a = mx::broadcast_to(a, shape, s);
    }
    if (*N < 0) *N = a.shape(b + 1);
    out.push_back(mx::flatten(a, b, b + 1, s));
  }
  return out;
}

}  // namespace

// ----------------------------------------------------------------- geometry
dcn::DType to_dcn_dtype(mx::Dtype d) {
  if (d == mx::float32) return dcn::DType::Float32;
  if (d == mx::float16) return dcn::DType::Float16;
  if (d == mx::bfloat16) return dcn::DType::BFloat16;
  if (d == mx::float64) return dcn::DType::Float64;
  return dcn::DType::Other;
}

dcn::TensorDesc to_desc(const mx::array& a, const char* name, int rank, const char* axes) {
  // The core's descriptor holds four sizes: higher ranks are reported here.
  if (a.ndim() > 4) {
    throw std::invalid_argument(std::string(name) + ": expected a " + std::to_string(rank) +
                                "-D tensor " + axes + ", got " + std::to_string(a.ndim()) +
                                "-D shape " + shape_str(a.shape()));
  }
  dcn::TensorDesc t;
  t.rank = int(a.ndim());
  for (size_t i = 0; i < a.ndim(); ++i) t.shape[i] = a.shape(int(i));
  t.dtype = to_dcn_dtype(a.dtype());
  return t;
}

dcn::Geometry sample_geometry(const mx::array& x, const mx::array& offset,
                              const std::optional<mx::array>& mask, const SampleParams& p) {
  dcn::ConvArgs args;
  args.layout = dcn::Layout::NHWC;
  args.input = to_desc(x, "input", 4, "(N, H, W, C)");
  args.offset = to_desc(offset, "offset", 4, "(N, out_h, out_w, 2*offset_groups*kh*kw)");
  if (mask) args.mask = to_desc(*mask, "mask", 4, "(N, out_h, out_w, offset_groups*kh*kw)");
  // The sampling does not depend on the weight beyond its kernel size and
  // group count: a (groups, kh, kw, C/groups) stand-in is validated.
  if (p.groups < 1 || p.kernel_h < 1 || p.kernel_w < 1)
    throw std::invalid_argument("dcn: groups and kernel size must be >= 1");
  const int64_t C = x.ndim() == 4 ? x.shape(3) : 0;
  if (C % p.groups != 0) {
    throw std::invalid_argument("input: " + std::to_string(C) +
                                " channels are not divisible by groups = " +
                                std::to_string(p.groups));
  }
  args.weight.rank = 4;
  args.weight.dtype = args.input.dtype;
  args.weight.shape[0] = p.groups;
  args.weight.shape[1] = p.kernel_h;
  args.weight.shape[2] = p.kernel_w;
  args.weight.shape[3] = C / p.groups;
  args.stride[0] = p.stride_h;
  args.stride[1] = p.stride_w;
  args.padding[0] = p.pad_h;
  args.padding[1] = p.pad_w;
  args.dilation[0] = p.dilation_h;
  args.dilation[1] = p.dilation_w;
  dcn::Geometry g;
  const std::string err = dcn::resolve_geometry(args, &g);
  if (!err.empty()) throw std::invalid_argument(err);
  return g;
}

mx::Shape columns_shape(const mx::Shape& xs, const SampleParams& p) {
  const int64_t ho = out_size(xs[1], p.kernel_h, p.stride_h, p.pad_h, p.dilation_h);
  const int64_t wo = out_size(xs[2], p.kernel_w, p.stride_w, p.pad_w, p.dilation_w);
  const int64_t kcg = p.kernel_h * p.kernel_w * (xs[3] / p.groups);
  return mx::Shape{int(p.groups), xs[0], int(ho), int(wo), int(kcg)};
}

void set_deterministic(bool deterministic) { g_deterministic = deterministic; }
bool deterministic() { return g_deterministic; }

// ---------------------------------------------------------------- builders
mx::array deform_sample(const mx::array& x, const mx::array& offset,
                        const std::optional<mx::array>& mask, const SampleParams& p,
                        mx::StreamOrDevice s) {
  const mx::Stream stream = mx::to_stream(s);
  check_gpu_call(sample_geometry(x, offset, mask, p), x.dtype(), stream);
  return mx::array(columns_shape(x.shape(), p), x.dtype(),
                   std::make_shared<DeformSample>(stream, p),
                   sample_inputs(x, offset, mask, stream));
}

std::vector<mx::array> deform_sample_grad(const mx::array& grad_columns, const mx::array& x,
                                          const mx::array& offset,
                                          const std::optional<mx::array>& mask,
                                          const SampleParams& p, bool need_input,
                                          bool need_coords, mx::StreamOrDevice s) {
  const mx::Stream stream = mx::to_stream(s);
  const dcn::Geometry g = sample_geometry(x, offset, mask, p);
  const mx::Shape cols = columns_shape(x.shape(), p);
  if (grad_columns.shape() != cols || grad_columns.dtype() != x.dtype()) {
    std::ostringstream o;
    o << "grad_columns: expected shape " << shape_str(cols)
      << " = (groups, N, out_h, out_w, kh*kw*C/groups) in the input's dtype " << x.dtype()
      << ", got " << shape_str(grad_columns.shape()) << " " << grad_columns.dtype();
    throw std::invalid_argument(o.str());
  }
  if (!need_input && !need_coords) return {};
  check_gpu_call(g, x.dtype(), stream);
  std::vector<mx::array> grads = sample_grad_node(grad_columns, x, offset, mask, p, need_input,
                                                  need_coords, deterministic(), stream);
  if (need_input && grads[0].dtype() != x.dtype())
    grads[0] = mx::astype(grads[0], x.dtype(), stream);
  return grads;
}

// ------------------------------------------------------------ DeformSample
void DeformSample::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const mx::array& x = inputs[0];
  const mx::array& offset = inputs[1];
  const std::optional<mx::array> mask = mask_of(inputs, 2);
  const dcn::Geometry g = sample_geometry(x, offset, mask, params_);
  out.set_data(mx::allocator::malloc(out.nbytes()));

  auto& enc = mx::cpu::get_command_encoder(stream());
  enc.set_input_array(x);
  enc.set_input_array(offset);
  if (mask) enc.set_input_array(*mask);
  enc.set_output_array(out);
  if (out.size() == 0) return;

  dcn::ColumnStrides cs;
  column_strides(g, params_.groups, out.strides().data(), &cs);  // row-contiguous: always fits
  enc.dispatch([g, cs, dtype = to_dcn_dtype(x.dtype()), xp = x.data<void>(),
                xs = nhwc_strides(x), op = offset.data<void>(), os = nhwc_strides(offset),
                mp = mask ? mask->data<void>() : nullptr,
                ms = mask ? nhwc_strides(*mask) : dcn::Strides4{}, cp = out.data<void>()]() {
    dcn::cpu::im2col(dtype, g, xp, xs, op, os, mp, ms, cp, cs);
  });
}

void DeformSample::eval_gpu([[maybe_unused]] const std::vector<mx::array>& inputs,
                            [[maybe_unused]] mx::array& out) {
#if defined(DCN_MLX_METAL)
  gpu::eval_sample(stream(), params_, inputs, out);
#else
  no_gpu("DeformSample");
#endif
}

std::vector<mx::array> DeformSample::vjp(const std::vector<mx::array>& primals,
                                         const std::vector<mx::array>& cotangents,
                                         const std::vector<int>& argnums,
                                         const std::vector<mx::array>&) {
  bool need_input = false, need_coords = false;
  for (int a : argnums) (a == 0 ? need_input : need_coords) = true;
  const mx::array& x = primals[0];
  mx::array g = cotangents[0];
  if (g.dtype() != x.dtype()) g = mx::astype(g, x.dtype(), stream());
  std::vector<mx::array> grads = deform_sample_grad(g, x, primals[1], mask_of(primals, 2),
                                                    params_, need_input, need_coords, stream());
  std::vector<mx::array> out;
  const size_t coords_at = need_input ? 1 : 0;
  for (int a : argnums) {
    if (a == 0) out.push_back(grads[0]);
    else if (a == 1) out.push_back(grads[coords_at]);
    else out.push_back(grads[coords_at + 1]);
  }
  return out;
}

std::vector<mx::array> DeformSample::jvp(const std::vector<mx::array>& primals,
                                         const std::vector<mx::array>& tangents,
                                         const std::vector<int>& argnums) {
  const mx::array& x = primals[0];
  const mx::array& offset = primals[1];
  const std::optional<mx::array> mask = mask_of(primals, 2);
  std::optional<mx::array> acc;
  for (size_t i = 0; i < argnums.size(); ++i) {
    if (argnums[i] == 1) {
      throw std::runtime_error(
          "dcn: jvp (forward-mode) with respect to offset is not implemented: it needs the "
          "per-channel derivative of the bilinear weights, which the core does not compute. "
          "Use mx.vjp / mx.grad for offset gradients; jvp works for input and mask.");
    }
    mx::array t = tangents[i];
    if (t.dtype() != x.dtype()) t = mx::astype(t, x.dtype(), stream());
    // The columns are linear in x and (separately) in the mask.
    mx::array term = argnums[i] == 0 ? deform_sample(t, offset, mask, params_, stream())
                                     : deform_sample(x, offset, t, params_, stream());
    acc = acc ? mx::add(*acc, term, stream()) : term;
  }
  return {*acc};
}

std::pair<std::vector<mx::array>, std::vector<int>> DeformSample::vmap(
    const std::vector<mx::array>& inputs, const std::vector<int>& axes) {
  int64_t B, N;
  const std::vector<int> batch_axis(inputs.size(), 0);
  std::vector<mx::array> in = merge_vmap_axis(inputs, axes, batch_axis, &B, &N, stream());
  mx::array cols = deform_sample(in[0], in[1], mask_of(in, 2), params_, stream());
  // (groups, B*N, Ho, Wo, K*Cg) -> (groups, B, N, Ho, Wo, K*Cg)
  return {{mx::unflatten(cols, 1, {int(B), int(N)}, stream())}, {1}};
}

std::vector<mx::Shape> DeformSample::output_shapes(const std::vector<mx::array>& inputs) {
  if (inputs[0].ndim() != 4) throw std::invalid_argument("DeformSample: input must be 4-D");
  return {columns_shape(inputs[0].shape(), params_)};
}

bool DeformSample::is_equivalent(const mx::Primitive& other) const {
  return params_ == static_cast<const DeformSample&>(other).params_;
}

// -------------------------------------------------------- DeformSampleGrad
void DeformSampleGrad::eval_cpu(const std::vector<mx::array>& inputs,
                                std::vector<mx::array>& outputs) {
  const mx::array& gcol = inputs[0];
  const mx::array& x = inputs[1];
  const mx::array& offset = inputs[2];
  const std::optional<mx::array> mask = mask_of(inputs, 3);
  const dcn::Geometry g = sample_geometry(x, offset, mask, params_);
  if (gcol.shape() != columns_shape(x.shape(), params_))
    throw std::invalid_argument("DeformSampleGrad: grad_columns has the wrong shape");

  for (auto& o : outputs) o.set_data(mx::allocator::malloc(o.nbytes()));
  auto& enc = mx::cpu::get_command_encoder(stream());
  for (const auto& a : inputs) enc.set_input_array(a);
  for (auto& o : outputs) enc.set_output_array(o);
  if (g.batch == 0) return;

  mx::array* gx = need_input_ ? &outputs[0] : nullptr;
  mx::array* goff = need_coords_ ? &outputs[need_input_ ? 1 : 0] : nullptr;
  mx::array* gmask = (need_coords_ && mask) ? &outputs[need_input_ ? 2 : 1] : nullptr;

  dcn::ColumnStrides cs;
  const bool direct = column_strides(g, params_.groups, gcol.strides().data(), &cs);
  if (!direct) {
    // Pixel axes not walkable with one stride: read a row-major copy.
    const mx::Strides row = {int64_t(g.out_h) * g.out_w * gcol.shape(4) * g.batch,
                             int64_t(g.out_h) * g.out_w * gcol.shape(4),
                             int64_t(g.out_w) * gcol.shape(4), gcol.shape(4), 1};
    column_strides(g, params_.groups, row.data(), &cs);
  }

  enc.dispatch([g, cs, direct, dtype = to_dcn_dtype(x.dtype()), gp = gcol.data<void>(),
                gshape = gcol.shape(), gstrides = gcol.strides(), gsize = gcol.size(),
                itemsize = gcol.itemsize(), xp = x.data<void>(), xs = nhwc_strides(x),
                op = offset.data<void>(), os = nhwc_strides(offset),
                mp = mask ? mask->data<void>() : nullptr,
                ms = mask ? nhwc_strides(*mask) : dcn::Strides4{},
                gxp = gx ? gx->data<void>() : nullptr,
                gxs = gx ? nhwc_strides(*gx) : dcn::Strides4{},
                gxn = gx ? gx->size() : size_t(0),
                gop = goff ? goff->data<void>() : nullptr,
                gos = goff ? nhwc_strides(*goff) : dcn::Strides4{},
                gmp = gmask ? gmask->data<void>() : nullptr,
                gms = gmask ? nhwc_strides(*gmask) : dcn::Strides4{}]() {
    std::unique_ptr<char[]> gcopy;
    const void* gc = gp;
    if (!direct) {
      gcopy.reset(new char[gsize * itemsize]);
      copy_to_contiguous(gp, gshape, gstrides, itemsize, gcopy.get());
      gc = gcopy.get();
    }
    // col2im accumulates in float for the half types: a float scratch,
    // rounded once into the output.
    const bool half = dtype == dcn::DType::Float16 || dtype == dcn::DType::BFloat16;
    std::unique_ptr<float[]> acc;
    if (gxp && half) acc.reset(new float[gxn]);
    void* gi = acc ? static_cast<void*>(acc.get()) : gxp;
    if (gi && gop) {
      // One parallel region for both (no core idles between them).
      dcn::cpu::col2im_and_coord_grad(dtype, g, gc, cs, xp, xs, op, os, mp, ms, gi, gxs, gop, gos,
                                      gmp, gms);
    } else if (gi) {
      dcn::cpu::col2im(dtype, g, gc, cs, op, os, mp, ms, gi, gxs);
    } else if (gop) {
      dcn::cpu::coord_grad(dtype, g, gc, cs, xp, xs, op, os, mp, ms, gop, gos, gmp, gms);
    }
    if (acc && dtype == dcn::DType::Float16) {
      auto* dst = static_cast<dcn::f16*>(gxp);
      for (size_t i = 0; i < gxn; ++i) dst[i] = dcn::to_f16(acc[i]);
    } else if (acc) {
      auto* dst = static_cast<dcn::bf16*>(gxp);
      for (size_t i = 0; i < gxn; ++i) dst[i] = dcn::to_bf16(acc[i]);
    }
  });
}

void DeformSampleGrad::eval_gpu([[maybe_unused]] const std::vector<mx::array>& inputs,
                                [[maybe_unused]] std::vector<mx::array>& outputs) {
#if defined(DCN_MLX_METAL)
  gpu::eval_sample_grad(stream(), params_, need_input_, need_coords_, deterministic_, inputs,
                        outputs);
#else
  no_gpu("DeformSampleGrad");
#endif
}

std::vector<mx::array> DeformSampleGrad::vjp(const std::vector<mx::array>&,
                                             const std::vector<mx::array>&,
                                             const std::vector<int>&,
                                             const std::vector<mx::array>&) {
  throw std::runtime_error(
      "dcn: second-order gradients of deform_conv2d (the vjp of DeformSampleGrad) are not "
      "implemented; first-order gradients for input, offset, mask, weight and bias are.");
}

std::vector<mx::array> DeformSampleGrad::jvp(const std::vector<mx::array>&,
                                             const std::vector<mx::array>&,
                                             const std::vector<int>&) {
  throw std::runtime_error(
      "dcn: forward-mode derivatives of the deform_conv2d backward (the jvp of "
      "DeformSampleGrad) are not implemented.");
}

std::pair<std::vector<mx::array>, std::vector<int>> DeformSampleGrad::vmap(
    const std::vector<mx::array>& inputs, const std::vector<int>& axes) {
  int64_t B, N;
  std::vector<int> batch_axis(inputs.size(), 0);
  batch_axis[0] = 1;  // grad_columns (groups, N, ...)
  std::vector<mx::array> in = merge_vmap_axis(inputs, axes, batch_axis, &B, &N, stream());
  // The node itself, not deform_sample_grad: these outputs replace this
  // node's own (grad_x in float32 on the GPU).
  std::vector<mx::array> grads = sample_grad_node(in[0], in[1], in[2], mask_of(in, 3), params_,
                                                  need_input_, need_coords_, deterministic_,
                                                  stream());
  std::vector<int> out_axes;
  for (auto& gr : grads) {
    gr = mx::unflatten(gr, 0, {int(B), int(N)}, stream());
    out_axes.push_back(0);
  }
  return {grads, out_axes};
}

std::vector<mx::Shape> DeformSampleGrad::output_shapes(const std::vector<mx::array>& inputs) {
  std::vector<mx::Shape> shapes;
  if (need_input_) shapes.push_back(inputs[1].shape());
  if (need_coords_) {
    shapes.push_back(inputs[2].shape());
    if (inputs.size() > 3) shapes.push_back(inputs[3].shape());
  }
  return shapes;
}

bool DeformSampleGrad::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const DeformSampleGrad&>(other);
  return params_ == o.params_ && need_input_ == o.need_input_ && need_coords_ == o.need_coords_ &&
         deterministic_ == o.deterministic_;
}

}  // namespace dcn_mlx
