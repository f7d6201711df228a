// Argument checking and output allocation shared by every native backend.
//
// The ops (see ops.cpp) take a list of score tensors; `l1_mask` is the list of
// one. A backend receives MaskJobs whose tensors are contiguous, so its
// kernels index them by flat (row-major) position, which is the order ties
// are broken in.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>

#include <ATen/MemoryOverlap.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "magnitude_key.h"

namespace pruneext {

template <typename scalar_t>
struct KeyOf;
template <>
struct KeyOf<float> {
  using type = Float32Key;
};
template <>
struct KeyOf<double> {
  using type = Float64Key;
};
template <>
struct KeyOf<c10::Half> {
  using type = Float16Key;
};
template <>
struct KeyOf<c10::BFloat16> {
  using type = BFloat16Key;
};

struct MaskJob {
  at::Tensor scores;  // contiguous, one of the four float types
  at::Tensor prev;    // contiguous previous mask, or undefined (all ones)
  at::Tensor out;     // contiguous result in the work mask dtype
  at::ScalarType final_dtype;  // what the caller gets back (prev's, else scores')
  // The masked values (attach_values): values_out = mask * values in
  // values' dtype, written by the same pass as the mask. Both undefined
  // when the call has none; values is contiguous, values_out the caller's
  // own (contiguous) tensor.
  at::Tensor values;
  at::Tensor values_out;
};

struct MaskProblem {
  std::vector<MaskJob> jobs;
  int64_t k = 0;
  bool among_alive = false;
  at::ScalarType score_dtype = at::kFloat;
  at::ScalarType mask_dtype = at::kFloat;  // the dtype the kernel writes
  bool has_values = false;                 // every job has values (attach_values)
  at::ScalarType value_dtype = at::kFloat;
};

inline bool is_kernel_score_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Masks are read and written as raw integers of their width (see
// mask_one_bits), so any dtype of 1, 2, 4 or 8 bytes whose 1 has a single
// encoding serves: the float, integer, bool, float8 and complex64 masks that
// torch.nn.utils.prune accepts.
inline bool is_kernel_mask_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
    case at::kDouble:
    case at::kHalf:
    case at::kBFloat16:
    case at::kBool:
    case at::kByte:
    case at::kChar:
    case at::kShort:
    case at::kInt:
    case at::kLong:
    case at::kFloat8_e4m3fn:
    case at::kFloat8_e5m2:
    case at::kFloat8_e4m3fnuz:
    case at::kFloat8_e5m2fnuz:
    case at::kComplexFloat:
      return true;
    default:
      return false;
  }
}

// Validates the arguments of l1_mask / l1_mask_global (and of the phases)
// and allocates outputs unless the op only reads (allocate_outputs false).
inline MaskProblem prepare_problem(
    at::TensorList scores,
    const std::vector<std::optional<at::Tensor>>& prev_masks,
    int64_t k,
    bool among_alive,
    const char* op_name,
    bool allocate_outputs = true) {
  TORCH_CHECK(k >= 0, op_name, ": k must be non-negative, got ", k);
  TORCH_CHECK(
      prev_masks.empty() || prev_masks.size() == scores.size(), op_name,
      ": expected one default mask per score tensor (or none), got ", prev_masks.size(),
      " masks for ", scores.size(), " tensors");
  MaskProblem p;
  p.k = k;
  p.among_alive = among_alive;
  if (scores.empty()) {
    TORCH_CHECK(k == 0, op_name, ": k=", k, " but there is nothing to prune");
    return p;
  }
  p.score_dtype = scores[0].scalar_type();
  TORCH_CHECK_TYPE(
      is_kernel_score_dtype(p.score_dtype), op_name,
      ": scores must be float32, float64, float16 or bfloat16, got ", p.score_dtype);
  const auto device = scores[0].device();
  std::optional<at::ScalarType> mask_dtype;
  for (size_t i = 0; i < scores.size(); ++i) {
    const auto& s = scores[i];
    TORCH_CHECK_TYPE(
        s.scalar_type() == p.score_dtype, op_name,
        ": all score tensors must share one dtype, got ", p.score_dtype, " and ",
        s.scalar_type());
    TORCH_CHECK(
        s.device() == device, op_name, ": all tensors must be on one device, got ",
        device, " and ", s.device());
    if (!prev_masks.empty() && prev_masks[i].has_value()) {
      const auto& m = *prev_masks[i];
      TORCH_CHECK(
          m.sizes() == s.sizes(), op_name, ": default mask of shape ", m.sizes(),
          " does not match scores of shape ", s.sizes());
      TORCH_CHECK(
          m.device() == device, op_name, ": default mask on ", m.device(),
          " but scores on ", device);
      TORCH_CHECK_TYPE(
          is_kernel_mask_dtype(m.scalar_type()), op_name,
          ": unsupported default mask dtype ", m.scalar_type());
      TORCH_CHECK_TYPE(
          !mask_dtype.has_value() || *mask_dtype == m.scalar_type(), op_name,
          ": all default masks must share one dtype, got ", *mask_dtype, " and ",
          m.scalar_type());
      mask_dtype = m.scalar_type();
    }
  }
  p.mask_dtype = mask_dtype.value_or(p.score_dtype);
  p.jobs.reserve(scores.size());
  for (size_t i = 0; i < scores.size(); ++i) {
    MaskJob job;
    job.scores = scores[i].contiguous();
    const bool has_prev = !prev_masks.empty() && prev_masks[i].has_value();
    if (has_prev) {
      job.prev = prev_masks[i]->contiguous();
    }
    job.final_dtype = has_prev ? p.mask_dtype : p.score_dtype;
    if (allocate_outputs) {
      job.out = at::empty(scores[i].sizes(), scores[i].options().dtype(p.mask_dtype));
    }
    p.jobs.push_back(std::move(job));
  }
  return p;
}

