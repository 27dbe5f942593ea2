// Shapes, parameters and their validation: one place for every frontend.
//
// A frontend describes the tensors it was given (shapes, dtypes, layout);
// resolve_geometry() infers the group counts exactly as torchvision does,
// checks every constraint and either fills a Geometry or returns a message
// that names the argument, what it got and what was expected.
#pragma once
#include <cstdint>
#include <string>

namespace dcn {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3, Other = 4 };
const char* dtype_name(DType d);

// Where the channel axis lives. NCHW: input (N,C,H,W), weight (O,C/g,kh,kw),
// offset (N,2GK,Ho,Wo). NHWC (MLX): input (N,H,W,C), weight (O,kh,kw,C/g),
// offset (N,Ho,Wo,2GK).
enum class Layout : int { NCHW = 0, NHWC = 1 };

struct TensorDesc {
  static constexpr int kMaxRank = 8;  // enough to report any wrong rank a user sends
  int rank = -1;  // -1: the optional tensor is absent
  int64_t shape[kMaxRank] = {0, 0, 0, 0, 0, 0, 0, 0};
  DType dtype = DType::Float32;
  bool present() const { return rank >= 0; }
};

struct ConvArgs {
  TensorDesc input, weight, offset, mask, bias;
  int64_t stride[2] = {1, 1};
  int64_t padding[2] = {0, 0};
  int64_t dilation[2] = {1, 1};
  Layout layout = Layout::NCHW;
};

// Everything a sampling kernel needs to know about one call.
struct Geometry {
  int64_t batch = 0, channels = 0, height = 0, width = 0;
  int64_t out_channels = 0, groups = 1;  // weight groups (GEMM only)
  int64_t kernel_h = 1, kernel_w = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t offset_groups = 1;
  int64_t out_h = 0, out_w = 0;
  bool has_mask = false;

  int64_t kernel_points() const { return kernel_h * kernel_w; }
  int64_t out_pixels() const { return out_h * out_w; }
  int64_t channels_per_offset_group() const { return channels / offset_groups; }
};

// Returns "" and fills *out on success; otherwise a message such as
// "offset: expected shape (1, 18, 4, 4) = (N, 2*offset_groups*kh*kw, out_h,
// out_w), got (1, 17, 4, 4)".
std::string resolve_geometry(const ConvArgs& args, Geometry* out);

}  // namespace dcn
