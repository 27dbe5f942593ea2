// Runs the Metal kernels of core/metal (compiled as C++ through the shim in
// tests/metal/shim) over an emulated grid and compares them with the CPU
// kernels of core/cpu on the same storage-dtype inputs, for float32, float16
// and bfloat16.
//
//   harness [--workers N] [CASE ...]
//   CASE = key=value,... with keys N C H W groups G kh kw sh sw ph pw dh dw
//          mask (0/1) bad_pixels (0/1: some input pixels inf/NaN)
//          off (normal|border|integer|far|nan) seed
//          file=PATH: the data instead, raw little-endian float32 arrays one
//          after another: input (N,H,W,C), offset (N,Ho,Wo,2GK), mask
//          (N,Ho,Wo,GK) when mask=1, grad_columns (N,Ho,Wo,C*K) in the
//          column layout (tests/test_metal_emulated.py writes the
//          conformance cases this way)
// Without cases a built-in list runs. Prints one line per (case, dtype,
// kernel) and exits 1 on any mismatch.
//
// Expected agreement: im2col, the deterministic col2im and coord_grad use
// the CPU kernels' arithmetic in the CPU kernels' order, so they must match
// bit for bit (NaN matching NaN); the atomic col2im adds in any order, and
// the CPU's float32 channels-last coord_grad sums its channels in 8 lanes,
// so those are compared with a float32 summation tolerance.
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "dcn/cpu.h"
#include "dcn/params.h"
#include "dcn/storage.h"

// The kernels, unmodified, through the shim (keyword macros on) ...
#include "im2col.metal"
#include "col2im.metal"
#include "coord_grad.metal"
// ... and the keyword macros off again for host code.
#include "metal_shim_end.h"
#include "dispatch.h"

static_assert(sizeof(DcnParams) == 17 * sizeof(int), "DcnParams: int32 fields, no padding");

namespace {

using dcn_shim::Mode;

struct Case {
  int N = 1, C = 4, H = 5, W = 5, groups = 1, G = 1, kh = 3, kw = 3;
  int sh = 1, sw = 1, ph = 1, pw = 1, dh = 1, dw = 1;
  int mask = 1;
  int bad_pixels = 0;  // 1: a few input pixels are inf/NaN
  std::string off = "normal";
  std::string file;    // data from a file instead (see read_data)
  unsigned seed = 1;
  std::string text;
};

bool parse_case(const std::string& s, Case* c) {
  c->text = s;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto eq = item.find('=');
    if (eq == std::string::npos) return false;
    const std::string k = item.substr(0, eq), v = item.substr(eq + 1);
    if (k == "off") { c->off = v; continue; }
    if (k == "file") { c->file = v; continue; }
    char* end = nullptr;
    const long x = std::strtol(v.c_str(), &end, 10);
    if (end == v.c_str() || *end) return false;
    int* f = k == "N" ? &c->N : k == "C" ? &c->C : k == "H" ? &c->H : k == "W" ? &c->W
           : k == "groups" ? &c->groups : k == "G" ? &c->G : k == "kh" ? &c->kh
           : k == "kw" ? &c->kw : k == "sh" ? &c->sh : k == "sw" ? &c->sw
           : k == "ph" ? &c->ph : k == "pw" ? &c->pw : k == "dh" ? &c->dh
           : k == "dw" ? &c->dw : k == "mask" ? &c->mask
           : k == "bad_pixels" ? &c->bad_pixels : nullptr;
    if (k == "seed") { c->seed = unsigned(x); continue; }
    if (!f) return false;
    *f = int(x);
  }
  return c->off == "normal" || c->off == "border" || c->off == "integer" || c->off == "far" ||
         c->off == "nan";
}

