// CPU implementation of the bit-mask ops (ops.cpp): l1_bits_prune and
// l1_bits_apply, in place, over the whole list at once.
//
// The work is cut into items of whole mask bytes (8 entries each) so that
// no two threads write one byte, and at::parallel_for runs the items of all
// tensors together (a list of many small tensors is one parallel loop, not
// one per tensor).
//
//   prune  one pass: each alive entry's key against T; the pruned ones get
//          bit 0 and value +0. Only a tensor whose tie budget is neither 0
//          nor all of its entries is read once more first, to count its
//          ties per item: an exclusive scan over those counts gives each
//          item its share of the budget in flat order.
//   apply  one pass; a byte of all ones (8 entries alive) is skipped
//          without reading its weights, so a sparse few pruned entries
//          cost about the read of the bits. With AVX-512 the bytes are
//          store masks: zeros go to the dead entries alone.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../l1_bits_common.h"
#include "avx512.h"

namespace pruneext {
namespace {

// Mask bytes per work item: 2^15 bytes = 2^18 entries, enough to amortise
// the scheduling and few enough that a 2^31-entry tensor has many items.
constexpr int64_t kItemBytes = int64_t(1) << 15;

struct Item {
  size_t job;
  int64_t first_byte, end_byte;
};

std::vector<Item> items_of(at::TensorList bits) {
  std::vector<Item> items;
  for (size_t j = 0; j < bits.size(); ++j) {
    const int64_t n = bits[j].numel();
    for (int64_t b = 0; b < n; b += kItemBytes) {
      items.push_back({j, b, std::min(n, b + kItemBytes)});
    }
  }
  return items;
}

// Runs f(i) for every item, in parallel (one item per task).
template <typename F>
void for_each_item(const std::vector<Item>& items, F&& f) {
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      f(static_cast<size_t>(i));
    }
  });
}

// The entries [8 * byte, 8 * byte + 8) of an n-entry tensor that exist.
inline int entries_in_byte(int64_t byte, int64_t n) {
  return static_cast<int>(std::min<int64_t>(8, n - 8 * byte));
}

// Per mask byte, the 8 AND masks of its entries (all ones where alive, 0
// where pruned): one table lookup and a vector AND per byte, where
// expanding the bits one by one would not vectorize.
template <typename raw_t>
struct ByteMasks {
  raw_t m[256][8];
  ByteMasks() {
    for (int byte = 0; byte < 256; ++byte) {
      for (int b = 0; b < 8; ++b) {
        m[byte][b] = ((byte >> b) & 1) ? static_cast<raw_t>(~raw_t(0)) : raw_t(0);
      }
    }
  }
};

// 8 entries of one width as a GCC/Clang vector (declared per width: the
// attribute does not apply to a template-dependent type).
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef uint64_t u64x8 __attribute__((vector_size(64)));
template <typename raw_t>
struct Lanes;
template <>
struct Lanes<uint16_t> {
  using type = u16x8;
};
template <>
struct Lanes<uint32_t> {
  using type = u32x8;
};
template <>
struct Lanes<uint64_t> {
  using type = u64x8;
};

#ifdef PRUNEEXT_AVX512
// The mask bytes are the store masks of AVX-512's masked stores: zeros go
// to the dead entries only, so the values are neither read nor, where
// alive, written (the whole-vector AND below reads and writes every entry).
// A run of bytes [first, end) of 8 entries each; 16, 32 or 8 entries a store
// for 4-, 2- and 8-byte entries.
__attribute__((target("avx512f,avx512bw"))) void apply_bytes_avx512(
    void* data, int entry_bytes, const uint8_t* m, int64_t first, int64_t end) {
  const __m512i zero = _mm512_setzero_si512();
  int64_t b = first;
  if (entry_bytes == 4) {
    auto* t = static_cast<int32_t*>(data);
    for (; b + 2 <= end; b += 2) {
      uint16_t alive;
      std::memcpy(&alive, m + b, 2);
      if (alive != 0xFFFFu) {
        _mm512_mask_storeu_epi32(t + 8 * b, static_cast<__mmask16>(~alive), zero);
      }
    }
    if (b < end) {  // one byte left: the upper 8 lanes store nothing
      _mm512_mask_storeu_epi32(t + 8 * b, static_cast<__mmask16>(uint8_t(~m[b])), zero);
    }
  } else if (entry_bytes == 2) {
    auto* t = static_cast<int16_t*>(data);
    for (; b + 4 <= end; b += 4) {
      uint32_t alive;
      std::memcpy(&alive, m + b, 4);
      if (alive != 0xFFFFFFFFu) {
        _mm512_mask_storeu_epi16(t + 8 * b, static_cast<__mmask32>(~alive), zero);
      }
    }
    for (; b < end; ++b) {
      _mm512_mask_storeu_epi16(t + 8 * b, static_cast<__mmask32>(uint8_t(~m[b])), zero);
    }
  } else {
    auto* t = static_cast<int64_t*>(data);
    for (; b < end; ++b) {
      if (m[b] != 0xFFu) {
        _mm512_mask_storeu_epi64(t + 8 * b, static_cast<__mmask8>(~m[b]), zero);
      }
    }
  }
}

