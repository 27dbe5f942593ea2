// What this build's CUDA kernels were compiled for (dcn::cuda::runtime_version
// and architectures), reported by dcn_torch.build_info().
#include <cuda_runtime.h>

#include "dcn/cuda.h"

#ifndef DCN_CUDA_ARCHITECTURES
#define DCN_CUDA_ARCHITECTURES ""
#endif

namespace dcn::cuda {

int runtime_version() { return CUDART_VERSION; }
const char* architectures() { return DCN_CUDA_ARCHITECTURES; }

}  // namespace dcn::cuda
