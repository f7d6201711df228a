// C++ test of the CPU phase ops through the dispatcher, as a LibTorch user
// (a distributed driver) calls them: the radix loop of
// pruneext/select_loop.py over l1_key_histogram / l1_count_equal /
// l1_mask_write gives the masks of the fused l1_mask_global.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <optional>
#include <vector>

#include "expect.h"

namespace {

using pruneext_test::expect;

using Masks = c10::List<std::optional<at::Tensor>>;

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

at::Tensor histogram(const std::vector<at::Tensor>& xs, const Masks& m, int64_t shift, int64_t bits, int64_t prefix) {
  static auto f = op("pruneext::l1_key_histogram")
                      .typed<at::Tensor(at::TensorList, const Masks&, bool, int64_t, int64_t, c10::SymInt)>();
  return f.call(xs, m, true, shift, bits, c10::SymInt(prefix));
}

at::Tensor count_equal(const std::vector<at::Tensor>& xs, const Masks& m, int64_t t) {
  static auto f = op("pruneext::l1_count_equal").typed<at::Tensor(at::TensorList, const Masks&, bool, c10::SymInt)>();
  return f.call(xs, m, true, c10::SymInt(t));
}

std::vector<at::Tensor> mask_write(const std::vector<at::Tensor>& xs, const Masks& m, int64_t t, std::vector<c10::SymInt> ties) {
  static auto f = op("pruneext::l1_mask_write")
                      .typed<std::vector<at::Tensor>(at::TensorList, const Masks&, bool, c10::SymInt, c10::SymIntArrayRef)>();
  return f.call(xs, m, true, c10::SymInt(t), ties);
}

std::vector<at::Tensor> fused(const std::vector<at::Tensor>& xs, const Masks& m, int64_t k) {
  static auto f = op("pruneext::l1_mask_global")
                      .typed<std::vector<at::Tensor>(at::TensorList, c10::SymInt, const Masks&, bool)>();
  return f.call(xs, c10::SymInt(k), m, true);
}

// select_loop.select for float32 keys (digits 12, 11, 8 bits), one process
std::vector<at::Tensor> select(const std::vector<at::Tensor>& xs, const Masks& m, int64_t k) {
  const int64_t digits[3][2] = {{19, 12}, {8, 11}, {0, 8}};
  int64_t prefix = 0, rank = k, below = 0, bucket_count = 0;
  for (const auto& d : digits) {
    auto h = histogram(xs, m, d[0], d[1], prefix);
    const int64_t* hp = h.data_ptr<int64_t>();
    int64_t b = 0, cum = 0;
    while (cum + hp[b] < rank) {
      cum += hp[b++];
    }
    bucket_count = hp[b];
    rank -= cum;
    below += cum;
    prefix = (prefix << d[1]) | b;
  }
  int64_t ties = k - below;
  std::vector<c10::SymInt> budgets;
  auto eq = count_equal(xs, m, prefix);
  for (size_t j = 0; j < xs.size(); ++j) {
    const int64_t take = std::min(eq[j].item<int64_t>(), ties);
    budgets.emplace_back(take);
    ties -= take;
  }
  expect(bucket_count == eq.sum().item<int64_t>(), "last bucket = keys equal to T");
  return mask_write(xs, m, prefix, budgets);
}

}  // namespace

int main() {
  at::manual_seed(0);
  std::vector<at::Tensor> xs = {
      at::randint(-20, 21, {200003}, at::kFloat) / 4, at::empty({0}), at::randint(-3, 4, {70000}, at::kFloat)};
  Masks m;
  m.push_back((at::rand({200003}) > 0.3).to(at::kFloat));
  m.push_back(std::nullopt);
  m.push_back(std::nullopt);
  const int64_t alive = histogram(xs, m, 19, 12, 0).sum().item<int64_t>();
  expect(alive == m.get(0)->sum().item<int64_t>() + 70000, "first histogram counts the alive entries");
  for (int64_t k : {int64_t(1), alive / 3, alive / 2, alive}) {
    auto got = select(xs, m, k);
    auto want = fused(xs, m, k);
    for (size_t j = 0; j < xs.size(); ++j) {
      expect(at::equal(got[j], want[j]), "phases loop == l1_mask_global");
    }
  }
  bool raised = false;
  try {
    mask_write(xs, m, 0, {c10::SymInt(0)});
  } catch (const c10::Error&) {
    raised = true;
  }
  expect(raised, "a tie budget per tensor");
  return pruneext_test::report();
}
