// The magnitude key: an unsigned integer whose order is the order of |x|.
//
// Shared by the CPU and CUDA kernels (and mirrored by the Triton and torch
// backends) so that every backend ranks entries identically:
//   * clearing the sign bit of an IEEE float leaves bits that order like |x|;
//   * -0.0 and +0.0 both map to 0, so they tie;
//   * every NaN maps to the all-ones key, above +inf: NaN is the largest
//     magnitude (as torch.topk(largest=False) treats it) and all NaNs tie.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PRUNEEXT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PRUNEEXT_HOST_DEVICE inline
#endif

namespace pruneext {

// KeyTraits<Bits, kInf>: Bits is the unsigned type of the same width as the
// float, kInf the bit pattern of +inf. The key uses kKeyBits low bits.
template <typename Bits, Bits kInfBits>
struct KeyTraits {
  using key_t = Bits;
  static constexpr int kKeyBits = static_cast<int>(sizeof(Bits) * 8 - 1);
  static constexpr Bits kAbsMask = static_cast<Bits>(static_cast<Bits>(~Bits(0)) >> 1);
  static constexpr Bits kInf = kInfBits;
  static constexpr Bits kNaN = kAbsMask;  // canonical key of every NaN

  static PRUNEEXT_HOST_DEVICE Bits key(Bits raw) {
    const Bits a = raw & kAbsMask;
    return a > kInf ? kNaN : a;
  }
};

using Float32Key = KeyTraits<uint32_t, 0x7F800000u>;
using Float64Key = KeyTraits<uint64_t, 0x7FF0000000000000ull>;
using Float16Key = KeyTraits<uint16_t, static_cast<uint16_t>(0x7C00u)>;
using BFloat16Key = KeyTraits<uint16_t, static_cast<uint16_t>(0x7F80u)>;

// Radix plan: the first digit is the top kFirstDigitBits of the key; the rest
// is resolved kDigitBits at a time. 16-bit keys (15 significant bits) finish
// in the first pass.
template <typename Traits>
struct RadixPlan {
  static constexpr int kKeyBits = Traits::kKeyBits;
  static constexpr int kFirstDigitBits = kKeyBits <= 16 ? kKeyBits : 12;
  static constexpr int kFirstShift = kKeyBits - kFirstDigitBits;
  static constexpr int kDigitBits = 11;
};

}  // namespace pruneext