// The optional masked-values outputs of l1_mask / l1_mask_global (ops.cpp):
// values (none: the scores themselves) and values_out, one per score
// tensor, given (the op's entry points call this only when values_out is
// there). Every check runs here, before any kernel writes, so a bad
// output raises with the caller's tensors untouched.
inline void attach_values(
    MaskProblem& p,
    at::TensorList scores,
    const std::vector<std::optional<at::Tensor>>& values,
    const std::vector<std::optional<at::Tensor>>& values_out,
    const char* op_name) {
  TORCH_CHECK(
      values_out.size() == scores.size(), op_name, ": expected one values_out per score tensor, got ",
      values_out.size(), " for ", scores.size(), " tensors");
  TORCH_CHECK(
      values.empty() || values.size() == scores.size(), op_name,
      ": expected one values tensor per score tensor (or none: the scores), got ", values.size(),
      " for ", scores.size(), " tensors");
  for (size_t i = 0; i < scores.size(); ++i) {
    const at::Tensor& s = scores[i];
    const bool own = !values.empty() && values[i].has_value();
    const at::Tensor v = own ? *values[i] : s;
    TORCH_CHECK(values_out[i].has_value(), op_name, ": values_out[", i, "] is None");
    const at::Tensor& o = *values_out[i];
    TORCH_CHECK(
        v.sizes() == s.sizes(), op_name, ": values of shape ", v.sizes(), " do not match scores of shape ",
        s.sizes());
    TORCH_CHECK(v.device() == s.device(), op_name, ": values on ", v.device(), " but scores on ", s.device());
    TORCH_CHECK_TYPE(
        is_kernel_score_dtype(v.scalar_type()), op_name,
        ": values must be float32, float64, float16 or bfloat16, got ", v.scalar_type());
    TORCH_CHECK_TYPE(
        i == 0 || v.scalar_type() == p.value_dtype, op_name, ": all values must share one dtype, got ",
        p.value_dtype, " and ", v.scalar_type());
    p.value_dtype = v.scalar_type();
    TORCH_CHECK(
        o.sizes() == v.sizes(), op_name, ": values_out of shape ", o.sizes(), " does not match values of shape ",
        v.sizes());
    TORCH_CHECK_TYPE(
        o.scalar_type() == v.scalar_type(), op_name, ": values_out of dtype ", o.scalar_type(),
        " does not match values of dtype ", v.scalar_type());
    TORCH_CHECK(o.device() == v.device(), op_name, ": values_out on ", o.device(), " but values on ", v.device());
    TORCH_CHECK(o.is_contiguous(), op_name, ": values_out must be contiguous (it is written in place)");
    // The select reads the scores (and the mask) after values_out is written.
    at::assert_no_internal_overlap(o);
    at::assert_no_overlap(o, s);
    at::assert_no_overlap(o, v);
    if (i < p.jobs.size() && p.jobs[i].prev.defined()) {
      at::assert_no_overlap(o, p.jobs[i].prev);
    }
    if (i < p.jobs.size() && p.jobs[i].out.defined()) {
      at::assert_no_overlap(o, p.jobs[i].out);
    }
  }
  // The product is taken in values' dtype with the mask's bits read as that
  // dtype: a default mask of another dtype would need a conversion per entry.
  TORCH_CHECK_TYPE(
      p.jobs.empty() || p.mask_dtype == p.value_dtype ||
          std::none_of(p.jobs.begin(), p.jobs.end(), [](const MaskJob& j) { return j.prev.defined(); }),
      op_name, ": with values_out, the default masks must have values' dtype (", p.value_dtype, "), got ",
      p.mask_dtype);
  p.has_values = !p.jobs.empty();
  for (size_t i = 0; i < p.jobs.size(); ++i) {
    const bool own = !values.empty() && values[i].has_value();
    p.jobs[i].values = own ? values[i]->contiguous() : p.jobs[i].scores;
    p.jobs[i].values_out = *values_out[i];
  }
}

