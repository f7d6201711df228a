// The CUDA operators (schemas in ops.cpp): every argument check, every
// error message and the registration, compiled by the host compiler; the
// .cu units behind launchers.h only allocate their workspace and launch.
// launchers.h says why: on the first H200 run every exception thrown from
// the .cu units killed the process. Nothing here launches a kernel before
// the checks below have passed.
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <vector>

#include "../l1_bits_common.h"
#include "../l1_mask_common.h"
#include "launchers.h"

namespace pruneext {
namespace {

bool capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

// A list of several tensors reaches the kernels through a descriptor table
// copied from a pinned buffer that is freed when the call returns: a CUDA
// graph would replay that copy from freed memory, so a capture is refused
// (the ops are tagged cudagraph_unsafe, so torch.compile never captures them).
void check_list(size_t tensors, const char* what) {
  TORCH_CHECK(tensors <= static_cast<size_t>(INT32_MAX), what, ": too many tensors");
  TORCH_CHECK(tensors <= 1 || !capturing(), what, ": a list of several tensors cannot run under CUDA graph capture");
}

// Rethrows what a launcher caught, and where only the device counted the
// prunable entries, raises for a k above them (the call's one host sync,
// after every kernel is queued). Returns the launcher's result.
at::Tensor finish(const cuda::Launched& launched, int64_t k = 0) {
  if (launched.error) {
    std::rethrow_exception(launched.error);
  }
  if (launched.alive.defined()) {
    const int64_t alive = launched.alive.item<int64_t>();
    TORCH_CHECK(k <= alive, "l1_mask: k=", k, " exceeds the ", alive, " entries that can be pruned");
  }
  return launched.out;
}

// What the fused select needs beyond prepare_problem's checks. Without a
// filtering default mask every entry can be pruned, so k is checked here;
// with one only the device can count them (finish). A graph cannot replay a
// list's descriptors nor sync for that count: both refuse a capture.
void check_select(const MaskProblem& p) {
  int64_t entries = 0;
  bool any_prev = false;
  for (const auto& job : p.jobs) {
    entries += job.scores.numel();
    any_prev = any_prev || job.prev.defined();
  }
  const bool device_counts = p.among_alive && any_prev;
  if (!device_counts || entries == 0) {
    TORCH_CHECK(p.k <= entries, "l1_mask: k=", p.k, " exceeds the ", entries, " entries that can be pruned");
  }
  TORCH_CHECK(p.jobs.size() <= static_cast<size_t>(INT32_MAX), "l1_mask_global: too many tensors");
  TORCH_CHECK(
      (p.jobs.size() <= 1 && !device_counts) || !capturing(),
      "l1_mask: a list of several tensors, or among_alive with a default mask, cannot run "
      "under CUDA graph capture (the ops are tagged cudagraph_unsafe)");
}

void run_cuda(MaskProblem& p) {
  if (p.jobs.empty()) {
    return;
  }
  check_select(p);
  finish(cuda::select_masks(p), p.k);
}

at::Tensor l1_select_threshold_cuda(
    at::TensorList scores,
    const c10::List<std::optional<at::Tensor>>& default_masks,
    bool among_alive,
    int64_t k) {
  auto p = prepare_problem(scores, to_vector(default_masks), k, among_alive, "l1_select_threshold", false);
  if (p.jobs.empty()) {
    return at::zeros({3}, at::TensorOptions().dtype(at::kLong));
  }
  check_select(p);
  return finish(cuda::select_threshold(p), p.k);
}

struct CudaPhaseOps {
  static at::Tensor key_histogram(MaskProblem& p, int shift, int bits, uint64_t prefix) {
    check_list(p.jobs.size(), "l1 phases");
    return finish(cuda::phase_histogram(p, shift, bits, prefix));
  }
  static at::Tensor count_equal(MaskProblem& p, uint64_t threshold) {
    check_list(p.jobs.size(), "l1 phases");
    return finish(cuda::phase_count_equal(p, threshold));
  }
  static void mask_write(MaskProblem& p, uint64_t threshold, const std::vector<int64_t>& budgets) {
    check_list(p.jobs.size(), "l1 phases");
    finish(cuda::phase_mask_write(p, threshold, budgets));
  }
};

int64_t total_entries(at::TensorList tensors) {
  int64_t n = 0;
  for (const auto& t : tensors) {
    n += t.numel();
  }
  return n;
}

at::Tensor l1_bits_prune(at::TensorList weights, at::TensorList bits, int64_t threshold, c10::IntArrayRef ties) {
  constexpr const char* op = "l1_bits_prune";
  check_bit_masks(weights, bits, op, "weights");
  check_prune_budgets(weights, threshold, ties, op);
  if (weights.empty()) {
    return at::zeros({0}, at::TensorOptions().dtype(at::kLong));
  }
  // Nothing is below key 0 and no tie is taken: nothing to launch (nor to
  // refuse under a capture).
  bool any_budget = false;
  for (size_t j = 0; j < weights.size(); ++j) {
    any_budget = any_budget || std::min(ties[j], weights[j].numel()) > 0;
  }
  if (total_entries(weights) != 0 && (threshold != 0 || any_budget)) {
    check_list(weights.size(), op);
  }
  // After check_bit_masks: every tensor is on this one device.
  const c10::cuda::CUDAGuard guard(weights[0].device());
  auto counts = at::zeros(
      {static_cast<int64_t>(weights.size())}, at::TensorOptions().dtype(at::kLong).device(weights[0].device()));
  finish(cuda::bits_prune(weights, bits, threshold, ties, counts));
  return counts;
}

void l1_bits_apply(at::TensorList tensors, at::TensorList bits) {
  constexpr const char* op = "l1_bits_apply";
  check_bit_masks(tensors, bits, op, "tensors");
  if (tensors.empty() || total_entries(tensors) == 0) {
    return;
  }
  check_list(tensors.size(), op);
  finish(cuda::bits_apply(tensors, bits));
}

}  // namespace

TORCH_LIBRARY_IMPL(pruneext, CUDA, m) {
  m.impl("l1_mask", &MaskOps<run_cuda>::l1_mask);
  m.impl("l1_mask_global", &MaskOps<run_cuda>::l1_mask_global);
  m.impl("l1_mask_global.into", &MaskOps<run_cuda>::l1_mask_global_into);
  m.impl("l1_select_threshold", &l1_select_threshold_cuda);
  m.impl("l1_key_histogram", &PhaseOps<CudaPhaseOps>::l1_key_histogram);
  m.impl("l1_count_equal", &PhaseOps<CudaPhaseOps>::l1_count_equal);
  m.impl("l1_mask_write", &PhaseOps<CudaPhaseOps>::l1_mask_write);
  m.impl("l1_bits_prune", &l1_bits_prune);
  m.impl("l1_bits_apply", &l1_bits_apply);
}

}  // namespace pruneext
