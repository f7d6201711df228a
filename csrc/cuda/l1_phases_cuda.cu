// The CUDA launchers of the phase ops (ops.cpp): l1_key_histogram,
// l1_count_equal and l1_mask_write (phase_* of launchers.h; their checks and
// registration are in ops_cuda.cpp), each over the whole list in one launch
// per pass (the descriptor table of l1_mask_cuda.cu), on the current stream.
//
//   histogram    hist_kernel of the fused select, with a select state that
//                holds only the prefix (no window, no candidates):
//                shared-memory bins, one global atomic per bin per block
//   count_equal  per-tile counts of the alive keys == T (phase_eq_kernel),
//                then one block per tensor sums its tiles (tensor_ties_kernel)
//   mask_write   per-tile counts only for the tensors whose budget is
//                neither 0 nor all of their entries; tensor_ties_kernel
//                scans each such tensor's tile counts (exclusive, in tile =
//                flat order) into every tile's share of the budget; the mask
//                kernel writes each tile with the fused select's tile writer
//                (the one tile of a tensor where its budget runs out ranks its
//                ties with a block scan)
//
// No host sync: the results stay on the device. Budgets and a list's
// descriptors travel in one pinned async copy (a single tensor's in the
// kernel arguments), so like the fused ops a list cannot be captured in a
// CUDA graph.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstddef>
#include <vector>

#include "../l1_mask_common.h"
#include "launch_guard.cuh"
#include "l1_mask_host.cuh"
#include "l1_mask_kernels.cuh"
#include "l1_tie_shares.cuh"

namespace pruneext {
namespace cuda {
namespace {

// A tile's share meaning every one of its ties (the tensor's budget covers
// all of its entries); 0 means none.
constexpr unsigned kAllTies = 0xFFFFFFFFu;

// Per tile: the alive keys == T (tile_eq). With gate, only the tiles of the
// tensors whose budget is partial are counted (the others are not read and
// their tile_eq is left unset).
template <typename Traits>
__global__ void __launch_bounds__(TileConfig<typename Traits::key_t>::kMaskBlock) phase_eq_kernel(
    const Descs descs, int64_t total_tiles, typename Traits::key_t T, bool among_alive,
    int mask_width, uint64_t one_bits, bool gate, const Budgets budgets,
    unsigned* __restrict__ tile_eq) {
  using Cfg = TileConfig<typename Traits::key_t>;
  using Reduce = cub::BlockReduce<unsigned, Cfg::kMaskBlock>;
  __shared__ typename Reduce::TempStorage temp;
  for (int64_t t = blockIdx.x; t < total_tiles; t += gridDim.x) {
    const int j = desc_index_of(descs, t);
    const TensorDesc d = descs.n == 1 ? descs.one : descs.list[j];
    if (gate && !partial_budget(budget_of(budgets, descs.n, j), d.numel)) {
      continue;  // uniform over the block
    }
    const int64_t base = (t - d.tile_begin) * Cfg::kTile;
    const unsigned count = thread_eq_count<Traits>(d, base, T, among_alive, mask_width, one_bits);
    const unsigned total = Reduce(temp).Sum(count);
    if (threadIdx.x == 0) {
      tile_eq[t] = total;
    }
    __syncthreads();  // temp is reused next tile
  }
}

// One block per tensor (grid-stride over the list), its tiles in order:
// with counts, the tensor's total of tile_eq; with tile_share, each tile's
// share of the tensor's budget: all of its ties while the budget lasts
// (exclusive scan of the tile counts), kAllTies / 0 for a budget of every
// entry / none, without reading tile_eq.
__global__ void __launch_bounds__(kSelectBlock) tensor_ties_kernel(
    const Descs descs, int64_t tile, const unsigned* __restrict__ tile_eq, const Budgets budgets,
    int64_t* __restrict__ counts, unsigned* __restrict__ tile_share) {
  __shared__ typename cub::BlockScan<ull, kSelectBlock>::TempStorage temp;
  const int tid = static_cast<int>(threadIdx.x);
  for (int j = static_cast<int>(blockIdx.x); j < descs.n; j += static_cast<int>(gridDim.x)) {
    const TensorDesc d = descs.n == 1 ? descs.one : descs.list[j];
    const int64_t t0 = d.tile_begin;
    const int64_t nt = (d.numel + tile - 1) / tile;
    const int64_t budget = tile_share != nullptr ? budget_of(budgets, descs.n, j) : 0;
    if (counts == nullptr && !partial_budget(budget, d.numel)) {  // uniform
      const unsigned fill = budget > 0 ? kAllTies : 0u;
      for (int64_t i = tid; i < nt; i += kSelectBlock) {
        tile_share[t0 + i] = fill;
      }
      continue;
    }
    const unsigned long long total = scan_tile_shares<kSelectBlock, 8>(
        temp, tile_eq + t0, nt, static_cast<ull>(budget), tile_share == nullptr ? nullptr : tile_share + t0);
    if (counts != nullptr && tid == 0) {
      counts[j] = static_cast<int64_t>(total);
    }
  }
}

// The masks: each tile's keys == T per its share (0: none, kAllTies or at
// least its count: all, else its first `share`), by the fused tile writer.
template <typename Traits, typename W>
__global__ void __launch_bounds__(TileConfig<typename Traits::key_t>::kMaskBlock) phase_mask_kernel(
    const Descs descs, int64_t total_tiles, typename Traits::key_t T, bool among_alive,
    uint64_t one_bits, const unsigned* __restrict__ tile_share, const unsigned* __restrict__ tile_eq) {
  __shared__ typename MaskScan<Traits>::TempStorage temp;
  const W one = static_cast<W>(one_bits);
  for (int64_t t = blockIdx.x; t < total_tiles; t += gridDim.x) {
    const TensorDesc d = desc_of(descs, t);
    const int64_t base = (t - d.tile_begin) * TileConfig<typename Traits::key_t>::kTile;
    const unsigned share = tile_share[t];
    // tile_eq is set wherever share is neither 0 nor kAllTies
    const bool cut = share != 0u && share != kAllTies && share < tile_eq[t];
    write_mask_tile<Traits, W>(d, base, T, /*none=*/false, /*incl=*/share != 0u, cut, share, among_alive, one, temp);
  }
}

// One call of a phase op: the list's descriptors (and budgets) on the device.
template <typename Traits>
class CudaPhases {
  using key_t = typename Traits::key_t;
  using Cfg = TileConfig<key_t>;