// The caller's mask outputs (l1_mask_global.into): each of the shape and
// dtype the op would return, contiguous, on the scores' device and sharing
// no memory with them or the default mask. The kernel writes each directly,
// or (a list mixing default masks and none, whose work dtype is another)
// a temporary that finish_into copies over.
inline void attach_masks(MaskProblem& p, at::TensorList masks, const char* op_name) {
  TORCH_CHECK(
      masks.size() == p.jobs.size(), op_name, ": expected one mask output per score tensor, got ",
      masks.size(), " for ", p.jobs.size(), " tensors");
  for (size_t i = 0; i < p.jobs.size(); ++i) {
    auto& job = p.jobs[i];
    const at::Tensor& m = masks[i];
    TORCH_CHECK(
        m.sizes() == job.scores.sizes(), op_name, ": mask output of shape ", m.sizes(),
        " does not match scores of shape ", job.scores.sizes());
    TORCH_CHECK_TYPE(
        m.scalar_type() == job.final_dtype, op_name, ": mask output of dtype ", m.scalar_type(), ", expected ",
        job.final_dtype, " (the default mask's, else the scores')");
    TORCH_CHECK(
        m.device() == job.scores.device(), op_name, ": mask output on ", m.device(), " but scores on ",
        job.scores.device());
    TORCH_CHECK(m.is_contiguous(), op_name, ": mask outputs must be contiguous (they are written in place)");
    at::assert_no_internal_overlap(m);
    at::assert_no_overlap(m, job.scores);
    if (job.prev.defined()) {
      at::assert_no_overlap(m, job.prev);
    }
    job.out = m.scalar_type() == p.mask_dtype ? m : at::empty(m.sizes(), m.options().dtype(p.mask_dtype));
  }
}

inline void finish_into(MaskProblem& p, at::TensorList masks) {
  for (size_t i = 0; i < p.jobs.size(); ++i) {
    if (!p.jobs[i].out.is_same(masks[i])) {
      masks[i].copy_(p.jobs[i].out);
    }
  }
}

inline std::vector<at::Tensor> finish_problem(MaskProblem& p) {
  std::vector<at::Tensor> outs;
  outs.reserve(p.jobs.size());
  for (auto& job : p.jobs) {
    outs.push_back(
        job.out.scalar_type() == job.final_dtype ? job.out : job.out.to(job.final_dtype));
  }
  return outs;
}

inline std::vector<std::optional<at::Tensor>> to_vector(
    const c10::List<std::optional<at::Tensor>>& masks) {
  std::vector<std::optional<at::Tensor>> v;
  v.reserve(masks.size());
  for (const auto& m : masks) {
    v.push_back(m);
  }
  return v;
}

inline std::vector<std::optional<at::Tensor>> to_vector(at::TensorList tensors) {
  return std::vector<std::optional<at::Tensor>>(tensors.begin(), tensors.end());
}

