// The codec payload format and the stochastic-rounding hash, shared by the CPU codecs (codec.cc,
// quantize.cc), the CUDA kernels (csrc/cuda/) and mirrored by neptune_rt/codecs/reference.py. Compiles
// under g++ and nvcc; tests/test_codecs.py checks all three produce the same bytes.
//
// Payload = 24-byte header, the body (little-endian), then zero bytes up to a multiple of 4, so payloads
// laid end to end stay 4-byte aligned:
//   none   : count fp32
//   fp16   : count IEEE half (round to nearest even)      bf16: count bfloat16 (RNE)
//   int8   : nblocks fp32 scales, then count int8 in [-127, 127]       (x ~ q * scale)
//   int4   : nblocks fp32 scales, then ceil(count/2) bytes, element 2i in the low nibble, 2i+1 in the
//            high one, two's complement in [-7, 7]                     (x ~ q * scale)
//   onebit : nblocks fp32 scales, then ceil(count/8) bytes, bit i%8 of byte i/8 set when x_i >= 0
//            (sign(0) = +1)                              (x ~ +-scale, scale = the block RMS)
// Scales are fp32, not fp16: exact on every device, no overflow for large gradients, and only 4/block
// bytes (1.6% of an int8 payload at block 256). Blocks are multiples of 8 elements so a packed byte never
// straddles two blocks (lets the CUDA kernels give each block to one thread block without races).
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define NRT_HD __host__ __device__ __forceinline__
#else
#define NRT_HD inline
#endif

namespace nrt {
namespace codec_format {

constexpr uint32_t kMagic = 0x5154524Eu;  // "NRTQ" read as little-endian bytes
constexpr uint8_t kVersion = 1;
constexpr size_t kHeaderBytes = 24;
constexpr uint32_t kDefaultBlockSize = 256;
constexpr uint32_t kMinBlockSize = 8;
constexpr uint32_t kMaxBlockSize = 1u << 16;
// A count above this is rejected: keeps every size computation far from overflowing size_t.
constexpr uint64_t kMaxCount = uint64_t{1} << 48;
// Blocks whose absmax is below this quantize to zero with scale 0: 127 / absmax would
// overflow fp32 for subnormal maxima, and gradients this small carry no signal (error feedback keeps them).
constexpr float kMinScaleInput = 1e-30f;

enum CodecIdValue : uint8_t { kNone = 0, kFp16 = 1, kBf16 = 2, kInt8 = 3, kInt4 = 4, kOneBit = 5 };
constexpr uint8_t kNumCodecs = 6;

// Header flags (informational; decode accepts both values of each, rejects unknown bits).
constexpr uint8_t kFlagStochastic = 1u << 0;
constexpr uint8_t kFlagErrorFeedback = 1u << 1;
constexpr uint8_t kKnownFlags = kFlagStochastic | kFlagErrorFeedback;

struct Header {
  uint32_t magic;
  uint8_t version;
  uint8_t codec;
  uint8_t flags;
  uint8_t reserved0;  // must be 0
  uint64_t count;
  uint32_t blockSize;  // 0 for the cast codecs (none, fp16, bf16)
  uint32_t reserved1;  // must be 0
};
static_assert(sizeof(Header) == kHeaderBytes, "payload header must be 24 bytes");

NRT_HD bool isBlockCodec(uint8_t codec) { return codec == kInt8 || codec == kInt4 || codec == kOneBit; }

NRT_HD uint64_t numBlocks(uint64_t count, uint32_t block) { return block == 0 ? 0 : (count + block - 1) / block; }

// Body bytes after the header; callers validate codec, count and block first.
NRT_HD uint64_t bodyBytes(uint8_t codec, uint64_t count, uint32_t block) {
  switch (codec) {
    case kNone: return count * 4;
    case kFp16:
    case kBf16: return count * 2;
    case kInt8: return numBlocks(count, block) * 4 + count;
    case kInt4: return numBlocks(count, block) * 4 + (count + 1) / 2;
    case kOneBit: return numBlocks(count, block) * 4 + (count + 7) / 8;
  }
  return 0;
}

// Whole payload, header and padding included.
NRT_HD uint64_t payloadBytesFor(uint8_t codec, uint64_t count, uint32_t block) {
  return (kHeaderBytes + bodyBytes(codec, count, block) + 3) / 4 * 4;
}

// Quantization levels either side of zero: int8 -> 127, int4 -> 7 (symmetric, -128 / -8 never used).
NRT_HD float levels(uint8_t codec) { return codec == kInt8 ? 127.0f : 7.0f; }

// Counter-based generator for stochastic rounding. A 64-bit stream key from (seed, step, rank) via
// splitmix64's finalizer (once per call), then per element index two rounds of the 32-bit "lowbias32" mix
// (C. Wellons' hash prospector): 32-bit multiplies vectorize natively, where 64-bit ones are emulated.
// Pure integer arithmetic, so CPU, CUDA and numpy produce identical bits.
NRT_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
NRT_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
NRT_HD uint64_t streamKey(uint64_t seed, uint64_t step, uint64_t rank) {
  return mix64(mix64(mix64(seed + kGolden) ^ step) ^ rank);
}
// Uniform in [0, 1) with 24 random bits (exact in fp32).
NRT_HD float uniform01(uint64_t key, uint64_t index) {
  const uint32_t lo = mix32(static_cast<uint32_t>(index) + static_cast<uint32_t>(key));
  const uint32_t h = mix32(lo ^ static_cast<uint32_t>(index >> 32) ^ static_cast<uint32_t>(key >> 32));
  return static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
}

}  // namespace codec_format
}  // namespace nrt
