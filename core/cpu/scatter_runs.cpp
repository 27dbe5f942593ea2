#include "scatter_runs.h"

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(DCN_NO_AVX2)
#define DCN_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), flatten))
#else
#define DCN_CLONES __attribute__((flatten))
#endif

namespace dcn::cpu {

DCN_CLONES
void scatter_runs_f32(const PlanEntry<float>* plan, int64_t len, float* image,
                      const CornerOffsets& co, const float* gcol, int64_t col_p, int64_t n) {
  scatter_runs(plan, len, image, co, gcol, col_p, n);
}

}  // namespace dcn::cpu
