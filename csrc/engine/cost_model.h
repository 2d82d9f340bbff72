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

// TensorMeta::codec holds a codec's format id, or one of the two auto ids; kForceCodecBit set means "use
// exactly this codec, do not ask the cost model" (per call, agreed across ranks like any metadata).
// "auto" (kAutoCodecId) picks among {fp16, int8}: the codecs that train as well as dense on raw gradients.
// "auto_lowbit" (kAutoLowBitCodecId) picks among {fp16, int8, int4, onebit}: for callers that compress a
// momentum-corrected update with error feedback (the PyTorch binding's local momentum, docs/torch.md), where
// int4 and onebit train like dense too. Both fall back to the dense path, and both mean int8 where no
// timing decides (forced, or NEPTUNE_RT_DETERMINISTIC=1).
constexpr uint8_t kAutoCodecId = 0x7f;
constexpr uint8_t kAutoLowBitCodecId = 0x7e;
constexpr uint8_t kForceCodecBit = 0x80;
inline bool isAutoCodec(uint8_t id) { return id == kAutoCodecId || id == kAutoLowBitCodecId; }
// The name a requested codec id goes by ("auto", "auto_lowbit", or the codec's own name).
std::string requestedCodecName(uint8_t id);
// The inverse; throws std::invalid_argument listing the names.
uint8_t requestedCodecIdFromName(const std::string& name);

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
  // `requested` allows: kAutoCodecId -> {fp16, int8}; kAutoLowBitCodecId -> {fp16, int8, int4, onebit};
  // a lossy codec -> {fp16, it}; fp16/bf16 -> {it}. A codec wins only if predicted kCompressionRequiredSpeedup
  // times faster than dense; among the codecs the fastest prediction wins (ties: the earlier in that list).
  // Returns codec_format::kNone for dense.
  uint8_t choose(uint8_t requested, size_t count, size_t denseBytes, int n) const;
  std::string describe() const;
  // Why choose() answers what it does for this shape (the predicted times, or the deterministic rule).
  std::string explain(uint8_t requested, size_t count, size_t denseBytes, int n) const;

  // Collective: every rank of `comm` calls it at the same point (the engine does, before deciding on a
  // bucket). Probes latency and the dense ring once, and each candidate codec of `requested` the first
  // time it can be chosen, timed as they really run: a few all-reduces of a 16 MB buffer (tens of ms on
  // shared memory), or of 1 MB where a 1 MB dense ring already takes kSlowLinkProbeSeconds (a slow link:
  // bandwidth-bound at that size, and 16 MB would cost seconds, e.g. ~2 s per dense run at 100 Mbit).
  // `opts`: the engine's compressed settings (algorithm, block, segments), so the probe times what runs.
  void probe(Communicator& comm, const CompressedAllreduceOptions& opts, uint8_t requested);

 private:
  size_t probeCount_ = 0;  // fp32 values per probe all-reduce, fixed by the first probe
  uint8_t decide(uint8_t requested, size_t count, size_t denseBytes, int n) const;
  mutable std::mutex loggedMu_;
  mutable std::set<std::tuple<uint8_t, size_t, size_t, int>> logged_;  // shapes whose decision was logged
};

// The codecs `requested` may turn into (besides the dense path).
std::vector<uint8_t> candidateCodecs(uint8_t requested);

}  // namespace nrt
