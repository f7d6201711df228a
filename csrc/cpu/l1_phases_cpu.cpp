// CPU implementation of the phase ops (ops.cpp): l1_key_histogram,
// l1_count_equal and l1_mask_write, over the whole list at once.
//
// They are the passes of the fused select (l1_select_cpu.h) run alone, on
// the same fixed work items with at::parallel_for: the full-read digit
// histogram (per-thread bins, folded), the per-item counts of keys == T,
// and the mask write. Each is one read of the scores (and masks), except
// that a tensor whose tie budget is neither 0 nor all of its ties has its
// ties counted first (one more read of that tensor) so that an exclusive
// scan over its items gives each item its share in flat order.
#include <torch/library.h>

#include <cstring>

#include "huge_pages.h"
#include "l1_select_cpu.h"

namespace pruneext {
namespace {

using cpu::CpuSelect;

// Runs f(CpuSelect<Traits, mask_t>&) for the problem's dtypes.
template <typename F>
void with_select(MaskProblem& p, F&& f) {
  PRUNEEXT_DISPATCH_SCORES(p.score_dtype, "l1 phases", [&] {
    using Traits = typename KeyOf<scalar_t>::type;
    PRUNEEXT_DISPATCH_MASK_BITS(p.mask_dtype, "l1 phases", [&] {
      CpuSelect<Traits, mask_bits_t> select(p);
      f(select);
    });
  });
}

at::Tensor int64_tensor(const std::vector<int64_t>& v) {
  auto t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(at::kLong));
  std::memcpy(t.data_ptr<int64_t>(), v.data(), v.size() * sizeof(int64_t));
  return t;
}

struct CpuPhases {
  static at::Tensor key_histogram(MaskProblem& p, int shift, int bits, uint64_t prefix) {
    std::vector<int64_t> h;
    with_select(p, [&](auto& select) {
      using key_t = typename std::decay_t<decltype(select)>::key_type;
      h = select.histogram(shift, bits, static_cast<key_t>(prefix));
    });
    return int64_tensor(h);
  }

  static at::Tensor count_equal(MaskProblem& p, uint64_t threshold) {
    std::vector<int64_t> counts(p.jobs.size(), 0);
    with_select(p, [&](auto& select) {
      using key_t = typename std::decay_t<decltype(select)>::key_type;
      const auto ties = select.count_ties(static_cast<key_t>(threshold), [](int64_t) { return true; });
      const auto& items = select.items();
      for (size_t idx = 0; idx < items.size(); ++idx) {
        counts[items[idx].job] += ties.equal[idx];
      }
    });
    return int64_tensor(counts);
  }

  // budgets[j] in [0, numel]: numel zeroes every tie (key <= T, nothing to
  // count), 0 none (key < T), anything between the first budgets[j] ties.
  static void mask_write(MaskProblem& p, uint64_t threshold, const std::vector<int64_t>& budgets) {
    std::vector<char> partial(budgets.size());
    for (size_t j = 0; j < budgets.size(); ++j) {
      partial[j] = budgets[j] > 0 && budgets[j] < p.jobs[j].scores.numel();
    }
    cpu::advise_outputs(p);
    with_select(p, [&](auto& select) {
      using key_t = typename std::decay_t<decltype(select)>::key_type;
      const key_t T = static_cast<key_t>(threshold);
      const auto& items = select.items();
      auto ties = select.count_ties(T, [&](int64_t idx) { return partial[items[idx].job] != 0; });
      // the exclusive scan of each tensor's counts, as its budget runs out
      int64_t left = 0;
      for (size_t idx = 0; idx < items.size(); ++idx) {
        const cpu::Item& it = items[idx];
        if (idx == 0 || items[idx - 1].job != it.job) {
          left = budgets[it.job];
        }
        if (partial[it.job]) {
          ties.share[idx] = std::min(ties.equal[idx], left);
          left -= ties.share[idx];
        } else if (left > 0) {
          // every tie, uncounted: any share == equal != 0 writes key <= T
          ties.equal[idx] = ties.share[idx] = 1;
        }
      }
      select.write(T, ties);
    });
  }
};

at::Tensor l1_select_threshold(
    at::TensorList scores,
    const c10::List<std::optional<at::Tensor>>& default_masks,
    bool among_alive,
    int64_t k) {
  auto p = prepare_problem(scores, to_vector(default_masks), k, among_alive, "l1_select_threshold", false);
  std::vector<int64_t> found(3 + scores.size(), 0);
  if (!p.jobs.empty() && k > 0) {
    with_select(p, [&](auto& select) {
      using key_t = typename std::decay_t<decltype(select)>::key_type;
      const auto f = select.find();
      found[0] = static_cast<int64_t>(f.threshold);
      found[1] = f.below;
      found[2] = f.equal;
      const int64_t ties_taken = k - f.below;
      if (ties_taken <= 0 || ties_taken >= f.equal) {
        return;  // every tensor takes all of its ties, or none: no counts needed
      }
      // on the candidates when the select compacted them: no full read
      const auto ties = select.count_ties(static_cast<key_t>(f.threshold), [](int64_t) { return true; });
      const auto& items = select.items();
      for (size_t idx = 0; idx < items.size(); ++idx) {
        found[3 + items[idx].job] += ties.equal[idx];
      }
    });
  }
  return int64_tensor(found);
}

}  // namespace

TORCH_LIBRARY_IMPL(pruneext, CPU, m) {
  m.impl("l1_select_threshold", &l1_select_threshold);
  m.impl("l1_key_histogram", &PhaseOps<CpuPhases>::l1_key_histogram);
  m.impl("l1_count_equal", &PhaseOps<CpuPhases>::l1_count_equal);
  m.impl("l1_mask_write", &PhaseOps<CpuPhases>::l1_mask_write);
}

}  // namespace pruneext
