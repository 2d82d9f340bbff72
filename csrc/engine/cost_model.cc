// Probe and predictions of the cost model (see cost_model.h).
#include "engine/cost_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <sstream>
#include <vector>

#include "collectives/allreduce.h"
#include "collectives/reduce.h"

namespace nrt {

namespace {

double secondsOf(const std::function<void()>& fn, int reps) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

}  // namespace

double CostModel::predictDense(size_t wireBytes, int n) const {
  if (n <= 1) return 0;
  const double share = 2.0 * (n - 1) / n;
  if (wireBytes <= kRecursiveDoublingMaxBytes)
    return std::ceil(std::log2(n)) * (alpha + wireBytes * beta) + std::ceil(std::log2(n)) * wireBytes * reduceSecPerByte;
  return 2.0 * (n - 1) * alpha + share * wireBytes * beta + 0.5 * share * wireBytes * reduceSecPerByte;
}

double CostModel::predictCompressed(Codec c, size_t count, int n, uint32_t block) const {
  if (n <= 1) return 0;
  const size_t bytes = count * sizeof(float);
  const double wire = static_cast<double>(payloadBytes(c, count, block));
  const int id = static_cast<int>(c);
  // two-phase: encode all, all-to-all, decode-add n chunk contributions (= S), re-encode S/n,
  // all-gather, decode everything (= S).
  const double compute = encodeSecPerByte[id] * bytes * (1.0 + 1.0 / n) + decodeSecPerByte[id] * bytes * 2.0;
  return 2.0 * (n - 1) * alpha + 2.0 * (n - 1) / n * wire * beta + compute;
}

uint8_t CostModel::choose(uint8_t requested, size_t count, size_t denseBytes, int n, uint32_t block) const {
  std::vector<uint8_t> candidates;
  if (requested == kAutoCodecId) {
    candidates = {codec_format::kFp16, codec_format::kInt8};
  } else if (requested == codec_format::kFp16 || requested == codec_format::kBf16) {
    candidates = {requested};
  } else {
    candidates = {codec_format::kFp16, requested};
  }
  uint8_t best = codec_format::kNone;
  double bestTime = predictDense(denseBytes, n);
  for (uint8_t c : candidates) {
    const double t = predictCompressed(static_cast<Codec>(c), count, n, block);
    if (t < bestTime) {
      bestTime = t;
      best = c;
    }
  }
  return best;
}

std::string CostModel::describe() const {
  std::ostringstream os;
  os << "alpha=" << alpha * 1e6 << "us bandwidth=" << (beta > 0 ? 1e-9 / beta : 0) << "GB/s reduce="
     << (reduceSecPerByte > 0 ? 1e-9 / reduceSecPerByte : 0) << "GB/s";
  for (Codec c : allCodecs()) {
    const int id = static_cast<int>(c);
    if (c == Codec::kNone) continue;
    os << " " << codecName(c) << "(enc " << (encodeSecPerByte[id] > 0 ? 1e-9 / encodeSecPerByte[id] : 0)
       << " dec " << (decodeSecPerByte[id] > 0 ? 1e-9 / decodeSecPerByte[id] : 0) << " GB/s)";
  }
  return os.str();
}

CostModel probeCostModel(Communicator& comm, const CollectiveOptions& opts, uint32_t block) {
  constexpr size_t kCodecProbeCount = 1 << 20;   // 4 MB of fp32: past the caches, like real buckets
  constexpr size_t kLinkProbeBytes = 4 << 20;    // bandwidth-bound on any link we care about
  const int n = comm.size();
  CostModel m;
  std::vector<float> grad(kCodecProbeCount), out(kCodecProbeCount);
  for (size_t i = 0; i < grad.size(); ++i) grad[i] = std::sin(0.001f * static_cast<float>(i)) * 1e-3f;
  std::vector<char> payload(payloadBytes(Codec::kNone, kCodecProbeCount, block));
  const double bytes = kCodecProbeCount * sizeof(float);
  m.reduceSecPerByte = secondsOf([&] { reduceInto(out.data(), grad.data(), kCodecProbeCount, DataType::kFloat32, ReduceOp::kSum); }, 3) / bytes;
  for (Codec c : allCodecs()) {
    const int id = static_cast<int>(c);
    payload.resize(payloadBytes(c, kCodecProbeCount, block));
    EncodeParams p;
    p.codec = c;
    p.blockSize = block;
    m.encodeSecPerByte[id] = secondsOf([&] { encode(p, grad.data(), kCodecProbeCount, nullptr, payload.data(), payload.size()); }, 3) / bytes;
    m.decodeSecPerByte[id] = secondsOf([&] { decodeAdd(payload.data(), payload.size(), out.data(), kCodecProbeCount); }, 3) / bytes;
  }

  AllreduceOptions o;
  static_cast<CollectiveOptions&>(o) = opts;
  o.name = "cost model probe";
  o.dtype = DataType::kFloat32;
  o.op = ReduceOp::kSum;
  std::vector<float> small(2), large(kLinkProbeBytes / sizeof(float));
  o.buffer = small.data();
  o.count = small.size();
  o.algorithm = AllreduceAlgorithm::kRecursiveDoubling;
  const double tSmall = secondsOf([&] { allreduce(comm, o); }, 10);
  o.buffer = large.data();
  o.count = large.size();
  o.algorithm = AllreduceAlgorithm::kRing;
  const double tLarge = secondsOf([&] { allreduce(comm, o); }, 3);
  if (n > 1) {
    m.alpha = tSmall / std::max(1.0, std::ceil(std::log2(n)));
    const double share = 2.0 * (n - 1) / n;
    const double wireTime = tLarge - 2.0 * (n - 1) * m.alpha - 0.5 * share * kLinkProbeBytes * m.reduceSecPerByte;
    m.beta = std::max(wireTime, 0.1 * tLarge) / (share * kLinkProbeBytes);
  }

  // Every rank must decide identically: agree on the slowest rank's figures.
  std::vector<double> figures = {m.alpha, m.beta, m.reduceSecPerByte};
  figures.insert(figures.end(), m.encodeSecPerByte.begin(), m.encodeSecPerByte.end());
  figures.insert(figures.end(), m.decodeSecPerByte.begin(), m.decodeSecPerByte.end());
  AllreduceOptions agree;
  static_cast<CollectiveOptions&>(agree) = opts;
  agree.name = "cost model agreement";
  agree.buffer = figures.data();
  agree.count = figures.size();
  agree.dtype = DataType::kFloat64;
  agree.op = ReduceOp::kMax;
  allreduce(comm, agree);
  m.alpha = figures[0];
  m.beta = figures[1];
  m.reduceSecPerByte = figures[2];
  const size_t k = codec_format::kNumCodecs;
  std::copy_n(figures.begin() + 3, k, m.encodeSecPerByte.begin());
  std::copy_n(figures.begin() + 3 + k, k, m.decodeSecPerByte.begin());
  m.valid = true;
  return m;
}

}  // namespace nrt
