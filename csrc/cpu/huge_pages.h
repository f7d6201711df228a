// Transparent huge pages for the large outputs the CPU kernels write.
//
// A fresh CPU tensor is mapped lazily: its first write takes one page fault
// per 4 KiB page, which on the machines measured here costs as much as
// writing the tensor (a fresh 256 MB output about 50-60 ms of faults, the
// copy into it about 24 ms). l1_unstructured hands back two fresh tensors (the
// mask and the masked weight), so those faults were most of the call. Asked
// before the first write, the kernel maps the output in 2 MiB pages where it
// can (Linux with transparent_hugepage "madvise" or "always"): 512 times
// fewer faults. This is advice: the data and the allocation are torch's and
// unchanged, and where the kernel cannot (THP "never", not Linux, a file
// mapping) nothing happens. torch's own THP_MEM_ALLOC_ENABLE=1 does the same
// for every allocation. PRUNEEXT_NO_HUGE_PAGES=1 turns it off (how the
// benchmark shows what it saves).
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

inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  // below two huge pages the advice saves little and splits a mapping
  constexpr uintptr_t kMinBytes = 2 * kHuge;
  static const bool enabled = !env_is_one("PRUNEEXT_NO_HUGE_PAGES");
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
