// Runs the CUDA kernels of core/cuda (compiled as C++ through the shim in
// tests/cuda/shim) over an emulated grid and compares them with the CPU
// kernels of core/cpu on the same inputs, for float32, float64, float16 and
// bfloat16, in two layouts: torch's (NCHW arrays, (N, C*K, P) columns) and
// MLX's (NHWC arrays, (N, P, [group, k, channel]) columns), which exercises
// the stride handling.
//
//   harness [--mode serial|shuffled|parallel] FILE...
//   FILE: one case, written by tests/test_cuda_emulated.py: a text line
//     "N C H W groups G kh kw sh sw ph pw dh dw mask"
//   then raw little-endian float64 arrays in logical (NCHW) order: input
//   (N,C,H,W), offset (N,2GK,Ho,Wo), mask (N,GK,Ho,Wo) when mask=1,
//   grad_columns (N,C,K,P).
// Prints one line per (case, dtype, layout, kernel); exits 1 on a mismatch.
//
// Expected agreement: im2col, coord_grad (with its columns) and the
// deterministic col2im run the CPU kernels' arithmetic in the CPU kernels'
// order: bit for bit (NaN matching NaN). Two exceptions use a summation
// tolerance: the atomic col2im adds in any order, and the float32
// channels-last coord_grad of the CPU sums its channels in 8 lanes.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "dcn/cpu.h"
#include "dcn/cuda.h"
#include "dcn/storage.h"

namespace {

struct Case {
  int64_t N, C, H, W, groups, G, kh, kw, sh, sw, ph, pw, dh, dw, mask;
  std::vector<double> input, offset, mask_v, gcol;
  std::string name;
};

bool read_case(const std::string& path, Case* c) {
  std::ifstream f(path, std::ios::binary);
  std::string line;
  if (!std::getline(f, line)) return false;
  std::istringstream ss(line);
  ss >> c->N >> c->C >> c->H >> c->W >> c->groups >> c->G >> c->kh >> c->kw >> c->sh >> c->sw >>
      c->ph >> c->pw >> c->dh >> c->dw >> c->mask;
  if (!ss) return false;
  const int64_t Ho = (c->H + 2 * c->ph - c->dh * (c->kh - 1) - 1) / c->sh + 1;
  const int64_t Wo = (c->W + 2 * c->pw - c->dw * (c->kw - 1) - 1) / c->sw + 1;
  const int64_t K = c->kh * c->kw, P = Ho * Wo;
  auto read = [&](std::vector<double>& v, int64_t n) {
    v.resize(size_t(n));
    f.read(reinterpret_cast<char*>(v.data()), std::streamsize(n * 8));
    return bool(f);
  };
  c->name = path.substr(path.find_last_of('/') + 1);
  return read(c->input, c->N * c->C * c->H * c->W) &&
         read(c->offset, c->N * 2 * c->G * K * P) &&
         (!c->mask || read(c->mask_v, c->N * c->G * K * P)) && read(c->gcol, c->N * c->C * K * P);
}

dcn::Geometry geometry(const Case& c) {
  dcn::Geometry g;
  g.batch = c.N; g.channels = c.C; g.height = c.H; g.width = c.W;
  g.groups = c.groups; g.out_channels = c.groups;
  g.kernel_h = c.kh; g.kernel_w = c.kw; g.stride_h = c.sh; g.stride_w = c.sw;
  g.pad_h = c.ph; g.pad_w = c.pw; g.dilation_h = c.dh; g.dilation_w = c.dw;
  g.offset_groups = c.G;
  g.out_h = (c.H + 2 * c.ph - c.dh * (c.kh - 1) - 1) / c.sh + 1;
  g.out_w = (c.W + 2 * c.pw - c.dw * (c.kw - 1) - 1) / c.sw + 1;
  g.has_mask = c.mask != 0;
  return g;
}

// Strides of the four arrays and the columns in one layout.
struct Layout {
  const char* name;
  dcn::Strides4 in, off, mask;
  dcn::ColumnStrides cols;
};

dcn::Strides4 nchw(int64_t C, int64_t H, int64_t W) { return {C * H * W, H * W, W, 1}; }
dcn::Strides4 nhwc(int64_t C, int64_t H, int64_t W) { return {H * W * C, 1, W * C, C}; }

Layout make_layout(const dcn::Geometry& g, bool channels_last) {
  const int64_t K = g.kernel_points(), P = g.out_pixels(), GK = g.offset_groups * K;
  Layout l;
  dcn::ColumnStrides cs;
  if (!channels_last) {
    l.name = "nchw";
    l.in = nchw(g.channels, g.height, g.width);
    l.off = nchw(2 * GK, g.out_h, g.out_w);
    l.mask = nchw(GK, g.out_h, g.out_w);
    cs.n = g.channels * K * P; cs.block = g.channels; cs.block_stride = 0;
    cs.c = K * P; cs.k = P; cs.p = 1;
  } else {
    l.name = "nhwc";
    l.in = nhwc(g.channels, g.height, g.width);
    l.off = nhwc(2 * GK, g.out_h, g.out_w);
    l.mask = nhwc(GK, g.out_h, g.out_w);
    const int64_t cw = g.channels / g.groups;
    cs.n = P * g.channels * K; cs.block = cw; cs.block_stride = K * cw;
    cs.c = 1; cs.k = cw; cs.p = g.channels * K;
  }
  l.cols = cs;
  return l;
}

// Storage types: the CPU's host half types; the emulated CUDA types have
// the same 16-bit patterns, so buffers are shared as raw bytes.
template <typename S> S to_storage(double v);
template <> float to_storage<float>(double v) { return float(v); }
template <> double to_storage<double>(double v) { return v; }
template <> dcn::f16 to_storage<dcn::f16>(double v) { return dcn::to_f16(float(v)); }
template <> dcn::bf16 to_storage<dcn::bf16>(double v) { return dcn::to_bf16(float(v)); }

// A logical (d0, d1, d2, d3) array placed with strides s into a buffer.
template <typename S>
std::vector<S> place(const std::vector<double>& v, const int64_t (&shape)[4], dcn::Strides4 s) {
  int64_t size = 1;
  for (int i = 0; i < 4; ++i) size += (shape[i] - 1) * std::vector<int64_t>{s.n, s.c, s.y, s.x}[i];
  std::vector<S> out(size_t(size), to_storage<S>(0.0));
  int64_t i = 0;
  for (int64_t a = 0; a < shape[0]; ++a)
    for (int64_t b = 0; b < shape[1]; ++b)
      for (int64_t y = 0; y < shape[2]; ++y)
        for (int64_t x = 0; x < shape[3]; ++x)
          out[size_t(a * s.n + b * s.c + y * s.y + x * s.x)] = to_storage<S>(v[size_t(i++)]);
  return out;
}

template <typename S>
std::vector<S> place_cols(const std::vector<double>& v, const dcn::Geometry& g,
                          const dcn::ColumnStrides& cs) {
  const int64_t K = g.kernel_points(), P = g.out_pixels();
  std::vector<S> out(size_t(g.batch * g.channels * K * P), to_storage<S>(0.0));
  int64_t i = 0;
  for (int64_t n = 0; n < g.batch; ++n)
    for (int64_t c = 0; c < g.channels; ++c)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t p = 0; p < P; ++p)
          out[size_t(n * cs.n + cs.channel(c) + k * cs.k + p * cs.p)] = to_storage<S>(v[size_t(i++)]);
  return out;
}

