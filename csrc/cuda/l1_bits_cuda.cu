// The CUDA launchers of the bit-mask ops (ops.cpp): l1_bits_prune and
// l1_bits_apply (bits_prune / bits_apply of launchers.h; their checks and
// registration are in ops_cuda.cpp), in place, over the whole list in one launch per pass (the
// descriptor table of l1_mask_host.cuh), on the current stream.
//
// A thread owns whole mask bytes (8 entries each), so no two threads write
// one byte and the masks need no atomics. Tile t of the list is kTileBytes
// consecutive mask bytes of one tensor (a tensor's last tile may be short);
// global tile order is list order, then flat order, as in l1_mask_kernels.cuh.
//
//   prune  tie_count_kernel: per tile, the alive entries of key == T, only
//          for the tensors whose budget is neither 0 nor all of their
//          entries (a partial budget: the only case that needs tie ranks);
//          tie_share_kernel: one block per such tensor scans its tile counts
//          (exclusive, flat order) into every tile's share of the budget;
//          prune_kernel: every alive entry's key against T, with the keys
//          == T all or none taken per tile, except the one tile of a tensor
//          where the budget runs out, which ranks its ties with a block
//          scan. Pruned entries get bit 0 and +0; the counts are summed per
//          block and added with one atomic per block and tensor. A list
//          without a partial budget launches prune_kernel alone.
//   apply  apply_kernel: the dead entries get +0 without their values being
//          read, so a byte of all ones costs only the read of the byte.
//
// Only pruned (prune) and dead (apply) entries are stored: alive values are
// never written (they stay bit-identical, NaNs included), nor are the dead
// entries prune did not prune, nor mask bytes that do not change. The
// values of a byte are read with 16-byte vector loads where the tensor's
// data is 16-byte aligned (then every byte's 8 entries are), a tile at a
// time so that its loads are in flight together. A tensor's last tile goes
// a byte at a time; an unaligned tensor's bytes, and the last byte where
// numel is not a multiple of 8, go one entry at a time. The values of a
// byte with no alive entry are not read.
//
// No host sync: the counts stay on the device. Budgets and a list's
// descriptors travel in one pinned async copy (a single tensor's in the
// kernel arguments), so like the phase ops a list cannot be captured in a
// CUDA graph.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../l1_bits_common.h"
#include "launch_guard.cuh"
#include "l1_mask_host.cuh"
#include "l1_mask_kernels.cuh"
#include "l1_tie_shares.cuh"

