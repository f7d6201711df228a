// The CPU kernels' switches (PRUNEEXT_NO_AVX512, PRUNEEXT_HUGE_PAGES,
// PRUNEEXT_NO_HUGE_PAGES): an environment variable is on when it is exactly "1".
#pragma once

#include <cstdlib>
#include <cstring>

namespace pruneext {

inline bool env_is_one(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && std::strcmp(value, "1") == 0;
}

}  // namespace pruneext
