// Host side shared by the CUDA select (l1_mask_cuda.cu) and the CUDA phase
// ops (l1_phases_cuda.cu): the list's descriptor table, launch shapes and
// the histogram launch.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../l1_mask_common.h"
#include "l1_mask_kernels.cuh"

namespace pruneext {
namespace cuda {

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

inline int device_attribute(cudaDeviceAttr attr) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, c10::cuda::current_device()));
  return value;
}

// Blocks for a grid-stride kernel: one full wave of resident blocks, no more
// than there is work, at least one.
template <typename Kernel>
int64_t wave_blocks(Kernel kernel, int block, size_t smem, int64_t work) {
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, block, smem));
  const int64_t sms = device_attribute(cudaDevAttrMultiProcessorCount);
  const int64_t wave = std::max<int64_t>(1, per_sm) * sms;
  return std::max<int64_t>(1, std::min(wave, work));
}

// The tensors of a problem as descriptors, tiles of `tile` elements.
struct DescList {
  std::vector<TensorDesc> descs;
  int64_t total_tiles = 0;
  int64_t n_total = 0;
  bool any_prev = false;
};

inline DescList describe(const MaskProblem& p, int64_t tile) {
  DescList l;
  l.descs.reserve(p.jobs.size());
  for (const auto& job : p.jobs) {
    TensorDesc d;
    d.scores = job.scores.data_ptr();
    d.prev = job.prev.defined() ? job.prev.data_ptr() : nullptr;
    d.out = job.out.defined() ? job.out.data_ptr() : nullptr;
    d.numel = job.scores.numel();
    d.tile_begin = l.total_tiles;
    d.values = job.values.defined() ? job.values.data_ptr() : nullptr;
    d.values_out = job.values_out.defined() ? job.values_out.data_ptr() : nullptr;
    l.total_tiles += ceil_div(d.numel, tile);
    l.n_total += d.numel;
    l.any_prev = l.any_prev || job.prev.defined();
    l.descs.push_back(d);
  }
  return l;
}

// Descs for the kernels: one descriptor travels in the kernel arguments, a
// list goes to the device once per call (pinned, async; the caching host
// allocator keeps the buffer until the copy is done), into `holder`, with
// `extra` (e.g. per-tensor values) after it: *extra_on_device points there.
inline Descs upload(
    const DescList& l,
    at::Device device,
    at::Tensor& holder,
    const std::vector<int64_t>& extra = {},
    const int64_t** extra_on_device = nullptr) {
  // ops_cuda.cpp refuses longer lists before any launcher runs.
  TORCH_INTERNAL_ASSERT(l.descs.size() <= static_cast<size_t>(INT32_MAX), "too many tensors");
  Descs ds{};
  ds.n = static_cast<int>(l.descs.size());
  ds.one = l.descs[0];
  ds.list = nullptr;
  if (ds.n > 1) {
    static_assert(sizeof(TensorDesc) % sizeof(int64_t) == 0, "extra stays aligned");
    const size_t desc_bytes = l.descs.size() * sizeof(TensorDesc);
    const size_t extra_bytes = extra.size() * sizeof(int64_t);
    const auto bytes = static_cast<int64_t>(desc_bytes + extra_bytes);
    auto host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    auto* h = static_cast<char*>(host.data_ptr());
    std::memcpy(h, l.descs.data(), desc_bytes);
    if (extra_bytes != 0) {
      std::memcpy(h + desc_bytes, extra.data(), extra_bytes);
    }
    holder = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(device));
    holder.copy_(host, /*non_blocking=*/true);
    auto* d = static_cast<char*>(holder.data_ptr());
    ds.list = reinterpret_cast<const TensorDesc*>(d);
    if (extra_on_device != nullptr) {
      *extra_on_device = reinterpret_cast<const int64_t*>(d + desc_bytes);
    }
  }
  return ds;
}

// Launches hist_kernel for `a` (shared_hist is chosen here): block-local
// bins in shared memory where they fit (16-bit keys opt in to 128 KB), else
// global atomics; enough blocks that none counts 2^31 elements.
template <typename Traits>
void launch_hist_kernel(HistArgs a, cudaStream_t stream) {
  using Cfg = TileConfig<typename Traits::key_t>;
  constexpr bool kMultiPass = RadixPlan<Traits>::kFirstShift > 0;
  auto kernel = hist_kernel<Traits>;
  constexpr int kBlock = Cfg::kHistBlock;
  const size_t bins_bytes = (size_t(1) << a.bits) * sizeof(unsigned);
  size_t smem = bins_bytes;
  if (bins_bytes > 48 * 1024) {
    // 16-bit keys: 2^15 bins need 128 KB; opt in, else count in global memory.
    cudaFuncAttributes attr;
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
    const auto optin = static_cast<size_t>(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
    if (bins_bytes + attr.sharedSizeBytes <= optin) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(
          kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bins_bytes)));
    } else {
      smem = 0;
    }
  }
  a.shared_hist = smem != 0;
  int64_t grid = wave_blocks(kernel, kBlock, smem, a.tiles_visit);
  // Block-local counts are 32-bit: keep every block under 2^31 elements.
  const int64_t max_tiles_per_block = (int64_t(1) << 31) / Cfg::kTile;
  grid = std::max(grid, ceil_div(a.tiles_visit, max_tiles_per_block));
  if (kMultiPass) {
    grid = std::max(grid, ceil_div(a.capacity, (int64_t(1) << 31) - kBlock));
  }
  // (2^31 tiles of 4096 entries each: no tensor torch can allocate is this large)
  TORCH_INTERNAL_ASSERT(grid <= INT32_MAX, "problem too large for one grid");
  kernel<<<static_cast<unsigned>(grid), kBlock, smem, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace pruneext
