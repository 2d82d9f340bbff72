// CPU hot loops of the codecs (see quantize.h, format.h). Loops are branch-free over elements so g++
// vectorizes them. Checked with g++ 12 -O3 -fopt-info-vec-optimized (both clones): vectorized are
// accumulate, absMaxBits, absSumLanes, the stochastic draws, the quantize and residual loops, nibble
// (un)packing, the int8/int4 decode, the onebit residual and the bf16 casts. Onebit encoding (its
// blocks fused and pipelined), bit unpacking and the fp16 casts (half.h branches) use the AVX2/F16C intrinsics of
// simd_x86.cc instead where the CPU has them.
//
// Arithmetic is fixed so numpy and CUDA reproduce it bit for bit: fp32 throughout, one rounding per
// operation (no FMA: neither clone enables -mfma, and the CUDA side uses __fmul_rn/__fadd_rn), absmax as
// an integer max over |x| bits (order-free), onebit's sum x*x in 8 strided lanes combined in order, then one
// division and one correctly rounded sqrt.
#include "codecs/quantize.h"

#include <cmath>
#include <cstring>

#include "codecs/format.h"
#include "codecs/simd_x86.h"
#include "common/half.h"

// The four entry points are cloned (AVX2 / baseline, picked at load time); the per-block helpers are forced
// inline so each clone gets its own vector code without an indirect call per block.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define NRT_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define NRT_MULTIVERSION
#endif
#define NRT_INLINE inline __attribute__((always_inline))