// A backend's two operator entry points around its `Run(MaskProblem&)`:
// checks and allocation, the kernels, the final dtypes.
template <void (*Run)(MaskProblem&)>
struct MaskOps {
  static at::Tensor l1_mask(
      const at::Tensor& scores,
      int64_t k,
      const std::optional<at::Tensor>& default_mask,
      bool among_alive,
      const std::optional<at::Tensor>& values,
      const std::optional<at::Tensor>& values_out) {
    constexpr const char* op = "l1_mask";
    auto p = prepare_problem({scores}, {default_mask}, k, among_alive, op);
    if (values_out.has_value()) {
      attach_values(p, {scores}, {values}, {values_out}, op);
    } else {
      TORCH_CHECK(!values.has_value(), op, ": values given without values_out (where would they go?)");
    }
    Run(p);
    return finish_problem(p)[0];
  }

  static std::vector<at::Tensor> l1_mask_global(
      at::TensorList scores,
      int64_t k,
      const c10::List<std::optional<at::Tensor>>& default_masks,
      bool among_alive) {
    auto p = prepare_problem(scores, to_vector(default_masks), k, among_alive, "l1_mask_global");
    Run(p);
    return finish_problem(p);
  }

  static void l1_mask_global_into(
      at::TensorList scores,
      int64_t k,
      const c10::List<std::optional<at::Tensor>>& default_masks,
      bool among_alive,
      at::TensorList masks,
      std::optional<at::TensorList> values,
      std::optional<at::TensorList> values_out) {
    constexpr const char* op = "l1_mask_global.into";
    auto p = prepare_problem(scores, to_vector(default_masks), k, among_alive, op, false);
    attach_masks(p, masks, op);
    if (values_out.has_value()) {
      attach_values(p, scores, values ? to_vector(*values) : std::vector<std::optional<at::Tensor>>{},
                    to_vector(*values_out), op);
    } else {
      TORCH_CHECK(!values.has_value(), op, ": values given without values_out (where would they go?)");
    }
    Run(p);
    finish_into(p, masks);
  }
};

// Bits of the magnitude key of a score dtype (magnitude_key.h).
inline int key_bits(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return Float64Key::kKeyBits;
    case at::kHalf: return Float16Key::kKeyBits;
    case at::kBFloat16: return BFloat16Key::kKeyBits;
    default: return Float32Key::kKeyBits;
  }
}

// A backend's three phase ops (ops.cpp) around its Impl:
//   at::Tensor Impl::key_histogram(MaskProblem&, int shift, int bits, uint64_t prefix)
//   at::Tensor Impl::count_equal(MaskProblem&, uint64_t threshold)
//   void Impl::mask_write(MaskProblem&, uint64_t threshold, const std::vector<int64_t>& ties)
// The checks, and the cases no key can meet, are handled here: Impl gets a
// non-empty list, a prefix and threshold that are keys of the score dtype,
// and tie budgets clamped to [0, numel] (numel: every tie of the tensor).
template <typename Impl>
struct PhaseOps {
  static at::Tensor l1_key_histogram(
      at::TensorList scores,
      const c10::List<std::optional<at::Tensor>>& default_masks,
      bool among_alive,
      int64_t shift,
      int64_t bits,
      int64_t prefix) {
    constexpr const char* op = "l1_key_histogram";
    auto p = prepare_problem(scores, to_vector(default_masks), 0, among_alive, op, false);
    const int w = key_bits(p.score_dtype);
    TORCH_CHECK(1 <= bits && bits <= 16, op, ": bits must be in [1, 16], got ", bits);
    TORCH_CHECK(shift >= 0, op, ": shift must be non-negative, got ", shift);
    TORCH_CHECK(
        shift + bits <= w, op, ": shift + bits = ", shift + bits, " exceeds the ", w,
        " bits of the ", p.score_dtype, " key");
    // a prefix of the (w - shift - bits) high bits, else no key has it
    const int high = static_cast<int>(shift + bits);
    const bool reachable = prefix >= 0 && (static_cast<uint64_t>(prefix) >> (w - high)) == 0;
    if (p.jobs.empty() || !reachable) {
      const auto device = scores.empty() ? at::Device(at::kCPU) : scores[0].device();
      return at::zeros({int64_t(1) << bits}, at::TensorOptions().dtype(at::kLong).device(device));
    }
    return Impl::key_histogram(p, static_cast<int>(shift), static_cast<int>(bits), static_cast<uint64_t>(prefix));
  }

