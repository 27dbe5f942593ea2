// resolve_geometry(): every check on shapes, dtypes and parameters, once.
#include <sstream>
#include <string>

#include "dcn/params.h"
#include "dcn/sampling.h"

namespace dcn {

const char* dtype_name(DType d) {
  switch (d) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    default: return "a non-floating dtype";
  }
}

namespace {

std::string tuple_str(const int64_t* v, int n) {
  std::ostringstream s;
  s << "(";
  for (int i = 0; i < n; ++i) s << (i ? ", " : "") << v[i];
  if (n == 1) s << ",";
  s << ")";
  return s.str();
}

std::string shape_str(const TensorDesc& t) { return tuple_str(t.shape, t.rank); }

// Logical (N, C, H, W)-style view of a 4-D tensor in either layout: returns
// the size of logical axis `axis` (0 = batch/out-channels, 1 = channels,
// 2 = height, 3 = width).
int64_t dim(const TensorDesc& t, Layout layout, int axis) {
  if (layout == Layout::NCHW) return t.shape[axis];
  static const int nhwc[4] = {0, 3, 1, 2};
  return t.shape[nhwc[axis]];
}

// Shape in the frontend's own axis order, from logical (N, C, H, W) sizes.
std::string expected_str(Layout layout, int64_t n, int64_t c, int64_t h, int64_t w) {
  const int64_t nchw[4] = {n, c, h, w};
  const int64_t nhwc[4] = {n, h, w, c};
  return tuple_str(layout == Layout::NCHW ? nchw : nhwc, 4);
}

bool mul_overflows(int64_t a, int64_t b, int64_t* r) { return __builtin_mul_overflow(a, b, r); }

bool numel_overflows(const int64_t* s, int n) {
  int64_t acc = 1;
  for (int i = 0; i < n; ++i)
    if (mul_overflows(acc, s[i], &acc)) return true;
  return false;
}

}  // namespace

