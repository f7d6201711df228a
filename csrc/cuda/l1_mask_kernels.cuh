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
// (l1_select_kernels.cuh) updates it, so the host launches a fixed sequence
// of kernels and reads nothing back between passes. See l1_mask_cuda.cu for
// the sequence. The phase ops (l1_phases_cuda.cu) reuse the histogram pass,
// the tie counts and the tile writer of the mask.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "../magnitude_key.h"

namespace pruneext {
namespace cuda {

using ull = unsigned long long;

// One tensor of the problem. Pointers are to contiguous data; prev is the
// default mask (nullptr: none, i.e. all ones). numel and tile_begin are 64-bit.
// values / values_out: the masked values the mask kernel also writes
// (values_out = mask * values), nullptr where the call has none.
struct TensorDesc {
  const void* scores;
  const void* prev;
  void* out;
  int64_t numel;
  int64_t tile_begin;
  const void* values = nullptr;
  void* values_out = nullptr;
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

// The list position of the tensor holding global tile t: the last
// descriptor with tile_begin <= t (empty tensors share their successor's
// tile_begin and are skipped).
__device__ __forceinline__ int desc_index_of(const Descs& ds, int64_t t) {
  if (ds.n == 1) {
    return 0;
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
  return lo;
}

// The tensor holding global tile t.
__device__ __forceinline__ TensorDesc desc_of(const Descs& ds, int64_t t) {
  return ds.n == 1 ? ds.one : ds.list[desc_index_of(ds, t)];
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

// 16-bit keys: a thread's N contiguous elements moved as 16-byte (or, for a
// byte mask, 8-byte) vectors instead of N scalar loads of 2 bytes. The
// caller checks the base pointers with run_aligned; runs start at multiples
// of N elements, so the runs are aligned too.
template <typename T, int N>
struct RunWords {  // N elements of T as 16-byte words (8-byte ones for 8 bytes in all)
  static constexpr int kBytes = N * static_cast<int>(sizeof(T));
  static_assert(kBytes % 8 == 0, "runs of whole 8-byte words");
  using Word = std::conditional_t<kBytes % 16 == 0, uint4, uint2>;
  static constexpr int kWords = kBytes / static_cast<int>(sizeof(Word));
  union {
    Word w[kWords];
    T v[N];
  };
  __device__ RunWords() {}
};

template <typename T, int N>
__device__ __forceinline__ void load_run(const T* __restrict__ p, T (&v)[N]) {
  RunWords<T, N> r;
  const auto* __restrict__ src = reinterpret_cast<const typename RunWords<T, N>::Word*>(p);
#pragma unroll
  for (int c = 0; c < RunWords<T, N>::kWords; ++c) {
    r.w[c] = src[c];
  }
#pragma unroll
  for (int j = 0; j < N; ++j) {
    v[j] = r.v[j];
  }
}

template <typename T, int N>
__device__ __forceinline__ void store_run(T* __restrict__ p, const T (&v)[N]) {
  RunWords<T, N> r;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    r.v[j] = v[j];
  }
  auto* __restrict__ dst = reinterpret_cast<typename RunWords<T, N>::Word*>(p);
#pragma unroll
  for (int c = 0; c < RunWords<T, N>::kWords; ++c) {
    dst[c] = r.w[c];
  }
}

// Whether runs of N elements of `bytes` each at p can be moved as vectors
// (nullptr: nothing to move).
template <int N>
__device__ __forceinline__ bool run_aligned(const void* p, int bytes) {
  const int run = N * bytes;
  const uintptr_t align = static_cast<uintptr_t>(run >= 16 ? 16 : run);
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % align == 0;
}

// live_bits for a run of N contiguous mask elements (run_aligned).
template <typename W, int N>
__device__ __forceinline__ unsigned live_run_as(const void* base, int64_t first, uint64_t one) {
  W v[N];
  load_run<W, N>(static_cast<const W*>(base) + first, v);
  const W one_w = static_cast<W>(one);
  unsigned bits = 0;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    bits |= v[j] == one_w ? (1u << j) : 0u;
  }
  return bits;
}

template <int N>
__device__ __forceinline__ unsigned live_run(const void* base, int width, int64_t first, uint64_t one) {
  switch (width) {
    case 1:
      return live_run_as<uint8_t, N>(base, first, one);
    case 2:
      return live_run_as<uint16_t, N>(base, first, one);
    case 4:
      return live_run_as<uint32_t, N>(base, first, one);
    default:
      return live_run_as<uint64_t, N>(base, first, one);
  }
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
  // Per tile, where the compacting pass put the tile's candidates:
  // start << 16 | count (a block writes a tile's run in one piece), so the
  // tie counts can read them (eq_count_cands_kernel). nullptr: not kept.
  ull* cand_runs = nullptr;
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
            if (a.cand_runs != nullptr) {
              a.cand_runs[t] = (at << 16) | total;  // every tile, so no zeroing
            }
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
// Ties

// This thread's count of the alive keys == T in the tile at `base` of d
// (to be summed over the block).
template <typename Traits>
__device__ __forceinline__ unsigned thread_eq_count(
    const TensorDesc& d, int64_t base, typename Traits::key_t T, bool among_alive, int mask_width,
    uint64_t one_bits) {
  using key_t = typename Traits::key_t;
  using Cfg = TileConfig<key_t>;
  constexpr int BLOCK = Cfg::kMaskBlock;
  constexpr int ITEMS = Cfg::kMaskItems;
  constexpr int ROUNDS = Cfg::kTile / (BLOCK * ITEMS);
  static_assert(ROUNDS * BLOCK * ITEMS == Cfg::kTile, "rounds must cover a tile");
  const int tid = static_cast<int>(threadIdx.x);
  const void* alive = among_alive ? d.prev : nullptr;
  unsigned count = 0;
  if constexpr (sizeof(key_t) == 2) {
    // (a count does not depend on which thread sees which element: each takes
    // ITEMS contiguous ones, as vectors)
    if (run_aligned<ITEMS>(d.scores, 2) && run_aligned<ITEMS>(alive, mask_width)) {
      const key_t* __restrict__ src = static_cast<const key_t*>(d.scores);
#pragma unroll 1
      for (int r = 0; r < ROUNDS; ++r) {
        const int64_t first =
            base + static_cast<int64_t>(r) * (BLOCK * ITEMS) + static_cast<int64_t>(tid) * ITEMS;
        const int valid = in_range(first, d.numel, ITEMS);
        key_t raw[ITEMS];
        unsigned live;
        if (valid == ITEMS) {
          load_run<key_t, ITEMS>(src + first, raw);
          live = alive != nullptr ? live_run<ITEMS>(alive, mask_width, first, one_bits) : (1u << ITEMS) - 1u;
        } else {  // the tensor's end
          live = load_keys<key_t, ITEMS, 1>(d.scores, alive, mask_width, one_bits, first, d.numel, raw);
        }
#pragma unroll
        for (int j = 0; j < ITEMS; ++j) {
          count += (((live >> j) & 1u) != 0u && Traits::key(raw[j]) == T) ? 1u : 0u;
        }
      }
      return count;
    }
  }
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
  return count;
}

// Per tile: how many alive keys equal the threshold (only when the ties are
// split; otherwise nothing to do).
template <typename Traits>
__global__ void __launch_bounds__(TileConfig<typename Traits::key_t>::kMaskBlock) eq_count_kernel(
    const Descs descs, int64_t total_tiles, const DevState* __restrict__ st, bool among_alive, int mask_width, uint64_t one_bits,
    unsigned* __restrict__ tile_eq) {
  using key_t = typename Traits::key_t;
  using Cfg = TileConfig<key_t>;
  using Reduce = cub::BlockReduce<unsigned, Cfg::kMaskBlock>;
  __shared__ typename Reduce::TempStorage temp;

  if (st->invalid != 0 || st->split == 0 || st->use_cands != 0) {
    return;  // (use_cands: eq_count_cands_kernel counts them)
  }
  const key_t T = static_cast<key_t>(st->threshold);
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t t = blockIdx.x; t < total_tiles; t += gridDim.x) {
    const TensorDesc d = desc_of(descs, t);
    const int64_t base = (t - d.tile_begin) * Cfg::kTile;
    const unsigned count = thread_eq_count<Traits>(d, base, T, among_alive, mask_width, one_bits);
    const unsigned total = Reduce(temp).Sum(count);
    if (tid == 0) {
      tile_eq[t] = total;
    }
    __syncthreads();  // temp is reused next tile
  }
}

// The same per-tile counts where the select read its last digits from the
// candidate buffer (st->use_cands): every alive key of the final bucket, T's
// among them, is there, in one run per tile (HistArgs::cand_runs), so the
// counts read at most the buffer's keys instead of the tensors. Without it,
// split ties (most calls on fp32 data: about ten entries per ulp near the
// median at 2^28) cost a full read of the scores.
template <typename Traits>
__global__ void __launch_bounds__(TileConfig<typename Traits::key_t>::kMaskBlock) eq_count_cands_kernel(
    const void* __restrict__ cands, const ull* __restrict__ cand_runs, int64_t total_tiles,
    const DevState* __restrict__ st, unsigned* __restrict__ tile_eq) {
  using key_t = typename Traits::key_t;
  using Cfg = TileConfig<key_t>;
  using Reduce = cub::BlockReduce<unsigned, Cfg::kMaskBlock>;
  __shared__ typename Reduce::TempStorage temp;
  static_assert(Cfg::kTile < (1 << 16), "a tile's candidate count takes 16 bits of its run");

  if (st->invalid != 0 || st->split == 0 || st->use_cands == 0) {
    return;
  }
  const key_t T = static_cast<key_t>(st->threshold);
  const key_t* __restrict__ c = static_cast<const key_t*>(cands);
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t t = blockIdx.x; t < total_tiles; t += gridDim.x) {
    const ull run = cand_runs[t];
    const int64_t begin = static_cast<int64_t>(run >> 16);
    const int64_t end = begin + static_cast<int64_t>(run & 0xFFFFull);
    unsigned count = 0;
    for (int64_t i = begin + tid; i < end; i += Cfg::kMaskBlock) {
      count += c[i] == T ? 1u : 0u;
    }
    const unsigned total = Reduce(temp).Sum(count);
    if (tid == 0) {
      tile_eq[t] = total;
    }
    __syncthreads();  // temp is reused next tile
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

template <typename Traits>
using MaskScan = cub::BlockScan<unsigned, TileConfig<typename Traits::key_t>::kMaskBlock>;

// The masked values: V is their type, or NoValues where the call has none.
struct NoValues {};

// values_out[i] = m * values[i] in V, m the mask entry as V: the default
// mask's bits where there is one (it then has V's width, attach_values),
// else 0 or 1. torch's apply_mask product, mask first.
template <typename V, typename W>
__device__ __forceinline__ void value_factor(W m, bool from_prev, V& factor) {
  if constexpr (sizeof(W) == sizeof(V)) {
    if (from_prev) {
      memcpy(&factor, &m, sizeof(V));
    } else {
      factor = m != W(0) ? V(1) : V(0);
    }
  } else {
    factor = m != W(0) ? V(1) : V(0);  // no default mask: m is 0 or 1
  }
}

template <typename V, typename W>
__device__ __forceinline__ void put_value(const TensorDesc& d, int64_t i, W m, bool from_prev) {
  if constexpr (!std::is_same<V, NoValues>::value) {
    V factor;
    value_factor(m, from_prev, factor);
    static_cast<V*>(d.values_out)[i] = factor * static_cast<const V*>(d.values)[i];
  }
}

// put_value for a run of N contiguous elements at first (run_aligned).
template <typename V, typename W, int N>
__device__ __forceinline__ void put_values_run(const TensorDesc& d, int64_t first, const W (&m)[N], bool from_prev) {
  if constexpr (!std::is_same<V, NoValues>::value) {
    V v[N];
    load_run<V, N>(static_cast<const V*>(d.values) + first, v);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      V factor;
      value_factor(m[j], from_prev, factor);
      v[j] = factor * v[j];
    }
    store_run<V, N>(static_cast<V*>(d.values_out) + first, v);
  }
}

template <typename V, int N>
__device__ __forceinline__ bool values_aligned(const TensorDesc& d) {
  if constexpr (std::is_same<V, NoValues>::value) {
    return true;
  } else {
    return run_aligned<N>(d.values, sizeof(V)) && run_aligned<N>(d.values_out, sizeof(V));
  }
}

// One tile of the mask (the tile at `base` of d; called by the whole block):
// out = 0 where selected, else the default mask (1 where none). Selected:
// alive and key < T (nothing when none), and alive keys == T: all of them
// when incl, or, when cut, the tile's first `share` in flat order (found
// with one block scan over contiguous runs). With V, the masked values too.
template <typename Traits, typename W, typename V = NoValues>
__device__ __forceinline__ void write_mask_tile(
    const TensorDesc& d, int64_t base, typename Traits::key_t T, bool none, bool incl, bool cut,
    ull share, bool among_alive, W one, typename MaskScan<Traits>::TempStorage& temp) {
  using key_t = typename Traits::key_t;
  using Cfg = TileConfig<key_t>;
  constexpr int BLOCK = Cfg::kMaskBlock;
  constexpr int ITEMS = Cfg::kMaskItems;
  constexpr int TILE = Cfg::kTile;
  constexpr int ROUNDS = TILE / (BLOCK * ITEMS);
  constexpr int SEG = TILE / BLOCK;  // split tile: each thread's contiguous run
  static_assert(ROUNDS * BLOCK * ITEMS == TILE, "rounds must cover a tile");
  static_assert(SEG * BLOCK == TILE, "segments must cover a tile");
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t n = d.numel;
  const key_t* __restrict__ src = static_cast<const key_t*>(d.scores);
  const W* __restrict__ prev = static_cast<const W*>(d.prev);
  const bool filter_alive = among_alive && prev != nullptr;
  W* __restrict__ out = static_cast<W*>(d.out);

  if (cut) {  // uniform over the block
    const int64_t s0 = base + static_cast<int64_t>(tid) * SEG;
    const int64_t s1 = s0 + SEG < n ? s0 + SEG : n;
    unsigned eq = 0;
    for (int64_t i = s0; i < s1; ++i) {
      const bool live = !filter_alive || prev[i] == one;
      eq += (live && Traits::key(src[i]) == T) ? 1u : 0u;
    }
    unsigned before = 0;
    MaskScan<Traits>(temp).ExclusiveSum(eq, before);
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
      put_value<V>(d, i, sel ? W(0) : pv, prev != nullptr);
    }
    __syncthreads();  // temp is reused by the block's next cut tile
    return;
  }

