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
//     index): no threshold, no histogram, a few compares per entry;
//   * larger groups (rows): a radix select of the k-th smallest r, 8 bits a
//     pass over the group's own keys (in cache for a row), then the write
//     pass: every r below it and the first (k - below) equal to it.
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
    const int64_t size = g_.group_size;
    const int64_t grain = std::max<int64_t>(1, kEntriesPerTask / size);
    at::parallel_for(0, g_.groups, grain, [&](int64_t begin, int64_t end) {
      std::vector<key_t> r(static_cast<size_t>(size));
      for (int64_t group = begin; group < end; ++group) {
        select_group(group * size, k_of(group), r.data());
      }
    });
  }

 private:
  int64_t k_of(int64_t group) const {
    const int64_t k = group_k_ != nullptr ? group_k_[group] : g_.p.k;
    return std::clamp<int64_t>(k, 0, g_.group_size);
  }

  mask_t kept(int64_t e) const { return prev_ != nullptr ? prev_[e] : one_; }

  void select_group(int64_t base, int64_t k, key_t* r) {
    const int64_t size = g_.group_size;
    for (int64_t i = 0; i < size; ++i) {
      const bool alive = !among_alive_ || prev_[base + i] == one_;
      r[i] = alive ? static_cast<key_t>(Traits::key(raw_[base + i]) + 1) : key_t(0);
    }
    if (size <= kRankedGroup) {
      for (int64_t i = 0; i < size; ++i) {
        int64_t before = 0;
        for (int64_t j = 0; j < size; ++j) {
          before += (r[j] < r[i]) | ((r[j] == r[i]) & (j < i));
        }
        write(base + i, r[i], before < k);
      }
      return;
    }
    int64_t rank = k;  // of the threshold among the entries that share its prefix
    const key_t threshold = k == 0 ? key_t(0) : kth_smallest(r, size, &rank);
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

  // The rank-th smallest of r[0..size) (rank >= 1); *rank becomes its rank
  // among the entries equal to it (how many of those the write selects).
  static key_t kth_smallest(const key_t* r, int64_t size, int64_t* rank) {
    constexpr int kWidth = static_cast<int>(sizeof(key_t) * 8);
    std::array<int64_t, 256> hist;
    key_t prefix = 0;
    for (int shift = kWidth - 8; shift >= 0; shift -= 8) {
      hist.fill(0);
      const int high = shift + 8;  // the bits above this digit must match prefix's
      for (int64_t i = 0; i < size; ++i) {
        if (high == kWidth || ((r[i] ^ prefix) >> high) == 0) {
          ++hist[(r[i] >> shift) & 0xFF];
        }
      }
      int digit = 0;
      while (*rank > hist[digit]) {
        *rank -= hist[digit++];
      }
      prefix = static_cast<key_t>(prefix | (static_cast<key_t>(digit) << shift));
    }
    return prefix;
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