 public:
  CudaPhases(MaskProblem& p, const std::vector<int64_t>& budgets)
      : p_(p),
        stream_(c10::cuda::getCurrentCUDAStream()),
        list_(describe(p, Cfg::kTile)),
        device_(p.jobs[0].scores.device()) {
    // (ops_cuda.cpp has refused a CUDA graph capture of a list: a graph
    // would replay the descriptors' copy from a pinned buffer freed when
    // this call returns.)
    budgets_.one = budgets.empty() ? 0 : budgets[0];
    budgets_.list = nullptr;
    if (list_.n_total != 0) {
      descs_ = upload(list_, device_, holder_, budgets, budgets.empty() ? nullptr : &budgets_.list);
    }
    mask_width_ = static_cast<int>(c10::elementSize(p.mask_dtype));
    one_bits_ = mask_one_bits(p.mask_dtype);
  }

  at::Tensor key_histogram(int shift, int bits, uint64_t prefix) {
    auto hist = at::zeros({int64_t(1) << bits}, long_opts());
    if (list_.n_total == 0) {
      return hist;
    }
    // The select state hist_kernel reads: the prefix, nothing else set.
    auto state = at::zeros({kStateWords}, long_opts());
    const bool filter = shift + bits < Traits::kKeyBits;
    if (filter) {
      constexpr int64_t kPrefixWord = offsetof(DevState, prefix) / sizeof(ull);
      state.narrow(0, kPrefixWord, 1).fill_(static_cast<int64_t>(prefix));
    }
    HistArgs a;
    a.descs = descs_;
    a.tiles_visit = list_.total_tiles;
    a.tile_stride = 1;
    a.shift = shift;
    a.bits = bits;
    a.filter = filter;
    a.sample = false;
    a.shared_hist = false;  // launch_hist_kernel chooses
    a.among_alive = p_.among_alive;
    a.mask_width = mask_width_;
    a.one_bits = one_bits_;
    a.st = reinterpret_cast<DevState*>(state.data_ptr());
    a.hist = reinterpret_cast<ull*>(hist.data_ptr());
    a.cands = nullptr;
    a.cand_runs = nullptr;
    a.capacity = 0;
    launch_hist_kernel<Traits>(a, stream_);
    return hist;
  }

  at::Tensor count_equal(uint64_t threshold) {
    auto counts = at::zeros({static_cast<int64_t>(p_.jobs.size())}, long_opts());
    if (list_.n_total == 0) {
      return counts;
    }
    auto tile_eq = count_tiles(static_cast<key_t>(threshold), /*gate=*/false);
    launch_ties(tile_eq, reinterpret_cast<int64_t*>(counts.data_ptr()), nullptr);
    return counts;
  }

