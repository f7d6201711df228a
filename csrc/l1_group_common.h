// Argument checks of the grouped select (l1_mask_grouped, ops.cpp: the row
// and N:M scopes), shared by every native backend, and its entry point
// around a backend's Run(GroupProblem&). The single-tensor checks (dtypes,
// default mask) are l1_mask_common.h's, so the messages are the same.
#pragma once

#include "l1_mask_common.h"

namespace pruneext {

struct GroupProblem {
  MaskProblem p;           // one job: scores, default mask, output
  int64_t group_size = 1;  // entries per group (consecutive in flat order)
  int64_t groups = 0;      // numel / group_size
  at::Tensor group_k;      // int64 [groups], contiguous, or undefined: k for all
};

inline GroupProblem prepare_groups(
    const at::Tensor& scores,
    int64_t group_size,
    int64_t k,
    const std::optional<at::Tensor>& default_mask,
    bool among_alive,
    const std::optional<at::Tensor>& group_k) {
  constexpr const char* op = "l1_mask_grouped";
  TORCH_CHECK_VALUE(group_size >= 1, op, ": group_size must be positive, got ", group_size);
  const int64_t n = scores.numel();
  TORCH_CHECK_VALUE(
      n % group_size == 0, op, ": ", n, " entries do not split into groups of ", group_size,
      " (the last dimension, ", scores.dim() ? scores.size(-1) : 1, ", must be a multiple of it)");
  TORCH_CHECK_VALUE(
      0 <= k && k <= group_size, op, ": k=", k, " must be in [0, group_size=", group_size, "]");
  GroupProblem g;
  // k per group is not the fused select's k (which counts over the whole
  // list); prepare_problem only checks and allocates here
  g.p = prepare_problem({scores}, {default_mask}, 0, among_alive, op);
  g.p.k = k;
  g.group_size = group_size;
  g.groups = n / group_size;
  if (group_k.has_value()) {
    const auto& t = *group_k;
    TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, op, ": group_k must be int64, got ", t.scalar_type());
    TORCH_CHECK_VALUE(
        t.dim() == 1 && t.size(0) == g.groups, op, ": group_k of shape ", t.sizes(), ", expected [", g.groups,
        "] (one per group)");
    TORCH_CHECK(t.device() == scores.device(), op, ": group_k on ", t.device(), " but scores on ", scores.device());
    g.group_k = t.contiguous();
  }
  return g;
}

template <void (*Run)(GroupProblem&)>
struct GroupOps {
  static at::Tensor l1_mask_grouped(
      const at::Tensor& scores,
      int64_t group_size,
      int64_t k,
      const std::optional<at::Tensor>& default_mask,
      bool among_alive,
      const std::optional<at::Tensor>& group_k) {
    auto g = prepare_groups(scores, group_size, k, default_mask, among_alive, group_k);
    if (g.groups > 0) {
      Run(g);
    }
    return finish_problem(g.p)[0];
  }
};

}  // namespace pruneext
