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

std::vector<uint8_t> candidateCodecs(uint8_t requested) {
  if (requested == kAutoCodecId) return {codec_format::kFp16, codec_format::kInt8};
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
     << (requested == kAutoCodecId ? "auto" : codecName(static_cast<Codec>(requested))) << ", " << n
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
  if (deterministic) return requested == kAutoCodecId ? codec_format::kInt8 : requested;
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
  std::vector<double> figures;  // [latency, dense] if not yet probed, then one time per codec in `todo`
  // On a failure, requests may still be posted into these (docs/failures.md): they are never freed.
  PostedBuffers posted(comm, "cost model probe");
  posted.keep(grad);
  posted.keep(work);
  posted.keep(figures);

  if (!denseProbed) {
    AllreduceOptions small;
    static_cast<CollectiveOptions&>(small) = opts;
    small.name = "cost model probe (latency)";
    small.buffer = work.data();
    small.count = 2;
    small.algorithm = AllreduceAlgorithm::kRecursiveDoubling;
    figures.push_back(fastest([&] { allreduce(comm, small); }, 20));  // cheap: take the best of many
    AllreduceOptions dense = small;
    dense.name = "cost model probe (dense)";
    dense.count = kProbeCount;
    dense.algorithm = AllreduceAlgorithm::kRing;
    figures.push_back(fastest([&] { allreduce(comm, dense); }, kProbeReps,
                              [&] { std::copy(grad.begin(), grad.end(), work.begin()); }));
  }
  std::vector<float> residual(todo.empty() ? 0 : kProbeCount), chunkResidual(residual.size());
  for (uint8_t c : todo) {
    CompressedAllreduceOptions o = opts;
    o.name = std::string("cost model probe (") + codecName(static_cast<Codec>(c)) + ")";
    o.buffer = work.data();
    o.count = kProbeCount;
    o.codec = static_cast<Codec>(c);
    o.residual = residual.data();
    o.chunkResidual = chunkResidual.data();
    o.chunkResidualCount = ownedChunk(kProbeCount, n, comm.rank()).count;
    figures.push_back(fastest([&] { compressedAllreduce(comm, o); }, kProbeReps,
                              [&] { std::copy(grad.begin(), grad.end(), work.begin()); }));
  }

  // Every rank must decide identically: agree on the slowest rank's timings.
  AllreduceOptions agree;
  static_cast<CollectiveOptions&>(agree) = opts;
  agree.name = "cost model agreement";
  agree.buffer = figures.data();
  agree.count = figures.size();
  agree.dtype = DataType::kFloat64;
  agree.op = ReduceOp::kMax;
  allreduce(comm, agree);

  size_t i = 0;
  if (!denseProbed) {
    alpha = n > 1 ? figures[i] / std::max(1.0, std::ceil(std::log2(n))) : 0;
    ++i;
  }
  const double latency = n > 1 ? messages(n) * alpha : 0;
  // Never let a noisy probe claim a path is free: keep at least 10% of its measured time per byte.
  const auto perByte = [&](double t) { return std::max(t - latency, 0.1 * t) / (kProbeCount * sizeof(float)); };
  if (!denseProbed) denseSecPerByte = perByte(figures[i++]);
  for (uint8_t c : todo) {
    codecSecPerByte[c] = perByte(figures[i++]);
    codecProbed[c] = true;
  }
  denseProbed = true;
  if (log) log("neptune_rt: cost model probed (slowest rank's figures): " + describe());
}

}  // namespace nrt
