// A small persistent thread pool for the CPU kernels.
//
// parallel_for hands out task indices dynamically; every kernel makes each
// task's result independent of which thread runs it, so results do not
// depend on the thread count. A call made while the pool is busy (another
// Python thread, or a nested call) runs inline on the calling thread instead
// of waiting or oversubscribing the cores.
#pragma once
#include <cstdint>
#include <functional>

namespace dcn::cpu {

// fn(task) for task in [0, n_tasks).
void parallel_for(int64_t n_tasks, const std::function<void(int64_t)>& fn);

}  // namespace dcn::cpu
