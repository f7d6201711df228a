// The boundary of every .cu entry point (launchers.h): nothing is thrown
// across it; what the launch sequence throws (a CUDA error, an allocation
// that failed) is caught here and handed to the host side to rethrow.
#pragma once

#include <exception>
#include <utility>

#include "launchers.h"

namespace pruneext {
namespace cuda {

// Runs f(Launched&) and returns what it filled in, or what it threw.
template <typename F>
Launched launch_guarded(F&& f) noexcept {
  Launched result;
  try {
    std::forward<F>(f)(result);
  } catch (...) {
    result = Launched{};
    result.error = std::current_exception();
  }
  return result;
}

}  // namespace cuda
}  // namespace pruneext
