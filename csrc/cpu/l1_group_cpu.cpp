// CPU implementation of pruneext::l1_mask_grouped (ops.cpp): the select of
// l1_mask within every group of consecutive entries, all groups in one
// at::parallel_for (the row scope: a group is a row; N:M: M entries).
//
// Each group ranks its entries by r = key + 1, and r = 0 for an entry the
// default mask has already pruned (among_alive): those rank first, so the
// k smallest r are the pruned ones and then the smallest alive keys, which
// is the op's rule (a group ends with at least k pruned). The key is that
// of magnitude_key.h, so r fits the key's own unsigned type.
//   * groups of up to kRankedGroup entries (N:M): an entry is selected when
//     fewer than k entries rank before it (smaller r, or equal r at a lower
//     index): no threshold, no histogram, a few compares per entry (the
//     loops unrolled for 2, 4, 8 and 16 entries);
//   * larger groups (rows): a radix select of the k-th smallest r, 8 bits a
//     digit: the first counted while the group's keys are made, the others
//     over the keys of the chosen bucket only (copied out, narrowed after
//     each digit), then the write pass: every r below it and the first
//     (k - below) equal to it. A row stays in cache throughout.
// A selected entry that was already pruned keeps its default mask value.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

#include "../l1_group_common.h"
#include "huge_pages.h"

namespace pruneext {
namespace {

constexpr int64_t kRankedGroup = 32;
constexpr int64_t kEntriesPerTask = int64_t(1) << 16;

template <typename Traits, typename mask_t>
class GroupSelect {
  using key_t = typename Traits::key_t;

 public:
  explicit GroupSelect(GroupProblem& g)
      : g_(g),
        job_(g.p.jobs[0]),
        raw_(static_cast<const key_t*>(job_.scores.data_ptr())),
        prev_(job_.prev.defined() ? static_cast<const mask_t*>(job_.prev.data_ptr()) : nullptr),
        out_(static_cast<mask_t*>(job_.out.data_ptr())),
        group_k_(g.group_k.defined() ? g.group_k.data_ptr<int64_t>() : nullptr),
        one_(static_cast<mask_t>(mask_one_bits(g.p.mask_dtype))),
        among_alive_(g.p.among_alive && prev_ != nullptr) {}

  void run() {
    // the common N:M group sizes with the group's loops unrolled
    switch (g_.group_size) {
      case 2: return run_tasks([&](int64_t group, key_t*, key_t*) { select_small<2>(group); });
      case 4: return run_tasks([&](int64_t group, key_t*, key_t*) { select_small<4>(group); });
      case 8: return run_tasks([&](int64_t group, key_t*, key_t*) { select_small<8>(group); });
      case 16: return run_tasks([&](int64_t group, key_t*, key_t*) { select_small<16>(group); });
      default: return run_tasks([&](int64_t group, key_t* r, key_t* cand) { select_group(group, r, cand); });
    }
  }

 private:
  template <typename F>
  void run_tasks(F&& select) {
    const int64_t size = g_.group_size;
    const int64_t grain = std::max<int64_t>(1, kEntriesPerTask / size);
    at::parallel_for(0, g_.groups, grain, [&](int64_t begin, int64_t end) {
      // a group's ranked keys, and the candidates of its radix select
      std::vector<key_t> r(static_cast<size_t>(size)), cand(r.size());
      for (int64_t group = begin; group < end; ++group) {
        select(group, r.data(), cand.data());
      }
    });
  }

  int64_t k_of(int64_t group) const {
    const int64_t k = group_k_ != nullptr ? group_k_[group] : g_.p.k;
    return std::clamp<int64_t>(k, 0, g_.group_size);
  }

  mask_t kept(int64_t e) const { return prev_ != nullptr ? prev_[e] : one_; }

  key_t rank_key(int64_t e) const {
    const bool alive = !among_alive_ || prev_[e] == one_;
    return alive ? static_cast<key_t>(Traits::key(raw_[e]) + 1) : key_t(0);
  }

  // An entry is selected when fewer than k entries rank before it. Size:
  // int for the unrolled sizes (a constant once inlined), int64_t otherwise.
  template <typename Size>
  void rank_group(int64_t base, int64_t k, key_t* r, Size size) {
    for (Size i = 0; i < size; ++i) {
      r[i] = rank_key(base + i);
    }
    for (Size i = 0; i < size; ++i) {
      Size before = 0;
      for (Size j = 0; j < size; ++j) {
        before += (r[j] < r[i]) | ((r[j] == r[i]) & (j < i));
      }
      write(base + i, r[i], before < k);
    }
  }