#endif

#ifdef PRUNEEXT_AVX512
// The mask bytes of one vector of entries: 16, 32 or 8 entries for 4-, 2-
// and 8-byte entries.
template <typename raw_t>
using VectorBits = std::conditional_t<sizeof(raw_t) == 8, uint8_t, std::conditional_t<sizeof(raw_t) == 4, uint16_t, uint32_t>>;

// The lanes of the vector at e whose sign-cleared bits compare to c as kCmp
// (an _MM_CMPINT_ predicate, unsigned).
template <typename raw_t, int kCmp>
__attribute__((target("avx512f,avx512bw"))) inline VectorBits<raw_t> compare_abs(const raw_t* e, raw_t c) {
  const __m512i v = _mm512_loadu_si512(e);
  if constexpr (sizeof(raw_t) == 4) {
    const __m512i key = _mm512_and_si512(v, _mm512_set1_epi32(0x7FFFFFFF));
    return _mm512_cmp_epu32_mask(key, _mm512_set1_epi32(static_cast<int32_t>(c)), kCmp);
  } else if constexpr (sizeof(raw_t) == 2) {
    const __m512i key = _mm512_and_si512(v, _mm512_set1_epi16(0x7FFF));
    return _mm512_cmp_epu16_mask(key, _mm512_set1_epi16(static_cast<int16_t>(c)), kCmp);
  } else {
    const __m512i key = _mm512_and_si512(v, _mm512_set1_epi64(0x7FFFFFFFFFFFFFFFll));
    return _mm512_cmp_epu64_mask(key, _mm512_set1_epi64(static_cast<int64_t>(c)), kCmp);
  }
}

// Prune's pass over whole bytes [first, end) where no tie is ranked, a
// vector at a time: the sign-cleared bits against `cut` (key < cut, or key
// <= cut where `inclusive`) give the lanes to prune, those alive get a
// masked store of +0 and their bits cleared. Returns how many it pruned.
// The caller folds NaN: no cut lies strictly between +inf's key and NaN's,
// so the raw sign-cleared bits of a NaN compare as its key does. Stops
// before the last bytes that do not fill a vector.
template <typename raw_t>
__attribute__((target("avx512f,avx512bw"))) int64_t prune_bytes_avx512(
    raw_t* t, uint8_t* m, int64_t first, int64_t end, raw_t cut, bool inclusive) {
  using mask_t = VectorBits<raw_t>;
  constexpr int kBytes = sizeof(mask_t);
  const __m512i zero = _mm512_setzero_si512();
  int64_t pruned = 0;
  for (int64_t b = first; b + kBytes <= end; b += kBytes) {
    mask_t alive;
    std::memcpy(&alive, m + b, kBytes);
    if (alive == 0) {
      continue;
    }
    raw_t* e = t + 8 * b;
    const mask_t below = inclusive ? compare_abs<raw_t, _MM_CMPINT_LE>(e, cut) : compare_abs<raw_t, _MM_CMPINT_LT>(e, cut);
    const mask_t gone = static_cast<mask_t>(below & alive);
    if (gone == 0) {
      continue;
    }
    if constexpr (sizeof(raw_t) == 4) {
      _mm512_mask_storeu_epi32(e, gone, zero);
    } else if constexpr (sizeof(raw_t) == 2) {
      _mm512_mask_storeu_epi16(e, gone, zero);
    } else {
      _mm512_mask_storeu_epi64(e, gone, zero);
    }
    const mask_t left = static_cast<mask_t>(alive & ~gone);
    std::memcpy(m + b, &left, kBytes);
    pruned += __builtin_popcount(static_cast<unsigned>(gone));
  }
  return pruned;
}

