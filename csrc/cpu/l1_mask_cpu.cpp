// CPU implementation of pruneext::l1_mask and pruneext::l1_mask_global (and
// its .into overload):
// the radix select of l1_select_cpu.h over the whole list.
#include <torch/library.h>

#include "huge_pages.h"
#include "l1_select_cpu.h"

namespace pruneext {
namespace {

using cpu::CpuSelect;

void run_cpu(MaskProblem& p) {
  if (p.jobs.empty()) {
    return;
  }
  cpu::advise_outputs(p);
  PRUNEEXT_DISPATCH_SCORES(p.score_dtype, "l1_mask", [&] {
    using Traits = typename KeyOf<scalar_t>::type;
    PRUNEEXT_DISPATCH_MASK_BITS(p.mask_dtype, "l1_mask", [&] {
      CpuSelect<Traits, mask_bits_t>(p).run();
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(pruneext, CPU, m) {
  m.impl("l1_mask", &MaskOps<run_cpu>::l1_mask);
  m.impl("l1_mask_global", &MaskOps<run_cpu>::l1_mask_global);
  m.impl("l1_mask_global.into", &MaskOps<run_cpu>::l1_mask_global_into);
}

}  // namespace pruneext
