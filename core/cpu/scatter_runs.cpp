#include "scatter_runs.h"

#include "clones.h"

namespace dcn::cpu {

DCN_CLONES
void scatter_runs_f32(const PlanEntry<float>* plan, int64_t len, float* image,
                      const CornerOffsets& co, const float* gcol, int64_t col_p, int64_t n) {
  scatter_runs(plan, len, image, co, gcol, col_p, n);
}

}  // namespace dcn::cpu
