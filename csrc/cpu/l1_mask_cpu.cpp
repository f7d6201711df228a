// CPU implementation of pruneext::l1_mask and pruneext::l1_mask_global.
//
// Radix select on the magnitude key (magnitude_key.h), parallel over fixed
// work items with at::parallel_for:
//   1. histogram of the first digit over every alive entry (one full read);
//   2. if the k-th key's bucket is small, copy its keys into per-item
//      candidate lists (one more full read) so later digits only read those;
//      otherwise resolve the later digits with full reads (heavy ties);
//   3. with the threshold key T and r = k - count(key < T), count the entries
//      equal to T per item, give each item its share of r in item order (so
//      ties go to the lowest flat index) and write the mask in one pass.
// No sort and no index tensor: the extra memory is the candidate lists
// (at most a quarter of the keys) and the per-thread histograms.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "../l1_mask_common.h"

namespace pruneext {
namespace {

// Elements per work item: large enough to amortise scheduling, small enough
// to balance threads and keep candidate lists local.
constexpr int64_t kItemSize = int64_t(1) << 16;

struct Item {
  int64_t job;
  int64_t begin;
  int64_t end;
};

struct Bucket {
  int64_t index;  // the digit value holding the rank-th key
  int64_t below;  // keys in lower buckets
};

// The bucket of `h` that holds the rank-th smallest key (rank is 1-based).
Bucket find_bucket(const std::vector<int64_t>& h, int64_t rank) {
  int64_t cum = 0;
  for (size_t b = 0; b < h.size(); ++b) {
    if (cum + h[b] >= rank) {
      return {static_cast<int64_t>(b), cum};
    }
    cum += h[b];
  }
  TORCH_INTERNAL_ASSERT(false, "pruneext: rank ", rank, " beyond histogram total ", cum);
}

template <typename Traits, typename mask_t>
class CpuSelect {
  using key_t = typename Traits::key_t;
  using Plan = RadixPlan<Traits>;

 public:
  explicit CpuSelect(MaskProblem& p) : k_(p.k) {
    for (size_t j = 0; j < p.jobs.size(); ++j) {
      auto& job = p.jobs[j];
      raw_.push_back(reinterpret_cast<const key_t*>(job.scores.data_ptr()));
      const bool filters = p.among_alive && job.prev.defined();
      alive_.push_back(filters ? job.prev.template data_ptr<mask_t>() : nullptr);
      prev_.push_back(job.prev.defined() ? job.prev.template data_ptr<mask_t>() : nullptr);
      out_.push_back(job.out.template data_ptr<mask_t>());
      const int64_t n = job.scores.numel();
      n_total_ += n;
      for (int64_t b = 0; b < n; b += kItemSize) {
        items_.push_back({static_cast<int64_t>(j), b, std::min(n, b + kItemSize)});
      }
    }
  }

  void run() {
    if (k_ == 0) {
      // Nothing is selected, but an impossible k must still be refused.
      write(key_t(0), std::vector<int64_t>(items_.size(), 0));
      return;
    }
    int shift = Plan::kFirstShift;
    auto h = histogram(shift, Plan::kFirstDigitBits, 0);
    const int64_t alive = std::accumulate(h.begin(), h.end(), int64_t(0));
    TORCH_CHECK(
        k_ <= alive, "l1_mask: k=", k_, " exceeds the ", alive,
        " entries that can be pruned");
    Bucket bucket = find_bucket(h, k_);
    int64_t rank = k_ - bucket.below;
    int64_t count_lt = bucket.below;
    uint64_t prefix = static_cast<uint64_t>(bucket.index);
    if (shift > 0 && h[bucket.index] * 4 <= n_total_) {
      compact(shift, static_cast<key_t>(prefix));
    }
    while (shift > 0) {
      const int bits = std::min(Plan::kDigitBits, shift);
      shift -= bits;
      h = histogram(shift, bits, static_cast<key_t>(prefix));
      bucket = find_bucket(h, rank);
      rank -= bucket.below;
      count_lt += bucket.below;
      prefix = (prefix << bits) | static_cast<uint64_t>(bucket.index);
    }
    const key_t threshold = static_cast<key_t>(prefix);
    write(threshold, shares_of_ties(threshold, k_ - count_lt));
  }

