// The cost model that decides, per bucket, between the dense ring and a compressed all-reduce (and, for
// codec "auto", which codec). A short collective probe measures link latency (alpha), wire time per byte
// (beta), the local reduction speed and each codec's encode/decode speed; ranks agree on the slowest
// rank's figures, so every rank predicts and chooses identically. Tested by tests/test_cost_model.py.
#pragma once

#include <array>
#include <cstddef>
#include <string>

#include "codecs/codec.h"
#include "collectives/options.h"
#include "comm/communicator.h"

namespace nrt {

// TensorMeta::codec holds a codec's format id, or kAutoCodecId for "auto"; kForceCodecBit set means "use
// exactly this codec, do not ask the cost model" (per call, agreed across ranks like any metadata).
constexpr uint8_t kAutoCodecId = 0x7f;
constexpr uint8_t kForceCodecBit = 0x80;

struct CostModel {
  double alpha = 0;             // seconds per message (latency)
  double beta = 0;              // seconds per wire byte (inverse bandwidth)
  double reduceSecPerByte = 0;  // local fp32 reduction, per byte
  std::array<double, codec_format::kNumCodecs> encodeSecPerByte{};  // per fp32 input byte
  std::array<double, codec_format::kNumCodecs> decodeSecPerByte{};
  bool valid = false;

  // Predicted seconds of an all-reduce of `count` fp32 values over n ranks.
  double predictDense(size_t wireBytes, int n) const;  // dense ring on `wireBytes` per rank-buffer
  double predictCompressed(Codec c, size_t count, int n, uint32_t block) const;
  // The fastest predicted choice among the dense path (buffer of `denseBytes`) and the candidates that
  // `requested` allows: kAutoCodecId -> {fp16, int8}; a lossy codec -> {fp16, it}; fp16/bf16 -> {it}.
  // Returns codec_format::kNone for dense.
  uint8_t choose(uint8_t requested, size_t count, size_t denseBytes, int n, uint32_t block) const;
  std::string describe() const;
};

// Collective: every rank of `comm` calls it at the same point. Takes ~10-200 ms depending on the link.
CostModel probeCostModel(Communicator& comm, const CollectiveOptions& opts, uint32_t block);

}  // namespace nrt