const char* kBuiltin[] = {
    // torchvision's odd configuration
    "N=1,C=6,H=5,W=4,groups=2,G=3,kh=3,kw=2,sh=2,sw=1,ph=1,pw=0,dh=2,dw=1,mask=1,off=normal",
    "N=2,C=4,H=4,W=4,groups=1,G=1,kh=3,kw=3,ph=1,pw=1,mask=0,off=normal",
    "N=1,C=4,H=5,W=6,groups=2,G=2,kh=3,kw=3,ph=1,pw=1,mask=1,off=border",
    "N=1,C=3,H=4,W=3,groups=1,G=1,kh=2,kw=2,ph=1,pw=1,mask=1,off=integer",
    "N=1,C=2,H=4,W=4,groups=1,G=1,kh=3,kw=3,ph=1,pw=1,mask=1,off=far",
    "N=1,C=2,H=4,W=4,groups=1,G=1,kh=3,kw=3,ph=1,pw=1,mask=1,off=nan",
};

struct Data {
  std::vector<float> x, off, mask, gcol;
};

bool read_data(const Case& c, int P, Data* d) {
  const int K = c.kh * c.kw;
  d->x.resize(size_t(c.N) * c.H * c.W * c.C);
  d->off.resize(size_t(c.N) * P * c.G * K * 2);
  d->mask.resize(size_t(c.N) * P * c.G * K);
  d->gcol.resize(size_t(c.N) * P * c.C * K);
  FILE* f = std::fopen(c.file.c_str(), "rb");
  if (!f) return false;
  bool ok = true;
  for (std::vector<float>* v : {&d->x, &d->off, &d->mask, &d->gcol}) {
    if (v == &d->mask && !c.mask) continue;
    if (!v->empty()) ok = ok && std::fread(v->data(), sizeof(float), v->size(), f) == v->size();
  }
  ok = ok && std::fgetc(f) == EOF;  // nothing left over: the geometry matches
  std::fclose(f);
  return ok;
}