std::string resolve_geometry(const ConvArgs& a, Geometry* out) {
  std::ostringstream err;
  const bool nchw = a.layout == Layout::NCHW;
  const char* in_axes = nchw ? "(N, C, H, W)" : "(N, H, W, C)";
  const char* w_axes = nchw ? "(out_channels, C/groups, kh, kw)" : "(out_channels, kh, kw, C/groups)";
  const char* off_axes = nchw ? "(N, 2*offset_groups*kh*kw, out_h, out_w)"
                              : "(N, out_h, out_w, 2*offset_groups*kh*kw)";
  const char* mask_axes = nchw ? "(N, offset_groups*kh*kw, out_h, out_w)"
                               : "(N, out_h, out_w, offset_groups*kh*kw)";

  // dtypes: floating input, every other tensor in the same dtype.
  if (a.input.dtype == DType::Other) {
    return "input: expected a floating-point dtype (float32, float64, float16 or bfloat16), "
           "got an integer, boolean or complex tensor";
  }
  const struct { const char* name; const TensorDesc* t; } others[] = {
      {"weight", &a.weight}, {"offset", &a.offset}, {"mask", &a.mask}, {"bias", &a.bias}};
  for (const auto& o : others) {
    if (!o.t->present() || o.t->dtype == a.input.dtype) continue;
    err << o.name << ": dtype " << dtype_name(o.t->dtype) << " does not match input dtype "
        << dtype_name(a.input.dtype) << "; convert all tensors to one floating dtype";
    return err.str();
  }

  // ranks
  const struct { const char* name; const TensorDesc* t; int rank; const char* axes; } ranks[] = {
      {"input", &a.input, 4, in_axes},   {"weight", &a.weight, 4, w_axes},
      {"offset", &a.offset, 4, off_axes}, {"mask", &a.mask, 4, mask_axes},
      {"bias", &a.bias, 1, "(out_channels,)"}};
  for (const auto& r : ranks) {
    if (!r.t->present() && (r.t == &a.mask || r.t == &a.bias)) continue;
    if (r.t->rank != r.rank) {
      err << r.name << ": expected a " << r.rank << "-D tensor " << r.axes << ", got "
          << (r.t->rank < 0 ? 0 : r.t->rank) << "-D shape " << shape_str(*r.t);
      return err.str();
    }
    for (int i = 0; i < r.rank; ++i) {
      if (r.t->shape[i] < 0) {
        err << r.name << ": negative size in shape " << shape_str(*r.t);
        return err.str();
      }
    }
    if (numel_overflows(r.t->shape, r.rank)) {
      err << r.name << ": shape " << shape_str(*r.t) << " has more elements than fit in 64 bits";
      return err.str();
    }
  }

  // parameters
  for (int i = 0; i < 2; ++i) {
    if (a.stride[i] < 1) {
      err << "stride: expected values >= 1, got " << tuple_str(a.stride, 2);
      return err.str();
    }
    if (a.dilation[i] < 1) {
      err << "dilation: expected values >= 1, got " << tuple_str(a.dilation, 2);
      return err.str();
    }
    if (a.padding[i] < 0) {
      err << "padding: expected values >= 0, got " << tuple_str(a.padding, 2);
      return err.str();
    }
    // Keep every coordinate computation far from int64 overflow.
    const int64_t lim = int64_t(1) << 31;
    if (a.stride[i] > lim || a.dilation[i] > lim || a.padding[i] > lim) {
      err << "stride/padding/dilation: values must be < 2^31, got stride " << tuple_str(a.stride, 2)
          << ", padding " << tuple_str(a.padding, 2) << ", dilation " << tuple_str(a.dilation, 2);
      return err.str();
    }
  }

  Geometry g;
  const Layout L = a.layout;
  g.batch = dim(a.input, L, 0);
  g.channels = dim(a.input, L, 1);
  g.height = dim(a.input, L, 2);
  g.width = dim(a.input, L, 3);
  g.out_channels = dim(a.weight, L, 0);
  const int64_t w_cin = dim(a.weight, L, 1);
  g.kernel_h = dim(a.weight, L, 2);
  g.kernel_w = dim(a.weight, L, 3);
  g.stride_h = a.stride[0];
  g.stride_w = a.stride[1];
  g.pad_h = a.padding[0];
  g.pad_w = a.padding[1];
  g.dilation_h = a.dilation[0];
  g.dilation_w = a.dilation[1];

  if (g.channels < 1) {
    err << "input: expected at least 1 channel, got shape " << shape_str(a.input) << " " << in_axes;
    return err.str();
  }
  if (g.out_channels < 1 || w_cin < 1 || g.kernel_h < 1 || g.kernel_w < 1) {
    err << "weight: expected shape " << w_axes << " with every size >= 1, got "
        << shape_str(a.weight);
    return err.str();
  }
  if (g.channels % w_cin != 0) {
    err << "weight: its C/groups axis (" << w_cin << ") must divide the input's " << g.channels
        << " channels; got weight " << shape_str(a.weight) << " " << w_axes << " for input "
        << shape_str(a.input);
    return err.str();
  }
  g.groups = g.channels / w_cin;
  if (g.out_channels % g.groups != 0) {
    err << "weight: out_channels (" << g.out_channels << ") must be divisible by groups ("
        << g.groups << " = input channels " << g.channels << " / weight C/groups " << w_cin
        << "), got weight " << shape_str(a.weight);
    return err.str();
  }

  g.out_h = conv_out_size<int64_t>(g.height, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
  g.out_w = conv_out_size<int64_t>(g.width, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
  if (g.out_h < 1 || g.out_w < 1) {
    const int64_t k[2] = {g.kernel_h, g.kernel_w};
    const int64_t hw[2] = {g.height, g.width};
    err << "input: spatial size " << tuple_str(hw, 2) << " with kernel " << tuple_str(k, 2)
        << ", padding " << tuple_str(a.padding, 2) << " and dilation "
        << tuple_str(a.dilation, 2) << " gives an empty output; expected "
        << "H + 2*pad_h - dil_h*(kh-1) - 1 >= 0 (and the same for W)";
    return err.str();
  }

  const int64_t K = g.kernel_h * g.kernel_w;
  const int64_t off_ch = dim(a.offset, L, 1);
  if (off_ch < 2 * K || off_ch % (2 * K) != 0) {
    err << "offset: expected shape " << off_axes << " with a channel count that is a positive "
        << "multiple of 2*kh*kw = " << 2 * K << ", got " << shape_str(a.offset);
    return err.str();
  }
  g.offset_groups = off_ch / (2 * K);
  if (g.channels % g.offset_groups != 0) {
    err << "offset: offset_groups = " << g.offset_groups << " (from " << off_ch
        << " channels / 2*kh*kw) must divide the input's " << g.channels
        << " channels, got offset " << shape_str(a.offset);
    return err.str();
  }
  const int64_t N = g.batch;
  if (dim(a.offset, L, 0) != N || dim(a.offset, L, 2) != g.out_h ||
      dim(a.offset, L, 3) != g.out_w) {
    err << "offset: expected shape " << expected_str(L, N, off_ch, g.out_h, g.out_w) << " = "
        << off_axes << ", got " << shape_str(a.offset);
    return err.str();
  }
  if (a.mask.present()) {
    const int64_t mc = g.offset_groups * K;
    if (dim(a.mask, L, 0) != N || dim(a.mask, L, 1) != mc || dim(a.mask, L, 2) != g.out_h ||
        dim(a.mask, L, 3) != g.out_w) {
      err << "mask: expected shape " << expected_str(L, N, mc, g.out_h, g.out_w) << " = "
          << mask_axes << ", got " << shape_str(a.mask);
      return err.str();
    }
    g.has_mask = true;
  }
  if (a.bias.present() && a.bias.shape[0] != g.out_channels) {
    err << "bias: expected shape (" << g.out_channels << ",) = (out_channels,), got "
        << shape_str(a.bias);
    return err.str();
  }

  // The column buffer (N, C*kh*kw, out_h*out_w) and the output must be
  // addressable with 64-bit indices.
  const int64_t cols[5] = {N, g.channels, K, g.out_h, g.out_w};
  const int64_t outs[4] = {N, g.out_channels, g.out_h, g.out_w};
  if (numel_overflows(cols, 5) || numel_overflows(outs, 4)) {
    err << "input: the sampled columns " << tuple_str(cols, 5)
        << " have more elements than fit in 64 bits";
    return err.str();
  }
  *out = g;
  return std::string();
}

}  // namespace dcn