// The alive entries of whole bytes [first, end) whose key is the threshold
// (a NaN's where `nan`: sign-cleared bits above +inf's), a vector at a
// time; sets `stop` to the first byte it left. A tensor whose tie budget
// is partial is counted so before it is pruned: with 16-bit keys, whose
// thresholds nearly always tie across tensors, the scalar count was a
// full read at an entry a cycle (issue 26).
template <typename raw_t>
__attribute__((target("avx512f,avx512bw"))) int64_t count_ties_avx512(
    const raw_t* t, const uint8_t* m, int64_t first, int64_t end, raw_t threshold, raw_t inf, bool nan,
    int64_t& stop) {
  using mask_t = VectorBits<raw_t>;
  constexpr int kBytes = sizeof(mask_t);
  int64_t count = 0;
  int64_t b = first;
  for (; b + kBytes <= end; b += kBytes) {
    mask_t alive;
    std::memcpy(&alive, m + b, kBytes);
    const raw_t* e = t + 8 * b;
    const mask_t equal = nan ? compare_abs<raw_t, _MM_CMPINT_NLE>(e, inf) : compare_abs<raw_t, _MM_CMPINT_EQ>(e, threshold);
    count += __builtin_popcount(static_cast<unsigned>(equal & alive));
  }
  stop = b;
  return count;
}
#endif

template <typename Traits>
struct BitPrune {
  using key_t = typename Traits::key_t;

  at::TensorList weights, bits;
  uint64_t threshold;
  std::vector<int64_t> budgets;  // clamped: numel means every tie
  std::vector<Item> items;

  bool partial(size_t j) const {
    return budgets[j] > 0 && budgets[j] < weights[j].numel();
  }

  // Alive entries of key == T in bytes [first_byte, end_byte) of a tensor.
  int64_t count_ties(size_t job, int64_t first_byte, int64_t end_byte) const {
    const key_t* w = static_cast<const key_t*>(weights[job].data_ptr());
    const uint8_t* m = bits[job].data_ptr<uint8_t>();
    const int64_t n = weights[job].numel();
    int64_t count = 0;
    int64_t first = first_byte;
#ifdef PRUNEEXT_AVX512
    const int64_t full_end = std::min(end_byte, n / 8);  // bytes of 8 entries
    if (use_avx512() && first < full_end) {
      count = count_ties_avx512<key_t>(w, m, first, full_end, static_cast<key_t>(threshold), Traits::kInf,
                                       threshold == Traits::kNaN, first);
    }
#endif
    for (int64_t byte = first; byte < end_byte; ++byte) {
      const unsigned alive = m[byte];
      const int width = entries_in_byte(byte, n);
      for (int b = 0; b < width; ++b) {
        count += ((alive >> b) & 1u) & unsigned(uint64_t(Traits::key(w[8 * byte + b])) == threshold);
      }
    }
    return count;
  }

  // Prunes item i with `share` of its tensor's ties (INT64_MAX: all) of
  // the `ties` it holds; returns how many entries it pruned. The item where
  // its tensor's budget runs out is cut just past its share-th tie: all
  // ties before that block of 64 bytes, none after, only the block ranked
  // in order. (Ranking the whole item, a branch per entry, was most of a
  // 16-bit update: its threshold's ties nearly always cut every tensor.)
  int64_t write(const Item& it, int64_t share, int64_t ties) const {
    if (!(share > 0 && share < ties)) {
      return write_bytes(it.job, it.first_byte, it.end_byte, share, ties);
    }
    constexpr int64_t kBlock = 64;
    for (int64_t b = it.first_byte; b < it.end_byte; b += kBlock) {
      const int64_t e = std::min(it.end_byte, b + kBlock);
      const int64_t in_block = count_ties(it.job, b, e);
      if (in_block < share) {
        share -= in_block;
        continue;
      }
      return write_bytes(it.job, it.first_byte, b, INT64_MAX, 0) + write_bytes(it.job, b, e, share, in_block) +
          write_bytes(it.job, e, it.end_byte, 0, 0);
    }
    TORCH_INTERNAL_ASSERT(false, "pruneext: an item holds fewer ties than its share");
  }

