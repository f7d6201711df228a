// The one-block kernels of the CUDA select (l1_mask_cuda.cu) between its
// passes: choosing the bucket of each digit, the sampled window and where
// the ties split. Only the select needs them (the phase ops choose on the
// host), so they live apart from the kernels both share.
#pragma once

#include <cub/block/block_scan.cuh>

#include "l1_mask_kernels.cuh"

namespace pruneext {
namespace cuda {

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

}  // namespace cuda
}  // namespace pruneext
