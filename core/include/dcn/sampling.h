// The sampling math of deformable convolution, written once.
//
// Everything here is a pure function of scalars, so the same header is used
// by the CPU kernels, the CUDA kernels (DCN_FN = __host__ __device__) and the
// Metal kernels (no references, no pointers, no std::): structs are passed
// and returned by value so no address-space qualifier is ever needed.
//
// Semantics are torchvision's deform_conv2d:
//   y = oy*stride_h - pad_h + i*dil_h + dy,   x = ox*stride_w - pad_w + j*dil_w + dx
//   value = bilinear(plane, y, x), 0 when y <= -1 || y >= H || x <= -1 || x >= W,
//   corners outside the plane count as 0.
// T is the coordinate/accumulation type (float for f32/f16/bf16, double for
// f64); I is the index type (32- or 64-bit, chosen by the caller).
#pragma once
#include "dcn/macros.h"

namespace dcn {

// The four corners of one bilinear sample, in the order
// (y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high).
// idx: element offsets inside one channel plane (y*stride_y + x*stride_x);
// a corner outside the plane has idx 0, every weight 0 and its bit in
// `valid` clear, so a kernel may read plane[idx[q]] unconditionally and stay
// inside its buffer, or test the bit to skip it (as torchvision does, which
// keeps an inf/NaN pixel elsewhere in the plane from leaking in as 0*inf).
template <typename T, typename I>
struct Corners {
  I base;   // y_low*sy + x_low*sx: idx[q] == base + {0, sx, sy, sy+sx}[q] for valid q
  I idx[4];
  unsigned valid;  // bit q set: corner q lies inside the plane
  T w[4];   // bilinear weights (times `scale`); all 0 outside the forward's region
  T wy[4];  // d(value)/dy per corner value (torchvision's offset-gradient rule)
  T wx[4];  // d(value)/dx per corner value
  T fy, fx;  // fractional parts y - floor(y), x - floor(x) (0 outside both regions)
  I y0, x0;  // the low corner (0 outside both regions), for a second stride set
};

// Sample coordinate along one axis: integer grid position plus the learned
// offset. The integer part is formed exactly in integers first, as torchvision
// does, so integer offsets land exactly on pixels.
template <typename T, typename I>
DCN_FN T sample_coord(I out_pos, I stride, I pad, I k, I dil, T offset) {
  return T(out_pos * stride - pad + k * dil) + offset;
}

// True when the forward samples a nonzero value: -1 < y < H and -1 < x < W.
// Written so that NaN compares false and counts as outside.
template <typename T, typename I>
DCN_FN bool inside_forward(T y, T x, I H, I W) {
  return y > T(-1) && y < T(H) && x > T(-1) && x < T(W);
}

// Region where torchvision's offset gradient can be nonzero: -1 <= y < H and
// -1 <= x < W. It does not apply the forward's early exit, so at exactly
// y == -1 (or x == -1) the forward value is 0 but the gradient is not
// (pytorch/vision#6885). NaN compares false here too, so no NaN ever reaches
// the float -> int conversion below.
template <typename T, typename I>
DCN_FN bool inside_gradient(T y, T x, I H, I W) {
  return y >= T(-1) && y < T(H) && x >= T(-1) && x < T(W);
}

// floor(v) as an integer, for finite v well inside the range of I.
template <typename T, typename I>
DCN_FN I floor_to_int(T v) {
  const I t = I(v);  // truncates toward zero
  return T(t) > v ? t - 1 : t;
}

// The low corner (y0, x0) and the fractional parts (ly, lx) of a sample.
// Only for (y, x) inside the forward's or the gradient's region (|y| < H + 1),
// where the conversions are exact and defined; floor by truncation avoids a
// libm call on plain x86-64.
template <typename T, typename I>
struct BilinearPoint {
  I y0, x0;
  T ly, lx;
};

template <typename T, typename I>
DCN_FN BilinearPoint<T, I> bilinear_point(T y, T x) {
  BilinearPoint<T, I> p;
  p.y0 = floor_to_int<T, I>(y);
  p.x0 = floor_to_int<T, I>(x);
  p.ly = y - T(p.y0);
  p.lx = x - T(p.x0);
  return p;
}

// True when all four corners of the point lie inside an H x W plane: the
// common case, whose Corners are valid == 15 with bilinear_weights' weights.
template <typename T, typename I>
DCN_FN bool all_corners_inside(BilinearPoint<T, I> p, I H, I W) {
  return p.y0 >= I(0) && p.y0 + I(1) < H && p.x0 >= I(0) && p.x0 + I(1) < W;
}

// The four bilinear value weights times `scale`, in Corners order.
template <typename T>
struct Weights4 {
  T w[4];
};

template <typename T>
DCN_FN Weights4<T> bilinear_weights(T ly, T lx, T scale) {
  const T hy = T(1) - ly;
  const T hx = T(1) - lx;
  Weights4<T> r;
  r.w[0] = scale * (hy * hx);
  r.w[1] = scale * (hy * lx);
  r.w[2] = scale * (ly * hx);
  r.w[3] = scale * (ly * lx);
  return r;
}

// Corner indices and weights for a sample at (y, x) of an H x W plane with
// element strides (sy, sx). `scale` multiplies the value weights w (the
// modulation mask, folded in once so every channel reuses it). When
// `with_grad` is false, wy and wx are left 0 and cost nothing.
template <typename T, typename I>
DCN_FN Corners<T, I> bilinear_corners(T y, T x, I H, I W, I sy, I sx, T scale,
                                      bool with_grad) {
  Corners<T, I> c;
  c.base = I(0);
  c.valid = 0u;
  c.fy = T(0);
  c.fx = T(0);
  c.y0 = I(0);
  c.x0 = I(0);
  for (int q = 0; q < 4; ++q) {
    c.idx[q] = I(0);
    c.w[q] = T(0);
    c.wy[q] = T(0);
    c.wx[q] = T(0);
  }
  const bool fwd = inside_forward(y, x, H, W);
  const bool grad = with_grad && inside_gradient(y, x, H, W);
  if (!fwd && !grad) return c;

  const BilinearPoint<T, I> pt = bilinear_point<T, I>(y, x);
  const I y0 = pt.y0;
  const I x0 = pt.x0;
  const I y1 = y0 + 1;
  const I x1 = x0 + 1;
  const T ly = pt.ly;
  const T lx = pt.lx;
  const T hy = T(1) - ly;
  const T hx = T(1) - lx;

  const bool vy0 = y0 >= 0 && y0 < H;
  const bool vy1 = y1 >= 0 && y1 < H;
  const bool vx0 = x0 >= 0 && x0 < W;
  const bool vx1 = x1 >= 0 && x1 < W;
  const bool valid[4] = {vy0 && vx0, vy0 && vx1, vy1 && vx0, vy1 && vx1};
  const I cy[4] = {y0, y0, y1, y1};
  const I cx[4] = {x0, x1, x0, x1};
  const Weights4<T> bw = bilinear_weights(ly, lx, scale);
  // d(bilinear)/dy and d(bilinear)/dx of each corner's weight.
  const T dy[4] = {-hx, -lx, hx, lx};
  const T dx[4] = {-hy, hy, -ly, ly};

  c.base = y0 * sy + x0 * sx;
  c.fy = ly;
  c.fx = lx;
  c.y0 = y0;
  c.x0 = x0;
  for (int q = 0; q < 4; ++q) {
    if (!valid[q]) continue;
    c.valid |= 1u << q;
    c.idx[q] = cy[q] * sy + cx[q] * sx;
    if (fwd) c.w[q] = bw.w[q];
    if (grad) {
      c.wy[q] = dy[q];
      c.wx[q] = dx[q];
    }
  }
  return c;
}

// w0*v0 + w1*v1 + w2*v2 + w3*v3, in that order: the bilinear value (or one
// of its coordinate derivatives) from four corner values. Every kernel that
// needs it calls this, so the forward's columns and the columns the backward
// recomputes round identically. The weights may be scalars while the values
// are vectors of channels (W float, T a CPU vector type): every lane then
// computes exactly the scalar expression.
template <typename W, typename T>
DCN_FN T weighted_sum4(W w0, W w1, W w2, W w3, T v0, T v1, T v2, T v3) {
  return w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3;
}

// Value and coordinate derivatives of a sample whose four corners are all
// inside the plane: interpolate along x, then along y; d/dy and d/dx
// (torchvision's coordinate weights) fall out of the same differences.
// v0..v3 in Corners order; fy, fx the fractional parts.
template <typename T>
struct SampleGrad {
  T value, dy, dx;
};

template <typename T>
DCN_FN SampleGrad<T> interior_value_and_grad(T v0, T v1, T v2, T v3, T fy, T fx) {
  const T d01 = v1 - v0, d23 = v3 - v2;
  const T top = v0 + fx * d01, bottom = v2 + fx * d23;
  SampleGrad<T> r;
  r.dy = bottom - top;
  r.value = top + fy * r.dy;
  r.dx = d01 + fy * (d23 - d01);
  return r;
}

// The same three numbers for any sample, from its four corner values (0 for
// a corner outside the plane) and the per-corner weights bilinear_corners
// computed (with_grad, scale 1): torchvision's rule at the border. Every
// backend's coordinate gradient calls this for samples that are not
// entirely inside; interior_value_and_grad is the cheaper equivalent for
// those that are. V is T, or a vector of channels (as in weighted_sum4).
template <typename T, typename I, typename V>
DCN_FN SampleGrad<V> corner_value_and_grad(Corners<T, I> c, V v0, V v1, V v2, V v3) {
  SampleGrad<V> r;
  r.dy = weighted_sum4(c.wy[0], c.wy[1], c.wy[2], c.wy[3], v0, v1, v2, v3);
  r.dx = weighted_sum4(c.wx[0], c.wx[1], c.wx[2], c.wx[3], v0, v1, v2, v3);
  r.value = weighted_sum4(c.w[0], c.w[1], c.w[2], c.w[3], v0, v1, v2, v3);
  return r;
}

// The forward's column (im2col's value) of a sample with a corner outside
// the plane, recomputed from its corner values by the coordinate gradients:
// the valid corners' masked weights (m * w, rounded as im2col's plan) times
// their values, added in corner order starting from `zero`; `zero` when
// every value weight is 0 (outside the forward's region). V may be a vector
// of channels with T scalar, as in weighted_sum4; `zero` is V's 0.
template <typename T, typename I, typename V>
DCN_FN V border_column(Corners<T, I> c, T m, V v0, V v1, V v2, V v3, V zero) {
  const V v[4] = {v0, v1, v2, v3};
  V col = zero;
  for (int q = 0; q < 4; ++q)
    if ((c.valid >> q) & 1u) col += (m * c.w[q]) * v[q];
  const bool any_weight = c.w[0] != T(0) || c.w[1] != T(0) || c.w[2] != T(0) || c.w[3] != T(0);
  return any_weight ? col : zero;
}

// Output size of one spatial axis: (in + 2*pad - dil*(k-1) - 1) / stride + 1.
// Returns a value < 1 when the kernel does not fit (the caller reports it).
template <typename I>
DCN_FN I conv_out_size(I in, I k, I stride, I pad, I dil) {
  const I span = in + 2 * pad - dil * (k - 1) - 1;
  if (span < 0) return 0;
  return span / stride + 1;
}

}  // namespace dcn
