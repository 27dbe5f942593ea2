// A kernel's work as independent tasks: run(t) for t in [0, count), in any
// order, on any thread. col2im and coord_grad hand theirs out so that the
// backward can run both in one parallel region: a core that finishes one
// kernel's tasks takes the other's instead of idling at a barrier (col2im
// has one task per image and group, far fewer than the cores on one image).
#pragma once
#include <cstdint>
#include <functional>

#include "dcn/cpu.h"

namespace dcn::cpu {

struct Tasks {
  int64_t count = 0;
  std::function<void(int64_t)> run;
  // Called on the calling thread once every task has run: throws what a
  // task could not (an exception must not leave a worker thread).
  std::function<void()> finish = [] {};
};

// The tasks of col2im and coord_grad (same arguments as in dcn/cpu.h); a
// Tasks object reads and writes the buffers it was made for, and owns any
// scratch it needs. split_for_threads: cut col2im's channel runs finer so
// that every thread gets a task of its own (col2im alone); false when other
// tasks share the parallel region and keep the other threads busy.
Tasks col2im_tasks(DType dtype, const Geometry& geo, const void* grad_columns,
                   ColumnStrides columns_s, const void* offset, Strides4 offset_s,
                   const void* mask, Strides4 mask_s, void* grad_input, Strides4 grad_input_s,
                   bool split_for_threads = true);
Tasks coord_grad_tasks(DType dtype, const Geometry& geo, const void* grad_columns,
                       ColumnStrides columns_s, const void* input, Strides4 input_s,
                       const void* offset, Strides4 offset_s, const void* mask, Strides4 mask_s,
                       void* grad_offset, Strides4 grad_offset_s, void* grad_mask,
                       Strides4 grad_mask_s, void* columns_out);

}  // namespace dcn::cpu