  // Outside the cut tile the rule is the same for every entry: alive, and
  // key < T or (incl) key == T; nothing when none.
  const auto selected = [=](key_t key, W pv) {
    return !none && (!filter_alive || pv == one) && (key < T || (incl && key == T));
  };

  if constexpr (sizeof(key_t) == 2) {
    // 16-bit keys: outside the cut tile no element depends on another, so
    // each thread takes ITEMS contiguous ones and moves keys, mask and
    // values as vectors (scalar 2-byte loads leave most of each memory
    // transaction unused)
    if (run_aligned<ITEMS>(src, 2) && run_aligned<ITEMS>(prev, sizeof(W)) && run_aligned<ITEMS>(out, sizeof(W)) &&
        values_aligned<V, ITEMS>(d)) {
#pragma unroll 1
      for (int r = 0; r < ROUNDS; ++r) {
        const int64_t first =
            base + static_cast<int64_t>(r) * (BLOCK * ITEMS) + static_cast<int64_t>(tid) * ITEMS;
        const int valid = in_range(first, n, ITEMS);
        if (valid == ITEMS) {
          key_t raw[ITEMS];
          W pv[ITEMS];
          W res[ITEMS];
          load_run<key_t, ITEMS>(src + first, raw);
          if (prev != nullptr) {
            load_run<W, ITEMS>(prev + first, pv);
          } else {
#pragma unroll
            for (int j = 0; j < ITEMS; ++j) {
              pv[j] = one;
            }
          }
#pragma unroll
          for (int j = 0; j < ITEMS; ++j) {
            const bool sel = selected(Traits::key(raw[j]), pv[j]);
            res[j] = sel ? W(0) : pv[j];
          }
          store_run<W, ITEMS>(out + first, res);
          put_values_run<V, W, ITEMS>(d, first, res, prev != nullptr);
        } else {  // the tensor's end
          for (int j = 0; j < valid; ++j) {
            const int64_t i = first + j;
            const W pv = prev != nullptr ? prev[i] : one;
            const bool sel = selected(Traits::key(src[i]), pv);
            out[i] = sel ? W(0) : pv;
            put_value<V>(d, i, sel ? W(0) : pv, prev != nullptr);
          }
        }
      }
      return;
    }
  }

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
        const bool sel = selected(Traits::key(raw[j]), pv[j]);
        o[j * BLOCK] = sel ? W(0) : pv[j];
        put_value<V>(d, first + j * BLOCK, sel ? W(0) : pv[j], prev != nullptr);
      }
    }
  }
}

// The mask of the select: keys == T selected before the split tile, none
// after it, the split tile's first split_share.
template <typename Traits, typename W, typename V>
__global__ void __launch_bounds__(TileConfig<typename Traits::key_t>::kMaskBlock)
    mask_kernel(const MaskArgs a) {
  using key_t = typename Traits::key_t;
  __shared__ typename MaskScan<Traits>::TempStorage temp;

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
  for (int64_t t = blockIdx.x; t < a.total_tiles; t += gridDim.x) {
    const TensorDesc d = desc_of(a.descs, t);
    const int64_t base = (t - d.tile_begin) * TileConfig<key_t>::kTile;
    const bool cut = split && t == split_tile;
    const bool incl = !split || t < split_tile;  // keys == T selected here
    write_mask_tile<Traits, W, V>(d, base, T, a.select_none, incl, cut, share, a.among_alive, one, temp);
  }
}

}  // namespace cuda
}  // namespace pruneext
