// Scalar fp16 / bf16 <-> fp32 conversions (round-to-nearest-even), branch-light so loops over them
// vectorize. Used by the reduction kernels and the fp16/bf16 codecs; tests compare with numpy's casts.
#pragma once

#include <cstdint>
#include <cstring>

namespace nrt {

inline uint32_t floatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
inline float bitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// bfloat16: the top half of an fp32, rounded to nearest even; NaN stays a (quiet) NaN.
inline uint16_t floatToBf16(float f) {
  uint32_t u = floatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16ToFloat(uint16_t h) { return bitsFloat(static_cast<uint32_t>(h) << 16); }

// IEEE half. Conversion in the style of the float magic-number method (F. Giesen): exact RNE,
// handles subnormals, infinities and NaN.
inline float halfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t em = static_cast<uint32_t>(h & 0x7fffu) << 13;  // exponent+mantissa aligned to fp32
  const uint32_t exp = em & 0x0f800000u;
  em += (127 - 15) << 23;  // rebias
  if (exp == 0x0f800000u) {
    em += (128 - 16) << 23;  // Inf/NaN
  } else if (exp == 0) {
    em += 1 << 23;  // subnormal: renormalize via float arithmetic
    em = floatBits(bitsFloat(em) - bitsFloat(113u << 23));
  }
  return bitsFloat(em | sign);
}

inline uint16_t floatToHalf(float f) {
  const uint32_t f32infty = 255u << 23;
  const uint32_t f16max = (127u + 16u) << 23;
  const uint32_t denormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  const uint32_t signMask = 0x80000000u;
  uint32_t u = floatBits(f);
  const uint32_t sign = u & signMask;
  u ^= sign;
  uint16_t o;
  if (u >= f16max) {
    o = (u > f32infty) ? 0x7e00 : 0x7c00;  // NaN -> qNaN, overflow -> Inf
  } else if (u < (113u << 23)) {
    // subnormal or zero: let the FPU round by adding a magic number
    float tmp = bitsFloat(u) + bitsFloat(denormMagic);
    o = static_cast<uint16_t>(floatBits(tmp) - denormMagic);
  } else {
    const uint32_t mantOdd = (u >> 13) & 1u;
    u += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu;
    u += mantOdd;
    o = static_cast<uint16_t>(u >> 13);
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

}  // namespace nrt
