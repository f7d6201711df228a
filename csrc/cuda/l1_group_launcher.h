// The entry point of l1_group_cuda.cu (the grouped select, ops.cpp's
// l1_mask_grouped), called only by its host side (l1_group_ops_cuda.cpp)
// once every check has passed; noexcept, as every launcher (launchers.h
// says why nothing is thrown across the .cu boundary).
#pragma once

#include "../l1_group_common.h"
#include "launchers.h"

namespace pruneext {
namespace cuda {

// Groups of up to this many entries get a thread each, larger ones a block
// (a grid holds fewer than 2^31 blocks: the host side checks the count).
constexpr int64_t kSmallGroup = 32;
constexpr int64_t kSmallThreads = 256;

// The masks of every group into g.p.jobs[0].out, in one launch.
Launched select_groups(GroupProblem& g) noexcept;

}  // namespace cuda
}  // namespace pruneext