 private:
  // Calls f(key) for every alive key of item `idx`: its candidate list once
  // compacted, else the full scores.
  template <typename F>
  void for_each_key(int64_t idx, F&& f) {
    if (compacted_) {
      for (const key_t key : cands_[idx]) {
        f(key);
      }
      return;
    }
    const Item& it = items_[idx];
    const key_t* raw = raw_[it.job];
    const mask_t* alive = alive_[it.job];
    if (alive == nullptr) {
      for (int64_t i = it.begin; i < it.end; ++i) {
        f(Traits::key(raw[i]));
      }
    } else {
      const mask_t one(1);
      for (int64_t i = it.begin; i < it.end; ++i) {
        if (alive[i] == one) {
          f(Traits::key(raw[i]));
        }
      }
    }
  }

  // Histogram of digit (key >> shift) & (2^bits - 1) over the alive keys
  // whose higher bits equal `prefix`. Compacted lists drop the other keys as
  // they go, so each digit reads fewer.
  std::vector<int64_t> histogram(int shift, int bits, key_t prefix) {
    const int64_t nbins = int64_t(1) << bits;
    const int nthreads = at::get_num_threads();
    std::vector<int64_t> local(static_cast<size_t>(nthreads) * nbins, 0);
    at::parallel_for(0, static_cast<int64_t>(items_.size()), 1, [&](int64_t b, int64_t e) {
      int64_t* h = local.data() + static_cast<int64_t>(at::get_thread_num()) * nbins;
      if (compacted_) {
        histogram_candidates(b, e, shift, bits, prefix, h);
      } else {
        histogram_full(b, e, shift, bits, prefix, h);
      }
    });
    std::vector<int64_t> h(nbins, 0);
    for (int t = 0; t < nthreads; ++t) {
      for (int64_t b = 0; b < nbins; ++b) {
        h[b] += local[static_cast<size_t>(t) * nbins + b];
      }
    }
    return h;
  }

  void histogram_candidates(int64_t b, int64_t e, int shift, int bits, key_t prefix, int64_t* h) {
    const key_t digit_mask = static_cast<key_t>((uint64_t(1) << bits) - 1);
    const int high = shift + bits;
    for (int64_t idx = b; idx < e; ++idx) {
      auto& c = cands_[idx];
      size_t kept = 0;
      for (const key_t key : c) {
        if (static_cast<key_t>(key >> high) == prefix) {
          c[kept++] = key;
          ++h[(key >> shift) & digit_mask];
        }
      }
      c.resize(kept);
    }
  }

  // The full-read histogram, the hot loop of the kernel. Consecutive equal
  // digits would serialise on one counter (store-to-load forwarding), so the
  // counts go round-robin into kCopies 32-bit sub-histograms, folded into
  // the 64-bit one before they could overflow. Every entry adds 0 or 1, so
  // the loop has no data-dependent branch.
  void histogram_full(int64_t b, int64_t e, int shift, int bits, key_t prefix, int64_t* h) {
    constexpr int kCopies = 4;
    constexpr int64_t kFoldEvery = int64_t(1) << 31;  // < 2^32 per 32-bit counter
    const int64_t nbins = int64_t(1) << bits;
    const key_t digit_mask = static_cast<key_t>(nbins - 1);
    const int high = shift + bits;
    std::vector<uint32_t> sub(static_cast<size_t>(kCopies) * nbins, 0);
    uint32_t* s0 = sub.data();
    uint32_t* s1 = s0 + nbins;
    uint32_t* s2 = s1 + nbins;
    uint32_t* s3 = s2 + nbins;
    int64_t pending = 0;
    auto fold = [&] {
      for (int64_t d = 0; d < nbins; ++d) {
        h[d] += int64_t(s0[d]) + s1[d] + s2[d] + s3[d];
      }
      std::fill(sub.begin(), sub.end(), 0u);
      pending = 0;
    };
    const mask_t one(1);
    for (int64_t idx = b; idx < e; ++idx) {
      const Item& it = items_[idx];
      if (pending + (it.end - it.begin) > kFoldEvery) {
        fold();
      }
      pending += it.end - it.begin;
      const key_t* raw = raw_[it.job];
      const mask_t* alive = alive_[it.job];
      auto count = [&](uint32_t* sh, int64_t i) {
        const key_t key = Traits::key(raw[i]);
        const bool take = static_cast<key_t>(key >> high) == prefix && (alive == nullptr || alive[i] == one);
        sh[(key >> shift) & digit_mask] += take;
      };
      int64_t i = it.begin;
      for (; i + kCopies <= it.end; i += kCopies) {
        count(s0, i);
        count(s1, i + 1);
        count(s2, i + 2);
        count(s3, i + 3);
      }
      for (; i < it.end; ++i) {
        count(s0, i);
      }
    }
    fold();
  }

