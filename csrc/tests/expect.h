// The C++ tests' one assertion: records a failure and goes on, so a run
// lists every check that failed; main returns report().
#pragma once

#include <cstdio>

namespace pruneext_test {

inline int failures = 0;

inline void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

inline int report() {
  std::printf("%s (%d failures)\n", failures == 0 ? "OK" : "FAILED", failures);
  return failures == 0 ? 0 : 1;
}

}  // namespace pruneext_test
