// Device side of the CUDA l1_mask / l1_mask_global kernels: radix select on
// the magnitude key (magnitude_key.h), then one mask-writing pass.
//
// Work is cut into tiles: tile t of the whole problem is a run of kTile
// consecutive elements of one tensor (a tensor's last tile may be short).
// TensorDesc::tile_begin is the first global tile of each tensor, so global
// tile order is list order, then flat order: the order ties are broken in.
// Every kernel walks tiles with a grid-stride loop and indexes in 64 bits.
//
// The select state (DevState) lives in device memory: each histogram pass
// reads the prefix chosen so far from it and a one-block select kernel
// updates it, so the host launches a fixed sequence of kernels and reads
// nothing back between passes. See l1_mask_cuda.cu for the sequence.
#pragma once

#include <cstdint>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "../magnitude_key.h"

namespace pruneext {
namespace cuda {

using ull = unsigned long long;

// One tensor of the problem. Pointers are to contiguous data; prev is the
// default mask (nullptr: none, i.e. all ones). numel and tile_begin are 64-bit.
struct TensorDesc {
  const void* scores;
  const void* prev;
  void* out;
  int64_t numel;
  int64_t tile_begin;
};

// The running state of one selection, in device memory (zero-initialised).
// Every field is a 64-bit unsigned word; the host reads `alive` only.
struct DevState {
  ull invalid;       // 1: k exceeds the alive entries; every later kernel does nothing
  ull alive;         // alive (prunable) entries, from the first histogram
  ull prefix;        // high bits of the threshold key resolved so far
  ull rank;          // 1-based rank of the k-th key among keys with that prefix
  ull count_lt;      // alive keys below the current prefix bucket
  ull bucket_count;  // alive keys with the current prefix
  ull compact_next;  // the next full pass copies keys in [cand_lo, cand_hi] out
  ull use_cands;     // later passes read the candidate buffer, not the tensors
  ull cand_lo;
  ull cand_hi;
  ull cand_count;    // candidates written (may exceed the capacity: overflow)
  ull sample_total;  // elements the sampling pass looked at
  ull threshold;     // the k-th smallest key T (after the last pass)
  ull ties;          // how many keys == T are selected (>= 1)
  ull split;         // 1: fewer than all keys == T are selected
  ull split_tile;    // the tile where the selected ties run out
  ull split_share;   // how many keys == T that tile selects
};
constexpr int kStateWords = 32;
static_assert(sizeof(DevState) <= kStateWords * sizeof(int64_t), "DevState too large");

// Per key width: elements per tile and block shapes. The histogram kernel
// covers a tile in one round (BLOCK x ITEMS); the tie-count and mask kernels
// in kTile / (kMaskBlock * kMaskItems) rounds.
// 32- and 64-bit keys; 16-bit keys (one 15-bit pass) below.
template <typename key_t>
struct TileConfig {
  static constexpr int kTile = 4096;
  static constexpr int kHistBlock = 256;
  static constexpr int kHistItems = 16;
  static constexpr int kMaskBlock = 256;
  static constexpr int kMaskItems = 8;
};
template <>
struct TileConfig<uint16_t> {
  static constexpr int kTile = 16384;
  static constexpr int kHistBlock = 1024;  // one block per SM with 128 KB of bins
  static constexpr int kHistItems = 16;
  static constexpr int kMaskBlock = 256;
  static constexpr int kMaskItems = 8;
};

constexpr int kSelectBlock = 512;

// The tensors of a problem: one travels in the kernel arguments (no copy,
// nothing to capture in a CUDA graph), a list in device memory.
struct Descs {
  const TensorDesc* list;  // n descriptors in device memory (n > 1)
  TensorDesc one;          // the descriptor when n == 1
  int n;
};

// ---------------------------------------------------------------------------
// Helpers

// The tensor holding global tile t: the last descriptor with tile_begin <= t
// (empty tensors share their successor's tile_begin and are skipped).
__device__ __forceinline__ TensorDesc desc_of(const Descs& ds, int64_t t) {
  if (ds.n == 1) {
    return ds.one;
  }
  const TensorDesc* __restrict__ d = ds.list;
  int lo = 0;
  int hi = ds.n - 1;
  while (lo < hi) {
    const int mid = lo + (hi - lo + 1) / 2;
    if (d[mid].tile_begin <= t) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return d[lo];
}

// How many of a thread's elements first, first + step, ... are in range:
// elements j * step < valid, with valid clamped to [0, cap] so that the
// per-item tests are 32-bit.
__device__ __forceinline__ int in_range(int64_t first, int64_t n, int cap) {
  const int64_t rem = n - first;
  return rem <= 0 ? 0 : (rem >= cap ? cap : static_cast<int>(rem));
}

// Bit j of the result: element j * STEP of m (j * STEP < valid) equals one
// (bitwise, which for the six mask dtypes is value equality with 1).
template <typename W, int ITEMS, int STEP>
__device__ __forceinline__ unsigned live_bits_as(const void* base, int64_t first, int valid, uint64_t one) {
  const W* __restrict__ m = static_cast<const W*>(base) + first;
  const W one_w = static_cast<W>(one);
  W v[ITEMS];
#pragma unroll
  for (int j = 0; j < ITEMS; ++j) {
    v[j] = j * STEP < valid ? m[j * STEP] : W(0);
  }
  unsigned bits = 0;
#pragma unroll
  for (int j = 0; j < ITEMS; ++j) {
    bits |= (j * STEP < valid && v[j] == one_w) ? (1u << j) : 0u;
  }
  return bits;
}

// The same with the mask element width chosen at run time (uniform), so the
// histogram and tie-count kernels are not instantiated per mask dtype. The
// switch sits outside the unrolled loads, which stay batched.
template <int ITEMS, int STEP>
__device__ __forceinline__ unsigned live_bits(
    const void* base, int width, int64_t first, int valid, uint64_t one) {
  switch (width) {
    case 1:
      return live_bits_as<uint8_t, ITEMS, STEP>(base, first, valid, one);
    case 2:
      return live_bits_as<uint16_t, ITEMS, STEP>(base, first, valid, one);
    case 4:
      return live_bits_as<uint32_t, ITEMS, STEP>(base, first, valid, one);
    default:
      return live_bits_as<uint64_t, ITEMS, STEP>(base, first, valid, one);
  }
}

// Loads the raw keys first + j * STEP (0 where out of range) and returns the
// live bits: in range and, when alive != nullptr, with a mask equal to one.
template <typename key_t, int ITEMS, int STEP>
__device__ __forceinline__ unsigned load_keys(
    const void* scores, const void* alive, int width, uint64_t one, int64_t first, int64_t n,
    key_t (&raw)[ITEMS]) {
  static_assert(ITEMS <= 32, "live bits are one 32-bit word");
  const int valid = in_range(first, n, ITEMS * STEP);
  const key_t* __restrict__ src = static_cast<const key_t*>(scores) + first;
#pragma unroll
  for (int j = 0; j < ITEMS; ++j) {
    raw[j] = j * STEP < valid ? src[j * STEP] : key_t(0);
  }
  if (alive != nullptr) {
    return live_bits<ITEMS, STEP>(alive, width, first, valid, one);
  }
  unsigned bits = 0;
#pragma unroll
  for (int j = 0; j < ITEMS; ++j) {
    bits |= j * STEP < valid ? (1u << j) : 0u;
  }
  return bits;
}

// ---------------------------------------------------------------------------
// Histogram pass

struct HistArgs {
  Descs descs;
  int64_t tiles_visit;  // visits global tiles v * tile_stride, v < tiles_visit
  int64_t tile_stride;  // 1, or the sampling stride
  int shift;            // the digit is (key >> shift) & (2^bits - 1) ...
  int bits;
  bool filter;          // ... of the keys whose bits above shift+bits equal st->prefix
  bool sample;          // sampling pass: count the elements seen, never compact
  bool shared_hist;     // block histogram in dynamic shared memory (else global atomics)
  bool among_alive;
  int mask_width;       // bytes per default-mask element
  uint64_t one_bits;    // the bits of 1 in the mask dtype
  DevState* st;
  ull* hist;            // 2^bits global bins (zeroed)
  void* cands;          // candidate key buffer (nullptr: single-pass key type)
  int64_t capacity;     // its size in keys
};

// Adds keys to a histogram, merging runs of one bin (heavy ties) into one
// atomic per run.
struct BinRun {
  unsigned bin = 0xFFFFFFFFu;
  unsigned count = 0;
};

__device__ __forceinline__ void hist_add(const HistArgs& a, unsigned* s_hist, unsigned bin, unsigned count) {
  if (a.shared_hist) {
    atomicAdd(&s_hist[bin], count);
  } else {
    atomicAdd(&a.hist[bin], static_cast<ull>(count));
  }
}

__device__ __forceinline__ void hist_push(const HistArgs& a, unsigned* s_hist, BinRun& run, unsigned bin) {
  if (bin == run.bin) {
    ++run.count;
  } else {
    if (run.count != 0) {
      hist_add(a, s_hist, run.bin, run.count);
    }
    run.bin = bin;
    run.count = 1;
  }
}

// One histogram pass: the digit histogram of the alive keys (with the prefix
// when filtering), read from the tensors or from the candidate buffer; when
// st->compact_next is set it also copies the alive keys in [cand_lo, cand_hi]
// to the candidate buffer (fused compaction, no extra read).
//
// Per-block counts are 32-bit: the host sizes the grid so that no block
// sees 2^31 elements.
template <typename Traits>
__global__ void __launch_bounds__(TileConfig<typename Traits::key_t>::kHistBlock)
    hist_kernel(const HistArgs a) {
  using key_t = typename Traits::key_t;
  using Cfg = TileConfig<key_t>;
  constexpr int BLOCK = Cfg::kHistBlock;
  constexpr int ITEMS = Cfg::kHistItems;
  constexpr int TILE = Cfg::kTile;
  static_assert(BLOCK * ITEMS == TILE, "a histogram round must cover a tile");
  static_assert(BLOCK % 32 == 0, "whole warps");
  constexpr int NWARPS = BLOCK / 32;
  // Only keys of more than one digit ever use candidates.
  constexpr bool kMultiPass = RadixPlan<Traits>::kFirstShift > 0;

  extern __shared__ unsigned s_hist[];
  __shared__ unsigned s_warp[NWARPS];  // candidates per warp (lane 31, before barrier 1)
  __shared__ ull s_off[NWARPS];        // where each warp writes (thread 0, between barriers)

  DevState* st = a.st;
  if (st->invalid != 0) {
    return;  // uniform: every thread reads the same word
  }
  const int tid = static_cast<int>(threadIdx.x);
  const unsigned nbins = 1u << a.bits;
  const unsigned digit_mask = nbins - 1u;
  const int high = a.shift + a.bits;  // < bits of key_t whenever a.filter
  const key_t prefix = a.filter ? static_cast<key_t>(st->prefix) : key_t(0);
  const bool use_cands = kMultiPass && a.filter && st->use_cands != 0;
  const bool compact =
      kMultiPass && !a.sample && !use_cands && a.cands != nullptr && st->compact_next != 0;
  const key_t lo = compact ? static_cast<key_t>(st->cand_lo) : key_t(0);
  const key_t hi = compact ? static_cast<key_t>(st->cand_hi) : key_t(0);

  if (a.shared_hist) {
    for (unsigned b = static_cast<unsigned>(tid); b < nbins; b += BLOCK) {
      s_hist[b] = 0u;
    }
    __syncthreads();
  }

  BinRun run;
  if (use_cands) {
    if constexpr (kMultiPass) {
      const key_t* __restrict__ c = static_cast<const key_t*>(a.cands);
      const ull avail = st->cand_count < static_cast<ull>(a.capacity)
          ? st->cand_count
          : static_cast<ull>(a.capacity);
      const int64_t n = static_cast<int64_t>(avail);
      const int64_t step = static_cast<int64_t>(gridDim.x) * BLOCK;
      for (int64_t i = static_cast<int64_t>(blockIdx.x) * BLOCK + tid; i < n; i += step) {
        const key_t key = c[i];
        if (static_cast<key_t>(key >> high) == prefix) {
          hist_push(a, s_hist, run, static_cast<unsigned>(key >> a.shift) & digit_mask);
        }
      }
    }
  } else {
    ull examined = 0;
    for (int64_t v = blockIdx.x; v < a.tiles_visit; v += gridDim.x) {
      const int64_t t = v * a.tile_stride;
      const TensorDesc d = desc_of(a.descs, t);
      const int64_t base = (t - d.tile_begin) * TILE;
      const int64_t n = d.numel;
      const void* alive = a.among_alive ? d.prev : nullptr;
      key_t raw[ITEMS];
      const unsigned live = load_keys<key_t, ITEMS, BLOCK>(
          d.scores, alive, a.mask_width, a.one_bits, base + tid, n, raw);
      unsigned cand = 0;  // bit j: item j is copied to the candidates
#pragma unroll
      for (int j = 0; j < ITEMS; ++j) {
        const key_t key = Traits::key(raw[j]);
        raw[j] = key;
        if ((live >> j) & 1u) {
          if (!a.filter || static_cast<key_t>(key >> high) == prefix) {
            hist_push(a, s_hist, run, static_cast<unsigned>(key >> a.shift) & digit_mask);
          }
          if (compact && key >= lo && key <= hi) {
            cand |= 1u << j;
          }
        }
      }
      if constexpr (kMultiPass) {
        if (compact) {  // uniform; all threads reach both barriers
          const int lane = tid & 31;
          const int warp = tid >> 5;
          const unsigned mine = static_cast<unsigned>(__popc(cand));
          unsigned incl = mine;
#pragma unroll
          for (int o = 1; o < 32; o <<= 1) {
            const unsigned up = __shfl_up_sync(0xFFFFFFFFu, incl, o);
            if (lane >= o) {
              incl += up;
            }
          }
          if (lane == 31) {
            s_warp[warp] = incl;
          }
          __syncthreads();
          if (tid == 0) {
            unsigned total = 0;
            for (int w = 0; w < NWARPS; ++w) {
              total += s_warp[w];
            }
            ull at = total != 0u ? atomicAdd(&st->cand_count, static_cast<ull>(total)) : 0ull;
            for (int w = 0; w < NWARPS; ++w) {
              s_off[w] = at;
              at += s_warp[w];
            }
          }
          __syncthreads();
          // s_warp is rewritten next tile before its barrier 1 but read only
          // by thread 0 between the barriers; s_off only between the
          // barriers of the next tile, after every thread has read it here.
          ull pos = s_off[warp] + (incl - mine);
          key_t* __restrict__ out = static_cast<key_t*>(a.cands);
          const ull cap = static_cast<ull>(a.capacity);
#pragma unroll
          for (int j = 0; j < ITEMS; ++j) {
            if ((cand >> j) & 1u) {
              if (pos < cap) {
                out[pos] = raw[j];
              }
              ++pos;
            }
          }
        }
      }
      if (a.sample && tid == 0) {
        const int64_t len = n - base < TILE ? n - base : static_cast<int64_t>(TILE);
        examined += static_cast<ull>(len);
      }
    }
    if (a.sample && tid == 0 && examined != 0) {
      atomicAdd(&st->sample_total, examined);
    }
  }
  if (run.count != 0) {
    hist_add(a, s_hist, run.bin, run.count);
  }
  if (a.shared_hist) {
    __syncthreads();
    for (unsigned b = static_cast<unsigned>(tid); b < nbins; b += BLOCK) {
      const unsigned c = s_hist[b];
      if (c != 0u) {
        atomicAdd(&a.hist[b], static_cast<ull>(c));
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Bucket selection (one block)

// Called by every thread of a kSelectBlock block. Finds the bin of h holding
// the rank-th smallest entry (1-based; needs 1 <= rank <= total): its index,
// the entries in lower bins and in it, and the total of h. If rank is out of
// range, bucket is ~0.
struct Found {
  ull bucket;
  ull below;
  ull count;
  ull total;
};

__device__ __forceinline__ Found block_find_bucket(const ull* __restrict__ h, int nbins, ull rank) {
  using Scan = cub::BlockScan<ull, kSelectBlock>;
  __shared__ typename Scan::TempStorage temp;
  __shared__ ull s_res[3];
  const int tid = static_cast<int>(threadIdx.x);
  const int per = (nbins + kSelectBlock - 1) / kSelectBlock;
  const int b0 = tid * per < nbins ? tid * per : nbins;
  const int b1 = b0 + per < nbins ? b0 + per : nbins;
  ull sum = 0;
  for (int b = b0; b < b1; ++b) {
    sum += h[b];
  }
  if (tid == 0) {
    s_res[0] = ~0ull;
    s_res[1] = 0;
    s_res[2] = 0;
  }
  __syncthreads();
  ull excl = 0;
  ull total = 0;
  Scan(temp).ExclusiveSum(sum, excl, total);
  if (excl < rank && rank <= excl + sum) {  // exactly one thread
    ull cum = excl;
    for (int b = b0; b < b1; ++b) {
      const ull c = h[b];
      if (cum + c >= rank) {
        s_res[0] = static_cast<ull>(b);
        s_res[1] = cum;
        s_res[2] = c;
        break;
      }
      cum += c;
    }
  }
  __syncthreads();
  const Found f{s_res[0], s_res[1], s_res[2], total};
  __syncthreads();  // s_res and temp may be reused by a next call
  return f;
}

// After the histogram of one digit: narrows the prefix to the bucket holding
// the k-th key, validates the candidates the pass copied out, decides whether
// the next full pass compacts, and after the last digit fixes the threshold.
__global__ void __launch_bounds__(kSelectBlock) select_digit_kernel(
    DevState* st, const ull* __restrict__ h, int bits, int shift, bool first, ull k,
    ull capacity, bool compact_useful) {
  if (st->invalid != 0) {
    return;
  }
  const ull rank = first ? k : st->rank;
  const Found f = block_find_bucket(h, 1 << bits, rank);
  if (threadIdx.x != 0) {
    return;
  }
  if (first) {
    st->alive = f.total;
    if (k > f.total) {
      st->invalid = 1;
      return;
    }
  }
  if (f.bucket == ~0ull) {  // cannot happen: the histograms are consistent
    st->invalid = 1;
    return;
  }
  const ull prefix = first ? f.bucket : ((st->prefix << bits) | f.bucket);
  const ull rank_in = rank - f.below;
  st->prefix = prefix;
  st->rank = rank_in;
  st->count_lt += f.below;
  st->bucket_count = f.count;
  const ull lo = prefix << shift;  // the keys with this prefix: [lo, hi]
  const ull hi = lo | ((1ull << shift) - 1ull);
  if (st->compact_next != 0) {  // this pass copied candidates out
    if (st->cand_count <= capacity && lo >= st->cand_lo && hi <= st->cand_hi) {
      st->use_cands = 1;
    }
    st->compact_next = 0;
  }
  if (st->use_cands == 0 && compact_useful && f.count <= capacity) {
    st->compact_next = 1;
    st->cand_lo = lo;
    st->cand_hi = hi;
    st->cand_count = 0;
  }
  if (shift == 0) {
    st->threshold = prefix;
    st->ties = rank_in;
    st->split = rank_in < f.count ? 1 : 0;
  }
}

// After the sampling pass (a first-digit histogram of every tile_stride-th
// tile): predicts a range of first-digit buckets that holds the k-th key with
// high probability, and lets the first full pass copy its keys out if they
// fit the candidate buffer. A wrong guess costs time, never correctness: the
// first select checks that the true bucket lies in the range.
__global__ void __launch_bounds__(kSelectBlock) select_sample_kernel(
    DevState* st, const ull* __restrict__ h, int bits, int shift, ull k, ull n_total,
    ull capacity) {
  const int nbins = 1 << bits;
  const Found all = block_find_bucket(h, nbins, 1);
  const ull m_alive = all.total;
  const ull m_seen = st->sample_total;
  if (m_alive == 0 || m_seen == 0 || n_total == 0) {
    return;  // uniform
  }
  // Expected rank of the k-th key in the sample, and a generous margin.
  const double ks = static_cast<double>(k) * static_cast<double>(m_seen) / static_cast<double>(n_total);
  const double ma = static_cast<double>(m_alive);
  const double frac = ks / ma < 1.0 ? ks / ma : 1.0;
  const double var = ks * (1.0 - frac);
  const double delta = 4.0 * sqrt(var > 1.0 ? var : 1.0) + 0.002 * ma + 16.0;
  const double rlo = ks - delta;
  const double rhi = ks + delta;
  const bool open_lo = rlo < 1.0;
  const bool open_hi = rhi >= ma;
  const ull rank_lo = open_lo ? 1ull : static_cast<ull>(rlo);  // 1 <= rlo < ma here
  const ull rank_hi = open_hi ? m_alive : static_cast<ull>(ceil(rhi));
  const Found flo = block_find_bucket(h, nbins, rank_lo < m_alive ? rank_lo : m_alive);
  const Found fhi = block_find_bucket(h, nbins, rank_hi < 1 ? 1 : rank_hi);
  if (threadIdx.x != 0 || flo.bucket == ~0ull || fhi.bucket == ~0ull) {
    return;
  }
  const ull b_lo = open_lo ? 0ull : flo.bucket;
  const ull b_hi = open_hi ? static_cast<ull>(nbins - 1) : fhi.bucket;
  const ull below_lo = open_lo ? 0ull : flo.below;
  const ull upto_hi = open_hi ? m_alive : fhi.below + fhi.count;
  const ull in_range = upto_hi - below_lo;
  const double expected =
      static_cast<double>(in_range) * static_cast<double>(n_total) / static_cast<double>(m_seen);
  if (b_lo <= b_hi && expected <= 0.75 * static_cast<double>(capacity)) {
    st->compact_next = 1;
    st->cand_lo = b_lo << shift;
    st->cand_hi = ((b_hi + 1ull) << shift) - 1ull;
    st->cand_count = 0;
  }
}

// ---------------------------------------------------------------------------
// Ties

// Per tile: how many alive keys equal the threshold (only when the ties are
// split; otherwise nothing to do).
template <typename Traits>
__global__ void __launch_bounds__(TileConfig<typename Traits::key_t>::kMaskBlock) eq_count_kernel(
    const Descs descs, int64_t total_tiles, const DevState* __restrict__ st, bool among_alive, int mask_width, uint64_t one_bits,
    unsigned* __restrict__ tile_eq) {
  using key_t = typename Traits::key_t;
  using Cfg = TileConfig<key_t>;
  constexpr int BLOCK = Cfg::kMaskBlock;
  constexpr int ITEMS = Cfg::kMaskItems;
  constexpr int TILE = Cfg::kTile;
  constexpr int ROUNDS = TILE / (BLOCK * ITEMS);
  static_assert(ROUNDS * BLOCK * ITEMS == TILE, "rounds must cover a tile");
  using Reduce = cub::BlockReduce<unsigned, BLOCK>;
  __shared__ typename Reduce::TempStorage temp;

  if (st->invalid != 0 || st->split == 0) {
    return;
  }
  const key_t T = static_cast<key_t>(st->threshold);
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t t = blockIdx.x; t < total_tiles; t += gridDim.x) {
    const TensorDesc d = desc_of(descs, t);
    const int64_t base = (t - d.tile_begin) * TILE;
    const void* alive = among_alive ? d.prev : nullptr;
    unsigned count = 0;
#pragma unroll 1
    for (int r = 0; r < ROUNDS; ++r) {
      key_t raw[ITEMS];
      const unsigned live = load_keys<key_t, ITEMS, BLOCK>(
          d.scores, alive, mask_width, one_bits,
          base + static_cast<int64_t>(r) * (BLOCK * ITEMS) + tid, d.numel, raw);
#pragma unroll
      for (int j = 0; j < ITEMS; ++j) {
        count += (((live >> j) & 1u) != 0u && Traits::key(raw[j]) == T) ? 1u : 0u;
      }
    }
    const unsigned total = Reduce(temp).Sum(count);
    if (tid == 0) {
      tile_eq[t] = total;
    }
    __syncthreads();  // temp is reused next tile
  }
}

// One block: the tile where the cumulative count of keys == T reaches
// st->ties, and how many of its own that tile selects. Tiles before it
// select all their keys == T, tiles after it none.
__global__ void __launch_bounds__(kSelectBlock) split_find_kernel(
    DevState* st, const unsigned* __restrict__ tile_eq, int64_t total_tiles) {
  constexpr int IPT = 8;
  using Scan = cub::BlockScan<ull, kSelectBlock>;
  __shared__ typename Scan::TempStorage temp;
  if (st->invalid != 0 || st->split == 0) {
    return;
  }
  const ull ties = st->ties;
  const int tid = static_cast<int>(threadIdx.x);
  if (tid == 0) {  // not found (impossible): treat every tile as fully selected
    st->split_tile = static_cast<ull>(total_tiles);
    st->split_share = 0;
  }
  __syncthreads();
  ull carry = 0;
  for (int64_t base = 0; base < total_tiles; base += static_cast<int64_t>(kSelectBlock) * IPT) {
    const int64_t b0 = base + static_cast<int64_t>(tid) * IPT;
    ull sum = 0;
#pragma unroll
    for (int i = 0; i < IPT; ++i) {
      if (b0 + i < total_tiles) {
        sum += tile_eq[b0 + i];
      }
    }
    ull excl = 0;
    ull agg = 0;
    Scan(temp).ExclusiveSum(sum, excl, agg);
    if (carry + excl < ties && ties <= carry + excl + sum) {  // exactly one thread
      ull cum = carry + excl;
      for (int i = 0; i < IPT && b0 + i < total_tiles; ++i) {
        const ull c = tile_eq[b0 + i];
        if (cum + c >= ties) {
          st->split_tile = static_cast<ull>(b0 + i);
          st->split_share = ties - cum;
          break;
        }
        cum += c;
      }
    }
    carry += agg;  // uniform
    __syncthreads();  // temp is reused next round
    if (carry >= ties) {
      break;
    }
  }
}

// ---------------------------------------------------------------------------
// The mask

struct MaskArgs {
  Descs descs;
  int64_t total_tiles;
  const DevState* st;  // unused (may be nullptr) when select_none
  bool among_alive;
  bool select_none;    // k == 0: copy the default masks (or write ones)
  uint64_t one_bits;
};

// out = 0 where selected, else the default mask (1 where none). Selected:
// alive and key < T, or alive and key == T within the ties the tile selects
// (all of them before the split tile, none after it; in the split tile, its
// first split_share in flat order, found with one block scan).
template <typename Traits, typename W>
__global__ void __launch_bounds__(TileConfig<typename Traits::key_t>::kMaskBlock)
    mask_kernel(const MaskArgs a) {
  using key_t = typename Traits::key_t;
  using Cfg = TileConfig<key_t>;
  constexpr int BLOCK = Cfg::kMaskBlock;
  constexpr int ITEMS = Cfg::kMaskItems;
  constexpr int TILE = Cfg::kTile;
  constexpr int ROUNDS = TILE / (BLOCK * ITEMS);
  constexpr int SEG = TILE / BLOCK;  // split tile: each thread's contiguous run
  static_assert(ROUNDS * BLOCK * ITEMS == TILE, "rounds must cover a tile");
  static_assert(SEG * BLOCK == TILE, "segments must cover a tile");
  using Scan = cub::BlockScan<unsigned, BLOCK>;
  __shared__ typename Scan::TempStorage temp;

  key_t T = 0;
  bool split = false;
  int64_t split_tile = -1;
  ull share = 0;
  if (!a.select_none) {
    if (a.st->invalid != 0) {
      return;
    }
    T = static_cast<key_t>(a.st->threshold);
    split = a.st->split != 0;
    if (split) {
      split_tile = static_cast<int64_t>(a.st->split_tile);
      share = a.st->split_share;
    }
  }
  const W one = static_cast<W>(a.one_bits);
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t t = blockIdx.x; t < a.total_tiles; t += gridDim.x) {
    const TensorDesc d = desc_of(a.descs, t);
    const int64_t base = (t - d.tile_begin) * TILE;
    const int64_t n = d.numel;
    const key_t* __restrict__ src = static_cast<const key_t*>(d.scores);
    const W* __restrict__ prev = static_cast<const W*>(d.prev);
    const bool filter_alive = a.among_alive && prev != nullptr;
    W* __restrict__ out = static_cast<W*>(d.out);

    if (split && t == split_tile) {  // uniform over the block
      const int64_t s0 = base + static_cast<int64_t>(tid) * SEG;
      const int64_t s1 = s0 + SEG < n ? s0 + SEG : n;
      unsigned eq = 0;
      for (int64_t i = s0; i < s1; ++i) {
        const bool live = !filter_alive || prev[i] == one;
        eq += (live && Traits::key(src[i]) == T) ? 1u : 0u;
      }
      unsigned before = 0;
      Scan(temp).ExclusiveSum(eq, before);
      ull seen = before;
      for (int64_t i = s0; i < s1; ++i) {
        const W pv = prev != nullptr ? prev[i] : one;
        const bool live = !filter_alive || pv == one;
        const key_t key = Traits::key(src[i]);
        bool sel;
        if (live && key == T) {
          sel = seen < share;
          ++seen;
        } else {
          sel = live && key < T;
        }
        out[i] = sel ? W(0) : pv;
      }
      __syncthreads();  // temp (never reused: one split tile, but keep it safe)
      continue;
    }

    const bool none = a.select_none;
    const bool incl = !split || t < split_tile;  // keys == T selected here
#pragma unroll 1
    for (int r = 0; r < ROUNDS; ++r) {
      const int64_t first = base + static_cast<int64_t>(r) * (BLOCK * ITEMS) + tid;
      const int valid = in_range(first, n, ITEMS * BLOCK);
      const key_t* __restrict__ s = src + first;
      key_t raw[ITEMS];
      W pv[ITEMS];
#pragma unroll
      for (int j = 0; j < ITEMS; ++j) {
        raw[j] = j * BLOCK < valid ? s[j * BLOCK] : key_t(0);
      }
      if (prev != nullptr) {
        const W* __restrict__ m = prev + first;
#pragma unroll
        for (int j = 0; j < ITEMS; ++j) {
          pv[j] = j * BLOCK < valid ? m[j * BLOCK] : one;
        }
      } else {
#pragma unroll
        for (int j = 0; j < ITEMS; ++j) {
          pv[j] = one;
        }
      }
      W* __restrict__ o = out + first;
#pragma unroll
      for (int j = 0; j < ITEMS; ++j) {
        if (j * BLOCK < valid) {
          const key_t key = Traits::key(raw[j]);
          const bool live = !filter_alive || pv[j] == one;
          const bool sel = !none && live && (key < T || (incl && key == T));
          o[j * BLOCK] = sel ? W(0) : pv[j];
        }
      }
    }
  }
}

}  // namespace cuda
}  // namespace pruneext
