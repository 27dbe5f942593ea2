#include "channels_last.h"
#include "clones.h"

namespace dcn::cpu {

DCN_CLONES
void sample_runs_f32(const PlanEntry<float>* plan, int64_t len, const float* image,
                     const CornerOffsets& co, float* col, int64_t col_p, int64_t n) {
  sample_runs(plan, len, image, co, col, col_p, n);
}

}  // namespace dcn::cpu