namespace nrt {
namespace quantize {

namespace cf = codec_format;

namespace {

// Adding and subtracting 1.5 * 2^23 rounds an fp32 with |v| < 2^22 to the nearest integer, ties to even
// (the default rounding mode), in plain arithmetic that vectorizes without SSE4.1's roundps.
constexpr float kRoundMagic = 12582912.0f;
// Error feedback walks the buffer in pieces this long so r += src and the encode stay in L1.
constexpr size_t kCastPiece = 2048;

NRT_INLINE void accumulate(float* __restrict r, const float* __restrict g, size_t n) {
  for (size_t i = 0; i < n; ++i) r[i] += g[i];
}

// Error feedback's first step on the piece [off, off + len): r += src there. Returns what to quantize (the
// residual, or src without feedback) and sets `r` to the piece's residual (null without feedback).
NRT_INLINE const float* feedBack(const float* src, float* residual, size_t off, size_t len, float*& r) {
  r = residual != nullptr ? residual + off : nullptr;
  if (r == nullptr) return src + off;
  accumulate(r, src + off, len);
  return r;
}

// max |x| via the bit patterns: for non-NaN floats |x| orders like its bits, and a NaN wins (so the
// block's scale becomes NaN and the NaN reaches the decoded values).
NRT_INLINE float absMaxBits(const float* __restrict x, size_t n) {
  const uint32_t* __restrict b = reinterpret_cast<const uint32_t*>(x);
  uint32_t m = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t a = b[i] & 0x7fffffffu;
    m = a > m ? a : m;
  }
  return bitsFloat(m);
}

// sum x*x in 8 lanes (lane l takes elements l, l+8, ...), lanes then added in order 0..7.
NRT_INLINE float squareSumLanes(const float* __restrict x, size_t n) {
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const size_t full = n / 8 * 8;
  for (size_t i = 0; i < full; i += 8)
    for (int l = 0; l < 8; ++l) lanes[l] += x[i + l] * x[i + l];
  for (size_t i = full; i < n; ++i) lanes[i - full] += x[i] * x[i];
  float s = lanes[0];
  for (int l = 1; l < 8; ++l) s += lanes[l];
  return s;
}

// rint(clamp(x * inv)) in [-lv, lv] as a float: the level itself, an integer, never NaN (NaN maps to -lv).
NRT_INLINE float nearestLevel(float x, float inv, float lv) {
  float v = x * inv;
  v = v > -lv ? v : -lv;
  v = v < lv ? v : lv;
  return (v + kRoundMagic) - kRoundMagic;
}

// q = clamp(rint(x * inv)) in [-lv, lv]; with error feedback r = x - q * scale (r may be x itself, so
// neither is __restrict; each element is read before it is written).
NRT_INLINE void quantNearest(const float* x, int8_t* __restrict q, float* r, size_t n,
                                   float inv, float scale, float lv) {
  for (size_t i = 0; i < n; ++i) q[i] = static_cast<int8_t>(static_cast<int32_t>(nearestLevel(x[i], inv, lv)));
  if (r != nullptr)
    for (size_t i = 0; i < n; ++i) r[i] = x[i] - static_cast<float>(q[i]) * scale;
}

// |v|'s bits folded into the running absmax `m`: the order-free max of absMaxBits.
NRT_INLINE uint32_t maxAbsBits(uint32_t m, float v) {
  const uint32_t a = floatBits(v) & 0x7fffffffu;
  return a > m ? a : m;
}

// Error feedback's first pass over a block of levels: r += g, returning max |r| as absMaxBits finds it.
NRT_INLINE uint32_t feedBackAbsMaxBits(const float* __restrict g, float* __restrict r, size_t n) {
  uint32_t m = 0;
  for (size_t i = 0; i < n; ++i) {
    r[i] += g[i];
    m = maxAbsBits(m, r[i]);
  }
  return m;
}

// quantNearest of the block in r (feedback applied) into q with r -= q * scale, in one loop with the next block's
// feedBackAbsMaxBits over (gNext, rNext), of the same length: the next block's loads from memory overlap this
// block's work in L1. Each element gets quantNearest's operations, so the bytes are the same.
NRT_INLINE uint32_t quantNearestWithNext(float* __restrict r, int8_t* __restrict q, size_t n, float inv, float scale,
                                         float lv, const float* __restrict gNext, float* __restrict rNext) {
  uint32_t m = 0;
  for (size_t i = 0; i < n; ++i) {
    rNext[i] += gNext[i];
    m = maxAbsBits(m, rNext[i]);
    const float level = nearestLevel(r[i], inv, lv);
    q[i] = static_cast<int8_t>(static_cast<int32_t>(level));
    r[i] = r[i] - level * scale;  // float(q[i]) == level
  }
  return m;
}

// u[i] = uniform01(key, base + i): a loop of its own so it vectorizes.
NRT_INLINE void uniforms(uint64_t key, uint64_t base, float* __restrict u, size_t n) {
  for (size_t i = 0; i < n; ++i) u[i] = cf::uniform01(key, base + i);
}

// q = min(floor(clamp(x * inv) + u), lv) with u = uniform01(key, base + i): unbiased, E[q] = x * inv.
// floor(t) is computed as trunc(t) - (trunc(t) > t), exact for |t| < 2^31 and vectorizable without SSE4.1.
NRT_INLINE void quantStochastic(const float* x, int8_t* __restrict q, float* r,
                                      size_t n, float inv, float scale, float lv, uint64_t key, uint64_t base) {
  constexpr size_t kPiece = 256;
  float u[kPiece];
  const int32_t top = static_cast<int32_t>(lv);
  for (size_t off = 0; off < n; off += kPiece) {
    const size_t len = n - off < kPiece ? n - off : kPiece;
    uniforms(key, base + off, u, len);
    for (size_t i = 0; i < len; ++i) {
      float v = x[off + i] * inv;
      v = v > -lv ? v : -lv;
      v = v < lv ? v : lv;
      const float t = v + u[i];
      int32_t f = static_cast<int32_t>(t);
      f -= static_cast<float>(f) > t ? 1 : 0;
      f = f < top ? f : top;
      q[off + i] = static_cast<int8_t>(f);
    }
  }
  if (r != nullptr)
    for (size_t i = 0; i < n; ++i) r[i] = x[i] - static_cast<float>(q[i]) * scale;
}

NRT_INLINE void packNibbles(const int8_t* __restrict q, uint8_t* __restrict out, size_t n) {
  const size_t pairs = n / 2;
  for (size_t j = 0; j < pairs; ++j)
    out[j] = static_cast<uint8_t>((q[2 * j] & 0x0f) | ((q[2 * j + 1] & 0x0f) << 4));
  if (n % 2) out[pairs] = static_cast<uint8_t>(q[n - 1] & 0x0f);
}

NRT_INLINE void encodeOneBitBlock(const float* x, float* r, size_t n, float scale, uint8_t* __restrict out) {
  size_t done = 0;
  if (simd::haveAvx2F16c()) {
    done = n / 8 * 8;
    simd::packSignsAvx2(x, out, done);
  }
  for (size_t j = done / 8; j < (n + 7) / 8; ++j) {
    uint8_t b = 0;
    for (size_t l = 0; l < 8 && j * 8 + l < n; ++l) b |= static_cast<uint8_t>(!(x[j * 8 + l] < 0.0f)) << l;
    out[j] = b;
  }
  if (r != nullptr)
    for (size_t i = 0; i < n; ++i) r[i] = x[i] - (x[i] < 0.0f ? -scale : scale);
}

NRT_INLINE void decodeInt8(const int8_t* __restrict q, float* __restrict dst, size_t n, float scale, bool add) {
  if (add) {
    for (size_t i = 0; i < n; ++i) dst[i] += static_cast<float>(q[i]) * scale;
  } else {
    for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(q[i]) * scale;
  }
}

NRT_INLINE void unpackNibbles(const uint8_t* __restrict in, int8_t* __restrict q, size_t n) {
  for (size_t j = 0; j < n / 2; ++j) {
    q[2 * j] = static_cast<int8_t>(static_cast<int8_t>(in[j] << 4) >> 4);
    q[2 * j + 1] = static_cast<int8_t>(static_cast<int8_t>(in[j]) >> 4);
  }
  if (n % 2) q[n - 1] = static_cast<int8_t>(static_cast<int8_t>(in[n / 2] << 4) >> 4);
}

NRT_INLINE void decodeOneBit(const uint8_t* __restrict bits, float* __restrict dst, size_t n, float scale, bool add) {
  size_t done = 0;
  if (simd::haveAvx2F16c()) {
    done = n / 8 * 8;
    simd::unpackSignsAvx2(bits, dst, done, scale, add);
  }
  for (size_t i = done; i < n; ++i) {
    const float v = ((bits[i / 8] >> (i % 8)) & 1u) ? scale : -scale;
    dst[i] = add ? dst[i] + v : v;
  }
}

NRT_INLINE void castToHalf(const float* x, uint16_t* __restrict out, float* r, size_t n,
                                 bool bf16) {
  if (bf16) {
    for (size_t i = 0; i < n; ++i) out[i] = floatToBf16(x[i]);
    if (r != nullptr)
      for (size_t i = 0; i < n; ++i) r[i] = x[i] - bf16ToFloat(out[i]);
  } else if (simd::haveAvx2F16c()) {
    simd::floatToHalfF16c(x, out, r, n);
  } else {
    for (size_t i = 0; i < n; ++i) out[i] = floatToHalf(x[i]);
    if (r != nullptr)
      for (size_t i = 0; i < n; ++i) r[i] = x[i] - halfToFloat(out[i]);
  }
}

NRT_INLINE void castFromHalf(const uint16_t* __restrict in, float* __restrict dst, size_t n, bool bf16, bool add) {
  if (bf16) {
    if (add) {
      for (size_t i = 0; i < n; ++i) dst[i] += bf16ToFloat(in[i]);
    } else {
      for (size_t i = 0; i < n; ++i) dst[i] = bf16ToFloat(in[i]);
    }
  } else if (simd::haveAvx2F16c()) {
    simd::halfToFloatF16c(in, dst, n, add);
  } else {
    if (add) {
      for (size_t i = 0; i < n; ++i) dst[i] += halfToFloat(in[i]);
    } else {
      for (size_t i = 0; i < n; ++i) dst[i] = halfToFloat(in[i]);
    }
  }
}

// A block's scale and its inverse from its absmax: 0 (and inv 0) below kMinScaleInput.
NRT_INLINE void levelScale(float amax, float lv, float& scale, float& inv) {
  scale = amax / lv;
  inv = lv / amax;
  if (amax < cf::kMinScaleInput) scale = inv = 0.0f;
}

// int8 / int4, nearest rounding, with error feedback: encodeBlocks' bytes, each block's quantization run together
// with the next block's feedback pass (quantNearestWithNext) wherever the next block has the same length.
NRT_INLINE void encodeLevelsWithFeedback(uint8_t codec, const float* src, float* residual, size_t n, uint32_t block,
                                         uint8_t* scales, uint8_t* packed) {
  const uint64_t nb = cf::numBlocks(n, block);
  const float lv = cf::levels(codec);
  int8_t q[cf::kMaxBlockSize];
  uint32_t amaxBits = nb > 0 ? feedBackAbsMaxBits(src, residual, n < block ? n : block) : 0;
  for (uint64_t b = 0; b < nb; ++b) {
    const size_t off = b * block;
    const size_t len = n - off < block ? n - off : block;
    float scale, inv;
    levelScale(bitsFloat(amaxBits), lv, scale, inv);
    std::memcpy(scales + b * sizeof(float), &scale, sizeof(float));
    int8_t* levels = codec == cf::kInt8 ? reinterpret_cast<int8_t*>(packed + off) : q;
    float* r = residual + off;
    const size_t next = off + len, nextLen = n - next < block ? n - next : block;
    if (b + 1 < nb && nextLen == len) {
      amaxBits = quantNearestWithNext(r, levels, len, inv, scale, lv, src + next, residual + next);
    } else {
      quantNearest(r, levels, r, len, inv, scale, lv);
      if (b + 1 < nb) amaxBits = feedBackAbsMaxBits(src + next, residual + next, nextLen);
    }
    if (codec == cf::kInt4) packNibbles(q, packed + off / 2, len);
  }
}

}  // namespace

NRT_MULTIVERSION void encodeCast(uint8_t codec, const float* src, float* residual, size_t n, void* body) {
  for (size_t off = 0; off < n; off += kCastPiece) {
    const size_t len = n - off < kCastPiece ? n - off : kCastPiece;
    float* r;
    const float* x = feedBack(src, residual, off, len, r);
    if (codec == cf::kNone) {
      std::memcpy(static_cast<float*>(body) + off, x, len * sizeof(float));
      if (r != nullptr) std::memset(r, 0, len * sizeof(float));  // r - D(Q(r)) is exactly 0
    } else {
      castToHalf(x, static_cast<uint16_t*>(body) + off, r, len, codec == cf::kBf16);
    }
  }
}

NRT_MULTIVERSION void decodeCast(uint8_t codec, const void* body, size_t n, float* dst, bool add) {
  if (codec == cf::kNone) {
    const float* in = static_cast<const float*>(body);
    if (add) {
      accumulate(dst, in, n);
    } else {
      std::memcpy(dst, in, n * sizeof(float));
    }
    return;
  }
  castFromHalf(static_cast<const uint16_t*>(body), dst, n, codec == cf::kBf16, add);
}

NRT_MULTIVERSION void encodeBlocks(uint8_t codec, const float* src, float* residual, size_t n, uint32_t block,
                                   bool stochastic, uint64_t key, uint64_t indexBase, void* body) {
  const uint64_t nb = cf::numBlocks(n, block);
  uint8_t* scales = static_cast<uint8_t*>(body);
  uint8_t* packed = static_cast<uint8_t*>(body) + nb * sizeof(float);
  int8_t q[cf::kMaxBlockSize];  // one block of levels (int4 packs them afterwards)
  if ((codec == cf::kInt8 || codec == cf::kInt4) && !stochastic && residual != nullptr)
    return encodeLevelsWithFeedback(codec, src, residual, n, block, scales, packed);
  uint64_t first = 0;  // blocks done by the AVX2 kernel: all with a length that is a multiple of 8
  if (codec == cf::kOneBit && block % 8 == 0 && simd::haveAvx2F16c()) {
    first = n / block;
    simd::encodeOneBitBlocksAvx2(src, residual, first, block, scales, packed);
    const size_t tail = n - first * block;
    if (tail > 0 && tail % 8 == 0) {
      simd::encodeOneBitBlocksAvx2(src + first * block, residual != nullptr ? residual + first * block : nullptr, 1,
                                   tail, scales + first * sizeof(float), packed + first * block / 8);
      ++first;
    }
  }
  for (uint64_t b = first; b < nb; ++b) {
    const size_t off = b * block;
    const size_t len = n - off < block ? n - off : block;
    float* r;
    const float* x = feedBack(src, residual, off, len, r);
    if (codec == cf::kOneBit) {
      // The block's RMS, |x|_2 / sqrt(len): the decoded block keeps the norm of what was encoded. The
      // least-squares scale (mean |x|) shrinks every update, and under error feedback with local momentum
      // the residual then grew ~7x larger and load_digits trained to 77-87% instead of 96-97%
      // (benchmarks/onebit_blocks.py, results/onebit_blocks.json).
      const float scale = std::sqrt(squareSumLanes(x, len) / static_cast<float>(len));
      std::memcpy(scales + b * sizeof(float), &scale, sizeof(float));
      encodeOneBitBlock(x, r, len, scale, packed + off / 8);
      continue;
    }
    const float lv = cf::levels(codec);
    float scale, inv;
    levelScale(absMaxBits(x, len), lv, scale, inv);
    std::memcpy(scales + b * sizeof(float), &scale, sizeof(float));
    int8_t* dstq = codec == cf::kInt8 ? reinterpret_cast<int8_t*>(packed + off) : q;
    if (stochastic) {
      quantStochastic(x, dstq, r, len, inv, scale, lv, key, indexBase + off);
    } else {
      quantNearest(x, dstq, r, len, inv, scale, lv);
    }
    if (codec == cf::kInt4) packNibbles(q, packed + off / 2, len);
  }
}

NRT_MULTIVERSION void decodeBlocks(uint8_t codec, const void* body, size_t n, uint32_t block, float* dst,
                                   bool add) {
  const uint64_t nb = cf::numBlocks(n, block);
  const uint8_t* scales = static_cast<const uint8_t*>(body);
  const uint8_t* packed = static_cast<const uint8_t*>(body) + nb * sizeof(float);
  int8_t q[cf::kMaxBlockSize];
  for (uint64_t b = 0; b < nb; ++b) {
    const size_t off = b * block;
    const size_t len = n - off < block ? n - off : block;
    float scale;
    std::memcpy(&scale, scales + b * sizeof(float), sizeof(scale));
    if (codec == cf::kInt8) {
      decodeInt8(reinterpret_cast<const int8_t*>(packed + off), dst + off, len, scale, add);
    } else if (codec == cf::kInt4) {
      unpackNibbles(packed + off / 2, q, len);
      decodeInt8(q, dst + off, len, scale, add);
    } else {
      decodeOneBit(packed + off / 8, dst + off, len, scale, add);
    }
  }
}

}  // namespace quantize
}  // namespace nrt
