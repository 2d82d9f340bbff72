// The cost model that decides, per bucket, between the dense ring and a compressed all-reduce (and, for
// codec "auto", which codec). A short collective probe times the real thing on this communicator: a dense
// ring all-reduce and each codec's compressed all-reduce of the same buffer. From those it keeps an
// effective cost per byte for each path (wire, codec work, contention between ranks sharing cores, all of
// it) plus the per-message latency. Ranks agree on the slowest rank's timings, so every rank predicts and
// chooses identically. The probe runs once per job, so within a job a bucket shape always gets the same
// answer; each shape's decision is logged once (INFO) with the predicted times. Between jobs the measured
// figures differ, so a near-tie can go either way: `deterministic` (NEPTUNE_RT_DETERMINISTIC=1) takes no
// timing at all and decides by size alone (the requested codec at or above kMinCompressedBytes, dense
// below). Tested by tests/test_cost_model.py (decisions) and tests/test_engine.py (probe, determinism).
#pragma once

#include <array>
#include <cstddef>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "codecs/codec.h"
#include "collectives/compressed_allreduce.h"
#include "collectives/options.h"
#include "comm/communicator.h"

namespace nrt {

// TensorMeta::codec holds a codec's format id, or kAutoCodecId for "auto"; kForceCodecBit set means "use
// exactly this codec, do not ask the cost model" (per call, agreed across ranks like any metadata).
constexpr uint8_t kAutoCodecId = 0x7f;
constexpr uint8_t kForceCodecBit = 0x80;

// Below this many fp32 bytes a bucket stays dense: per-message costs dominate there, and the per-byte
// figures probed at 16 MB do not extrapolate down (measured: a 64 KB bucket predicted faster as int8 ran
// 1.3x slower than dense on shared memory).
constexpr size_t kMinCompressedBytes = 256 << 10;

// Compression must pay clearly: a near-tie in a probe of a few runs is noise (seen on shared memory: a
// 4% "win" for int8 that was a 2.5x loss at 64 MB), and losing to the dense path is the one outcome we
// promise not to have.
constexpr double kCompressionRequiredSpeedup = 1.25;

struct CostModel {
  double alpha = 0;             // seconds per message (latency)
  double denseSecPerByte = 0;   // dense ring, per byte of the buffer (wire + reduction), latency excluded
  std::array<double, codec_format::kNumCodecs> codecSecPerByte{};  // compressed, per fp32 input byte
  bool denseProbed = false;
  std::array<bool, codec_format::kNumCodecs> codecProbed{};
  bool deterministic = false;  // no probe; choose() by size alone (see above)
  std::function<void(const std::string&)> log;  // one INFO line per probe and per new bucket shape

  // Predicted seconds of an all-reduce over n ranks: dense, of a `bytes` buffer; compressed, of `count` fp32.
  double predictDense(size_t bytes, int n) const;
  double predictCompressed(Codec c, size_t count, int n) const;
  // The fastest predicted choice among the dense path (buffer of `denseBytes`) and the candidates that
  // `requested` allows: kAutoCodecId -> {fp16, int8}; a lossy codec -> {fp16, it}; fp16/bf16 -> {it}.
  // Returns codec_format::kNone for dense.
  uint8_t choose(uint8_t requested, size_t count, size_t denseBytes, int n) const;
  std::string describe() const;
  // Why choose() answers what it does for this shape (the predicted times, or the deterministic rule).
  std::string explain(uint8_t requested, size_t count, size_t denseBytes, int n) const;

  // Collective: every rank of `comm` calls it at the same point (the engine does, before deciding on a
  // bucket). Probes latency and the dense ring once, and each candidate codec of `requested` the first
  // time it can be chosen: a few all-reduces of a 16 MB buffer (tens of ms on shared memory, about a
  // second on 1 Gbit Ethernet), timed as they really run.
  // `opts`: the engine's compressed settings (algorithm, block, segments), so the probe times what runs.
  void probe(Communicator& comm, const CompressedAllreduceOptions& opts, uint8_t requested);

 private:
  uint8_t decide(uint8_t requested, size_t count, size_t denseBytes, int n) const;
  mutable std::mutex loggedMu_;
  mutable std::set<std::tuple<uint8_t, size_t, size_t, int>> logged_;  // shapes whose decision was logged
};

// The codecs `requested` may turn into (besides the dense path).
std::vector<uint8_t> candidateCodecs(uint8_t requested);

}  // namespace nrt
