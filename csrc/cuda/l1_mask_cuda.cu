// The CUDA launchers of pruneext::l1_mask, l1_mask_global (and its .into
// overload) and l1_select_threshold: select_masks and select_threshold of
// launchers.h. The ops' checks and registration are in ops_cuda.cpp.
//
// Radix select on the magnitude key with the digits of RadixPlan, over every
// tensor of the list at once (never a concatenation), then one mask-writing
// pass. The tensors reach the kernels as descriptors: one tensor in the
// kernel arguments, a list as an array copied to the device once per call
// (pinned, async). Per call, all on the current stream:
//
//   fill      the workspace (select state + histograms) is zeroed
//   [sample]  32/64-bit keys, at least 256 tiles: first-digit histogram of
//             every S-th tile (S <= 32), then a one-block kernel predicts a
//             range of first-digit buckets holding the k-th key
//   per digit a histogram pass (block-local shared-memory bins merged into
//             global bins with atomics) and a one-block select kernel that
//             narrows the prefix kept in the device state. The first full
//             pass also copies the keys of the predicted range out to a
//             candidate buffer; if the true bucket is in the range, the later
//             digits read only the candidates. If not (or without sampling),
//             the next full pass copies the chosen bucket out once it fits the
//             buffer. 16-bit keys finish in one 15-bit pass (128 KB of bins);
//             fp32 takes 3 digits (12/11/8 bits), fp64 6 (12/11/11/11/11/7).
//   ties      per-tile counts of keys == T, and a one-block scan that finds
//             the tile where the selected ties run out (both return at once
//             unless only some of the keys == T are selected)
//   mask      one pass writing the result (and the masked values, where the
//             call has values_out); the one tile that holds the split of the
//             ties ranks them with a block scan
//
// Host syncs: none here. When among_alive filters by a default mask the
// count of prunable entries is only known on the device: the launcher hands
// it back and ops_cuda.cpp reads it (one sync) to raise for an impossible k.
//
// Only c10/cuda headers: ATen/cuda/CUDAContext.h pulls in cuSPARSE/cuBLAS
// headers that a bare toolkit may lack. c10::cuda::getCurrentCUDAStream is
// what at::cuda::getCurrentCUDAStream names.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstddef>
#include <optional>
#include <vector>

#include "../l1_mask_common.h"
#include "launch_guard.cuh"
#include "l1_mask_host.cuh"
#include "l1_mask_kernels.cuh"
#include "l1_select_kernels.cuh"

namespace pruneext {
namespace {

using cuda::ceil_div;
using cuda::DevState;
using cuda::TileConfig;
using cuda::ull;
using cuda::wave_blocks;

// Sampling pays off only where a full pass is worth saving.
constexpr int64_t kSampleMinTiles = 256;
constexpr int64_t kSampleMaxStride = 32;
// The candidate buffer holds this fraction of the entries (plus a little).
constexpr int64_t kCandDivisor = 8;
constexpr int64_t kCandExtra = 4096;

template <typename Traits>
class CudaSelect {
  using key_t = typename Traits::key_t;
  using Plan = RadixPlan<Traits>;
  using Cfg = TileConfig<key_t>;
  static constexpr int kTile = Cfg::kTile;
  static constexpr bool kMultiPass = Plan::kFirstShift > 0;

  struct Digit {
    int shift;
    int bits;
    int64_t hist_offset;  // in 64-bit words of the workspace
  };

 public:
  explicit CudaSelect(MaskProblem& p) : p_(p), stream_(c10::cuda::getCurrentCUDAStream()) {}

  // l1_mask / l1_mask_global: the selection, then the mask pass.
  void run() {
    if (select()) {
      launch_mask(state(), /*select_none=*/false);
    } else if (n_total_ > 0) {  // k == 0
      launch_mask(nullptr, /*select_none=*/true);
    }
  }