template <typename T>
bool bits_equal(const std::vector<T>& a, const std::vector<T>& b, std::string* why) {
  if (a.size() != b.size()) { *why = "size"; return false; }
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(T)) == 0) continue;
    double x, y;
    if constexpr (std::is_same_v<T, dcn::f16> || std::is_same_v<T, dcn::bf16>) {
      x = dcn::to_float(a[i]); y = dcn::to_float(b[i]);
    } else {
      x = double(a[i]); y = double(b[i]);
    }
    if (std::isnan(x) && std::isnan(y)) continue;
    char buf[160];
    std::snprintf(buf, sizeof buf, "element %zu: cpu %.17g, cuda %.17g", i, x, y);
    *why = buf;
    return false;
  }
  return true;
}

template <typename A>
bool close(const std::vector<A>& cpu, const std::vector<A>& gpu, double rtol, std::string* why) {
  double scale = 0;
  for (A v : cpu) if (std::isfinite(double(v))) scale = std::max(scale, std::fabs(double(v)));
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double x = double(cpu[i]), y = double(gpu[i]);
    if (std::isnan(x) && std::isnan(y)) continue;
    if (x == y) continue;
    if (!(std::fabs(x - y) <= rtol * std::max(scale, 1e-30))) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "element %zu: cpu %.17g, cuda %.17g", i, x, y);
      *why = buf;
      return false;
    }
  }
  return true;
}

int failures = 0;

void report(const Case& c, const char* dtype, const Layout& l, const char* kernel, bool ok,
            const std::string& why) {
  std::printf("%-40s %-8s %s %-22s %s%s%s\n", c.name.c_str(), dtype, l.name, kernel,
              ok ? "ok" : "MISMATCH", ok ? "" : ": ", ok ? "" : why.c_str());
  if (!ok) ++failures;
}

