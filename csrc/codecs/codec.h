// Gradient codecs on the CPU: fp32 -> self-describing payload (format.h) -> fp32, with error feedback and
// stochastic rounding fused into encode. Exercised by tests/test_codecs.py against the numpy reference
// (neptune_rt/codecs/reference.py) and by the compressed all-reduce.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "codecs/format.h"

namespace nrt {

enum class Codec : uint8_t {
  kNone = codec_format::kNone,
  kFp16 = codec_format::kFp16,
  kBf16 = codec_format::kBf16,
  kInt8 = codec_format::kInt8,
  kInt4 = codec_format::kInt4,
  kOneBit = codec_format::kOneBit,
};
enum class Rounding : uint8_t { kNearest = 0, kStochastic = 1 };

const char* codecName(Codec c);
Codec codecFromName(const std::string& name);  // throws std::invalid_argument listing the valid names
std::vector<Codec> allCodecs();
const char* roundingName(Rounding r);
Rounding roundingFromName(const std::string& name);

// Payloads of summable codecs (fp16, bf16, none) can be reduced elementwise as they are; the others must
// be decoded to fp32 to be summed.
bool codecSummable(Codec c);
// Throws std::invalid_argument unless `block` is valid for `c` (block codecs: a multiple of 8 in
// [8, 65536]; cast codecs ignore it).
void checkBlockSize(Codec c, uint32_t block);
// Exact payload size (header included) of `count` values.
size_t payloadBytes(Codec c, size_t count, uint32_t block = codec_format::kDefaultBlockSize);

struct EncodeParams {
  Codec codec = Codec::kInt8;
  uint32_t blockSize = codec_format::kDefaultBlockSize;
  // Applies to int8/int4 (the casts always round to nearest even; onebit has nothing to round).
  Rounding rounding = Rounding::kNearest;
  // Stochastic rounding draws depend on (seed, step, rank, indexBase + i) only: bit-reproducible.
  uint64_t seed = 0;
  uint64_t step = 0;
  uint64_t rank = 0;
  uint64_t indexBase = 0;
};

// Encodes src[0, n) into out (capacity outBytes >= payloadBytes). With a residual (fp32, n values, owned
// by the caller) error feedback is fused: r += src; q = Q(r); r -= D(q); otherwise q = Q(src).
// Returns the payload size.
size_t encode(const EncodeParams& p, const float* src, size_t n, float* residual, void* out, size_t outBytes);

// Validates a payload of `bytes` bytes (magic, version, codec, flags, block, count, exact length) and
// returns its header; throws std::invalid_argument naming the bad field.
codec_format::Header parsePayload(const void* payload, size_t bytes);

// dst[0, count) = decoded payload; dstCount must equal the payload's count.
void decode(const void* payload, size_t bytes, float* dst, size_t dstCount);
// dst[0, count) += decoded payload (in fp32): the reduction step of the compressed all-reduce.
void decodeAdd(const void* payload, size_t bytes, float* dst, size_t dstCount);

}  // namespace nrt
