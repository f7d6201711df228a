// The CPU radix select of l1_mask / l1_mask_global (l1_mask_cpu.cpp), and
// the passes the phase ops (l1_phases_cpu.cpp) run on their own: the same
// full-read histogram, tie counts and mask writes serve both.
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
// A sample of the keys guesses a narrow range of them that holds the k-th
// (guess_window): where no default mask filters, steps 1-2 become one read
// that counts the keys below the range and copies those in it (window_pass),
// and the radix resolves the rest on those few per cent, below the high
// bits the range's keys share; where one filters, the first pass keeps the
// range's first digits as it counts.
// No sort and no index tensor: the extra memory is the candidate lists
// (at most a quarter of the keys) and the per-thread histograms.
//
// The write also produces the masked values where the call asks for them
// (values_out = mask * values, MaskJob), in the same loop: with values =
// the scores, one read of them and two writes. (Writing the outputs in the
// first pass already, for the entries below the sampled window, and only
// the window's selected ones after, was measured slower on the 2-core VM:
// the window holds a few per cent of the entries, spread over most cache
// lines, so the late rewrite touched most of both outputs again.)
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../l1_mask_common.h"
#include "avx512.h"

namespace pruneext {
namespace cpu {


// Elements per work item: large enough to amortise scheduling, small enough
// to balance threads and keep candidate lists local.
constexpr int64_t kItemSize = int64_t(1) << 16;

struct Item {
  int64_t job;
  int64_t begin;
  int64_t end;
};

// What a write does with the masked values: value_t is their type, or
// NoValues when the call has none.
struct NoValues {};

// The bits of a value type: the unsigned integer of its width (NoValues: a
// byte, never used).
template <typename value_t>
using ValueBits = std::conditional_t<
    sizeof(value_t) == 8, uint64_t,
    std::conditional_t<sizeof(value_t) == 4, uint32_t, std::conditional_t<sizeof(value_t) == 2, uint16_t, uint8_t>>>;

template <typename value_t>
inline value_t value_of_bits(ValueBits<value_t> b) {
  value_t x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

template <typename value_t>
inline ValueBits<value_t> bits_of_one() {
  const value_t one(1);
  ValueBits<value_t> b;
  std::memcpy(&b, &one, sizeof b);
  return b;
}

// The 16-bit floats' fields: exponent bits (all ones: inf / NaN) and the
// quiet bit of a NaN.
template <typename value_t>
struct Float16Fields;
template <>
struct Float16Fields<c10::Half> {
  static constexpr uint16_t kExp = 0x7C00, kQuiet = 0x0200;
};
template <>
struct Float16Fields<c10::BFloat16> {
  static constexpr uint16_t kExp = 0x7F80, kQuiet = 0x0040;
};

// m * v in value_t, bit for bit torch's `mask.to(value_t) * values` on this
// CPU, for m the bits of a mask entry (vone: those of 1). float and double
// multiply. The 16-bit types have no native product: c10's goes through
// float and back, and without F16C in the build its float -> half is a
// software routine the write loop cannot vectorise (fp16 values_out ran at
// 7-10x the mask alone, issue 26). Their factor is 0 or 1 wherever there is
// no default mask (and nearly always where there is), and then the product
// is a choice of bits: 1 * v = v, 0 * v = +-0 with v's sign, 0 * inf = the
// default NaN (negative on x86), a NaN stays itself, quieted -- what the
// float product and torch's F16C / rounding conversions give. Any other
// factor takes c10's product.
// kZeroOrOne: the caller knows m is 0 or vone (no default mask), so the
// loop holds no branch to c10's product and vectorises.
template <typename value_t, bool kZeroOrOne = false>
inline value_t masked_value(ValueBits<value_t> m, ValueBits<value_t> vone, value_t v) {
  if constexpr (std::is_same_v<value_t, c10::Half> || std::is_same_v<value_t, c10::BFloat16>) {
    using F = Float16Fields<value_t>;
    if (!kZeroOrOne && __builtin_expect(m != 0 && m != vone, 0)) {
      return value_of_bits<value_t>(m) * v;
    }
    uint16_t b;
    std::memcpy(&b, &v, sizeof b);
    const uint16_t mag = b & 0x7FFFu;
    const bool nan = mag > F::kExp;
    const uint16_t times_zero = mag == F::kExp ? uint16_t(0x8000u | F::kExp | F::kQuiet) : uint16_t(b & 0x8000u);
    const uint16_t r = nan ? uint16_t(b | F::kQuiet) : (m != 0 ? b : times_zero);
    return value_of_bits<value_t>(r);
  } else {
    return value_of_bits<value_t>(m) * v;
  }
}

struct Bucket {
  int64_t index;  // the digit value holding the rank-th key
  int64_t below;  // keys in lower buckets
};

// The bucket of `h` that holds the rank-th smallest key (rank is 1-based).
inline Bucket find_bucket(const std::vector<int64_t>& h, int64_t rank) {
  int64_t cum = 0;
  for (size_t b = 0; b < h.size(); ++b) {
    if (cum + h[b] >= rank) {
      return {static_cast<int64_t>(b), cum};
    }
    cum += h[b];
  }
  TORCH_INTERNAL_ASSERT(false, "pruneext: rank ", rank, " beyond histogram total ", cum);
}

// mask_t: the unsigned integer of the mask dtype's width (masks are handled
// as bits; see mask_one_bits).
template <typename Traits, typename mask_t>
class CpuSelect {
  using key_t = typename Traits::key_t;
  using Plan = RadixPlan<Traits>;

 public:
  using key_type = key_t;

  explicit CpuSelect(MaskProblem& p)
      : k_(p.k),
        one_(static_cast<mask_t>(mask_one_bits(p.mask_dtype))),
        has_values_(p.has_values),
        value_dtype_(p.value_dtype) {
    for (size_t j = 0; j < p.jobs.size(); ++j) {
      auto& job = p.jobs[j];
      raw_.push_back(reinterpret_cast<const key_t*>(job.scores.data_ptr()));
      const bool filters = p.among_alive && job.prev.defined();
      const mask_t* prev = job.prev.defined() ? static_cast<const mask_t*>(job.prev.const_data_ptr()) : nullptr;
      alive_.push_back(filters ? prev : nullptr);
      prev_.push_back(prev);
      // the phases that only read (histogram, tie counts) allocate no output
      out_.push_back(job.out.defined() ? static_cast<mask_t*>(job.out.data_ptr()) : nullptr);
      values_.push_back(p.has_values ? job.values.const_data_ptr() : nullptr);
      values_out_.push_back(p.has_values ? job.values_out.data_ptr() : nullptr);
      const int64_t n = job.scores.numel();
      n_total_ += n;
      for (int64_t b = 0; b < n; b += kItemSize) {
        items_.push_back({static_cast<int64_t>(j), b, std::min(n, b + kItemSize)});
      }
    }
  }

  // The k-th smallest alive key T, with the alive entries of key < T
  // (below) and of key == T (equal): the radix passes without the write.
  struct Found {
    key_t threshold;
    int64_t below;
    int64_t equal;
  };

  Found find() {
    int shift = Plan::kFirstShift;
    // A sample guesses which keys can be the k-th, so the first pass also
    // keeps those keys and no second full read is needed when the guess
    // holds (it nearly always does). 16-bit keys have one digit, which the
    // first pass resolves, but the window still pays: unfiltered, its pass
    // is a vector compare where the 2^15-bin histogram is a scattered add
    // per entry, and either way the ties are counted on the candidates,
    // not in one more full read (2.3-2.6x float32's time per byte without
    // it, issue 26).
    window_ = guess_window();
    if (window_.collect && !filtered()) {
      // Every entry is alive: the first pass need only count the keys
      // below the window and copy those in it out. Every candidate shares
      // the window's high bits, so the radix goes on below them.
      int64_t below = 0;
      const int64_t in_window = window_pass(below);
      TORCH_CHECK(
          k_ <= n_total_, "l1_mask: k=", k_, " exceeds the ", n_total_,
          " entries that can be pruned");
      if (below < k_ && k_ <= below + in_window) {
        const int low = window_.low_bits;
        return resolve(low, static_cast<uint64_t>(window_.lo_key) >> low, k_ - below, below, in_window);
      }
      // the guess missed: a full first pass
      cands_.clear();
      compacted_ = false;
      window_ = Window{};
    }
    std::vector<int64_t> h = histogram(shift, Plan::kFirstDigitBits, 0);
    const int64_t alive = std::accumulate(h.begin(), h.end(), int64_t(0));
    TORCH_CHECK(
        k_ <= alive, "l1_mask: k=", k_, " exceeds the ", alive,
        " entries that can be pruned");
    const Bucket bucket = find_bucket(h, k_);
    if (window_.collect) {  // (the first pass kept the window's keys)
      compacted_ = window_.lo <= bucket.index && bucket.index <= window_.hi;
      if (!compacted_) {
        cands_.clear();  // the guess missed: fall back to a compaction pass
      }
    }
    if (!compacted_ && shift > 0 && h[bucket.index] * 4 <= n_total_) {
      compact(shift, static_cast<key_t>(bucket.index));
    }
    return resolve(shift, static_cast<uint64_t>(bucket.index), k_ - bucket.below, bucket.below, h[bucket.index]);
  }

  // The radix passes below `shift`: the rank-th smallest of the alive keys
  // whose bits above `shift` are `prefix` (count_lt keys are below them,
  // `equal` have them).
  Found resolve(int shift, uint64_t prefix, int64_t rank, int64_t count_lt, int64_t equal) {
    while (shift > 0) {
      const int bits = std::min(Plan::kDigitBits, shift);
      shift -= bits;
      const std::vector<int64_t> h = histogram(shift, bits, static_cast<key_t>(prefix));
      const Bucket bucket = find_bucket(h, rank);
      rank -= bucket.below;
      count_lt += bucket.below;
      equal = h[bucket.index];
      prefix = (prefix << bits) | static_cast<uint64_t>(bucket.index);
    }
    return {static_cast<key_t>(prefix), count_lt, equal};
  }

  void run() {
    if (k_ == 0) {
      // Nothing is selected, but an impossible k must still be refused.
      write(key_t(0), Ties{});
      return;
    }
    const Found found = find();
    write(found.threshold, shares_of_ties(found.threshold, k_ - found.below));
  }

 private:
  // The keys the first pass keeps as candidates: first digits [lo, hi]
  // where a default mask filters (the full histogram's pass), the keys
  // [lo_key, lo_key + span] where none does (window_pass). The latter share
  // their bits above low_bits.
  struct Window {
    bool collect = false;
    int64_t lo = 0;
    int64_t hi = -1;
    key_t lo_key = 0;
    key_t span = 0;
    int low_bits = 0;
    double digit_fraction = 0;  // of the alive entries in digits [lo, hi], as sampled
    double fraction = 0;  // in keys [lo_key, lo_key + span]
  };

  // Evenly spaced sample of the alive keys: the k-th key is within a few
  // standard deviations of the sample's k/n quantile. No window (a plain
  // first pass) when it would keep over an eighth of the entries (heavy
  // ties) or the tensor is small. What it keeps: the keys in [lo_key,
  // hi_key] where no mask filters (window_pass), their whole first digits
  // where one does. (Judging the unfiltered window by its digits refused
  // it for float64, whose 12-bit first digit is an eighth of an octave:
  // a full histogram and a compaction pass, 4x float32's time, issue 26.)
  Window guess_window() const {
    if (n_total_ < (int64_t(1) << 18)) {
      return {};
    }
    // about one entry in 64, between 2^14 (a narrow window needs a large
    // sample) and 2^15 (strided reads are cache misses)
    const int64_t target = std::clamp<int64_t>(n_total_ / 64, int64_t(1) << 14, int64_t(1) << 15);
    const int64_t step = std::max<int64_t>(1, n_total_ / target);
    std::vector<key_t> sample;
    sample.reserve(static_cast<size_t>(target + items_.size()));
    int64_t sampled = 0;
    const mask_t one = one_;
    for (const Item& it : items_) {
      const mask_t* alive = alive_[it.job];
      for (int64_t i = it.begin; i < it.end; i += step) {
        ++sampled;
        if (alive == nullptr || alive[i] == one) {
          sample.push_back(Traits::key(raw_[it.job][i]));
        }
      }
    }
    const auto m = static_cast<int64_t>(sample.size());
    if (m < 1024) {
      return {};
    }
    // expected rank of the k-th key within the sample, and a margin of at
    // least 6 standard deviations of a sampled quantile (sd <= sqrt(m) / 2)
    const double alive_estimate = static_cast<double>(m) / sampled * n_total_;
    const double at = std::min<double>(m - 1, static_cast<double>(k_) / alive_estimate * m);
    const double margin = 3.0 * std::sqrt(static_cast<double>(m)) + 16.0;
    const auto lo_at = static_cast<int64_t>(std::max(0.0, at - margin));  // 0-based ranks
    const auto hi_at = static_cast<int64_t>(std::min<double>(m - 1, at + margin));
    Window w;
    std::nth_element(sample.begin(), sample.begin() + lo_at, sample.end());
    w.lo_key = sample[lo_at];  // (before the next partition moves it)
    if (hi_at > lo_at) {
      std::nth_element(sample.begin() + lo_at + 1, sample.begin() + hi_at, sample.end());
    }
    const key_t hi_key = sample[hi_at];
    w.span = static_cast<key_t>(hi_key - w.lo_key);
    w.lo = static_cast<int64_t>(w.lo_key >> Plan::kFirstShift);
    w.hi = static_cast<int64_t>(hi_key >> Plan::kFirstShift);
    const auto diff = static_cast<uint64_t>(w.lo_key ^ hi_key);
    w.low_bits = diff == 0 ? 0 : 64 - __builtin_clzll(diff);
    int64_t in_digits = 0;
    int64_t in_keys = 0;
    for (const key_t key : sample) {
      in_digits += static_cast<uint64_t>(key >> Plan::kFirstShift) - static_cast<uint64_t>(w.lo) <=
          static_cast<uint64_t>(w.hi - w.lo);
      in_keys += static_cast<key_t>(key - w.lo_key) <= w.span;
    }
    if ((filtered() ? in_digits : in_keys) * 8 > m) {
      return {};
    }
    w.collect = true;
    w.digit_fraction = static_cast<double>(in_digits) / m;
    w.fraction = static_cast<double>(in_keys) / m;
    return w;
  }

 public:
  // The passes the phase ops run on their own (l1_phases_cpu.cpp): there is
  // no window and nothing is compacted, so each is one full read.
  const std::vector<Item>& items() const {
    return items_;
  }

  // Histogram of digit (key >> shift) & (2^bits - 1) over the alive keys
  // whose higher bits equal `prefix`. Compacted lists drop the other keys as
  // they go, so each digit reads fewer.
  std::vector<int64_t> histogram(int shift, int bits, key_t prefix) {
    const int64_t nbins = int64_t(1) << bits;
    const int nthreads = at::get_num_threads();
    std::vector<int64_t> local(static_cast<size_t>(nthreads) * nbins, 0);
    const bool first = shift + bits == Plan::kKeyBits;
    if (first && window_.collect && !compacted_) {  // (compacted: window_pass kept them)
      cands_.assign(items_.size(), {});
    }
    at::parallel_for(0, static_cast<int64_t>(items_.size()), 1, [&](int64_t b, int64_t e) {
      int64_t* h = local.data() + static_cast<int64_t>(at::get_thread_num()) * nbins;
      if (compacted_) {
        histogram_candidates(b, e, shift, bits, prefix, h);
      } else if (first && window_.collect) {
        histogram_full<false, true>(b, e, shift, bits, prefix, h);
      } else if (first) {
        histogram_full<false>(b, e, shift, bits, prefix, h);
      } else {
        histogram_full<true>(b, e, shift, bits, prefix, h);
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

  // Per item: its entries equal to the threshold, and how many of them it
  // zeroes (write): the first share of them in item order, which is flat
  // order. share == equal (nonzero) zeroes every one.
  struct Ties {
    std::vector<int64_t> equal;
    std::vector<int64_t> share;
  };

  // Ties with `equal` counted for the items counted(idx) admits (0 elsewhere,
  // without reading them) and no shares yet.
  template <typename Counted>
  Ties count_ties(key_t threshold, Counted counted) const {
    Ties t{std::vector<int64_t>(items_.size(), 0), std::vector<int64_t>(items_.size(), 0)};
    at::parallel_for(0, static_cast<int64_t>(items_.size()), 1, [&](int64_t b, int64_t e) {
      for (int64_t idx = b; idx < e; ++idx) {
        if (counted(idx)) {
          t.equal[idx] = count_equal(idx, threshold);
        }
      }
    });
    return t;
  }

  // out = 0 where selected, else the previous mask (or 1). An item that
  // zeroes none of its ties selects key < threshold, one that zeroes all of
  // them key <= threshold: branch-free loops. The item where the ties are
  // cut is both, split just past its share-th tie.
  void write(key_t threshold, const Ties& ties) {
    with_values([&](auto tag) {
      using value_t = typename decltype(tag)::type;
      at::parallel_for(0, static_cast<int64_t>(items_.size()), 1, [&](int64_t b, int64_t e) {
        for (int64_t idx = b; idx < e; ++idx) {
          const int64_t share = ties.share.empty() ? 0 : ties.share[idx];
          const int64_t equal = ties.equal.empty() ? 0 : ties.equal[idx];
          const Item& it = items_[idx];
          if (share == 0) {
            write_item<false, value_t>(idx, threshold, it.begin, it.end);
          } else if (share == equal) {
            write_item<true, value_t>(idx, threshold, it.begin, it.end);
          } else {
            const int64_t cut = past_tie(idx, threshold, share);
            write_item<true, value_t>(idx, threshold, it.begin, cut);
            write_item<false, value_t>(idx, threshold, cut, it.end);
          }
        }
      });
    });
  }

 private:
  // Over the compacted lists: drops the keys without `prefix` above
  // shift + bits as it counts. Branch-free, as the full read: most
  // candidates leave at one digit or another, in no order; and the counts
  // go round-robin into four sub-histograms so a run of equal digits does
  // not serialise on one counter.
  void histogram_candidates(int64_t b, int64_t e, int shift, int bits, key_t prefix, int64_t* h) {
    const int64_t nbins = int64_t(1) << bits;
    const key_t digit_mask = static_cast<key_t>(nbins - 1);
    const int high = shift + bits;
    std::vector<int64_t> sub(static_cast<size_t>(4 * nbins), 0);
    for (int64_t idx = b; idx < e; ++idx) {
      auto& c = cands_[idx];
      key_t* keys = c.data();
      const size_t n = c.size();
      size_t kept = 0;
      auto count = [&](int64_t* sh, key_t key) {
        const bool take = static_cast<key_t>(key >> high) == prefix;
        keys[kept] = key;  // (kept <= the index read: compaction in place)
        kept += take;
        sh[(key >> shift) & digit_mask] += take;
      };
      size_t i = 0;
      for (; i + 4 <= n; i += 4) {
        const key_t k0 = keys[i], k1 = keys[i + 1], k2 = keys[i + 2], k3 = keys[i + 3];
        count(sub.data(), k0);
        count(sub.data() + nbins, k1);
        count(sub.data() + 2 * nbins, k2);
        count(sub.data() + 3 * nbins, k3);
      }
      for (; i < n; ++i) {
        count(sub.data(), keys[i]);
      }
      c.resize(kept);
    }
    for (int cpy = 0; cpy < 4; ++cpy) {
      for (int64_t d = 0; d < nbins; ++d) {
        h[d] += sub[cpy * nbins + d];
      }
    }
  }

  // Appends keys to a candidate list without a branch per key: each key is
  // stored past the end, and the end moves only over the kept ones.
  struct Appender {
    std::vector<key_t>* list = nullptr;
    key_t* buf = nullptr;
    size_t n = 0;
    size_t cap = 0;

    void start(std::vector<key_t>* l, size_t capacity) {
      list = l;
      n = 0;
      cap = capacity;
      list->resize(cap);
      buf = list->data();
    }
    void reserve_more(size_t more) {
      if (n + more > cap) {
        cap = 2 * cap + more;
        list->resize(cap);
        buf = list->data();
      }
    }
    void push(key_t key, bool keep) {
      buf[n] = key;
      n += keep;
    }
    void finish() {
      list->resize(n);
    }
  };

  // The full-read histogram, the hot loop of the kernel. Consecutive equal
  // digits would serialise on one counter (store-to-load forwarding), so the
  // counts go round-robin into kCopies 32-bit sub-histograms (one for the
  // 2^15 bins of 16-bit keys, which would not fit in cache four times),
  // folded into the 64-bit one before they could overflow. Every entry adds
  // 0 or 1, so the loop has no data-dependent branch. The first digit has
  // no prefix to check (kPrefixed false); with kCollect it also keeps the
  // keys whose digit is in window_ as candidates.
  template <bool kPrefixed, bool kCollect = false>
  void histogram_full(int64_t b, int64_t e, int shift, int bits, key_t prefix, int64_t* h) {
    constexpr int64_t kFoldEvery = int64_t(1) << 31;  // < 2^32 per 32-bit counter
    const int64_t nbins = int64_t(1) << bits;
    const int copies = nbins > 4096 ? 1 : 4;
    const key_t digit_mask = static_cast<key_t>(nbins - 1);
    const int high = shift + bits;
    std::vector<uint32_t> sub(static_cast<size_t>(copies) * nbins, 0);
    int64_t pending = 0;
    auto fold = [&] {
      for (int c = 0; c < copies; ++c) {
        for (int64_t d = 0; d < nbins; ++d) {
          h[d] += sub[c * nbins + d];
        }
      }
      std::fill(sub.begin(), sub.end(), 0u);
      pending = 0;
    };
    const mask_t one = one_;
    for (int64_t idx = b; idx < e; ++idx) {
      const Item& it = items_[idx];
      if (pending + (it.end - it.begin) > kFoldEvery) {
        fold();
      }
      pending += it.end - it.begin;
      const key_t* raw = raw_[it.job];
      const mask_t* alive = alive_[it.job];
      // the window in locals: one unsigned compare, nothing reloaded
      const uint64_t win_lo = static_cast<uint64_t>(window_.lo);
      const uint64_t win_span = static_cast<uint64_t>(window_.hi - window_.lo);
      Appender cands;
      if constexpr (kCollect) {
        cands.start(&cands_[idx], static_cast<size_t>(1.5 * window_.digit_fraction * (it.end - it.begin)) + 16);
      }
      auto run = [&](auto filtered) {
        constexpr bool kFiltered = decltype(filtered)::value;
        auto count = [&](uint32_t* sh, int64_t i) {
          const key_t key = Traits::key(raw[i]);
          bool take = true;
          if constexpr (kPrefixed) {
            take = static_cast<key_t>(key >> high) == prefix;
          }
          if constexpr (kFiltered) {
            take = take & (alive[i] == one);  // no branch on a random mask
          }
          const auto digit = (key >> shift) & digit_mask;
          sh[digit] += take;
          if constexpr (kCollect) {
            cands.push(key, take & (static_cast<uint64_t>(digit) - win_lo <= win_span));
          }
        };
        int64_t i = it.begin;
        if (copies == 4) {
          uint32_t* s0 = sub.data();
          for (; i + 4 <= it.end; i += 4) {
            if constexpr (kCollect) {
              cands.reserve_more(4);
            }
            count(s0, i);
            count(s0 + nbins, i + 1);
            count(s0 + 2 * nbins, i + 2);
            count(s0 + 3 * nbins, i + 3);
          }
        }
        for (; i < it.end; ++i) {
          if constexpr (kCollect) {
            cands.reserve_more(1);
          }
          count(sub.data(), i);
        }
      };
      if (alive == nullptr) {
        run(std::false_type{});
      } else {
        run(std::true_type{});
      }
      if constexpr (kCollect) {
        cands.finish();
      }
    }
    fold();
  }

  bool filtered() const {
    return std::any_of(alive_.begin(), alive_.end(), [](const mask_t* a) { return a != nullptr; });
  }

  // The first pass of an unfiltered list with a window: per item, counts
  // the keys below window_.lo_key and copies those in [lo_key, lo_key +
  // span] to the item's candidates (flat order). Returns the candidates; `below`
  // gets the count below.
  int64_t window_pass(int64_t& below) {
    cands_.assign(items_.size(), {});
    std::vector<int64_t> below_of(items_.size(), 0);
    const key_t lo = window_.lo_key;
    const key_t span = window_.span;
    at::parallel_for(0, static_cast<int64_t>(items_.size()), 1, [&](int64_t b, int64_t e) {
      for (int64_t idx = b; idx < e; ++idx) {
        const Item& it = items_[idx];
        const key_t* raw = raw_[it.job] + it.begin;
        const int64_t n = it.end - it.begin;
        auto& c = cands_[idx];
        // room for the expected share and a vector's worth past the end
        c.resize(static_cast<size_t>(1.5 * window_.fraction * n) + 64);
        size_t kept = 0;
        int64_t i = 0;
#ifdef PRUNEEXT_AVX512
        if (use_avx512()) {
          i = window_avx512(raw, n, lo, span, c, kept, below_of[idx]);
        }
#endif
        for (; i < n; ++i) {
          const key_t key = Traits::key(raw[i]);
          below_of[idx] += key < lo;
          if (kept == c.size()) {
            c.resize(2 * c.size());
          }
          c[kept] = key;
          kept += static_cast<key_t>(key - lo) <= span;  // (a key below lo wraps above span)
        }
        c.resize(kept);
      }
    });
    compacted_ = true;
    below = std::accumulate(below_of.begin(), below_of.end(), int64_t(0));
    int64_t total = 0;
    for (const auto& c : cands_) {
      total += static_cast<int64_t>(c.size());
    }
    return total;
  }

#ifdef PRUNEEXT_AVX512
  // window_pass's loop, a vector of 16 (fp32, 16-bit) or 8 (fp64) keys at a time:
  // the keys (NaN folded to its key), a compare with lo and one with the
  // span for the count and the candidates, which a register compress packs
  // for one full-width store (the buffer keeps a vector's room past `kept`).
  // Returns where it stopped (the rest: the scalar loop).
  __attribute__((target("avx512f"))) static int64_t window_avx512(
      const key_t* raw, int64_t n, key_t lo, key_t span, std::vector<key_t>& c, size_t& kept, int64_t& below) {
    constexpr int kLanes = sizeof(key_t) == 2 ? 16 : 64 / sizeof(key_t);  // (16-bit: widened)
    int64_t i = 0;
    int64_t count = 0;
    if constexpr (sizeof(key_t) == 2) {
      // 16 keys widened to 32-bit lanes (AVX-512 F has no 16-bit compress),
      // narrowed back for the store; key - lo wraps above span as in 16 bits
      const __m512i abs = _mm512_set1_epi32(Traits::kAbsMask);
      const __m512i inf = _mm512_set1_epi32(Traits::kInf);
      const __m512i lov = _mm512_set1_epi32(lo);
      const __m512i spanv = _mm512_set1_epi32(span);
      for (; i + kLanes <= n; i += kLanes) {
        __m512i key = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(raw + i)));
        key = _mm512_and_si512(key, abs);
        key = _mm512_mask_mov_epi32(key, _mm512_cmpgt_epu32_mask(key, inf), abs);
        count += __builtin_popcount(_mm512_cmplt_epu32_mask(key, lov));
        const __mmask16 in = _mm512_cmple_epu32_mask(_mm512_sub_epi32(key, lov), spanv);
        if (kept + kLanes > c.size()) {
          c.resize(2 * c.size() + kLanes);
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c.data() + kept),
                            _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(in, key)));
        kept += __builtin_popcount(in);
      }
    } else if constexpr (sizeof(key_t) == 4) {
      const __m512i abs = _mm512_set1_epi32(static_cast<int32_t>(Traits::kAbsMask));
      const __m512i inf = _mm512_set1_epi32(static_cast<int32_t>(Traits::kInf));
      const __m512i lov = _mm512_set1_epi32(static_cast<int32_t>(lo));
      const __m512i spanv = _mm512_set1_epi32(static_cast<int32_t>(span));
      for (; i + kLanes <= n; i += kLanes) {
        __m512i key = _mm512_and_si512(_mm512_loadu_si512(raw + i), abs);
        key = _mm512_mask_mov_epi32(key, _mm512_cmpgt_epu32_mask(key, inf), abs);  // NaN: kNaN == kAbsMask
        count += __builtin_popcount(_mm512_cmplt_epu32_mask(key, lov));
        const __mmask16 in = _mm512_cmple_epu32_mask(_mm512_sub_epi32(key, lov), spanv);
        if (kept + kLanes > c.size()) {
          c.resize(2 * c.size() + kLanes);
        }
        _mm512_storeu_si512(c.data() + kept, _mm512_maskz_compress_epi32(in, key));
        kept += __builtin_popcount(in);
      }
    } else if constexpr (sizeof(key_t) == 8) {
      const __m512i abs = _mm512_set1_epi64(static_cast<int64_t>(Traits::kAbsMask));
      const __m512i inf = _mm512_set1_epi64(static_cast<int64_t>(Traits::kInf));
      const __m512i lov = _mm512_set1_epi64(static_cast<int64_t>(lo));
      const __m512i spanv = _mm512_set1_epi64(static_cast<int64_t>(span));
      for (; i + kLanes <= n; i += kLanes) {
        __m512i key = _mm512_and_si512(_mm512_loadu_si512(raw + i), abs);
        key = _mm512_mask_mov_epi64(key, _mm512_cmpgt_epu64_mask(key, inf), abs);
        count += __builtin_popcount(_mm512_cmplt_epu64_mask(key, lov));
        const __mmask8 in = _mm512_cmple_epu64_mask(_mm512_sub_epi64(key, lov), spanv);
        if (kept + kLanes > c.size()) {
          c.resize(2 * c.size() + kLanes);
        }
        _mm512_storeu_si512(c.data() + kept, _mm512_maskz_compress_epi64(in, key));
        kept += __builtin_popcount(in);
      }
    }
    below += count;
    return i;
  }
#endif

  // Copies the alive keys whose bits above `shift` equal `prefix` into
  // per-item candidate lists (item order = flat order, kept for the ties).
  void compact(int shift, key_t prefix) {
    cands_.assign(items_.size(), {});
    const mask_t one = one_;
    at::parallel_for(0, static_cast<int64_t>(items_.size()), 1, [&](int64_t b, int64_t e) {
      for (int64_t idx = b; idx < e; ++idx) {
        const Item& it = items_[idx];
        const key_t* raw = raw_[it.job];
        const mask_t* alive = alive_[it.job];
        auto& c = cands_[idx];
        for (int64_t i = it.begin; i < it.end; ++i) {
          const key_t key = Traits::key(raw[i]);
          // one rarely-true condition, not a branch on the (random) mask
          if ((static_cast<key_t>(key >> shift) == prefix) & (alive == nullptr || alive[i] == one)) {
            c.push_back(key);
          }
        }
      }
    });
    compacted_ = true;
  }

  // Alive entries of item `idx` whose key equals the threshold.
  int64_t count_equal(int64_t idx, key_t threshold) const {
    if (compacted_) {
      int64_t n = 0;
      for (const key_t key : cands_[idx]) {
        n += key == threshold;
      }
      return n;
    }
    const Item& it = items_[idx];
    return count_equal_in(it.job, threshold, it.begin, it.end);
  }

  // Alive entries [begin, end) of a job whose key equals the threshold.
  int64_t count_equal_in(int64_t job, key_t threshold, int64_t begin, int64_t end) const {
    const key_t* raw = raw_[job];
    const mask_t* alive = alive_[job];
    int64_t n = 0;
    if (alive == nullptr) {  // a plain reduction the compiler vectorises
      for (int64_t i = begin; i < end; ++i) {
        n += Traits::key(raw[i]) == threshold;
      }
    } else {
      const mask_t one = one_;
      for (int64_t i = begin; i < end; ++i) {
        n += (Traits::key(raw[i]) == threshold) & (alive[i] == one);
      }
    }
    return n;
  }

  // The first `ties` entries equal to the threshold over the whole list.
  Ties shares_of_ties(key_t threshold, int64_t ties) {
    Ties t = count_ties(threshold, [](int64_t) { return true; });
    for (size_t idx = 0; idx < items_.size(); ++idx) {
      t.share[idx] = std::min(t.equal[idx], ties);
      ties -= t.share[idx];
    }
    return t;
  }

  struct JobPointers {
    const key_t* raw;
    const mask_t* alive;
    const mask_t* prev;
    mask_t* out;
  };

  JobPointers pointers(int64_t job) const {
    return {raw_[job], alive_[job], prev_[job], out_[job]};
  }

  // Runs f(tag) with tag::type the values' type, or NoValues.
  template <typename F>
  void with_values(F f) const {
    if (!has_values_) {
      f(TypeTag<NoValues>{});
      return;
    }
    PRUNEEXT_DISPATCH_SCORES(value_dtype_, "l1_mask", [&] { f(TypeTag<scalar_t>{}); });
  }

  template <typename T>
  struct TypeTag {
    using type = T;
  };

  // The masked values of a job, as value_t (nullptr where there are none).
  template <typename value_t>
  std::pair<const value_t*, value_t*> value_pointers(int64_t job) const {
    return {static_cast<const value_t*>(values_[job]), static_cast<value_t*>(values_out_[job])};
  }

  // out = 0 where selected, else the default mask (or 1); with values,
  // vout = m * v where m is that mask entry as value_t (a default mask then
  // has values' width: attach_values), the product torch's apply_mask takes.
  // Entries [begin, end) of item idx.
  template <bool kInclusive, typename value_t>
  void write_item(int64_t idx, key_t threshold, int64_t begin, int64_t end) {
#ifdef PRUNEEXT_AVX512
    if (use_avx512()) {
      write_item_avx512<kInclusive, value_t>(idx, threshold, begin, end);
      return;
    }
#endif
    write_item_loops<kInclusive, value_t>(idx, threshold, begin, end);
  }

#ifdef PRUNEEXT_AVX512
  // The same loops, compiled for AVX-512. The build's baseline is x86-64's
  // SSE2, which has no 64-bit compare (float64's write stayed scalar: 2.5x
  // float32's time per byte, issue 26) and half the lanes.
  template <bool kInclusive, typename value_t>
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) void write_item_avx512(
      int64_t idx, key_t threshold, int64_t begin, int64_t end) {
    write_item_loops<kInclusive, value_t>(idx, threshold, begin, end);
  }
#endif

  // (always inlined: into write_item_avx512, the loops take its target)
  template <bool kInclusive, typename value_t>
  __attribute__((always_inline)) inline void write_item_loops(int64_t idx, key_t threshold, int64_t begin, int64_t end) {
    constexpr bool kValues = !std::is_same_v<value_t, NoValues>;
    using vbits_t = ValueBits<value_t>;
    const Item& it = items_[idx];
    const auto [raw_p, alive_p, prev_p, out_p] = pointers(it.job);
    const auto [v_p, vout_p] = value_pointers<value_t>(it.job);
    // distinct buffers (the outputs are fresh or checked not to overlap):
    // lets the loops vectorise
    const key_t* __restrict__ raw = raw_p;
    const mask_t* __restrict__ alive = alive_p;
    const mask_t* __restrict__ prev = prev_p;
    mask_t* __restrict__ out = out_p;
    const value_t* __restrict__ v = v_p;
    value_t* __restrict__ vout = vout_p;
    const mask_t one = one_;
    auto below = [&](int64_t i) {
      const key_t key = Traits::key(raw[i]);
      return kInclusive ? key <= threshold : key < threshold;
    };
    // out = selected ? 0 : value, as value & (selected - 1): arithmetic
    // the compiler vectorises (0 is all-zero bits in every mask dtype)
    auto keep = [](bool selected) { return static_cast<mask_t>(static_cast<mask_t>(selected) - 1); };
    if (prev == nullptr) {
      // the mask is 0 or 1: in values' type, 1's bits or none
      vbits_t vone = 0;
      if constexpr (kValues) {
        vone = bits_of_one<value_t>();
      }
      for (int64_t i = begin; i < end; ++i) {
        const bool selected = below(i);
        out[i] = one & keep(selected);
        if constexpr (kValues) {
          const auto vkeep = static_cast<vbits_t>(static_cast<vbits_t>(selected) - 1);
          vout[i] = masked_value<value_t, true>(vone & vkeep, vone, v[i]);
        }
      }
    } else if (alive == nullptr) {
      vbits_t vone = 0;
      if constexpr (kValues) {
        vone = bits_of_one<value_t>();
      }
      for (int64_t i = begin; i < end; ++i) {
        const mask_t m = prev[i] & keep(below(i));
        out[i] = m;
        if constexpr (kValues) {
          vout[i] = masked_value<value_t>(static_cast<vbits_t>(m), vone, v[i]);
        }
      }
    } else {
      vbits_t vone = 0;
      if constexpr (kValues) {
        vone = bits_of_one<value_t>();
      }
      for (int64_t i = begin; i < end; ++i) {
        const mask_t m = prev[i] & keep(below(i) & (alive[i] == one));
        out[i] = m;
        if constexpr (kValues) {
          vout[i] = masked_value<value_t>(static_cast<vbits_t>(m), vone, v[i]);
        }
      }
    }
  }

  // The index just past item idx's share-th alive entry equal to the
  // threshold (0 < share < its ties). Counted a block at a time by
  // count_equal_in's branch-free loops; only the block holding that tie is
  // walked. (The whole item walked in order, a branch per entry, was most
  // of the 16-bit writes: their thresholds nearly always cut ties.)
  int64_t past_tie(int64_t idx, key_t threshold, int64_t share) const {
    constexpr int64_t kBlock = 512;
    const Item& it = items_[idx];
    const key_t* raw = raw_[it.job];
    const mask_t* alive = alive_[it.job];
    const mask_t one = one_;
    for (int64_t b = it.begin; b < it.end; b += kBlock) {
      const int64_t e = std::min(it.end, b + kBlock);
      const int64_t n = count_equal_in(it.job, threshold, b, e);
      if (n < share) {
        share -= n;
        continue;
      }
      for (int64_t i = b; i < e; ++i) {
        share -= (Traits::key(raw[i]) == threshold) & (alive == nullptr || alive[i] == one);
        if (share == 0) {
          return i + 1;
        }
      }
    }
    TORCH_INTERNAL_ASSERT(false, "pruneext: an item holds fewer ties than its share");
  }

  int64_t k_;
  mask_t one_;  // the bits of 1 in the mask dtype
  int64_t n_total_ = 0;
  std::vector<const key_t*> raw_;
  std::vector<const mask_t*> alive_;  // set only where among_alive filters
  std::vector<const mask_t*> prev_;
  std::vector<mask_t*> out_;
  std::vector<const void*> values_;  // MaskJob::values, or nullptr
  std::vector<void*> values_out_;
  bool has_values_;
  at::ScalarType value_dtype_;
  std::vector<Item> items_;
  std::vector<std::vector<key_t>> cands_;
  bool compacted_ = false;
  Window window_;
};

}  // namespace cpu
}  // namespace pruneext
