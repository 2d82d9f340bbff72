// Header-only payload validation shared by the CPU codecs (codec.cc) and the CUDA module (csrc/cuda/), which
// is a separate extension and cannot link codec.cc. Throws std::invalid_argument naming the bad field;
// exercised by tests/test_codecs.py (malformed payloads, hypothesis fuzzing) and tests/test_codecs_cuda.py.
#pragma once

#include <cstddef>
#include <ios>
#include <stdexcept>

#include "codecs/format.h"
#include "common/error.h"

namespace nrt {
namespace codec_format {

inline const char* codecNameOf(uint8_t codec) {
  constexpr const char* kNames[kNumCodecs] = {"none", "fp16", "bf16", "int8", "int4", "onebit"};
  return codec < kNumCodecs ? kNames[codec] : "?";
}

inline void checkBlock(uint8_t codec, uint32_t block) {
  if (!isBlockCodec(codec)) return;
  NRT_CHECK_ARG(block >= kMinBlockSize && block <= kMaxBlockSize && block % 8 == 0, "neptune_rt: invalid block size ",
                block, " for codec ", codecNameOf(codec), ": use a multiple of 8 in [", kMinBlockSize, ", ",
                kMaxBlockSize, "] (default ", kDefaultBlockSize, ")");
}

// Every header field, and that `bytes` is exactly the size the header implies. The zero padding after the
// body is checked by the caller (it may live in device memory).
inline void checkHeader(const Header& h, size_t bytes) {
  NRT_CHECK_ARG(h.magic == kMagic, "neptune_rt: not a codec payload (magic 0x", std::hex, h.magic, " != 0x", kMagic,
                std::dec, ")");
  NRT_CHECK_ARG(h.version == kVersion, "neptune_rt: payload format version ", int(h.version),
                " is not supported (this build reads version ", int(kVersion), ")");
  NRT_CHECK_ARG(h.codec < kNumCodecs, "neptune_rt: payload names unknown codec id ", int(h.codec));
  NRT_CHECK_ARG((h.flags & ~kKnownFlags) == 0, "neptune_rt: payload has unknown flag bits 0x", std::hex, int(h.flags),
                std::dec);
  NRT_CHECK_ARG(h.reserved0 == 0 && h.reserved1 == 0, "neptune_rt: payload reserved header fields are not zero");
  NRT_CHECK_ARG(h.count <= kMaxCount, "neptune_rt: payload count ", h.count, " is above the limit ", kMaxCount);
  if (isBlockCodec(h.codec)) {
    checkBlock(h.codec, h.blockSize);
  } else {
    NRT_CHECK_ARG(h.blockSize == 0, "neptune_rt: payload of cast codec ", codecNameOf(h.codec), " has block size ",
                  h.blockSize, " (must be 0)");
  }
  NRT_CHECK_ARG((h.flags & kFlagStochastic) == 0 || h.codec == kInt8 || h.codec == kInt4,
                "neptune_rt: payload of codec ", codecNameOf(h.codec), " claims stochastic rounding");
  const uint64_t expect = payloadBytesFor(h.codec, h.count, h.blockSize);
  NRT_CHECK_ARG(bytes == expect, "neptune_rt: ", (bytes < expect ? "truncated" : "oversized"), " payload: ", bytes,
                " bytes, but ", h.count, " values of ", codecNameOf(h.codec), " (block ", h.blockSize, ") take ",
                expect);
}

// Bytes of zero padding at the end of a valid payload.
inline size_t paddingBytes(const Header& h) {
  return payloadBytesFor(h.codec, h.count, h.blockSize) - kHeaderBytes - bodyBytes(h.codec, h.count, h.blockSize);
}

}  // namespace codec_format
}  // namespace nrt