  void mask_write(uint64_t threshold, const std::vector<int64_t>& budgets) {
    if (list_.n_total == 0) {
      return;
    }
    const key_t T = static_cast<key_t>(threshold);
    bool any_partial = false;
    for (size_t j = 0; j < budgets.size(); ++j) {
      any_partial = any_partial || (budgets[j] > 0 && budgets[j] < p_.jobs[j].scores.numel());
    }
    at::Tensor tile_eq = any_partial ? count_tiles(T, /*gate=*/true) : at::Tensor();
    auto tile_share = at::empty({list_.total_tiles}, int_opts());
    auto* share_ptr = reinterpret_cast<unsigned*>(tile_share.data_ptr());
    launch_ties(tile_eq, nullptr, share_ptr);
    const unsigned* eq_ptr = any_partial ? reinterpret_cast<const unsigned*>(tile_eq.data_ptr()) : share_ptr;
    PRUNEEXT_DISPATCH_MASK_BITS(p_.mask_dtype, "l1_mask_write", [&] {
      auto kernel = phase_mask_kernel<Traits, mask_bits_t>;
      const int64_t grid = wave_blocks(kernel, Cfg::kMaskBlock, 0, list_.total_tiles);
      kernel<<<static_cast<unsigned>(grid), Cfg::kMaskBlock, 0, stream_>>>(
          descs_, list_.total_tiles, T, p_.among_alive, one_bits_, share_ptr, eq_ptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

 private:
  at::TensorOptions long_opts() const {
    return at::TensorOptions().dtype(at::kLong).device(device_);
  }
  at::TensorOptions int_opts() const {
    return at::TensorOptions().dtype(at::kInt).device(device_);
  }

  at::Tensor count_tiles(key_t T, bool gate) {
    auto tile_eq = at::empty({list_.total_tiles}, int_opts());
    auto kernel = phase_eq_kernel<Traits>;
    const int64_t grid = wave_blocks(kernel, Cfg::kMaskBlock, 0, list_.total_tiles);
    kernel<<<static_cast<unsigned>(grid), Cfg::kMaskBlock, 0, stream_>>>(
        descs_, list_.total_tiles, T, p_.among_alive, mask_width_, one_bits_, gate, budgets_,
        reinterpret_cast<unsigned*>(tile_eq.data_ptr()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return tile_eq;
  }

  void launch_ties(const at::Tensor& tile_eq, int64_t* counts, unsigned* tile_share) {
    const auto* eq = tile_eq.defined() ? reinterpret_cast<const unsigned*>(tile_eq.data_ptr()) : nullptr;
    const int64_t grid = std::min<int64_t>(descs_.n, 1024);
    tensor_ties_kernel<<<static_cast<unsigned>(grid), kSelectBlock, 0, stream_>>>(
        descs_, Cfg::kTile, eq, budgets_, counts, tile_share);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  MaskProblem& p_;
  cudaStream_t stream_;
  DescList list_;
  at::Device device_;
  at::Tensor holder_;  // the device copy of the descriptors and budgets
  Descs descs_{};
  Budgets budgets_{};
  int mask_width_ = 0;
  uint64_t one_bits_ = 0;
};

// Runs f(CudaPhases<Traits>&) on the problem's device and score dtype.
template <typename F>
void with_phases(MaskProblem& p, const std::vector<int64_t>& budgets, F&& f) {
  // After prepare_problem: it checks that every tensor is on one device.
  const c10::cuda::CUDAGuard guard(p.jobs[0].scores.device());
  PRUNEEXT_DISPATCH_SCORES(p.score_dtype, "l1 phases", [&] {
    using Traits = typename KeyOf<scalar_t>::type;
    CudaPhases<Traits> phases(p, budgets);
    f(phases);
  });
}

}  // namespace

Launched phase_histogram(MaskProblem& p, int shift, int bits, uint64_t prefix) noexcept {
  return launch_guarded([&](Launched& r) {
    with_phases(p, {}, [&](auto& phases) { r.out = phases.key_histogram(shift, bits, prefix); });
  });
}

Launched phase_count_equal(MaskProblem& p, uint64_t threshold) noexcept {
  return launch_guarded([&](Launched& r) {
    with_phases(p, {}, [&](auto& phases) { r.out = phases.count_equal(threshold); });
  });
}

Launched phase_mask_write(MaskProblem& p, uint64_t threshold, const std::vector<int64_t>& budgets) noexcept {
  return launch_guarded([&](Launched&) {
    with_phases(p, budgets, [&](auto& phases) { phases.mask_write(threshold, budgets); });
  });
}

}  // namespace cuda
}  // namespace pruneext