  static at::Tensor l1_count_equal(
      at::TensorList scores,
      const c10::List<std::optional<at::Tensor>>& default_masks,
      bool among_alive,
      int64_t threshold) {
    auto p = prepare_problem(scores, to_vector(default_masks), 0, among_alive, "l1_count_equal", false);
    if (p.jobs.empty() || !is_key(p, threshold)) {
      const auto device = scores.empty() ? at::Device(at::kCPU) : scores[0].device();
      return at::zeros(
          {static_cast<int64_t>(scores.size())}, at::TensorOptions().dtype(at::kLong).device(device));
    }
    return Impl::count_equal(p, static_cast<uint64_t>(threshold));
  }

  static std::vector<at::Tensor> l1_mask_write(
      at::TensorList scores,
      const c10::List<std::optional<at::Tensor>>& default_masks,
      bool among_alive,
      int64_t threshold,
      at::IntArrayRef ties) {
    constexpr const char* op = "l1_mask_write";
    TORCH_CHECK(
        ties.size() == scores.size(), op, ": expected ", scores.size(), " tie budgets, got ",
        ties.size());
    for (size_t j = 0; j < ties.size(); ++j) {
      TORCH_CHECK(ties[j] >= 0, op, ": tie budget ", ties[j], " of tensor ", j, " is negative");
    }
    auto p = prepare_problem(scores, to_vector(default_masks), 0, among_alive, op);
    if (p.jobs.empty()) {
      return {};
    }
    // Below every key nothing is selected; above every key all of it is
    // (as key <= the largest key with every tie).
    const uint64_t max_key = max_key_of(p);
    const bool above_all = threshold >= 0 && static_cast<uint64_t>(threshold) > max_key;
    std::vector<int64_t> budgets(ties.size());
    for (size_t j = 0; j < ties.size(); ++j) {
      const int64_t n = p.jobs[j].scores.numel();
      budgets[j] = threshold < 0 ? 0 : above_all ? n : std::min(ties[j], n);
    }
    const uint64_t key = threshold < 0 ? 0 : above_all ? max_key : static_cast<uint64_t>(threshold);
    Impl::mask_write(p, key, budgets);
    return finish_problem(p);
  }

 private:
  // the largest key, that of NaN: 2^w - 1
  static uint64_t max_key_of(const MaskProblem& p) {
    return (uint64_t(1) << key_bits(p.score_dtype)) - 1;
  }
  static bool is_key(const MaskProblem& p, int64_t v) {
    return v >= 0 && static_cast<uint64_t>(v) <= max_key_of(p);
  }
};

// The bit pattern of 1 in each mask dtype. 1 has a single representation
// in each, so kernels may treat masks as unsigned integers of the same
// width: "alive" is bits == one, and writing 0 or 1 never converts floats.
inline uint64_t mask_one_bits(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return 0x3F800000u;
    case at::kDouble: return 0x3FF0000000000000ull;
    case at::kHalf: return 0x3C00u;
    case at::kBFloat16: return 0x3F80u;
    case at::kFloat8_e4m3fn: return 0x38u;
    case at::kFloat8_e5m2: return 0x3Cu;
    case at::kFloat8_e4m3fnuz:
    case at::kFloat8_e5m2fnuz: return 0x40u;
    // (1.0f, 0.0f): the real part in the low 4 bytes, the imaginary part 0
    case at::kComplexFloat: return 0x3F800000u;
    case at::kBool:
    case at::kByte:
    case at::kChar:
    case at::kShort:
    case at::kInt:
    case at::kLong: return 1u;
    default: TORCH_CHECK_TYPE(false, "pruneext: unsupported mask dtype ", t);
  }
}

// Dispatch on a mask dtype's width: `mask_bits_t` is the unsigned integer
// type of the same size (see mask_one_bits).
#define PRUNEEXT_DISPATCH_MASK_BITS(TYPE, NAME, ...)                             \
  [&] {                                                                          \
    switch (c10::elementSize(TYPE)) {                                            \
      case 1: { using mask_bits_t = uint8_t; return __VA_ARGS__(); }             \
      case 2: { using mask_bits_t = uint16_t; return __VA_ARGS__(); }            \
      case 4: { using mask_bits_t = uint32_t; return __VA_ARGS__(); }            \
      case 8: { using mask_bits_t = uint64_t; return __VA_ARGS__(); }            \
      default: TORCH_CHECK_TYPE(false, NAME, ": unsupported mask dtype ", TYPE);  \
    }                                                                            \
  }()

// Dispatch over the four score types the kernels handle.
#define PRUNEEXT_DISPATCH_SCORES(TYPE, NAME, ...)                              \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

}  // namespace pruneext