  // Copies the alive keys whose bits above `shift` equal `prefix` into
  // per-item candidate lists (item order = flat order, kept for the ties).
  void compact(int shift, key_t prefix) {
    cands_.assign(items_.size(), {});
    at::parallel_for(0, static_cast<int64_t>(items_.size()), 1, [&](int64_t b, int64_t e) {
      for (int64_t idx = b; idx < e; ++idx) {
        auto& c = cands_[idx];
        for_each_key(idx, [&](key_t key) {
          if (static_cast<key_t>(key >> shift) == prefix) {
            c.push_back(key);
          }
        });
      }
    });
    compacted_ = true;
  }

  // How many of the entries equal to the threshold each item zeroes: the
  // first `ties` of them in item order, which is flat order.
  std::vector<int64_t> shares_of_ties(key_t threshold, int64_t ties) {
    std::vector<int64_t> eq(items_.size(), 0);
    at::parallel_for(0, static_cast<int64_t>(items_.size()), 1, [&](int64_t b, int64_t e) {
      for (int64_t idx = b; idx < e; ++idx) {
        int64_t n = 0;
        for_each_key(idx, [&](key_t key) { n += key == threshold; });
        eq[idx] = n;
      }
    });
    for (auto& share : eq) {
      share = std::min(share, ties);
      ties -= share;
    }
    return eq;
  }

  // out = 0 where selected (alive, key < threshold, or key == threshold
  // within the item's share of ties), else the previous mask (or 1).
  void write(key_t threshold, const std::vector<int64_t>& shares) {
    at::parallel_for(0, static_cast<int64_t>(items_.size()), 1, [&](int64_t b, int64_t e) {
      const mask_t one(1), zero(0);
      for (int64_t idx = b; idx < e; ++idx) {
        const Item& it = items_[idx];
        const key_t* raw = raw_[it.job];
        const mask_t* alive = alive_[it.job];
        const mask_t* prev = prev_[it.job];
        mask_t* out = out_[it.job];
        int64_t share = shares[idx];
        if (share == 0 && alive == nullptr && prev == nullptr) {
          // The common case (first pruning, no tie to split here): a
          // branch-free loop the compiler vectorises.
          for (int64_t i = it.begin; i < it.end; ++i) {
            out[i] = Traits::key(raw[i]) < threshold ? zero : one;
          }
          continue;
        }
        for (int64_t i = it.begin; i < it.end; ++i) {
          const key_t key = Traits::key(raw[i]);
          const bool live = alive == nullptr || alive[i] == one;
          bool selected = live && key < threshold;
          if (share > 0 && live && key == threshold) {
            selected = true;
            --share;
          }
          out[i] = selected ? zero : (prev != nullptr ? prev[i] : one);
        }
      }
    });
  }

  int64_t k_;
  int64_t n_total_ = 0;
  std::vector<const key_t*> raw_;
  std::vector<const mask_t*> alive_;  // set only where among_alive filters
  std::vector<const mask_t*> prev_;
  std::vector<mask_t*> out_;
  std::vector<Item> items_;
  std::vector<std::vector<key_t>> cands_;
  bool compacted_ = false;
};

void run_cpu(MaskProblem& p) {
  if (p.jobs.empty()) {
    return;
  }
  PRUNEEXT_DISPATCH_SCORES(p.score_dtype, "l1_mask", [&] {
    using Traits = typename KeyOf<scalar_t>::type;
    PRUNEEXT_DISPATCH_MASKS(p.mask_dtype, "l1_mask", [&] {
      CpuSelect<Traits, mask_t>(p).run();
    });
  });
}

at::Tensor l1_mask_cpu(
    const at::Tensor& scores,
    int64_t k,
    const std::optional<at::Tensor>& default_mask,
    bool among_alive) {
  auto p = prepare_problem({scores}, {default_mask}, k, among_alive, "l1_mask");
  run_cpu(p);
  return finish_problem(p)[0];
}

std::vector<at::Tensor> l1_mask_global_cpu(
    at::TensorList scores,
    int64_t k,
    const c10::List<std::optional<at::Tensor>>& default_masks,
    bool among_alive) {
  auto p = prepare_problem(scores, to_vector(default_masks), k, among_alive, "l1_mask_global");
  run_cpu(p);
  return finish_problem(p);
}

}  // namespace

TORCH_LIBRARY_IMPL(pruneext, CPU, m) {
  m.impl("l1_mask", &l1_mask_cpu);
  m.impl("l1_mask_global", &l1_mask_global_cpu);
}

}  // namespace pruneext
