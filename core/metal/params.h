// The kernels' parameter block, shared by the Metal sources (kernels.h) and
// the host code that binds it with setBytes (MLX's eval_gpu): plain int32
// fields only, so its layout is the same in MSL and C++ (68 bytes).
#pragma once

struct DcnParams {
  int batch, channels, height, width;
  int kernel_h, kernel_w;
  int stride_h, stride_w;
  int pad_h, pad_w;
  int dilation_h, dilation_w;
  int offset_groups;  // G
  int groups;         // weight groups (column block layout)
  int out_h, out_w;
  int has_mask;       // 0: the mask buffer is a placeholder, never read
};
