// Whether the CPU kernels take their AVX-512 paths: on x86-64 with GCC or
// Clang (the functions carry their own target attributes, so the build
// needs no -mavx512 flag), where the CPU has AVX-512 F and BW, unless
// PRUNEEXT_NO_AVX512=1 (how the tests reach the portable paths on such a
// CPU).
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include "env_switch.h"

#define PRUNEEXT_AVX512 1

namespace pruneext {

inline bool use_avx512() {
  static const bool use = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      !env_is_one("PRUNEEXT_NO_AVX512");
  return use;
}

}  // namespace pruneext
#endif
