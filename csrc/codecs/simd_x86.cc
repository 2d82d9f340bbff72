// AVX2 / F16C kernels behind simd_x86.h, compiled with per-function target attributes so the rest of the
// library stays portable. NaN inputs fall back to half.h per group of 8, so fp16 bits match it exactly.
#include "codecs/simd_x86.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define NRT_X86 1
#endif

#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "common/half.h"

namespace nrt {
namespace simd {

namespace {
std::atomic<bool> gEnabled{true};
}  // namespace

void setSimdEnabled(bool enabled) { gEnabled.store(enabled, std::memory_order_relaxed); }

#if NRT_X86

bool haveAvx2F16c() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return supported && gEnabled.load(std::memory_order_relaxed);
}

__attribute__((target("avx2,f16c"))) void floatToHalfF16c(const float* x, uint16_t* out, float* r, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0) {  // NaN: half.h's canonical bits
      for (size_t k = i; k < i + 8; ++k) {
        out[k] = floatToHalf(x[k]);
        if (r != nullptr) r[k] = x[k] - halfToFloat(out[k]);
      }
      continue;
    }
    const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
    if (r != nullptr) _mm256_storeu_ps(r + i, _mm256_sub_ps(v, _mm256_cvtph_ps(h)));
  }
  for (; i < n; ++i) {
    out[i] = floatToHalf(x[i]);
    if (r != nullptr) r[i] = x[i] - halfToFloat(out[i]);
  }
}

__attribute__((target("avx2,f16c"))) void halfToFloatF16c(const uint16_t* in, float* dst, size_t n, bool add) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    if (_mm_movemask_epi8(_mm_cmpgt_epi16(_mm_and_si128(h, _mm_set1_epi16(0x7fff)), _mm_set1_epi16(0x7c00))) != 0) {
      for (size_t k = i; k < i + 8; ++k) dst[k] = add ? dst[k] + halfToFloat(in[k]) : halfToFloat(in[k]);  // NaN
      continue;
    }
    __m256 v = _mm256_cvtph_ps(h);
    if (add) v = _mm256_add_ps(_mm256_loadu_ps(dst + i), v);
    _mm256_storeu_ps(dst + i, v);
  }
  for (; i < n; ++i) dst[i] = add ? dst[i] + halfToFloat(in[i]) : halfToFloat(in[i]);
}

__attribute__((target("avx2"))) void packSignsAvx2(const float* x, uint8_t* out, size_t n) {
  const __m256 zero = _mm256_setzero_ps();
  for (size_t j = 0; j < n / 8; ++j)  // not-less-than, unordered: NaN and -0 count as +1, like !(x < 0)
    out[j] = static_cast<uint8_t>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + 8 * j), zero, _CMP_NLT_UQ)));
}

namespace {

#define NRT_AVX2_INLINE static inline __attribute__((target("avx2"), always_inline))

// Lane l of `acc` holds the sum over elements l, l+8, ...: added in order 0..7, then the RMS, as quantize.cc's
// squareSumLanes and encodeBlocks compute it.
NRT_AVX2_INLINE float rmsOfLanes(__m256 acc, size_t n) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float s = lanes[0];
  for (int l = 1; l < 8; ++l) s += lanes[l];
  return std::sqrt(s / static_cast<float>(n));
}

// acc += v * v, the product and the sum each rounded (no FMA in this target, as in the portable loop).
NRT_AVX2_INLINE __m256 addSquares(__m256 acc, __m256 v) { return _mm256_add_ps(acc, _mm256_mul_ps(v, v)); }

// The first pass of error feedback at element i of a block: r += g there; returns the new r.
NRT_AVX2_INLINE __m256 feedBack8(const float* g, float* r, size_t i) {
  const __m256 v = _mm256_add_ps(_mm256_loadu_ps(r + i), _mm256_loadu_ps(g + i));
  _mm256_storeu_ps(r + i, v);
  return v;
}

// The second pass at element i: the sign bits of r there into *bits, r -= (r < 0 ? -scale : scale). Not-less-than,
// unordered: NaN and -0 count as +1, like the portable !(x < 0).
NRT_AVX2_INLINE void signAndResidual8(float* r, size_t i, __m256 pos, __m256 neg, uint8_t* bits) {
  const __m256 v = _mm256_loadu_ps(r + i);
  const __m256 nonNegative = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NLT_UQ);
  *bits = static_cast<uint8_t>(_mm256_movemask_ps(nonNegative));
  _mm256_storeu_ps(r + i, _mm256_sub_ps(v, _mm256_blendv_ps(neg, pos, nonNegative)));
}