  // write's pass over bytes [first_byte, end_byte) of a tensor, with `share`
  // of the `ties` they hold.
  int64_t write_bytes(size_t job, int64_t first_byte, int64_t end_byte, int64_t share, int64_t ties) const {
    key_t* w = static_cast<key_t*>(weights[job].data_ptr());
    uint8_t* m = bits[job].data_ptr<uint8_t>();
    const int64_t n = weights[job].numel();
    // An item that takes none or all of its ties compares without a branch
    // per entry (random masks defeat the branch predictor); only the one
    // item of a tensor where the budget runs out ranks its ties in order.
    const bool ranked = share > 0 && share < ties;
    // a threshold above every key prunes every alive entry: key <= the top
    const bool above = threshold > static_cast<uint64_t>(static_cast<key_t>(~key_t(0)));
    const bool all = (share >= ties && share > 0) || above;
    const key_t cut = above ? static_cast<key_t>(~key_t(0)) : static_cast<key_t>(threshold);
    int64_t pruned = 0;
    int64_t first = first_byte;
#ifdef PRUNEEXT_AVX512
    const int64_t full_end = std::min(end_byte, n / 8);  // bytes of 8 entries
    if (!ranked && use_avx512() && first < full_end) {
      // "key < NaN's key" is "key <= +inf's" (see prune_bytes_avx512)
      const bool below_nan = !all && cut == Traits::kNaN;
      pruned += prune_bytes_avx512<key_t>(w, m, first, full_end, below_nan ? Traits::kInf : cut, all || below_nan);
      first = full_end - (full_end - first) % (64 / sizeof(key_t) / 8);  // the bytes it left
    }
#endif
    for (int64_t byte = first; byte < end_byte; ++byte) {
      const unsigned alive = m[byte];
      if (alive == 0) {
        continue;
      }
      const int width = entries_in_byte(byte, n);
      key_t* e = w + 8 * byte;
      unsigned gone = 0;
      if (width == 8 && !ranked) {
        for (int b = 0; b < 8; ++b) {
          const key_t key = Traits::key(e[b]);
          gone |= unsigned(all ? key <= cut : key < cut) << b;
        }
        gone &= alive;
      } else {
        for (int b = 0; b < width; ++b) {
          if (!((alive >> b) & 1u)) {
            continue;
          }
          const uint64_t key = Traits::key(e[b]);
          bool prune = key < threshold;
          if (key == threshold && share > 0) {
            prune = true;
            --share;
          }
          gone |= unsigned(prune) << b;
        }
      }
      if (gone != 0) {
        if (width == 8) {
          for (int b = 0; b < 8; ++b) {
            e[b] &= static_cast<key_t>(key_t((gone >> b) & 1u) - key_t(1));  // +0 where gone
          }
        } else {  // the last byte: not past the tensor's end
          for (int b = 0; b < width; ++b) {
            e[b] &= static_cast<key_t>(key_t((gone >> b) & 1u) - key_t(1));
          }
        }
        m[byte] = static_cast<uint8_t>(alive & ~gone);
        pruned += __builtin_popcount(gone);
      }
    }
    return pruned;
  }

  at::Tensor run() {
    items = items_of(bits);
    std::vector<int64_t> share(items.size(), INT64_MAX);
    std::vector<int64_t> ties(items.size(), 0);
    for_each_item(items, [&](size_t i) {
      const size_t j = items[i].job;
      if (partial(j)) {
        ties[i] = count_ties(j, items[i].first_byte, items[i].end_byte);
      } else if (budgets[j] == 0) {
        share[i] = 0;
      }
    });
    // each partial tensor's budget, handed out to its items in flat order
    int64_t left = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      const size_t j = items[i].job;
      if (!partial(j)) {
        continue;
      }
      if (i == 0 || items[i - 1].job != j) {
        left = budgets[j];
      }
      share[i] = std::min(ties[i], left);
      left -= share[i];
    }
    std::vector<int64_t> pruned(items.size(), 0);
    for_each_item(items, [&](size_t i) { pruned[i] = write(items[i], share[i], partial(items[i].job) ? ties[i] : weights[items[i].job].numel()); });
    auto counts = at::zeros({static_cast<int64_t>(weights.size())}, at::TensorOptions().dtype(at::kLong));
    int64_t* c = counts.data_ptr<int64_t>();
    for (size_t i = 0; i < items.size(); ++i) {
      c[items[i].job] += pruned[i];
    }
    return counts;
  }
};

