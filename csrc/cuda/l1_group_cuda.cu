// The grouped select on CUDA (l1_mask_grouped, ops.cpp): the CPU kernel's
// rule (cpu/l1_group_cpu.cpp) with one launch for all groups. An entry
// ranks by r = key + 1, or r = 0 where among_alive and the default mask
// already pruned it, so the k_g smallest r of a group are its pruned ones
// first, then its smallest alive keys (ties to the lowest index).
//   * groups of up to kSmallGroup entries (N:M): one thread per group ranks
//     each entry against the others of its group;
//   * larger groups (rows): one block per group, a radix select of the
//     k_g-th smallest r, 8 bits a pass with a shared histogram, then the
//     write in chunks of the block, ties counted in index order by a block
//     scan.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cub/block/block_scan.cuh>

#include "../l1_group_common.h"
#include "l1_group_launcher.h"
#include "launch_guard.cuh"

namespace pruneext {
namespace cuda {
namespace {

constexpr int kRowThreads = 256;

template <typename Traits, typename mask_t>
struct GroupArgs {
  using key_t = typename Traits::key_t;
  const key_t* raw;
  const mask_t* prev;  // null: no default mask
  mask_t* out;
  const int64_t* group_k;  // null: k for every group
  int64_t groups, size, k;
  mask_t one;
  bool among_alive;  // with a default mask

  __device__ __forceinline__ int64_t budget(int64_t g) const {
    const int64_t b = group_k != nullptr ? group_k[g] : k;
    return b < 0 ? 0 : (b > size ? size : b);
  }
  __device__ __forceinline__ key_t rank_key(int64_t e) const {
    const bool alive = !among_alive || prev[e] == one;
    return alive ? static_cast<key_t>(Traits::key(raw[e]) + 1) : key_t(0);
  }
  // r == 0: pruned by the default mask already, so it keeps that value
  __device__ __forceinline__ void write(int64_t e, key_t r, bool selected) const {
    out[e] = selected && r != 0 ? mask_t(0) : (prev != nullptr ? prev[e] : one);
  }
};

template <typename Traits, typename mask_t>
__global__ void small_groups_kernel(GroupArgs<Traits, mask_t> a) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= a.groups) {
    return;
  }
  typename Traits::key_t r[kSmallGroup];
  const int64_t base = g * a.size;
  const int size = static_cast<int>(a.size);
  for (int i = 0; i < size; ++i) {
    r[i] = a.rank_key(base + i);
  }
  const int64_t k = a.budget(g);
  for (int i = 0; i < size; ++i) {
    int before = 0;
    for (int j = 0; j < size; ++j) {
      before += (r[j] < r[i]) | ((r[j] == r[i]) & (j < i));
    }
    a.write(base + i, r[i], before < k);
  }
}

template <typename Traits, typename mask_t>
__global__ void __launch_bounds__(kRowThreads) row_groups_kernel(GroupArgs<Traits, mask_t> a) {
  using key_t = typename Traits::key_t;
  constexpr int kWidth = static_cast<int>(sizeof(key_t) * 8);
  using Scan = cub::BlockScan<int64_t, kRowThreads>;
  __shared__ unsigned long long hist[256];
  __shared__ key_t shared_prefix;
  __shared__ int64_t shared_rank;
  __shared__ typename Scan::TempStorage scan;

  const int64_t g = blockIdx.x;
  const int64_t base = g * a.size;
  const int64_t k = a.budget(g);
  key_t prefix = 0;
  int64_t rank = k;  // of the threshold among the entries that share its prefix
  if (k > 0) {
    for (int shift = kWidth - 8; shift >= 0; shift -= 8) {
      for (int i = threadIdx.x; i < 256; i += blockDim.x) {
        hist[i] = 0;
      }
      __syncthreads();
      const int high = shift + 8;
      for (int64_t i = threadIdx.x; i < a.size; i += blockDim.x) {
        const key_t r = a.rank_key(base + i);
        if (high == kWidth || ((r ^ prefix) >> high) == 0) {
          atomicAdd(&hist[(r >> shift) & 0xFF], 1ull);
        }
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        int digit = 0;
        while (rank > static_cast<int64_t>(hist[digit])) {
          rank -= static_cast<int64_t>(hist[digit++]);
        }
        shared_prefix = static_cast<key_t>(prefix | (static_cast<key_t>(digit) << shift));
        shared_rank = rank;
      }
      __syncthreads();
      prefix = shared_prefix;
      rank = shared_rank;
    }
  }
  const int64_t ties = k > 0 ? rank : 0;
  int64_t taken = 0;  // ties of the earlier chunks
  for (int64_t start = 0; start < a.size; start += blockDim.x) {
    const int64_t i = start + threadIdx.x;
    const bool in = i < a.size;
    const key_t r = in ? a.rank_key(base + i) : key_t(0);
    const int64_t equal = in && k > 0 && r == prefix;
    int64_t before = 0, total = 0;
    Scan(scan).ExclusiveSum(equal, before, total);
    __syncthreads();  // the scan's storage is reused by the next chunk
    if (in) {
      a.write(base + i, r, k > 0 && (r < prefix || (equal && taken + before < ties)));
    }
    taken += total;
  }
}

template <typename Traits, typename mask_t>
void launch(GroupProblem& g) {
  const MaskJob& job = g.p.jobs[0];
  GroupArgs<Traits, mask_t> a;
  a.raw = static_cast<const typename Traits::key_t*>(job.scores.data_ptr());
  a.prev = job.prev.defined() ? static_cast<const mask_t*>(job.prev.data_ptr()) : nullptr;
  a.out = static_cast<mask_t*>(job.out.data_ptr());
  a.group_k = g.group_k.defined() ? g.group_k.data_ptr<int64_t>() : nullptr;
  a.groups = g.groups;
  a.size = g.group_size;
  a.k = g.p.k;
  a.one = static_cast<mask_t>(mask_one_bits(g.p.mask_dtype));
  a.among_alive = g.p.among_alive && a.prev != nullptr;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (g.group_size <= kSmallGroup) {
    const int64_t blocks = (g.groups + kSmallThreads - 1) / kSmallThreads;
    small_groups_kernel<Traits, mask_t><<<static_cast<unsigned>(blocks), kSmallThreads, 0, stream>>>(a);
  } else {
    row_groups_kernel<Traits, mask_t><<<static_cast<unsigned>(g.groups), kRowThreads, 0, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

Launched select_groups(GroupProblem& g) noexcept {
  return launch_guarded([&](Launched&) {
    const c10::cuda::CUDAGuard guard(g.p.jobs[0].scores.device());
    PRUNEEXT_DISPATCH_SCORES(g.p.score_dtype, "l1_mask_grouped", [&] {
      using Traits = typename KeyOf<scalar_t>::type;
      PRUNEEXT_DISPATCH_MASK_BITS(g.p.mask_dtype, "l1_mask_grouped", [&] { launch<Traits, mask_bits_t>(g); });
    });
  });
}

}  // namespace cuda
}  // namespace pruneext
