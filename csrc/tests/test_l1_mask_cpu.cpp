// C++ test of the CPU operators through the dispatcher, as a LibTorch user
// calls them: masks against a stable sort of |x| (ties: lowest index first).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <optional>
#include <vector>

#include "expect.h"

namespace {

using pruneext_test::expect;

// values_out (optional): written with mask * x by the same pass.
at::Tensor l1_mask(
    const at::Tensor& x, int64_t k, const std::optional<at::Tensor>& mask, bool among_alive,
    const std::optional<at::Tensor>& values_out = std::nullopt) {
  using Opt = const std::optional<at::Tensor>&;
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pruneext::l1_mask", "")
                       .typed<at::Tensor(const at::Tensor&, c10::SymInt, Opt, bool, Opt, Opt)>();
  return op.call(x, c10::SymInt(k), mask, among_alive, std::nullopt, values_out);
}

// Reference: zero the first k entries of a stable ascending sort of |x|.
at::Tensor reference(const at::Tensor& x, int64_t k) {
  auto order = std::get<1>(at::sort(x.abs().reshape(-1).to(at::kDouble), /*stable=*/true, 0, false));
  auto out = at::ones({x.numel()}, x.options());
  out.index_fill_(0, order.slice(0, 0, k), 0);
  return out.reshape(x.sizes());
}

}  // namespace

int main() {
  at::manual_seed(0);
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    for (int64_t n : {1, 1000, 200003}) {
      // quantized values: many ties
      auto x = (at::randint(-20, 21, {n}, at::kFloat) / 4).to(dtype);
      for (int64_t k : {int64_t(0), n / 3, n}) {
        expect(at::equal(l1_mask(x, k, std::nullopt, false), reference(x, k)), "l1_mask vs stable sort");
      }
    }
    // the masked values, past 2^18 entries (where the first pass writes them)
    auto x = at::randn({300007}).to(dtype);
    auto values = at::empty_like(x);
    auto out = l1_mask(x, 100000, std::nullopt, false, values);
    expect(at::equal(out, reference(x, 100000)), "l1_mask with values_out vs stable sort");
    expect(at::equal(values, out * x), "values_out == mask * x");
  }
  // among_alive: entries whose mask is 0 keep 0 and are never counted
  auto x = at::randn({5000});
  auto mask = (at::arange(5000) % 2).to(at::kFloat);
  auto out = l1_mask(x, 1000, mask, true);
  expect(out.eq(0).sum().item<int64_t>() == 2500 + 1000, "iterative count");
  expect(at::equal(out.mul(mask.logical_not()), at::zeros_like(out)), "dead entries stay 0");
  bool raised = false;
  try {
    l1_mask(x, 2501, mask, true);
  } catch (const c10::Error&) {
    raised = true;
  }
  expect(raised, "k beyond the alive entries raises");
  return pruneext_test::report();
}