NRT_AVX2_INLINE void putScale(uint8_t* scales, size_t b, float scale) {
  std::memcpy(scales + b * sizeof(float), &scale, sizeof(float));
}

}  // namespace

__attribute__((target("avx2"))) void encodeOneBitBlocksAvx2(const float* g, float* r, size_t blocks, size_t len,
                                                           uint8_t* scales, uint8_t* bits) {
  if (blocks == 0) return;
  if (r == nullptr) {  // the signs do not need the scale: one pass
    for (size_t b = 0; b < blocks; ++b) {
      const float* gb = g + b * len;
      __m256 acc = _mm256_setzero_ps();
      for (size_t i = 0; i < len; i += 8) {
        const __m256 v = _mm256_loadu_ps(gb + i);
        acc = addSquares(acc, v);
        bits[(b * len + i) / 8] =
            static_cast<uint8_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NLT_UQ)));
      }
      putScale(scales, b, rmsOfLanes(acc, len));
    }
    return;
  }
  // With feedback the scale needs the whole block's r + g first. Block b's second pass (its data in L1) runs
  // interleaved with block b+1's first (from memory), so the loads overlap the work: on 64 MB here 8.9-10.6 ms
  // against 12.2-15.5 for the portable loops' four passes (results/codecs_onebit_pipelined_ab.json); the same two
  // passes block by block were about 16% slower than interleaved (scratch loop).
  __m256 acc = _mm256_setzero_ps();
  for (size_t i = 0; i < len; i += 8) acc = addSquares(acc, feedBack8(g, r, i));
  for (size_t b = 0; b < blocks; ++b) {
    const float scale = rmsOfLanes(acc, len);
    putScale(scales, b, scale);
    const __m256 pos = _mm256_set1_ps(scale), neg = _mm256_set1_ps(-scale);
    float* rb = r + b * len;
    uint8_t* bb = bits + b * len / 8;
    acc = _mm256_setzero_ps();
    if (b + 1 < blocks) {
      const float* gNext = g + (b + 1) * len;
      float* rNext = rb + len;
      for (size_t i = 0; i < len; i += 8) {
        acc = addSquares(acc, feedBack8(gNext, rNext, i));
        signAndResidual8(rb, i, pos, neg, bb + i / 8);
      }
    } else {
      for (size_t i = 0; i < len; i += 8) signAndResidual8(rb, i, pos, neg, bb + i / 8);
    }
  }
}

__attribute__((target("avx2"))) void unpackSignsAvx2(const uint8_t* bits, float* dst, size_t n, float scale, bool add) {
  const __m256i lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256 pos = _mm256_set1_ps(scale), neg = _mm256_set1_ps(-scale);
  for (size_t j = 0; j < n / 8; ++j) {
    const __m256i b = _mm256_set1_epi32(bits[j]);
    const __m256i set = _mm256_cmpeq_epi32(_mm256_and_si256(b, lane), lane);
    __m256 v = _mm256_blendv_ps(neg, pos, _mm256_castsi256_ps(set));
    if (add) v = _mm256_add_ps(_mm256_loadu_ps(dst + 8 * j), v);
    _mm256_storeu_ps(dst + 8 * j, v);
  }
}

#else

// Never called: haveAvx2F16c() is false here, and callers check it first.
bool haveAvx2F16c() { return false && gEnabled.load(); }
[[noreturn]] static void unavailable() {
  throw std::logic_error("neptune_rt: x86 SIMD codec path called on another CPU");
}
void floatToHalfF16c(const float*, uint16_t*, float*, size_t) { unavailable(); }
void halfToFloatF16c(const uint16_t*, float*, size_t, bool) { unavailable(); }
void packSignsAvx2(const float*, uint8_t*, size_t) { unavailable(); }
void encodeOneBitBlocksAvx2(const float*, float*, size_t, size_t, uint8_t*, uint8_t*) { unavailable(); }
void unpackSignsAvx2(const uint8_t*, float*, size_t, float, bool) { unavailable(); }

#endif

}  // namespace simd
}  // namespace nrt