at::Tensor l1_bits_prune(at::TensorList weights, at::TensorList bits, int64_t threshold, c10::IntArrayRef ties) {
  constexpr const char* op = "l1_bits_prune";
  check_bit_masks(weights, bits, op, "weights");
  check_prune_budgets(weights, threshold, ties, op);
  if (weights.empty()) {
    return at::zeros({0}, at::TensorOptions().dtype(at::kLong));
  }
  at::Tensor counts;
  PRUNEEXT_DISPATCH_SCORES(weights[0].scalar_type(), op, [&] {
    BitPrune<typename KeyOf<scalar_t>::type> prune{weights, bits, static_cast<uint64_t>(threshold), {}, {}};
    for (size_t j = 0; j < weights.size(); ++j) {
      prune.budgets.push_back(std::min(ties[j], weights[j].numel()));
    }
    counts = prune.run();
  });
  return counts;
}


template <typename raw_t>
void apply_item(at::TensorList tensors, at::TensorList bits, const Item& it) {
  static const ByteMasks<raw_t> table;
  raw_t* t = static_cast<raw_t*>(tensors[it.job].data_ptr());
  const uint8_t* m = bits[it.job].data_ptr<uint8_t>();
  const int64_t n = tensors[it.job].numel();
  const int64_t full_end = std::min(it.end_byte, n / 8);  // bytes of 8 entries
  int64_t first = it.first_byte;
#ifdef PRUNEEXT_AVX512
  if (use_avx512() && first < full_end) {
    apply_bytes_avx512(t, sizeof(raw_t), m, first, full_end);
    first = full_end;
  }
#endif
  for (int64_t byte = first; byte < full_end; ++byte) {
    const unsigned alive = m[byte];
    if (alive == 0xFFu) {
      continue;  // nothing pruned: not even read
    }
    // the 8 entries as one vector: SIMD ANDs at whatever width the target
    // has, where the scalar loop stays scalar
    using lanes_t = typename Lanes<raw_t>::type;
    static_assert(sizeof(lanes_t) == 8 * sizeof(raw_t), "8 lanes");
    lanes_t e, keep;
    std::memcpy(&e, t + 8 * byte, sizeof(e));
    std::memcpy(&keep, table.m[alive], sizeof(keep));
    e &= keep;
    std::memcpy(t + 8 * byte, &e, sizeof(e));
  }
  for (int64_t byte = std::max(it.first_byte, full_end); byte < it.end_byte; ++byte) {
    for (int b = 0; b < entries_in_byte(byte, n); ++b) {
      if (!((m[byte] >> b) & 1u)) {
        t[8 * byte + b] = raw_t(0);
      }
    }
  }
}

void l1_bits_apply(at::TensorList tensors, at::TensorList bits) {
  constexpr const char* op = "l1_bits_apply";
  check_bit_masks(tensors, bits, op, "tensors");
  if (tensors.empty()) {
    return;
  }
  const auto items = items_of(bits);
  // only zeros are written: the raw integer of the element's width will do
  switch (tensors[0].element_size()) {
    case 2:
      for_each_item(items, [&](size_t i) { apply_item<uint16_t>(tensors, bits, items[i]); });
      break;
    case 4:
      for_each_item(items, [&](size_t i) { apply_item<uint32_t>(tensors, bits, items[i]); });
      break;
    default:
      for_each_item(items, [&](size_t i) { apply_item<uint64_t>(tensors, bits, items[i]); });
      break;
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pruneext, CPU, m) {
  m.impl("l1_bits_prune", &l1_bits_prune);
  m.impl("l1_bits_apply", &l1_bits_apply);
}

}  // namespace pruneext
