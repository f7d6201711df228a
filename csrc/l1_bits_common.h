// Argument checks shared by the native backends of the bit-mask ops
// (l1_bits_prune, l1_bits_apply in ops.cpp).
//
// A bit mask is a contiguous uint8 tensor of ceil(numel / 8) bytes; entry e
// is alive iff bit (e & 7) of byte (e >> 3) is 1. The ops write in place, so
// every tensor must already be contiguous (a copy would be written instead
// of the caller's tensor).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <vector>

#include "l1_mask_common.h"

namespace pruneext {

inline int64_t bit_mask_bytes(int64_t numel) {
  return (numel + 7) / 8;
}

// Checks tensors against their bit masks: equal list lengths, one floating
// dtype the kernels rank, one device, contiguous tensors, uint8 masks of
// ceil(numel / 8) bytes. `what` names the tensors in messages.
inline void check_bit_masks(
    at::TensorList tensors, at::TensorList bits, const char* op, const char* what) {
  TORCH_CHECK(
      tensors.size() == bits.size(), op, ": expected one bit mask per tensor, got ", bits.size(),
      " masks for ", tensors.size(), " ", what);
  if (tensors.empty()) {
    return;
  }
  const auto dtype = tensors[0].scalar_type();
  const auto device = tensors[0].device();
  TORCH_CHECK_TYPE(
      is_kernel_score_dtype(dtype), op, ": ", what, " must be float32, float64, float16 or bfloat16, got ",
      dtype);
  for (size_t j = 0; j < tensors.size(); ++j) {
    const auto& t = tensors[j];
    const auto& b = bits[j];
    TORCH_CHECK_TYPE(
        t.scalar_type() == dtype, op, ": all ", what, " must share one dtype, got ", dtype, " and ",
        t.scalar_type());
    TORCH_CHECK(
        t.device() == device && b.device() == device, op, ": all tensors must be on one device, got ",
        device, ", ", t.device(), " and ", b.device());
    TORCH_CHECK(t.is_contiguous(), op, ": ", what, "[", j, "] must be contiguous (it is written in place)");
    TORCH_CHECK_TYPE(b.scalar_type() == at::kByte, op, ": bit masks must be uint8, got ", b.scalar_type());
    TORCH_CHECK(b.is_contiguous(), op, ": bit mask ", j, " must be contiguous");
    TORCH_CHECK(
        b.numel() == bit_mask_bytes(t.numel()), op, ": bit mask ", j, " has ", b.numel(),
        " bytes, expected ceil(", t.numel(), " / 8) = ", bit_mask_bytes(t.numel()));
  }
}

// The threshold and tie budgets of l1_bits_prune: a non-negative key, one
// budget per tensor, none negative.
inline void check_prune_budgets(
    at::TensorList weights, int64_t threshold, c10::IntArrayRef ties, const char* op) {
  TORCH_CHECK(threshold >= 0, op, ": threshold must be a non-negative key, got ", threshold);
  TORCH_CHECK(
      ties.size() == weights.size(), op, ": expected ", weights.size(), " tie budgets, got ", ties.size());
  for (size_t j = 0; j < ties.size(); ++j) {
    TORCH_CHECK(ties[j] >= 0, op, ": tie budget ", ties[j], " is negative");
  }
}

}  // namespace pruneext
