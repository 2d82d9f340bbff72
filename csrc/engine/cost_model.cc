// Probe and predictions of the cost model (see cost_model.h).
#include "engine/cost_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <sstream>
#include <vector>

#include "collectives/allreduce.h"
#include "collectives/compressed_allreduce.h"

namespace nrt {

namespace {

// Large enough to be bandwidth-bound on any link (the per-byte costs are what we extrapolate), small
// enough that the whole probe stays well under a second on 1 Gbit Ethernet.
constexpr size_t kProbeCount = 4 << 20;  // fp32 values: 16 MB, past the caches like real buckets
// On a slow link a 1 MB dense ring is already bandwidth-bound (tens of ms against a per-message latency
// well under 1 ms), and 16 MB would make the probe cost seconds (at 100 Mbit per node a 16 MB dense ring
// over 4 ranks takes ~2 s, and the probe runs it twice, then fp16 and int8 too). So the probe first times a
// 1 MB dense ring; where that takes kSlowLinkProbeSeconds or more, every figure is probed at 1 MB.
constexpr size_t kSmallProbeCount = 256 << 10;  // fp32 values: 1 MB
constexpr double kSlowLinkProbeSeconds = 0.01;  // 1 MB over 4 ranks: ~12 ms at 1 Gbit per node; shm ~1-3 ms
constexpr int kProbeReps = 2;

// Best time of `fn` over `reps` runs; `setup` (untimed) restores its input before each.
double fastest(const std::function<void()>& fn, int reps = kProbeReps, const std::function<void()>& setup = {}) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    if (setup) setup();
    const auto t0 = Clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

double messages(int n) { return 2.0 * (n - 1); }  // ring and two-phase both take 2(n-1) message steps

}  // namespace

double CostModel::predictDense(size_t bytes, int n) const {
  if (n <= 1) return 0;
  if (bytes <= kRecursiveDoublingMaxBytes) return std::ceil(std::log2(n)) * alpha + bytes * denseSecPerByte;
  return messages(n) * alpha + bytes * denseSecPerByte;
}

double CostModel::predictCompressed(Codec c, size_t count, int n) const {
  if (n <= 1) return 0;
  return messages(n) * alpha + count * sizeof(float) * codecSecPerByte[static_cast<int>(c)];
}

std::string requestedCodecName(uint8_t id) {
  if (id == kAutoCodecId) return "auto";
  if (id == kAutoLowBitCodecId) return "auto_lowbit";
  return codecName(static_cast<Codec>(id));
}

uint8_t requestedCodecIdFromName(const std::string& name) {
  if (name == "auto") return kAutoCodecId;
  if (name == "auto_lowbit") return kAutoLowBitCodecId;
  return static_cast<uint8_t>(codecFromName(name));  // throws, listing the names
}

std::vector<uint8_t> candidateCodecs(uint8_t requested) {
  if (requested == kAutoCodecId) return {codec_format::kFp16, codec_format::kInt8};
  if (requested == kAutoLowBitCodecId)
    return {codec_format::kFp16, codec_format::kInt8, codec_format::kInt4, codec_format::kOneBit};
  if (requested == codec_format::kFp16 || requested == codec_format::kBf16) return {requested};
  return {codec_format::kFp16, requested};
}

uint8_t CostModel::choose(uint8_t requested, size_t count, size_t denseBytes, int n) const {
  const uint8_t chosen = decide(requested, count, denseBytes, n);
  if (log) {
    bool fresh;
    {
      std::lock_guard<std::mutex> lock(loggedMu_);
      fresh = logged_.emplace(requested, count, denseBytes, n).second;
    }
    if (fresh) log(explain(requested, count, denseBytes, n));
  }
  return chosen;
}

std::string CostModel::explain(uint8_t requested, size_t count, size_t denseBytes, int n) const {
  std::ostringstream os;
  const uint8_t chosen = decide(requested, count, denseBytes, n);
  os << "neptune_rt: cost model: a bucket of " << count << " values (" << denseBytes << " bytes dense, codec "
     << requestedCodecName(requested) << ", " << n
     << " ranks) goes " << (chosen == codec_format::kNone ? "dense" : codecName(static_cast<Codec>(chosen)));
  if (count * sizeof(float) < kMinCompressedBytes) {
    os << ": below " << (kMinCompressedBytes >> 10) << " KB of fp32 every bucket stays dense";
  } else if (deterministic) {
    os << ": NEPTUNE_RT_DETERMINISTIC=1 decides by size alone (no timing)";
  } else {
    os.precision(3);
    os << ": predicted dense " << predictDense(denseBytes, n) * 1e3 << " ms";
    for (uint8_t c : candidateCodecs(requested))
      os << ", " << codecName(static_cast<Codec>(c)) << " " << predictCompressed(static_cast<Codec>(c), count, n) * 1e3
         << " ms";
    os << " (compression must be " << kCompressionRequiredSpeedup << "x faster; probed " << describe() << ")";
  }
  return os.str();
}

uint8_t CostModel::decide(uint8_t requested, size_t count, size_t denseBytes, int n) const {
  if (count * sizeof(float) < kMinCompressedBytes) return codec_format::kNone;
  if (deterministic) return isAutoCodec(requested) ? codec_format::kInt8 : requested;
  const std::vector<uint8_t> candidates = candidateCodecs(requested);
  uint8_t best = codec_format::kNone;
  double bestTime = predictDense(denseBytes, n);
  for (uint8_t c : candidates) {
    const double t = predictCompressed(static_cast<Codec>(c), count, n) * kCompressionRequiredSpeedup;
    if (t < bestTime) {
      bestTime = t;
      best = c;
    }
  }
  return best;
}

std::string CostModel::describe() const {
  std::ostringstream os;
  if (deterministic) return "deterministic (NEPTUNE_RT_DETERMINISTIC=1): no probe; compress buckets of at least " +
                            std::to_string(kMinCompressedBytes >> 10) + " KB of fp32 with the requested codec";
  os << "alpha=" << alpha * 1e6 << "us dense=" << (denseSecPerByte > 0 ? 1e-9 / denseSecPerByte : 0) << "GB/s";
  for (Codec c : allCodecs()) {
    const double s = codecSecPerByte[static_cast<int>(c)];
    if (c != Codec::kNone && s > 0) os << " " << codecName(c) << "=" << 1e-9 / s << "GB/s";
  }
  os << " (effective all-reduce speed per fp32 byte)";
  return os.str();
}

void CostModel::probe(Communicator& comm, const CompressedAllreduceOptions& opts, uint8_t requested) {
  if (deterministic) return;  // nothing timed: decisions by size alone
  std::vector<uint8_t> todo;
  for (uint8_t c : candidateCodecs(requested))
    if (!codecProbed[c]) todo.push_back(c);
  if (denseProbed && todo.empty()) return;
  const int n = comm.size();
  std::vector<float> grad(kProbeCount), work(kProbeCount);
  for (size_t i = 0; i < grad.size(); ++i) grad[i] = std::sin(0.001f * static_cast<float>(i + comm.rank())) * 1e-3f;
  std::vector<double> sizing;   // [latency, dense at kSmallProbeCount]: agreed first, it fixes the probe size
  std::vector<double> figures;  // [dense] if not yet probed at the probe size, then one time per codec in `todo`
  // On a failure, requests may still be posted into these (docs/failures.md): they are never freed.
  PostedBuffers posted(comm, "cost model probe");
  posted.keep(grad);
  posted.keep(work);
  posted.keep(sizing);
  posted.keep(figures);
  const auto restore = [&] { std::copy(grad.begin(), grad.end(), work.begin()); };
  // Every rank must decide identically: agree on the slowest rank's timings.
  const auto agree = [&](std::vector<double>& v, const char* what) {
    AllreduceOptions o;
    static_cast<CollectiveOptions&>(o) = opts;
    o.name = what;
    o.buffer = v.data();
    o.count = v.size();
    o.dtype = DataType::kFloat64;
    o.op = ReduceOp::kMax;
    allreduce(comm, o);
  };

  AllreduceOptions dense;
  static_cast<CollectiveOptions&>(dense) = opts;
  dense.name = "cost model probe (dense)";
  dense.buffer = work.data();
  dense.algorithm = AllreduceAlgorithm::kRing;
  const bool sizingNow = !denseProbed;
  if (sizingNow) {
    AllreduceOptions small = dense;
    small.name = "cost model probe (latency)";
    small.count = 2;
    small.algorithm = AllreduceAlgorithm::kRecursiveDoubling;
    sizing.push_back(fastest([&] { allreduce(comm, small); }, 20));  // cheap: take the best of many
    dense.count = kSmallProbeCount;
    sizing.push_back(fastest([&] { allreduce(comm, dense); }, kProbeReps, restore));
    agree(sizing, "cost model agreement (probe size)");
    alpha = n > 1 ? sizing[0] / std::max(1.0, std::ceil(std::log2(n))) : 0;
    probeCount_ = sizing[1] >= kSlowLinkProbeSeconds ? kSmallProbeCount : kProbeCount;
    dense.count = probeCount_;
    if (probeCount_ != kSmallProbeCount)
      figures.push_back(fastest([&] { allreduce(comm, dense); }, kProbeReps, restore));
  }
  std::vector<float> residual(todo.empty() ? 0 : probeCount_), chunkResidual(residual.size());
  posted.keep(residual);
  posted.keep(chunkResidual);
  for (uint8_t c : todo) {
    CompressedAllreduceOptions o = opts;
    o.name = std::string("cost model probe (") + codecName(static_cast<Codec>(c)) + ")";
    o.buffer = work.data();
    o.count = probeCount_;
    o.codec = static_cast<Codec>(c);
    o.residual = residual.data();
    o.chunkResidual = chunkResidual.data();
    o.chunkResidualCount = ownedChunk(probeCount_, n, comm.rank()).count;
    figures.push_back(fastest([&] { compressedAllreduce(comm, o); }, kProbeReps, restore));
  }
  if (!figures.empty()) agree(figures, "cost model agreement");

  const double latency = n > 1 ? messages(n) * alpha : 0;
  // Never let a noisy probe claim a path is free: keep at least 10% of its measured time per byte.
  const auto perByte = [&](double t) { return std::max(t - latency, 0.1 * t) / (probeCount_ * sizeof(float)); };
  size_t i = 0;
  if (sizingNow) denseSecPerByte = perByte(probeCount_ == kSmallProbeCount ? sizing[1] : figures[i++]);
  for (uint8_t c : todo) {
    codecSecPerByte[c] = perByte(figures[i++]);
    codecProbed[c] = true;
  }
  denseProbed = true;
  if (log) log("neptune_rt: cost model probed (slowest rank's figures, " + std::to_string(probeCount_ * 4 >> 10) +
               " KB buffers): " + describe());
}

}  // namespace nrt
