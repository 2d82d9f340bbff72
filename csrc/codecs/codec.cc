// Codec front door (see codec.h): names, argument checks, the payload header and its validation; the
// loops live in quantize.cc. Exercised by tests/test_codecs.py (reference comparison and hypothesis fuzzing
// of malformed payloads).
#include "codecs/codec.h"

#include <cstring>
#include <stdexcept>

#include "codecs/payload_check.h"
#include "codecs/quantize.h"
#include "common/error.h"

namespace nrt {

namespace cf = codec_format;

namespace {

uint8_t id(Codec c) { return static_cast<uint8_t>(c); }

bool aligned4(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 3u) == 0; }

void checkCount(size_t n) {
  NRT_CHECK_ARG(n <= cf::kMaxCount, "neptune_rt: codec count ", n, " is above the limit ", cf::kMaxCount,
                "; split the buffer");
}

}  // namespace

const char* codecName(Codec c) { return cf::codecNameOf(id(c)); }

Codec codecFromName(const std::string& name) {
  std::string known;  // from the one name table (format.h ids, payload_check.h names)
  for (uint8_t i = 0; i < cf::kNumCodecs; ++i) {
    if (name == cf::codecNameOf(i)) return static_cast<Codec>(i);
    known += (i ? ", " : "") + std::string(cf::codecNameOf(i));
  }
  throw std::invalid_argument("neptune_rt: unknown codec '" + name + "' (" + known + ")");
}

std::vector<Codec> allCodecs() {
  std::vector<Codec> v;
  for (uint8_t i = 0; i < cf::kNumCodecs; ++i) v.push_back(static_cast<Codec>(i));
  return v;
}

const char* roundingName(Rounding r) { return r == Rounding::kStochastic ? "stochastic" : "nearest"; }

Rounding roundingFromName(const std::string& name) {
  if (name == "nearest") return Rounding::kNearest;
  if (name == "stochastic") return Rounding::kStochastic;
  throw std::invalid_argument("neptune_rt: unknown rounding '" + name + "' (nearest, stochastic)");
}

bool codecSummable(Codec c) { return !cf::isBlockCodec(id(c)); }

void checkBlockSize(Codec c, uint32_t block) { cf::checkBlock(id(c), block); }

size_t payloadBytes(Codec c, size_t count, uint32_t block) {
  NRT_CHECK_ARG(id(c) < cf::kNumCodecs, "neptune_rt: unknown codec id ", int(id(c)));
  checkBlockSize(c, block);
  checkCount(count);
  return cf::payloadBytesFor(id(c), count, cf::isBlockCodec(id(c)) ? block : 0);
}

size_t encode(const EncodeParams& p, const float* src, size_t n, float* residual, void* out, size_t outBytes) {
  const size_t bytes = payloadBytes(p.codec, n, p.blockSize);
  NRT_CHECK_ARG(outBytes >= bytes, "neptune_rt: encode of ", n, " values with codec ", codecName(p.codec),
                " needs ", bytes, " bytes of output, got ", outBytes, " (size it with payloadBytes)");
  NRT_CHECK_ARG(n == 0 || src != nullptr, "neptune_rt: encode got a null source for ", n, " values");
  if (!aligned4(out)) {  // the loops assume 4-byte aligned scales/values: go through an aligned copy
    std::vector<uint32_t> tmp(bytes / 4);
    encode(p, src, n, residual, tmp.data(), bytes);
    std::memcpy(out, tmp.data(), bytes);
    return bytes;
  }
  const uint8_t codec = id(p.codec);
  const bool block = cf::isBlockCodec(codec);
  const bool stochastic = p.rounding == Rounding::kStochastic && (codec == cf::kInt8 || codec == cf::kInt4);
  cf::Header h{};
  h.magic = cf::kMagic;
  h.version = cf::kVersion;
  h.codec = codec;
  h.flags = static_cast<uint8_t>((stochastic ? cf::kFlagStochastic : 0) | (residual ? cf::kFlagErrorFeedback : 0));
  h.count = n;
  h.blockSize = block ? p.blockSize : 0;
  char* base = static_cast<char*>(out);
  std::memcpy(base, &h, sizeof(h));
  const size_t used = cf::kHeaderBytes + cf::bodyBytes(codec, n, h.blockSize);
  std::memset(base + used, 0, bytes - used);
  void* body = base + cf::kHeaderBytes;
  if (block) {
    const uint64_t key = stochastic ? cf::streamKey(p.seed, p.step, p.rank) : 0;
    quantize::encodeBlocks(codec, src, residual, n, p.blockSize, stochastic, key, p.indexBase, body);
  } else {
    quantize::encodeCast(codec, src, residual, n, body);
  }
  return bytes;
}

cf::Header parsePayload(const void* payload, size_t bytes) {
  NRT_CHECK_ARG(payload != nullptr || bytes == 0, "neptune_rt: null payload");
  NRT_CHECK_ARG(bytes >= cf::kHeaderBytes, "neptune_rt: truncated payload: ", bytes,
                " bytes is shorter than the ", cf::kHeaderBytes, "-byte header");
  cf::Header h;
  std::memcpy(&h, payload, sizeof(h));
  cf::checkHeader(h, bytes);
  for (size_t i = bytes - cf::paddingBytes(h); i < bytes; ++i)
    NRT_CHECK_ARG(static_cast<const uint8_t*>(payload)[i] == 0, "neptune_rt: payload padding byte ", i,
                  " is not zero");
  return h;
}

namespace {

void decodeImpl(const void* payload, size_t bytes, float* dst, size_t dstCount, bool add) {
  const cf::Header h = parsePayload(payload, bytes);
  NRT_CHECK_ARG(h.count == dstCount, "neptune_rt: payload holds ", h.count, " values but the destination has ",
                dstCount);
  NRT_CHECK_ARG(dst != nullptr || dstCount == 0, "neptune_rt: decode got a null destination");
  if (!aligned4(payload)) {
    std::vector<uint32_t> tmp(bytes / 4);
    std::memcpy(tmp.data(), payload, bytes);
    decodeImpl(tmp.data(), bytes, dst, dstCount, add);
    return;
  }
  const void* body = static_cast<const char*>(payload) + cf::kHeaderBytes;
  if (cf::isBlockCodec(h.codec)) {
    quantize::decodeBlocks(h.codec, body, h.count, h.blockSize, dst, add);
  } else {
    quantize::decodeCast(h.codec, body, h.count, dst, add);
  }
}

}  // namespace

void decode(const void* payload, size_t bytes, float* dst, size_t dstCount) {
  decodeImpl(payload, bytes, dst, dstCount, false);
}

void decodeAdd(const void* payload, size_t bytes, float* dst, size_t dstCount) {
  decodeImpl(payload, bytes, dst, dstCount, true);
}

}  // namespace nrt
