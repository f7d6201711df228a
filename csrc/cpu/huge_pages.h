// Transparent huge pages for the large outputs the CPU kernels write.
//
// A fresh CPU tensor is mapped lazily: its first write takes one page fault
// per 4 KiB page, which on the machines measured here costs as much as
// writing the tensor (a fresh 256 MB output about 50-60 ms of faults, the
// copy into it about 24 ms). l1_unstructured hands back two fresh tensors (the
// mask and the masked weight), so those faults were most of the call. Asked
// before the first write, the kernel maps the output in 2 MiB pages where it
// can: 512 times fewer faults. This is advice: the data and the allocation
// are torch's and unchanged.
//
// When: only where the advice cannot stall. Under THP defrag "madvise",
// "defer+madvise" or "always", a fault in an advised range compacts memory
// first whenever no huge page is free, and on a machine whose memory is
// fragmented that made the call 3-7x slower from one process to the next
// (issue 26: l1_unstructured at 2^24 fp32 took 24 to 153 ms with the
// advice, 34-42 ms without). Under defrag "defer" or "never" an advised
// fault takes a huge page only if one is free, and a 4 KiB page otherwise.
// So the advice is given where THP is "always" or "madvise" and defrag is
// "defer" or "never"; PRUNEEXT_HUGE_PAGES=1 gives it whatever the setting,
// PRUNEEXT_NO_HUGE_PAGES=1 never (how the benchmark shows what it does).
// torch's own THP_MEM_ALLOC_ENABLE=1 advises every allocation.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <fstream>
#include <string>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "../l1_mask_common.h"
#include "env_switch.h"

namespace pruneext {
namespace cpu {

// The bracketed word of a THP setting in sysfs ("" where it cannot be read).
inline std::string thp_mode(const char* name) {
  std::ifstream f(std::string("/sys/kernel/mm/transparent_hugepage/") + name);
  std::string word;
  while (f >> word) {
    if (word.size() > 2 && word.front() == '[' && word.back() == ']') {
      return word.substr(1, word.size() - 2);
    }
  }
  return "";
}

// Whether to advise (see the top of this file); read once.
inline bool advice_wanted() {
  if (env_is_one("PRUNEEXT_NO_HUGE_PAGES")) {
    return false;
  }
  if (env_is_one("PRUNEEXT_HUGE_PAGES")) {
    return true;
  }
  const std::string enabled = thp_mode("enabled"), defrag = thp_mode("defrag");
  return (enabled == "always" || enabled == "madvise") && (defrag == "defer" || defrag == "never");
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
