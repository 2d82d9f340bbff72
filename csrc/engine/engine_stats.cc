// Engine counters and bucket records (see engine_stats.h).
#include "engine/engine_stats.h"

#include <chrono>
#include <cmath>

namespace nrt {

double monotonicSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void EngineStats::add(std::atomic<uint64_t>& ns, double seconds) {
  if (seconds > 0) ns.fetch_add(static_cast<uint64_t>(std::llround(seconds * 1e9)), std::memory_order_relaxed);
}

void EngineStats::addBucket(const BucketRecord& r, uint8_t codecId) {
  buckets_.fetch_add(1, std::memory_order_relaxed);
  tensors_.fetch_add(r.tensors, std::memory_order_relaxed);
  bytesRaw_.fetch_add(r.bytesRaw, std::memory_order_relaxed);
  bytesWire_.fetch_add(r.bytesWire, std::memory_order_relaxed);
  bytesEncoded_.fetch_add(r.bytesEncoded, std::memory_order_relaxed);
  add(encodeNs_, r.encodeSeconds);
  add(wireNs_, r.wireSeconds);
  add(decodeNs_, r.decodeSeconds);
  if (codecId < codecBuckets_.size()) {
    codecBuckets_[codecId].fetch_add(1, std::memory_order_relaxed);
    codecBytesRaw_[codecId].fetch_add(r.bytesRaw, std::memory_order_relaxed);
  }
  std::lock_guard<std::mutex> lock(ringMu_);
  if (ring_.size() < kRecordCapacity) {
    ring_.push_back(r);
  } else {
    ring_[next_] = r;
    next_ = (next_ + 1) % kRecordCapacity;
  }
}

EngineStats::Totals EngineStats::totals() const {
  const auto sec = [](const std::atomic<uint64_t>& ns) { return ns.load(std::memory_order_relaxed) * 1e-9; };
  Totals t;
  t.buckets = buckets_.load(std::memory_order_relaxed);
  t.tensors = tensors_.load(std::memory_order_relaxed);
  t.bytesRaw = bytesRaw_.load(std::memory_order_relaxed);
  t.bytesWire = bytesWire_.load(std::memory_order_relaxed);
  t.bytesEncoded = bytesEncoded_.load(std::memory_order_relaxed);
  t.negotiateSeconds = sec(negotiateNs_);
  t.encodeSeconds = sec(encodeNs_);
  t.wireSeconds = sec(wireNs_);
  t.decodeSeconds = sec(decodeNs_);
  t.waitSeconds = sec(waitNs_);
  t.cycles = cycles_.load(std::memory_order_relaxed);
  t.handoffs = handoffs_.load(std::memory_order_relaxed);
  t.submitWakeups = submitWakeups_.load(std::memory_order_relaxed);
  t.callerDriven = callerDriven_.load(std::memory_order_relaxed);
  t.buildSeconds = sec(buildNs_);
  t.exchangeSeconds = sec(exchangeNs_);
  t.matchSeconds = sec(matchNs_);
  t.executeSeconds = sec(executeNs_);
  t.cacheHits = cacheHits_.load(std::memory_order_relaxed);
  t.cacheMisses = cacheMisses_.load(std::memory_order_relaxed);
  t.cacheInvalidations = cacheInvalidations_.load(std::memory_order_relaxed);
  t.cacheEvictions = cacheEvictions_.load(std::memory_order_relaxed);
  for (size_t i = 0; i < t.codecBuckets.size(); ++i) {
    t.codecBuckets[i] = codecBuckets_[i].load(std::memory_order_relaxed);
    t.codecBytesRaw[i] = codecBytesRaw_[i].load(std::memory_order_relaxed);
  }
  return t;
}

std::vector<BucketRecord> EngineStats::records(bool clear) {
  std::lock_guard<std::mutex> lock(ringMu_);
  std::vector<BucketRecord> out(ring_.begin() + next_, ring_.end());
  out.insert(out.end(), ring_.begin(), ring_.begin() + next_);
  if (clear) {
    ring_.clear();
    next_ = 0;
  }
  return out;
}

}  // namespace nrt