  // Where only the device counts the prunable entries (among_alive with a
  // default mask): that count, one int64 of the workspace, for the host
  // side to check k against once every kernel is queued. Else undefined.
  at::Tensor alive() const {
    constexpr int64_t kAliveWord = offsetof(DevState, alive) / sizeof(ull);
    return device_alive_ && ws_.defined() ? ws_.narrow(0, kAliveWord, 1) : at::Tensor();
  }

  // l1_select_threshold: the selection without the mask pass, as int64 [T,
  // below, equal, equal per tensor] on the device (no sync); the per-tensor counts are the tile counts of the ties summed per
  // tensor where the ties split (the tie kernels count only then), else 0.
  at::Tensor threshold() {
    const auto device = p_.jobs[0].scores.device();
    const auto n = static_cast<int64_t>(p_.jobs.size());
    const auto longs = at::TensorOptions().dtype(at::kLong).device(device);
    if (!select()) {
      return at::zeros({3 + n}, longs);
    }
    auto word = [&](size_t offset) { return ws_[static_cast<int64_t>(offset / sizeof(ull))]; };
    std::vector<int64_t> bounds;  // each tensor's first tile, then the end
    bounds.reserve(p_.jobs.size() + 1);
    int64_t tiles = 0;
    for (const auto& job : p_.jobs) {
      bounds.push_back(tiles);
      tiles += ceil_div(job.scores.numel(), kTile);
    }
    bounds.push_back(tiles);
    const auto at_bounds = at::tensor(bounds, at::TensorOptions().dtype(at::kLong)).to(device, /*non_blocking=*/true);
    const auto cum = at::cat({at::zeros({1}, longs), tile_eq_.to(at::kLong).cumsum(0)});
    const auto per_tensor = (cum.index_select(0, at_bounds.narrow(0, 1, n)) -
                             cum.index_select(0, at_bounds.narrow(0, 0, n))) *
                            word(offsetof(DevState, split));
    auto found = at::cat(
        {at::stack(
             {word(offsetof(DevState, threshold)), word(offsetof(DevState, count_lt)),
              word(offsetof(DevState, bucket_count))}),
         per_tensor});
    return found;
  }