template <typename S>
void run(const Case& c, dcn::DType dt, const char* dname, bool channels_last) {
  using A = dcn::acc_t<S>;
  const dcn::Geometry g = geometry(c);
  const Layout l = make_layout(g, channels_last);
  const int64_t K = g.kernel_points(), GK = g.offset_groups * K;
  const int64_t in_shape[4] = {g.batch, g.channels, g.height, g.width};
  const int64_t off_shape[4] = {g.batch, 2 * GK, g.out_h, g.out_w};
  const int64_t mask_shape[4] = {g.batch, GK, g.out_h, g.out_w};
  const auto input = place<S>(c.input, in_shape, l.in);
  const auto offset = place<S>(c.offset, off_shape, l.off);
  const auto mask = c.mask ? place<S>(c.mask_v, mask_shape, l.mask) : std::vector<S>{};
  const auto gcol = place_cols<S>(c.gcol, g, l.cols);
  const void* m = c.mask ? mask.data() : nullptr;
  const size_t ncols = gcol.size();
  const std::vector<S> zeros_in(input.size(), to_storage<S>(0.0));
  const dcn::cuda::Launch launch{0, nullptr};
  std::string why;

  // im2col
  std::vector<S> cols_cpu(ncols, to_storage<S>(-7.0)), cols_gpu(ncols, to_storage<S>(-7.0));
  dcn::cpu::im2col(dt, g, input.data(), l.in, offset.data(), l.off, m, l.mask, cols_cpu.data(), l.cols);
  dcn::cuda::im2col(dt, g, input.data(), l.in, offset.data(), l.off, m, l.mask, cols_gpu.data(), l.cols, launch);
  report(c, dname, l, "im2col", bits_equal(cols_cpu, cols_gpu, &why), why);

  // col2im: both flavours against the CPU's; grad_input in the input's layout.
  std::vector<A> gi_cpu(input.size(), A(-7)), gi_atomic(input.size(), A(-7)), gi_det(input.size(), A(-7));
  dcn::cpu::col2im(dt, g, gcol.data(), l.cols, offset.data(), l.off, m, l.mask, gi_cpu.data(), l.in);
  dcn::cuda::col2im(dt, g, gcol.data(), l.cols, offset.data(), l.off, m, l.mask, gi_atomic.data(), l.in, launch);
  report(c, dname, l, "col2im(atomic)", close(gi_cpu, gi_atomic, std::is_same_v<A, double> ? 1e-12 : 1e-5, &why), why);
  const size_t ws = dcn::cuda::col2im_deterministic_workspace(dt, g, 0);
  std::vector<unsigned char> workspace(ws + 1);  // +1: never a null data() for ws == 0
  dcn::cuda::col2im_deterministic(dt, g, gcol.data(), l.cols, offset.data(), l.off, m, l.mask,
                                  gi_det.data(), l.in, workspace.data(), ws, launch);
  report(c, dname, l, "col2im(deterministic)", bits_equal(gi_cpu, gi_det, &why), why);

  // coord_grad with the fused columns
  std::vector<S> go_cpu(offset.size(), to_storage<S>(-7.0)), go_gpu = go_cpu;
  std::vector<S> gm_cpu(mask.size(), to_storage<S>(-7.0)), gm_gpu = gm_cpu;
  std::vector<S> cc_cpu(ncols, to_storage<S>(-7.0)), cc_gpu = cc_cpu;
  dcn::cpu::coord_grad(dt, g, gcol.data(), l.cols, input.data(), l.in, offset.data(), l.off, m,
                       l.mask, go_cpu.data(), l.off, c.mask ? gm_cpu.data() : nullptr, l.mask,
                       cc_cpu.data());
  dcn::cuda::coord_grad(dt, g, gcol.data(), l.cols, input.data(), l.in, offset.data(), l.off, m,
                        l.mask, go_gpu.data(), l.off, c.mask ? gm_gpu.data() : nullptr, l.mask,
                        cc_gpu.data(), launch);
  // float32 channels-last: the CPU sums the channels in 8 fixed lanes
  // (core/cpu/coord_lanes.h), CUDA in order: equal up to summation rounding.
  // Every other dtype and layout: the same order, bit for bit.
  bool lanes = false;
  if constexpr (std::is_same_v<S, float>) lanes = channels_last;
  auto same = [&](const std::vector<S>& a, const std::vector<S>& b) {
    if constexpr (std::is_same_v<S, float>)
      if (lanes) return close(a, b, 1e-5, &why);
    return bits_equal(a, b, &why);
  };
  report(c, dname, l, "coord_grad(offset)", same(go_cpu, go_gpu), why);
  if (c.mask) report(c, dname, l, "coord_grad(mask)", same(gm_cpu, gm_gpu), why);
  report(c, dname, l, "coord_grad(columns)", bits_equal(cc_cpu, cc_gpu, &why), why);
  report(c, dname, l, "columns(im2col=coord)", bits_equal(cols_gpu, cc_gpu, &why), why);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--mode" && i + 1 < argc) {
      const std::string m = argv[++i];
      dcn_emu::mode = m == "parallel" ? dcn_emu::Mode::Parallel
                    : m == "shuffled" ? dcn_emu::Mode::Shuffled : dcn_emu::Mode::Serial;
    } else {
      files.push_back(a);
    }
  }
  dcn::cpu::set_num_threads(2);
  for (const std::string& f : files) {
    Case c;
    if (!read_case(f, &c)) {
      std::printf("%s: unreadable case file\n", f.c_str());
      return 2;
    }
    for (bool cl : {false, true}) {
      run<float>(c, dcn::DType::Float32, "float32", cl);
      run<double>(c, dcn::DType::Float64, "float64", cl);
      run<dcn::f16>(c, dcn::DType::Float16, "float16", cl);
      run<dcn::bf16>(c, dcn::DType::BFloat16, "bfloat16", cl);
    }
  }
  std::printf("%d mismatches, %llu emulated launches\n", failures,
              (unsigned long long)dcn_emu::launches);
  return failures == 0 ? 0 : 1;
}
