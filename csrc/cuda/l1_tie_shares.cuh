// Tie budgets of the ops that take them per tensor (the mask_write phase,
// l1_bits_prune), and the scan that turns a tensor's per-tile counts of
// keys == T into each tile's share of its budget, for the kernels of
// l1_phases_cuda.cu and l1_bits_cuda.cu.
#pragma once

#include <cstdint>

#include <cub/block/block_scan.cuh>

namespace pruneext {
namespace cuda {

// Tie budgets per tensor, clamped to [0, numel]: one in the kernel
// arguments, a list in device memory, as Descs.
struct Budgets {
  const int64_t* list;
  int64_t one;
};

__device__ __forceinline__ int64_t budget_of(const Budgets& b, int n, int j) {
  return n == 1 ? b.one : b.list[j];
}

// Only a budget strictly between 0 and the tensor's size needs its ties
// ranked: 0 takes none, numel every one.
__host__ __device__ __forceinline__ bool partial_budget(int64_t budget, int64_t numel) {
  return budget > 0 && budget < numel;
}

// One block walks the nt tile counts of a tensor (tile_eq, in tile = flat
// order), BLOCK * ITEMS a round, and returns their total (to every thread).
// With tile_share, each tile also gets its share of `want` ties: all of its
// ties while the budget lasts (an exclusive scan of the counts), then what
// is left, then 0. The whole block calls it (block-wide scans).
template <int BLOCK, int ITEMS>
__device__ unsigned long long scan_tile_shares(
    typename cub::BlockScan<unsigned long long, BLOCK>::TempStorage& temp, const unsigned* __restrict__ tile_eq,
    int64_t nt, unsigned long long want, unsigned* __restrict__ tile_share) {
  using ull = unsigned long long;
  using Scan = cub::BlockScan<ull, BLOCK>;
  const int tid = static_cast<int>(threadIdx.x);
  ull carry = 0;  // ties in the tiles before this round
  for (int64_t round = 0; round < nt; round += static_cast<int64_t>(BLOCK) * ITEMS) {
    const int64_t b0 = round + static_cast<int64_t>(tid) * ITEMS;
    unsigned c[ITEMS];
    ull sum = 0;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      c[i] = b0 + i < nt ? tile_eq[b0 + i] : 0u;
      sum += c[i];
    }
    ull excl = 0;
    ull agg = 0;
    Scan(temp).ExclusiveSum(sum, excl, agg);
    if (tile_share != nullptr) {
      ull before = carry + excl;
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        if (b0 + i < nt) {
          const ull left = want > before ? want - before : 0ull;
          tile_share[b0 + i] = static_cast<unsigned>(left < c[i] ? left : c[i]);
          before += c[i];
        }
      }
    }
    carry += agg;  // uniform
    __syncthreads();  // temp is reused next round
  }
  return carry;
}

}  // namespace cuda
}  // namespace pruneext