  template <int M>
  void select_small(int64_t group) {
    key_t r[M];
    rank_group(group * M, k_of(group), r, M);
  }

  void select_group(int64_t group, key_t* r, key_t* cand) {
    const int64_t size = g_.group_size;
    const int64_t base = group * size;
    const int64_t k = k_of(group);
    if (size <= kRankedGroup) {
      rank_group(base, k, r, size);
      return;
    }
    int64_t rank = k;  // of the threshold among the entries that share its prefix
    const key_t threshold = kth_smallest(base, size, r, cand, &rank);
    int64_t ties = k == 0 ? 0 : rank;
    for (int64_t i = 0; i < size; ++i) {
      const bool tie = r[i] == threshold && ties > 0;
      ties -= tie;
      write(base + i, r[i], k > 0 && (r[i] < threshold || tie));
    }
  }

  void write(int64_t e, key_t r, bool selected) {
    // r == 0: pruned by the default mask already, so it keeps that value
    out_[e] = selected && r != 0 ? mask_t(0) : kept(e);
  }

  // Fills r[0..size) with the group's ranked keys and returns the rank-th
  // smallest of them (rank >= 1, or 0: none, then 0 is returned); *rank
  // becomes its rank among the entries equal to it (how many of those the
  // write selects). 8 bits a digit: the first counted as the keys are made,
  // then the keys of the chosen bucket copied out, and the later digits
  // counted over those candidates only, narrowed again after each.
  key_t kth_smallest(int64_t base, int64_t size, key_t* r, key_t* cand, int64_t* rank) const {
    constexpr int kWidth = static_cast<int>(sizeof(key_t) * 8);
    std::array<int64_t, 256> hist;
    hist.fill(0);
    for (int64_t i = 0; i < size; ++i) {
      r[i] = rank_key(base + i);
      ++hist[r[i] >> (kWidth - 8)];
    }
    if (*rank == 0) {
      return key_t(0);
    }
    int digit = take_digit(hist, rank);
    key_t prefix = static_cast<key_t>(static_cast<key_t>(digit) << (kWidth - 8));
    int64_t n = 0;
    for (int64_t i = 0; i < size; ++i) {
      cand[n] = r[i];
      n += (r[i] >> (kWidth - 8)) == static_cast<key_t>(digit);
    }
    for (int shift = kWidth - 16; shift >= 0; shift -= 8) {
      hist.fill(0);
      for (int64_t i = 0; i < n; ++i) {
        ++hist[(cand[i] >> shift) & 0xFF];
      }
      digit = take_digit(hist, rank);
      prefix = static_cast<key_t>(prefix | (static_cast<key_t>(digit) << shift));
      int64_t m = 0;
      for (int64_t i = 0; i < n; ++i) {
        cand[m] = cand[i];
        m += ((cand[i] >> shift) & 0xFF) == static_cast<key_t>(digit);
      }
      n = m;
    }
    return prefix;
  }

  // The bin that holds the rank-th smallest; rank becomes its rank in it.
  static int take_digit(const std::array<int64_t, 256>& hist, int64_t* rank) {
    int digit = 0;
    while (*rank > hist[digit]) {
      *rank -= hist[digit++];
    }
    return digit;
  }

  GroupProblem& g_;
  const MaskJob& job_;
  const key_t* raw_;
  const mask_t* prev_;
  mask_t* out_;
  const int64_t* group_k_;
  const mask_t one_;
  const bool among_alive_;
};

void run_groups_cpu(GroupProblem& g) {
  cpu::advise_outputs(g.p);
  PRUNEEXT_DISPATCH_SCORES(g.p.score_dtype, "l1_mask_grouped", [&] {
    using Traits = typename KeyOf<scalar_t>::type;
    PRUNEEXT_DISPATCH_MASK_BITS(g.p.mask_dtype, "l1_mask_grouped", [&] {
      GroupSelect<Traits, mask_bits_t>(g).run();
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(pruneext, CPU, m) {
  m.impl("l1_mask_grouped", &GroupOps<run_groups_cpu>::l1_mask_grouped);
}

}  // namespace pruneext
