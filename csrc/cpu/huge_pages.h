// Transparent huge pages for the large outputs the CPU kernels write, where
// the user asks for them (PRUNEEXT_HUGE_PAGES=1).
//
// A fresh CPU tensor is mapped lazily: its first write takes one page fault
// per 4 KiB page, which costs about as much as writing the tensor, and
// l1_unstructured hands back two fresh tensors (the mask and the masked
// weight). Asked before the first write, the kernel maps an output in 2 MiB
// pages where it can: 512 times fewer faults. This is advice: the data and
// the allocation are torch's and unchanged.
//
// Why not by default: where it was first measured a gain (the same call
// repeated in one process, whose freed huge pages the next call reuses),
// it is a loss the way a model is pruned, every output kept and so every
// output new memory. On the 2-core VM (issue 26), l1_unstructured on eight
// 4096 x 4096 fp32 Linears in one process took 174-262 ms a layer with
// the advice and 35-49 ms without (THP defrag "madvise"; the op's first
// calls 3.5-4x slower with it under "never" too), with no compaction stall
// counted (/proc/vmstat compact_stall 0):
// it is the first touch of huge pages new to the process, not compaction,
// so no THP setting tells where the advice would pay. A machine where it
// does can ask for it; PRUNEEXT_NO_HUGE_PAGES=1 wins over it. torch's own
// THP_MEM_ALLOC_ENABLE=1 advises every allocation.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "../l1_mask_common.h"
#include "env_switch.h"

namespace pruneext {
namespace cpu {

// Whether to advise (see the top of this file); read once.
inline bool advice_wanted() {
  return env_is_one("PRUNEEXT_HUGE_PAGES") && !env_is_one("PRUNEEXT_NO_HUGE_PAGES");
}

inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  // below two huge pages the advice saves little and splits a mapping
  constexpr uintptr_t kMinBytes = 2 * kHuge;
  static const bool enabled = advice_wanted();
  if (!enabled || !t.defined() || !t.is_cpu() || !t.is_contiguous()) {
    return;
  }
  const auto bytes = static_cast<uintptr_t>(t.numel()) * t.element_size();
  if (bytes < kMinBytes) {
    return;
  }
  // only the whole huge pages inside the tensor's own bytes: nothing else
  // in the allocation (a neighbour in the heap) is touched by the advice
  const auto first = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (first + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (first + bytes) & ~(kHuge - 1);
  if (end > begin) {
    (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // advice: failure is harmless
  }
#else
  (void)t;
#endif
}

// The outputs of a mask write (the masks and the masked values), before the
// first write: usually fresh tensors.
inline void advise_outputs(const MaskProblem& p) {
  for (const MaskJob& job : p.jobs) {
    advise_huge_pages(job.out);
    advise_huge_pages(job.values_out);
  }
}

}  // namespace cpu
}  // namespace pruneext