// Inputs in float; each dtype rounds them to its storage type.
Data make_data(const Case& c, int P) {
  if (!c.file.empty()) {
    Data d;
    if (!read_data(c, P, &d)) {
      std::fprintf(stderr, "cannot read the data of %s\n", c.text.c_str());
      std::exit(2);
    }
    return d;
  }
  std::mt19937 rng(c.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unif(0.0f, 1.0f);
  const int K = c.kh * c.kw;
  Data d;
  d.x.resize(size_t(c.N) * c.H * c.W * c.C);
  for (auto& v : d.x) v = normal(rng);
  if (c.bad_pixels) {
    // inf/NaN pixels must not leak into samples whose weight for them is 0.
    const float bad[] = {INFINITY, -INFINITY, NAN};
    for (size_t i = 0; i < d.x.size(); i += 7) d.x[i] = bad[(i / 7) % 3];
  }
  d.gcol.resize(size_t(c.N) * P * c.C * K);
  for (auto& v : d.gcol) v = normal(rng);
  d.mask.resize(size_t(c.N) * P * c.G * K);
  for (auto& v : d.mask) v = unif(rng) < 0.1f ? 0.0f : unif(rng);
  // offset (N, Ho, Wo, G*K, 2): the grid position decides border targets.
  const int Ho = dcn::conv_out_size<int>(c.H, c.kh, c.sh, c.ph, c.dh);
  const int Wo = dcn::conv_out_size<int>(c.W, c.kw, c.sw, c.pw, c.dw);
  d.off.resize(size_t(c.N) * P * c.G * K * 2);
  const float specials[] = {NAN, INFINITY, -INFINITY, 1e30f, -1e30f, 7e4f, -7e4f};
  size_t i = 0;
  for (int n = 0; n < c.N; ++n)
    for (int oy = 0; oy < Ho; ++oy)
      for (int ox = 0; ox < Wo; ++ox)
        for (int g = 0; g < c.G; ++g)
          for (int k = 0; k < K; ++k)
            for (int axis = 0; axis < 2; ++axis, ++i) {
              const int L = axis == 0 ? c.H : c.W;
              const int base = axis == 0 ? oy * c.sh - c.ph + (k / c.kw) * c.dh
                                         : ox * c.sw - c.pw + (k % c.kw) * c.dw;
              float v = normal(rng);
              if (c.off == "normal") {
                v *= 2.0f;
              } else if (c.off == "integer") {
                v = float(int(std::lround(v * 2.0f)));
              } else if (c.off == "border") {
                // Land exactly on (or just beside) the edges of both regions.
                const float targets[] = {-2.0f, -1.0f, -0.75f, -0.5f, 0.0f, 0.25f,
                                         float(L) - 1.0f, float(L) - 0.5f, float(L),
                                         float(L) + 0.5f, float(L) - 0.25f, 1.0f};
                v = targets[rng() % 12] - float(base);
              } else if (c.off == "far") {
                const float far[] = {1e4f, -1e4f, 1e30f, -1e30f, 3e38f, -3e38f};
                if (unif(rng) < 0.5f) v = far[rng() % 6];
              } else if (c.off == "nan") {
                if (unif(rng) < 0.4f) v = specials[rng() % 7];
              }
              d.off[i] = v;
            }
  return d;
}

struct Cmp {
  double max_err = 0.0;
  long bad = 0, nonzero = 0, nan = 0;
};

// Exact comparison (tol == 0: same value, NaN matching NaN, signed zeros
// equal) or |a - b| <= tol * (1 + |b|).
template <typename A, typename B>
Cmp compare(const std::vector<A>& got, const std::vector<B>& want, double tol) {
  Cmp r;
  for (size_t i = 0; i < got.size(); ++i) {
    const double a = double(float(got[i])), b = double(float(want[i]));
    if (b != 0.0) ++r.nonzero;
    if (std::isnan(b) || std::isnan(a)) {
      if (std::isnan(a) && std::isnan(b)) ++r.nan;
      else ++r.bad;
      continue;
    }
    if (std::isinf(a) || std::isinf(b)) {
      if (a != b) ++r.bad;
      continue;
    }
    const double e = std::fabs(a - b);
    r.max_err = std::max(r.max_err, e);
    if (tol == 0.0 ? a != b : e > tol * (1.0 + std::fabs(b))) ++r.bad;
  }
  return r;
}

int g_failures = 0;
int g_checks = 0;
int g_workers = 4;

void report(const Case& c, const char* dtype, const char* kernel, const char* mode,
            const Cmp& r, size_t n) {
  ++g_checks;
  const bool ok = r.bad == 0;
  if (!ok) ++g_failures;
  std::printf("%s %-9s %-26s %-8s n=%-6zu nonzero=%-6ld nan=%-4ld max_err=%.3g bad=%ld  [%s]\n",
              ok ? "ok  " : "FAIL", dtype, kernel, mode, n, r.nonzero, r.nan, r.max_err, r.bad,
              c.text.c_str());
}

template <typename T>
std::vector<T> to_storage(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = T(v[i]);
  return out;
}

// The CPU kernels' storage type with the same bits as the Metal type T.
template <typename T> struct CpuType;
template <> struct CpuType<float> { using type = float; static constexpr dcn::DType d = dcn::DType::Float32; };
template <> struct CpuType<half> { using type = dcn::f16; static constexpr dcn::DType d = dcn::DType::Float16; };
template <> struct CpuType<bfloat> { using type = dcn::bf16; static constexpr dcn::DType d = dcn::DType::BFloat16; };

template <typename S, typename T>
std::vector<S> same_bits(const std::vector<T>& v) {
  static_assert(sizeof(S) == sizeof(T), "storage sizes differ");
  std::vector<S> out(v.size());
  if (!v.empty()) std::memcpy(out.data(), v.data(), v.size() * sizeof(T));
  return out;
}

float as_float(float v) { return v; }
float as_float(dcn::f16 v) { return dcn::to_float(v); }
float as_float(dcn::bf16 v) { return dcn::to_float(v); }

template <typename S>
std::vector<float> floats(const std::vector<S>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = as_float(v[i]);
  return out;
}

template <typename F>
F* kernel_or_die(const std::string& name) {
  F* f = dcn_shim::find_kernel<F>(name);
  if (!f) {
    std::fprintf(stderr, "no kernel registered as %s with the expected signature\n", name.c_str());
    std::exit(2);
  }
  return f;
}

template <typename T>
void run_dtype(const Case& c, const char* dname) {
  using S = typename CpuType<T>::type;
  const dcn::DType dt = CpuType<T>::d;
  const int Ho = dcn::conv_out_size<int>(c.H, c.kh, c.sh, c.ph, c.dh);
  const int Wo = dcn::conv_out_size<int>(c.W, c.kw, c.sw, c.pw, c.dw);
  const int P = Ho * Wo, K = c.kh * c.kw, C = c.C, G = c.G;
  const int cw = C / c.groups;
  const Data d = make_data(c, P);

  // Metal-side buffers (T) and the CPU's (S) with identical bits.
  const auto xT = to_storage<T>(d.x), offT = to_storage<T>(d.off), maskT = to_storage<T>(d.mask),
             gcolT = to_storage<T>(d.gcol);
  const auto xS = same_bits<S>(xT), offS = same_bits<S>(offT), maskS = same_bits<S>(maskT),
             gcolS = same_bits<S>(gcolT);

  dcn::Geometry geo;
  geo.batch = c.N; geo.channels = C; geo.height = c.H; geo.width = c.W;
  geo.out_channels = c.groups; geo.groups = c.groups;
  geo.kernel_h = c.kh; geo.kernel_w = c.kw;
  geo.stride_h = c.sh; geo.stride_w = c.sw;
  geo.pad_h = c.ph; geo.pad_w = c.pw;
  geo.dilation_h = c.dh; geo.dilation_w = c.dw;
  geo.offset_groups = G; geo.out_h = Ho; geo.out_w = Wo;
  geo.has_mask = c.mask != 0;
  // NHWC strides and MLX's column layout.
  const dcn::Strides4 xs{int64_t(c.H) * c.W * C, 1, int64_t(c.W) * C, C};
  const dcn::Strides4 os{int64_t(P) * 2 * G * K, 1, int64_t(Wo) * 2 * G * K, 2 * G * K};
  const dcn::Strides4 ms{int64_t(P) * G * K, 1, int64_t(Wo) * G * K, G * K};
  dcn::ColumnStrides cs;
  cs.n = int64_t(P) * C * K; cs.block_stride = int64_t(K) * cw; cs.c = 1; cs.k = cw;
  cs.p = int64_t(C) * K; cs.block = cw;
  const void* cpu_mask = c.mask ? maskS.data() : nullptr;

  DcnParams prm;
  prm.batch = c.N; prm.channels = C; prm.height = c.H; prm.width = c.W;
  prm.kernel_h = c.kh; prm.kernel_w = c.kw; prm.stride_h = c.sh; prm.stride_w = c.sw;
  prm.pad_h = c.ph; prm.pad_w = c.pw; prm.dilation_h = c.dh; prm.dilation_w = c.dw;
  prm.offset_groups = G; prm.groups = c.groups; prm.out_h = Ho; prm.out_w = Wo;
  prm.has_mask = c.mask;
  // Without a mask the mask buffer is a placeholder (eval_gpu binds another
  // array there): a 1-element buffer, so any read of it is out of bounds.
  std::vector<T> placeholder(1, T(0.0f));
  const T* mask_buf = c.mask ? maskT.data() : placeholder.data();
  T* mask_out_placeholder = placeholder.data();

  const uint64_t samples = uint64_t(c.N) * P * G * K;
  const size_t ncol = size_t(c.N) * P * C * K, nx = xT.size();
  const std::string suffix = dname;
  const float poison = NAN;

  // ---- forward: im2col
  {
    std::vector<S> want(ncol);
    dcn::cpu::im2col(dt, geo, xS.data(), xs, offS.data(), os, cpu_mask, ms, want.data(), cs);
    auto* k = kernel_or_die<decltype(dcn_im2col<T>)>("dcn_im2col_" + suffix);
    std::vector<T> got(ncol, T(poison));
    dcn_shim::dispatch_threads(samples, 64, Mode::Shuffled, [&](uint gid) {
      k(xT.data(), offT.data(), mask_buf, got.data(), prm, gid);
    }, g_workers, c.seed);
    report(c, dname, "im2col", "shuffled", compare(floats(got), floats(want), 0.0), ncol);
  }

  // ---- gradient w.r.t. input
  {
    std::vector<float> want(nx, poison);
    dcn::cpu::col2im(dt, geo, gcolS.data(), cs, offS.data(), os, cpu_mask, ms, want.data(), xs);

    auto* katomic = kernel_or_die<decltype(dcn_col2im<T>)>("dcn_col2im_" + suffix);
    std::vector<float> got(nx, poison);
    int count = int(nx);
    dcn_shim::dispatch_threads(nx, 256, Mode::Parallel,
                               [&](uint gid) { dcn_zero_float32(got.data(), count, gid); },
                               g_workers);
    dcn_shim::dispatch_threads(samples, 8, Mode::Parallel, [&](uint gid) {
      katomic(gcolT.data(), offT.data(), mask_buf, got.data(), prm, gid);
    }, g_workers);
    report(c, dname, "col2im (atomic)", "parallel", compare(got, want, 1e-5), nx);

    auto* kdet = kernel_or_die<decltype(dcn_col2im_deterministic<T>)>(
        "dcn_col2im_deterministic_" + suffix);
    for (Mode mode : {Mode::Shuffled, Mode::Parallel}) {
      std::vector<float> got2(nx, poison);
      dcn_shim::dispatch_threads(uint64_t(c.N) * C, 2, mode, [&](uint gid) {
        kdet(gcolT.data(), offT.data(), mask_buf, got2.data(), prm, gid);
      }, g_workers, c.seed + 1);
      report(c, dname, "col2im (deterministic)", dcn_shim::mode_name(mode),
             compare(got2, want, 0.0), nx);
    }
  }

  // ---- gradient w.r.t. offset and mask
  {
    std::vector<S> want_off(offS.size()), want_mask(maskS.size());
    dcn::cpu::coord_grad(dt, geo, gcolS.data(), cs, xS.data(), xs, offS.data(), os, cpu_mask, ms,
                         want_off.data(), os, c.mask ? want_mask.data() : nullptr, ms);
    auto* k = kernel_or_die<decltype(dcn_coord_grad<T>)>("dcn_coord_grad_" + suffix);
    std::vector<T> got_off(offT.size(), T(poison)), got_mask(maskT.size(), T(poison));
    T* gmask_buf = c.mask ? got_mask.data() : mask_out_placeholder;
    dcn_shim::dispatch_threads(samples, 64, Mode::Shuffled, [&](uint gid) {
      k(gcolT.data(), xT.data(), offT.data(), mask_buf, got_off.data(), gmask_buf, prm, gid);
    }, g_workers, c.seed + 2);
    // float32: the CPU sums the channels of this (channels-last) layout in 8
    // fixed lanes (core/cpu/coord_lanes.h), the kernel in order: equal up to
    // summation rounding. The half types: the same order, bit for bit.
    const double tol = dt == dcn::DType::Float32 ? 1e-5 : 0.0;
    report(c, dname, "coord_grad offset", "shuffled",
           compare(floats(got_off), floats(want_off), tol), got_off.size());
    if (c.mask)
      report(c, dname, "coord_grad mask", "shuffled",
             compare(floats(got_mask), floats(want_mask), tol), got_mask.size());
    if (!c.mask && float(placeholder[0]) != 0.0f) {
      std::printf("FAIL %s coord_grad wrote the mask placeholder [%s]\n", dname, c.text.c_str());
      ++g_failures;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Case> cases;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--workers" && i + 1 < argc) { g_workers = std::atoi(argv[++i]); continue; }
    Case c;
    if (!parse_case(a, &c)) {
      std::fprintf(stderr, "bad case: %s\n", a.c_str());
      return 2;
    }
    cases.push_back(c);
  }
  if (cases.empty())
    for (const char* s : kBuiltin) {
      Case c;
      parse_case(s, &c);
      cases.push_back(c);
    }
  for (const Case& c : cases) {
    if (c.C % c.groups || c.C % c.G || dcn::conv_out_size<int>(c.H, c.kh, c.sh, c.ph, c.dh) < 1 ||
        dcn::conv_out_size<int>(c.W, c.kw, c.sw, c.pw, c.dw) < 1) {
      std::fprintf(stderr, "invalid case: %s\n", c.text.c_str());
      return 2;
    }
    run_dtype<float>(c, "float32");
    run_dtype<half>(c, "float16");
    run_dtype<bfloat>(c, "bfloat16");
  }
  std::printf("%d checks, %d failures, %zu kernels registered\n", g_checks, g_failures,
              dcn_shim::registry().size());
  return g_failures ? 1 : 0;
}
