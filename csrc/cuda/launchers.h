// The entry points of the CUDA translation units, called only by the host
// side (ops_cuda.cpp) once every argument check has passed.
//
// Why the split: on the first H200 run every exception thrown from code in
// the .cu units -- argument checks included -- killed the process, while the
// same throw from a host-compiled .cpp unit raised. So the ops' checks and
// error messages live in ops_cuda.cpp (compiled by the host compiler, as the
// CPU ops are), the .cu units only allocate their workspace and launch, and
// nothing is thrown across their boundary: each entry point below is
// noexcept and hands back what it caught (a CUDA error, an allocation that
// failed) for the host side to rethrow. Where only the device knows whether
// a call was possible (the alive count of among_alive with a default mask),
// the launcher returns that count and the host side raises.
//
// The header is plain C++ (no CUDA syntax): both compilers read it.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <exception>
#include <vector>

#include "../l1_mask_common.h"

namespace pruneext {
namespace cuda {

struct Launched {
  std::exception_ptr error;  // what the launcher caught; null when it launched
  at::Tensor alive;          // one int64 on the device: the prunable entries,
                             // where only the device counts them; else undefined
  at::Tensor out;            // the op's result, where the launcher makes it
};

// l1_mask / l1_mask_global(.into): the masks into p.jobs[j].out (and values_out).
// p has jobs, 0 <= k, and k <= the entries unless the device counts them.
Launched select_masks(MaskProblem& p) noexcept;
// l1_select_threshold: out is int64 [T, below, equal, equal per tensor].
Launched select_threshold(MaskProblem& p) noexcept;

// The phase ops (PhaseOps in l1_mask_common.h has checked the key arguments).
Launched phase_histogram(MaskProblem& p, int shift, int bits, uint64_t prefix) noexcept;
Launched phase_count_equal(MaskProblem& p, uint64_t threshold) noexcept;
Launched phase_mask_write(MaskProblem& p, uint64_t threshold, const std::vector<int64_t>& budgets) noexcept;

// The bit-mask ops (l1_bits_common.h has checked them): counts is the
// caller's int64 tensor of one zero per weight tensor.
Launched bits_prune(
    at::TensorList weights,
    at::TensorList bits,
    int64_t threshold,
    c10::IntArrayRef ties,
    const at::Tensor& counts) noexcept;
Launched bits_apply(at::TensorList tensors, at::TensorList bits) noexcept;

}  // namespace cuda
}  // namespace pruneext
