// The CUDA l1_mask_grouped (schema in ops.cpp): the checks are
// l1_group_common.h's, run by the host compiler before anything launches;
// l1_group_cuda.cu only launches. No host sync and no descriptor table, so
// the op may run under CUDA graph capture.
#include <torch/library.h>

#include <cstdint>
#include <exception>

#include "../l1_group_common.h"
#include "l1_group_launcher.h"

namespace pruneext {
namespace {

void run_groups_cuda(GroupProblem& g) {
  const int64_t blocks = g.group_size <= cuda::kSmallGroup ? (g.groups + cuda::kSmallThreads - 1) / cuda::kSmallThreads
                                                           : g.groups;
  TORCH_CHECK(blocks <= INT32_MAX, "l1_mask_grouped: ", g.groups, " groups are too many for one launch");
  const auto launched = cuda::select_groups(g);
  if (launched.error) {
    std::rethrow_exception(launched.error);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pruneext, CUDA, m) {
  m.impl("l1_mask_grouped", &GroupOps<run_groups_cuda>::l1_mask_grouped);
}

}  // namespace pruneext
