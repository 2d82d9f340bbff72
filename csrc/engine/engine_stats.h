// Cumulative counters of one engine (buckets, tensors, bytes, seconds per phase, buckets per codec) that any
// thread reads without synchronisation (relaxed atomics), and a bounded ring of per-bucket records for
// timelines. Written only by the thread that runs a cycle. Exercised by tests/test_engine.py ("stats").
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "codecs/format.h"

namespace nrt {

// Seconds on CLOCK_MONOTONIC (std::chrono::steady_clock on Linux), the clock of Python's time.monotonic().
double monotonicSeconds();

struct BucketRecord {
  double start = 0;  // monotonicSeconds() when the bucket began
  std::string codec = "none";
  uint32_t tensors = 0;
  uint64_t bytesRaw = 0;   // uncompressed bytes all-reduced (in the tensors' own dtype)
  uint64_t bytesWire = 0;  // bytes this rank sent
  // The bucket's encoded size, one copy: what the codec that ran made of bytesRaw (bytesRaw itself for dense
  // buckets, the fp32 work buffer's bytes for a compressed bucket sent dense). bytesRaw / bytesEncoded is the
  // compression the codec gave, whatever the algorithm and the world size.
  uint64_t bytesEncoded = 0;
  double encodeSeconds = 0, wireSeconds = 0, decodeSeconds = 0;
  // Dense buckets: the collective that ran ("eager", "recursive_doubling", "halving_doubling", "ring", "mpi" for
  // MPI_Iallreduce; "" for compressed buckets). All: whether the members were packed into the fusion (dense) or
  // fp32 work (compressed) buffer rather than worked on where they lie.
  std::string algorithm;
  bool packed = false;
};

class EngineStats {
 public:
  static constexpr size_t kRecordCapacity = 4096;

  struct Totals {
    uint64_t buckets = 0, tensors = 0, bytesRaw = 0, bytesWire = 0, bytesEncoded = 0;
    double negotiateSeconds = 0, encodeSeconds = 0, wireSeconds = 0, decodeSeconds = 0, waitSeconds = 0;
    std::array<uint64_t, codec_format::kNumCodecs> codecBuckets{};
    std::array<uint64_t, codec_format::kNumCodecs> codecBytesRaw{};  // bytesRaw by the codec that ran
    // Response cache (response_cache.h), counted on agreed results, so equal on every rank: tensors that ran
    // from a slot (hits) or after full metadata (misses, all-reduces and broadcasts only), slots dropped
    // because a rank changed the tensor's key, slots reused for another tensor at capacity.
    uint64_t cacheHits = 0, cacheMisses = 0, cacheInvalidations = 0, cacheEvictions = 0;
    // Where a cycle's time goes (the profile of benchmarks/engine_overhead.py): cycles run, and seconds building
    // this rank's message, in the exchange (waiting for peers included), parsing and matching, executing; and
    // how often a waiting caller found the engine thread driving the cycle (a thread hand-off), and how many
    // submissions (and hand-overs by Engine::leaveToEngine) woke the engine thread, each a context switch on the
    // rank's cores (see caller-driven mode in engine_drive.cc).
    uint64_t cycles = 0, handoffs = 0, submitWakeups = 0;
    bool callerDriven = false;  // caller-driven mode is on now (not a counter)
    double buildSeconds = 0, exchangeSeconds = 0, matchSeconds = 0, executeSeconds = 0;
  };

  void addBucket(const BucketRecord& r, uint8_t codecId);
  void addNegotiation(double seconds) { add(negotiateNs_, seconds); }
  void addWait(double seconds) { add(waitNs_, seconds); }
  void addCycle(double build, double exchange, double match, double execute) {
    cycles_.fetch_add(1, std::memory_order_relaxed);
    add(buildNs_, build);
    add(exchangeNs_, exchange);
    add(matchNs_, match);
    add(executeNs_, execute);
  }
  void addHandoff() { handoffs_.fetch_add(1, std::memory_order_relaxed); }
  void addSubmitWakeup() { submitWakeups_.fetch_add(1, std::memory_order_relaxed); }
  void setCallerDriven(bool on) { callerDriven_.store(on, std::memory_order_relaxed); }
  void addCacheLookups(uint64_t hits, uint64_t misses) {
    cacheHits_.fetch_add(hits, std::memory_order_relaxed);
    cacheMisses_.fetch_add(misses, std::memory_order_relaxed);
  }
  void addCacheChanges(uint64_t invalidations, uint64_t evictions) {
    cacheInvalidations_.fetch_add(invalidations, std::memory_order_relaxed);
    cacheEvictions_.fetch_add(evictions, std::memory_order_relaxed);
  }
  Totals totals() const;
  // The last kRecordCapacity records, oldest first; `clear` empties the ring.
  std::vector<BucketRecord> records(bool clear);

 private:
  static void add(std::atomic<uint64_t>& ns, double seconds);

  std::atomic<uint64_t> buckets_{0}, tensors_{0}, bytesRaw_{0}, bytesWire_{0}, bytesEncoded_{0};
  std::atomic<uint64_t> negotiateNs_{0}, encodeNs_{0}, wireNs_{0}, decodeNs_{0}, waitNs_{0};
  std::atomic<uint64_t> cycles_{0}, handoffs_{0}, submitWakeups_{0};
  std::atomic<uint64_t> buildNs_{0}, exchangeNs_{0}, matchNs_{0}, executeNs_{0};
  std::atomic<bool> callerDriven_{false};
  std::atomic<uint64_t> cacheHits_{0}, cacheMisses_{0}, cacheInvalidations_{0}, cacheEvictions_{0};
  std::array<std::atomic<uint64_t>, codec_format::kNumCodecs> codecBuckets_{}, codecBytesRaw_{};
  std::mutex ringMu_;  // the ring only; the counters above need none
  std::vector<BucketRecord> ring_;
  size_t next_ = 0;  // where the next record goes once the ring is full
};

}  // namespace nrt