 private:
  // The radix select up to the tie counts (ws_ holds the state, tile_eq_
  // the counts where the ties split). False where nothing is to select:
  // no entries, or k == 0 (then only the descriptors are set).
  bool select() {
    const auto device = p_.jobs[0].scores.device();
    const cuda::DescList list = cuda::describe(p_, kTile);
    total_tiles_ = list.total_tiles;
    n_total_ = list.n_total;
    // Without a filtering default mask every entry can be pruned, and the
    // host side has checked k. Otherwise the device counts them (alive()).
    // The host side has also refused a CUDA graph capture of either case.
    const bool device_alive = p_.among_alive && list.any_prev;
    if (n_total_ == 0) {
      return false;
    }
    descs_ = cuda::upload(list, device, descs_t_);
    const auto byte_opts = at::TensorOptions().dtype(at::kByte).device(device);

    mask_width_ = static_cast<int>(c10::elementSize(p_.mask_dtype));
    one_bits_ = mask_one_bits(p_.mask_dtype);

    device_alive_ = device_alive;
    if (p_.k == 0) {
      return false;
    }

    // Digits and workspace layout: [state][sample hist][hist of each digit].
    std::vector<Digit> digits;
    int64_t words = cuda::kStateWords;
    const bool sample = kMultiPass && total_tiles_ >= kSampleMinTiles;
    int64_t sample_offset = 0;
    if (sample) {
      sample_offset = words;
      words += int64_t(1) << Plan::kFirstDigitBits;
    }
    {
      int shift = Plan::kFirstShift;
      int bits = Plan::kFirstDigitBits;
      while (true) {
        digits.push_back({shift, bits, words});
        words += int64_t(1) << bits;
        if (shift == 0) {
          break;
        }
        bits = std::min(Plan::kDigitBits, shift);
        shift -= bits;
      }
    }
    ws_ = at::zeros({words}, at::TensorOptions().dtype(at::kLong).device(device));
    auto* ws_words = reinterpret_cast<ull*>(ws_.data_ptr());
    auto* st = reinterpret_cast<DevState*>(ws_words);

    at::Tensor cands;
    if (kMultiPass) {
      capacity_ = std::min(n_total_, n_total_ / kCandDivisor + kCandExtra);
      cands = at::empty({capacity_ * static_cast<int64_t>(sizeof(key_t))}, byte_opts);
      // per tile, where its candidates are (8 bytes a tile: n / 512 bytes for fp32)
      cand_runs_ = at::empty({total_tiles_}, at::TensorOptions().dtype(at::kLong).device(device));
    }
    void* cand_ptr = kMultiPass ? cands.data_ptr() : nullptr;

    const ull k = static_cast<ull>(p_.k);
    if (sample) {
      const int64_t stride = std::clamp<int64_t>(total_tiles_ / 64, 1, kSampleMaxStride);
      launch_hist(
          st, ws_words + sample_offset, nullptr, ceil_div(total_tiles_, stride), stride,
          Plan::kFirstShift, Plan::kFirstDigitBits, /*filter=*/false, /*sample=*/true);
      cuda::select_sample_kernel<<<1, cuda::kSelectBlock, 0, stream_>>>(
          st, ws_words + sample_offset, Plan::kFirstDigitBits, Plan::kFirstShift, k,
          static_cast<ull>(n_total_), static_cast<ull>(capacity_));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    for (size_t i = 0; i < digits.size(); ++i) {
      const Digit& dg = digits[i];
      const bool first = i == 0;
      launch_hist(
          st, ws_words + dg.hist_offset, cand_ptr, total_tiles_, 1, dg.shift, dg.bits,
          /*filter=*/!first, /*sample=*/false);
      // Copying the bucket out during the next pass pays only if a pass
      // after that one reads the copy.
      const bool compact_useful = i + 2 < digits.size();
      cuda::select_digit_kernel<<<1, cuda::kSelectBlock, 0, stream_>>>(
          st, ws_words + dg.hist_offset, dg.bits, dg.shift, first, k,
          static_cast<ull>(capacity_), compact_useful);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }

    // Ties: both kernels return at once unless the keys == T are split.
    tile_eq_ = at::empty({total_tiles_}, at::TensorOptions().dtype(at::kInt).device(device));
    auto* tile_eq_ptr = reinterpret_cast<unsigned*>(tile_eq_.data_ptr());
    {
      auto kernel = cuda::eq_count_kernel<Traits>;
      const int64_t grid = wave_blocks(kernel, Cfg::kMaskBlock, 0, total_tiles_);
      kernel<<<static_cast<unsigned>(grid), Cfg::kMaskBlock, 0, stream_>>>(
          descs_, total_tiles_, st, p_.among_alive, mask_width_, one_bits_, tile_eq_ptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (kMultiPass) {  // one of the two counts, as the device state says
        auto from_cands = cuda::eq_count_cands_kernel<Traits>;
        const int64_t cgrid = wave_blocks(from_cands, Cfg::kMaskBlock, 0, total_tiles_);
        from_cands<<<static_cast<unsigned>(cgrid), Cfg::kMaskBlock, 0, stream_>>>(
            cand_ptr, reinterpret_cast<const ull*>(cand_runs_.data_ptr()), total_tiles_, st, tile_eq_ptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      cuda::split_find_kernel<<<1, cuda::kSelectBlock, 0, stream_>>>(st, tile_eq_ptr, total_tiles_);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }

    return true;
  }

  DevState* state() { return reinterpret_cast<DevState*>(ws_.data_ptr()); }

  void launch_hist(
      DevState* st, ull* hist, void* cands, int64_t tiles_visit, int64_t stride, int shift,
      int bits, bool filter, bool sample) {
    cuda::HistArgs a;
    a.descs = descs_;
    a.tiles_visit = tiles_visit;
    a.tile_stride = stride;
    a.shift = shift;
    a.bits = bits;
    a.filter = filter;
    a.sample = sample;
    a.among_alive = p_.among_alive;
    a.mask_width = mask_width_;
    a.one_bits = one_bits_;
    a.st = st;
    a.hist = hist;
    a.cands = cands;
    a.capacity = capacity_;
    a.cand_runs = cands == nullptr ? nullptr : reinterpret_cast<ull*>(cand_runs_.data_ptr());
    cuda::launch_hist_kernel<Traits>(a, stream_);
  }

  void launch_mask(const DevState* st, bool select_none) {
    cuda::MaskArgs a;
    a.descs = descs_;
    a.total_tiles = total_tiles_;
    a.st = st;
    a.among_alive = p_.among_alive;
    a.select_none = select_none;
    a.one_bits = one_bits_;
    // Masks are read and written as unsigned words of their width (see
    // mask_one_bits): 4 instantiations per score type, not 6.
    if (!p_.has_values) {
      PRUNEEXT_DISPATCH_MASK_BITS(p_.mask_dtype, "l1_mask", [&] {
        this->template launch_mask_kernel<mask_bits_t, cuda::NoValues>(a);
      });
      return;
    }
    // With values the mask has the values' width (a default mask has their
    // dtype) or, without a default mask, the scores' (key_t): 2 per type.
    PRUNEEXT_DISPATCH_SCORES(p_.value_dtype, "l1_mask", [&] {
      using value_bits_t = typename KeyOf<scalar_t>::type::key_t;
      if (c10::elementSize(p_.mask_dtype) == sizeof(scalar_t)) {
        this->template launch_mask_kernel<value_bits_t, scalar_t>(a);
      } else {
        TORCH_INTERNAL_ASSERT(c10::elementSize(p_.mask_dtype) == sizeof(key_t));
        this->template launch_mask_kernel<key_t, scalar_t>(a);
      }
    });
  }

  template <typename W, typename V>
  void launch_mask_kernel(const cuda::MaskArgs& a) {
    auto kernel = cuda::mask_kernel<Traits, W, V>;
    const int64_t grid = wave_blocks(kernel, Cfg::kMaskBlock, 0, total_tiles_);
    kernel<<<static_cast<unsigned>(grid), Cfg::kMaskBlock, 0, stream_>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  MaskProblem& p_;
  cudaStream_t stream_;
  at::Tensor ws_;       // [state][sample hist][hist of each digit]
  at::Tensor tile_eq_;  // per tile: its keys == T, where the ties split
  at::Tensor cand_runs_;  // per tile: its run in the candidate buffer (HistArgs)
  bool device_alive_ = false;
  at::Tensor descs_t_;
  cuda::Descs descs_{};
  int64_t total_tiles_ = 0;
  int64_t n_total_ = 0;
  int64_t capacity_ = 0;
  int mask_width_ = 0;
  uint64_t one_bits_ = 0;
};

// Both run on the problem's device (the host side checked that every
// tensor is on it).
template <typename F>
void with_select(MaskProblem& p, F&& f) {
  const c10::cuda::CUDAGuard guard(p.jobs[0].scores.device());
  PRUNEEXT_DISPATCH_SCORES(p.score_dtype, "l1_mask", [&] {
    CudaSelect<typename KeyOf<scalar_t>::type> select(p);
    f(select);
  });
}

}  // namespace

namespace cuda {

Launched select_masks(MaskProblem& p) noexcept {
  return launch_guarded([&](Launched& r) {
    with_select(p, [&](auto& select) {
      select.run();
      r.alive = select.alive();
    });
  });
}

Launched select_threshold(MaskProblem& p) noexcept {
  return launch_guarded([&](Launched& r) {
    with_select(p, [&](auto& select) {
      r.out = select.threshold();
      r.alive = select.alive();
    });
  });
}

}  // namespace cuda
}  // namespace pruneext