namespace pruneext {
namespace cuda {
namespace {

// Per value width: each thread loads 128 bytes of values per tile (kItems
// mask bytes, kBlock apart), enough loads in flight to cover the memory
// latency with a few resident blocks.
template <typename key_t>
struct BitTile {
  static constexpr int kBlock = 256;
  static constexpr int kItems = 16 / static_cast<int>(sizeof(key_t));  // 8, 4, 2
  static constexpr int kTileBytes = kBlock * kItems;
  static constexpr int64_t kTile = int64_t(kTileBytes) * 8;  // entries
  static_assert(kItems * 8 * sizeof(key_t) == 128, "128 bytes of values per thread and tile");
};

constexpr int kShareBlock = 512;
constexpr int kShareItems = 8;

// The descriptor fields as these ops use them: scores and out are the
// values (read, and written in place), prev the mask bytes. Prune writes
// the mask too: prev is const only because the select ops never write it;
// it points into the caller's (mutable) bits tensor.
template <typename key_t>
__device__ __forceinline__ key_t* values_of(const TensorDesc& d) {
  return static_cast<key_t*>(d.out);
}

__device__ __forceinline__ uint8_t* mask_of(const TensorDesc& d) {
  return static_cast<uint8_t*>(const_cast<void*>(d.prev));
}

__device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// The bits of byte `byte` (< ceil(n / 8)) whose entries exist: all but in
// the last byte of a tensor whose size is not a multiple of 8.
__device__ __forceinline__ unsigned entry_bits(int64_t byte, int64_t n) {
  const int64_t rem = n - 8 * byte;
  return rem >= 8 ? 0xFFu : (1u << static_cast<unsigned>(rem)) - 1u;
}

// The keys of the 8 entries at p: with vec (a full byte of a 16-byte
// aligned tensor) by 16-byte loads, else only those of `which` (the rest 0).
template <typename Traits>
__device__ __forceinline__ void load_keys8(
    const typename Traits::key_t* p, bool vec, unsigned which, typename Traits::key_t (&k)[8]) {
  using key_t = typename Traits::key_t;
  if (vec) {
    constexpr int kWords = static_cast<int>(sizeof(key_t)) / 2;
    const uint4* q = reinterpret_cast<const uint4*>(p);
    uint4 w[kWords];
#pragma unroll
    for (int i = 0; i < kWords; ++i) {
      w[i] = q[i];
    }
    static_assert(sizeof(w) == sizeof(k), "8 entries in whole 16-byte words");
    memcpy(&k, &w, sizeof(k));
  } else {
#pragma unroll
    for (int b = 0; b < 8; ++b) {
      k[b] = ((which >> b) & 1u) != 0u ? p[b] : key_t(0);
    }
  }
#pragma unroll
  for (int b = 0; b < 8; ++b) {
    k[b] = Traits::key(k[b]);
  }
}

template <typename key_t>
__device__ __forceinline__ unsigned bits_below(const key_t (&k)[8], key_t limit) {
  unsigned r = 0;
#pragma unroll
  for (int b = 0; b < 8; ++b) {
    r |= (k[b] < limit ? 1u : 0u) << b;
  }
  return r;
}

template <typename key_t>
__device__ __forceinline__ unsigned bits_equal(const key_t (&k)[8], key_t T) {
  unsigned r = 0;
#pragma unroll
  for (int b = 0; b < 8; ++b) {
    r |= (k[b] == T ? 1u : 0u) << b;
  }
  return r;
}

// +0 (all-zero bits, in every float dtype) into the entries `which` of the
// 8 at p, and into no other: a whole byte by 16-byte stores when vec.
template <typename key_t>
__device__ __forceinline__ void zero_entries(key_t* p, bool vec, unsigned which) {
  if (vec && which == 0xFFu) {
    constexpr int kWords = static_cast<int>(sizeof(key_t)) / 2;
    uint4* q = reinterpret_cast<uint4*>(p);
#pragma unroll
    for (int i = 0; i < kWords; ++i) {
      q[i] = make_uint4(0u, 0u, 0u, 0u);
    }
  } else {
#pragma unroll
    for (int b = 0; b < 8; ++b) {
      if (((which >> b) & 1u) != 0u) {
        p[b] = key_t(0);
      }
    }
  }
}

// Prunes the entries `gone` (alive, existing) of mask byte m[byte], whose
// values are at p and whose byte was mk; returns how many.
template <typename key_t>
__device__ __forceinline__ unsigned commit(
    key_t* p, uint8_t* m, int64_t byte, unsigned mk, unsigned gone, bool vec) {
  if (gone == 0u) {
    return 0u;
  }
  zero_entries(p, vec, gone);
  m[byte] = static_cast<uint8_t>(mk & ~gone);  // the pad bits are never in gone
  return static_cast<unsigned>(__popc(gone));
}

// Where a full tile's load of a byte with no alive entry goes instead of
// its values: a cached stand-in that keeps the tile's loads unconditional
// (a branch per byte would make the compiler issue them one after the
// other) without spending memory bandwidth on dead bytes. Its keys are
// masked off.
__device__ uint4 g_no_values[4];

template <typename key_t>
__device__ __forceinline__ const key_t* values_or_stand_in(const key_t* p, unsigned alive) {
  return alive != 0u ? p : reinterpret_cast<const key_t*>(g_no_values);
}

// True when every byte of the tile at byte0 holds 8 entries of a 16-byte
// aligned tensor: the tile's vector path (uniform over the block).
template <typename key_t>
__device__ __forceinline__ bool full_aligned_tile(const TensorDesc& d, int64_t byte0) {
  return aligned16(d.out) && byte0 + BitTile<key_t>::kTileBytes <= (d.numel >> 3);
}

// This thread's alive entries of key == T in the tile at byte0 (bytes
// byte0 + i * kBlock + tid).
template <typename Traits>
__device__ __forceinline__ unsigned count_ties_tile(
    const TensorDesc& d, int64_t byte0, typename Traits::key_t T) {
  using key_t = typename Traits::key_t;
  using Tile = BitTile<key_t>;
  constexpr int B = Tile::kBlock;
  constexpr int I = Tile::kItems;
  const key_t* __restrict__ w = values_of<key_t>(d);
  const uint8_t* __restrict__ m = mask_of(d);
  const int64_t n = d.numel;
  const int64_t first = byte0 + static_cast<int64_t>(threadIdx.x);
  unsigned count = 0;
  if (full_aligned_tile<key_t>(d, byte0)) {
    unsigned mk[I];
#pragma unroll
    for (int i = 0; i < I; ++i) {
      mk[i] = m[first + i * B];
    }
#pragma unroll
    for (int i = 0; i < I; ++i) {
      key_t k[8];
      load_keys8<Traits>(values_or_stand_in(w + 8 * (first + i * B), mk[i]), true, 0xFFu, k);
      count += static_cast<unsigned>(__popc(bits_equal(k, T) & mk[i]));
    }
    return count;
  }
  const int64_t nbytes = (n + 7) >> 3;
  const bool aligned = aligned16(w);
#pragma unroll 1
  for (int i = 0; i < I; ++i) {
    const int64_t byte = first + i * B;
    if (byte >= nbytes) {
      break;
    }
    const unsigned valid = entry_bits(byte, n);
    const unsigned alive = m[byte] & valid;
    if (alive != 0u) {
      key_t k[8];
      load_keys8<Traits>(w + 8 * byte, aligned && valid == 0xFFu, alive, k);
      count += static_cast<unsigned>(__popc(bits_equal(k, T) & alive));
    }
  }
  return count;
}

// Prunes this thread's bytes of the tile at byte0 where the ties are all
// taken or none: the alive entries of key < limit (T + 1 or T). Returns how
// many it pruned.
template <typename Traits>
__device__ __forceinline__ unsigned prune_tile(
    const TensorDesc& d, int64_t byte0, typename Traits::key_t limit) {
  using key_t = typename Traits::key_t;
  using Tile = BitTile<key_t>;
  constexpr int B = Tile::kBlock;
  constexpr int I = Tile::kItems;
  key_t* __restrict__ w = values_of<key_t>(d);
  uint8_t* __restrict__ m = mask_of(d);
  const int64_t n = d.numel;
  const int64_t first = byte0 + static_cast<int64_t>(threadIdx.x);
  unsigned pruned = 0;
  if (full_aligned_tile<key_t>(d, byte0)) {
    // every load (the mask bytes, then the values) before any store, so
    // that they are in flight together
    unsigned mk[I];
    unsigned gone[I];
#pragma unroll
    for (int i = 0; i < I; ++i) {
      mk[i] = m[first + i * B];
    }
#pragma unroll
    for (int i = 0; i < I; ++i) {
      key_t k[8];
      load_keys8<Traits>(values_or_stand_in(w + 8 * (first + i * B), mk[i]), true, 0xFFu, k);
      gone[i] = bits_below(k, limit) & mk[i];
    }
#pragma unroll
    for (int i = 0; i < I; ++i) {
      const int64_t byte = first + i * B;
      pruned += commit(w + 8 * byte, m, byte, mk[i], gone[i], true);
    }
    return pruned;
  }
  const int64_t nbytes = (n + 7) >> 3;
  const bool aligned = aligned16(w);
#pragma unroll 1
  for (int i = 0; i < I; ++i) {
    const int64_t byte = first + i * B;
    if (byte >= nbytes) {
      break;
    }
    const unsigned valid = entry_bits(byte, n);
    const unsigned mk = m[byte];
    const unsigned alive = mk & valid;
    if (alive != 0u) {
      const bool vec = aligned && valid == 0xFFu;
      key_t k[8];
      load_keys8<Traits>(w + 8 * byte, vec, alive, k);
      pruned += commit(w + 8 * byte, m, byte, mk, bits_below(k, limit) & alive, vec);
    }
  }
  return pruned;
}

// The tile of a tensor where its budget runs out: the alive entries of key
// < T and the tile's first `share` alive entries of key == T in flat order.
// Each thread takes a contiguous run of kItems bytes (runs in thread order
// are flat order) and one block scan of the runs' tie counts ranks them;
// the run is read twice, the second time from cache. At most one tile per
// tensor comes here. Called by the whole block.
template <typename Traits, typename Scan>
__device__ __forceinline__ unsigned prune_ranked_tile(
    const TensorDesc& d, int64_t byte0, typename Traits::key_t T, unsigned share,
    typename Scan::TempStorage& temp) {
  using key_t = typename Traits::key_t;
  using Tile = BitTile<key_t>;
  key_t* __restrict__ w = values_of<key_t>(d);
  uint8_t* __restrict__ m = mask_of(d);
  const int64_t n = d.numel;
  const int64_t nbytes = (n + 7) >> 3;
  const bool aligned = aligned16(w);
  const int64_t s0 = byte0 + static_cast<int64_t>(threadIdx.x) * Tile::kItems;
  const int64_t s1 = s0 + Tile::kItems < nbytes ? s0 + Tile::kItems : nbytes;
  unsigned ties = 0;
  for (int64_t byte = s0; byte < s1; ++byte) {
    const unsigned valid = entry_bits(byte, n);
    const unsigned alive = m[byte] & valid;
    if (alive != 0u) {
      key_t k[8];
      load_keys8<Traits>(w + 8 * byte, aligned && valid == 0xFFu, alive, k);
      ties += static_cast<unsigned>(__popc(bits_equal(k, T) & alive));
    }
  }
  unsigned before = 0;
  Scan(temp).ExclusiveSum(ties, before);
  unsigned left = share > before ? share - before : 0u;  // ties this run may take
  unsigned pruned = 0;
  for (int64_t byte = s0; byte < s1; ++byte) {
    const unsigned valid = entry_bits(byte, n);
    const unsigned mk = m[byte];
    const unsigned alive = mk & valid;
    if (alive == 0u) {
      continue;
    }
    const bool vec = aligned && valid == 0xFFu;
    key_t k[8];
    load_keys8<Traits>(w + 8 * byte, vec, alive, k);
    unsigned eq = bits_equal(k, T) & alive;
    unsigned take = 0;  // the lowest `left` bits of eq
    while (eq != 0u && left != 0u) {
      const unsigned low = eq & (0u - eq);
      take |= low;
      eq ^= low;
      --left;
    }
    pruned += commit(w + 8 * byte, m, byte, mk, (bits_below(k, T) & alive) | take, vec);
  }
  __syncthreads();  // temp is reused by the block's next reduction or scan
  return pruned;
}

// Sums the block's count of one tensor into dst: one atomic per block.
template <typename Reduce>
__device__ __forceinline__ void add_block_count(typename Reduce::TempStorage& temp, ull mine, ull* dst) {
  const ull total = Reduce(temp).Sum(mine);
  if (threadIdx.x == 0 && total != 0ull) {
    atomicAdd(dst, total);
  }
  __syncthreads();  // temp is reused
}

// Per tile of a tensor with a partial budget: its alive entries of key == T
// (the other tensors' tiles are not read and their tile_eq is left unset).
template <typename Traits>
__global__ void __launch_bounds__(BitTile<typename Traits::key_t>::kBlock) tie_count_kernel(
    const Descs descs, const Budgets budgets, int64_t total_tiles, uint64_t threshold,
    unsigned* __restrict__ tile_eq) {
  using key_t = typename Traits::key_t;
  using Tile = BitTile<key_t>;
  using Reduce = cub::BlockReduce<unsigned, Tile::kBlock>;
  __shared__ typename Reduce::TempStorage temp;
  const key_t T = static_cast<key_t>(threshold);
  for (int64_t t = blockIdx.x; t < total_tiles; t += gridDim.x) {
    const int j = desc_index_of(descs, t);
    const TensorDesc d = descs.n == 1 ? descs.one : descs.list[j];
    if (!partial_budget(budget_of(budgets, descs.n, j), d.numel)) {
      continue;  // uniform over the block
    }
    const int64_t byte0 = (t - d.tile_begin) * Tile::kTileBytes;
    const unsigned total = Reduce(temp).Sum(count_ties_tile<Traits>(d, byte0, T));
    if (threadIdx.x == 0) {
      tile_eq[t] = total;
    }
    __syncthreads();  // temp is reused next tile
  }
}

// One block per tensor with a partial budget (grid-stride over the list),
// its tiles in order: each tile's share of the budget, all of its ties
// while the budget lasts (exclusive scan of tile_eq), then what is left,
// then 0.
__global__ void __launch_bounds__(kShareBlock) tie_share_kernel(
    const Descs descs, const Budgets budgets, int64_t tile, const unsigned* __restrict__ tile_eq,
    unsigned* __restrict__ tile_share) {
  __shared__ typename cub::BlockScan<ull, kShareBlock>::TempStorage temp;
  for (int j = static_cast<int>(blockIdx.x); j < descs.n; j += static_cast<int>(gridDim.x)) {
    const TensorDesc d = descs.n == 1 ? descs.one : descs.list[j];
    const int64_t budget = budget_of(budgets, descs.n, j);
    if (!partial_budget(budget, d.numel)) {
      continue;  // uniform
    }
    const int64_t t0 = d.tile_begin;
    scan_tile_shares<kShareBlock, kShareItems>(
        temp, tile_eq + t0, (d.numel + tile - 1) / tile, static_cast<ull>(budget), tile_share + t0);
  }
}

struct PruneArgs {
  Descs descs;
  Budgets budgets;
  int64_t total_tiles;
  uint64_t threshold;          // the key T, a key of the dtype
  const unsigned* tile_eq;     // both set on the tiles of partial budgets
  const unsigned* tile_share;  // only (nullptr where there are none)
  ull* counts;                 // the int64 result, zeroed
};

// The prune pass. A block keeps its count while its tiles stay in one
// tensor and adds it when the tensor changes (uniform: the whole block
// walks the same tiles), so a large tensor costs one atomic per block.
template <typename Traits>
__global__ void __launch_bounds__(BitTile<typename Traits::key_t>::kBlock)
    prune_kernel(const PruneArgs a) {
  using key_t = typename Traits::key_t;
  using Tile = BitTile<key_t>;
  using Reduce = cub::BlockReduce<ull, Tile::kBlock>;
  using Scan = cub::BlockScan<unsigned, Tile::kBlock>;
  __shared__ union Temp {
    typename Reduce::TempStorage reduce;
    typename Scan::TempStorage scan;
  } temp;
  const key_t T = static_cast<key_t>(a.threshold);
  int cur = -1;         // the tensor whose count `mine` holds
  bool worked = false;  // the block pruned in a tile of it (else no reduction)
  ull mine = 0;
  for (int64_t t = blockIdx.x; t < a.total_tiles; t += gridDim.x) {
    const int j = desc_index_of(a.descs, t);
    if (j != cur) {
      if (worked) {
        add_block_count<Reduce>(temp.reduce, mine, a.counts + cur);
      }
      cur = j;
      worked = false;
      mine = 0;
    }
    const TensorDesc d = a.descs.n == 1 ? a.descs.one : a.descs.list[j];
    const int64_t budget = budget_of(a.budgets, a.descs.n, j);
    bool incl = budget > 0;  // not partial: 0 or numel (every tie)
    bool cut = false;
    unsigned share = 0;
    if (partial_budget(budget, d.numel)) {
      share = a.tile_share[t];
      const unsigned eq = a.tile_eq[t];
      incl = share >= eq;
      cut = share != 0u && share < eq;
    }
    // keys <= T are keys < T + 1: T is at most 2^W - 1, so T + 1 fits key_t
    const key_t limit = incl ? static_cast<key_t>(T + 1u) : T;
    if (limit == 0 && !cut) {
      continue;  // no key is below 0: nothing to prune in this tile
    }
    worked = true;
    const int64_t byte0 = (t - d.tile_begin) * Tile::kTileBytes;
    if (cut) {  // uniform
      mine += prune_ranked_tile<Traits, Scan>(d, byte0, T, share, temp.scan);
    } else {
      mine += prune_tile<Traits>(d, byte0, limit);
    }
  }
  if (worked) {
    add_block_count<Reduce>(temp.reduce, mine, a.counts + cur);
  }
}

// Zeroes the dead entries; raw_t is the unsigned integer of the values'
// width (only zeros are written, so the float type does not matter).
template <typename raw_t>
__global__ void __launch_bounds__(BitTile<raw_t>::kBlock)
    apply_kernel(const Descs descs, int64_t total_tiles) {
  using Tile = BitTile<raw_t>;
  constexpr int B = Tile::kBlock;
  constexpr int I = Tile::kItems;
  for (int64_t t = blockIdx.x; t < total_tiles; t += gridDim.x) {
    const TensorDesc d = desc_of(descs, t);
    raw_t* __restrict__ w = values_of<raw_t>(d);
    const uint8_t* __restrict__ m = mask_of(d);
    const int64_t n = d.numel;
    const int64_t nbytes = (n + 7) >> 3;
    const bool aligned = aligned16(w);
    const int64_t first = (t - d.tile_begin) * Tile::kTileBytes + static_cast<int64_t>(threadIdx.x);
    unsigned mk[I];  // 0xFF past the end: nothing to do there
#pragma unroll
    for (int i = 0; i < I; ++i) {
      const int64_t byte = first + i * B;
      mk[i] = byte < nbytes ? m[byte] : 0xFFu;
    }
#pragma unroll
    for (int i = 0; i < I; ++i) {
      if (mk[i] != 0xFFu) {
        const int64_t byte = first + i * B;
        const unsigned dead = ~mk[i] & entry_bits(byte, n);
        zero_entries(w + 8 * byte, aligned, dead);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Host

// The list as descriptors (see values_of / mask_of), tiles of kTile entries.
template <typename key_t>
DescList describe_bits(at::TensorList values, at::TensorList bits) {
  DescList l;
  l.descs.reserve(values.size());
  for (size_t j = 0; j < values.size(); ++j) {
    TensorDesc d;
    d.scores = values[j].data_ptr();
    d.out = values[j].data_ptr();
    d.prev = bits[j].data_ptr();
    d.numel = values[j].numel();
    d.tile_begin = l.total_tiles;
    l.total_tiles += ceil_div(d.numel, BitTile<key_t>::kTile);
    l.n_total += d.numel;
    l.descs.push_back(d);
  }
  l.any_prev = true;
  return l;
}

template <typename Traits>
void prune_on_device(
    at::TensorList weights, at::TensorList bits, int64_t threshold, c10::IntArrayRef ties,
    const at::Tensor& counts) {
  using key_t = typename Traits::key_t;
  using Tile = BitTile<key_t>;
  // Above every key (the NaN key, 2^W - 1) every alive entry is pruned:
  // the same as T = that key with every tie.
  const uint64_t max_key = Traits::kNaN;
  const bool above_all = static_cast<uint64_t>(threshold) > max_key;
  const uint64_t T = above_all ? max_key : static_cast<uint64_t>(threshold);
  std::vector<int64_t> budgets(weights.size());
  bool any_partial = false;
  bool any_budget = false;
  for (size_t j = 0; j < weights.size(); ++j) {
    const int64_t n = weights[j].numel();
    budgets[j] = above_all ? n : std::min(ties[j], n);
    any_partial = any_partial || partial_budget(budgets[j], n);
    any_budget = any_budget || budgets[j] > 0;
  }
  const DescList list = describe_bits<key_t>(weights, bits);
  if (list.n_total == 0 || (T == 0 && !any_budget)) {
    return;  // nothing is below key 0 and no tie is taken
  }
  // (ops_cuda.cpp has refused a CUDA graph capture of a list: a graph would
  // replay the descriptors' copy from a pinned buffer freed on return.)
  const at::Device device = weights[0].device();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor holder;  // the device copy of the descriptors and budgets
  Budgets b{nullptr, budgets[0]};
  const Descs descs = upload(list, device, holder, budgets, &b.list);

  at::Tensor tiles;  // tile_eq, then tile_share
  const unsigned* tile_eq = nullptr;
  const unsigned* tile_share = nullptr;
  if (any_partial) {
    tiles = at::empty({2 * list.total_tiles}, at::TensorOptions().dtype(at::kInt).device(device));
    auto* eq = reinterpret_cast<unsigned*>(tiles.data_ptr());
    auto* share = eq + list.total_tiles;
    auto count = tie_count_kernel<Traits>;
    const int64_t grid = wave_blocks(count, Tile::kBlock, 0, list.total_tiles);
    count<<<static_cast<unsigned>(grid), Tile::kBlock, 0, stream>>>(descs, b, list.total_tiles, T, eq);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t share_grid = std::min<int64_t>(descs.n, 1024);
    tie_share_kernel<<<static_cast<unsigned>(share_grid), kShareBlock, 0, stream>>>(
        descs, b, Tile::kTile, eq, share);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    tile_eq = eq;
    tile_share = share;
  }
  PruneArgs a;
  a.descs = descs;
  a.budgets = b;
  a.total_tiles = list.total_tiles;
  a.threshold = T;
  a.tile_eq = tile_eq;
  a.tile_share = tile_share;
  a.counts = reinterpret_cast<ull*>(counts.data_ptr());
  auto kernel = prune_kernel<Traits>;
  const int64_t grid = wave_blocks(kernel, Tile::kBlock, 0, list.total_tiles);
  kernel<<<static_cast<unsigned>(grid), Tile::kBlock, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename raw_t>
void apply_on_device(at::TensorList tensors, at::TensorList bits) {
  const DescList list = describe_bits<raw_t>(tensors, bits);
  if (list.n_total == 0) {
    return;
  }
  at::Tensor holder;  // the device copy of the descriptors
  const Descs descs = upload(list, tensors[0].device(), holder);
  auto kernel = apply_kernel<raw_t>;
  constexpr int kBlock = BitTile<raw_t>::kBlock;
  const int64_t grid = wave_blocks(kernel, kBlock, 0, list.total_tiles);
  kernel<<<static_cast<unsigned>(grid), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
      descs, list.total_tiles);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

Launched bits_prune(
    at::TensorList weights,
    at::TensorList bits,
    int64_t threshold,
    c10::IntArrayRef ties,
    const at::Tensor& counts) noexcept {
  return launch_guarded([&](Launched&) {
    const c10::cuda::CUDAGuard guard(weights[0].device());
    PRUNEEXT_DISPATCH_SCORES(weights[0].scalar_type(), "l1_bits_prune", [&] {
      prune_on_device<typename KeyOf<scalar_t>::type>(weights, bits, threshold, ties, counts);
    });
  });
}

Launched bits_apply(at::TensorList tensors, at::TensorList bits) noexcept {
  return launch_guarded([&](Launched&) {
    const c10::cuda::CUDAGuard guard(tensors[0].device());
    switch (tensors[0].element_size()) {
      case 2:
        apply_on_device<uint16_t>(tensors, bits);
        break;
      case 4:
        apply_on_device<uint32_t>(tensors, bits);
        break;
      default:
        apply_on_device<uint64_t>(tensors, bits);
        break;
    }
  });
}

}  // namespace cuda
}  // namespace pruneext
