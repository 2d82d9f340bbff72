// The background engine: one thread owns all communication. User threads enqueue named operations and get
// Handles; each cycle the thread negotiates with its peers which tensors every rank has submitted (and
// checks that their metadata agree), fuses small all-reduces into buckets, runs the collectives, and
// completes the handles. Small all-reduces travel inside the negotiation message itself ("eager"), so
// they cost one latency-bound exchange. Exercised by tests/test_engine.py under mpirun.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "codecs/codec.h"
#include "collectives/compressed_allreduce.h"
#include "collectives/options.h"
#include "comm/communicator.h"
#include "engine/handle.h"
#include "engine/cost_model.h"
#include "engine/matching.h"
#include "engine/residual_store.h"
#include "engine/tensor_meta.h"

namespace nrt {

struct EngineConfig {
  size_t fusionBytes = 64 << 20;         // NEPTUNE_RT_FUSION_BYTES
  size_t eagerBytes = 16 << 10;          // NEPTUNE_RT_EAGER_BYTES: all-reduces this small ride in negotiation
  size_t negotiationBytes = 256 << 10;   // capacity of one rank's negotiation message
  double cycleSeconds = 0.001;           // NEPTUNE_RT_CYCLE_TIME_MS: pause after a cycle that made no progress
  double timeoutSeconds = kDefaultTimeoutSeconds;  // NEPTUNE_RT_TIMEOUT_SECONDS
  double stallWarningSeconds = 60;       // NEPTUNE_RT_STALL_WARNING_SECONDS
  size_t segmentBytes = kDefaultSegmentBytes;      // NEPTUNE_RT_SEGMENT_BYTES
  size_t minSegmentPayload = kMinSegmentPayload;    // compressed segments; 0 once a segment size is set
  // Compression (codec != none): NEPTUNE_RT_CODEC_BLOCK, _ROUNDING, _SEED, _COMPRESSED_ALGORITHM, _COST_MODEL.
  uint32_t codecBlock = codec_format::kDefaultBlockSize;
  Rounding rounding = Rounding::kNearest;
  uint64_t seed = 0;
  CompressedAlgorithm compressedAlgorithm = CompressedAlgorithm::kTwoPhase;
  bool useCostModel = true;  // false: always use the requested codec ("auto" then means int8)
};

// Bytes one rank sends in a dense all-reduce of `bytes` (ring: 2(n-1)/n S; recursive doubling: log2 n S).
uint64_t denseWireBytes(size_t bytes, int n);

struct Entry {
  TensorMeta meta;
  const void* input = nullptr;
  void* output = nullptr;  // allreduce/broadcast write here (may equal input); allgather fills handle->output
  double prescale = 1.0;
  double postscale = 1.0;
  std::shared_ptr<Handle> handle;
  uint64_t seq = 0;
  // Compressed all-reduces: keep an error-feedback residual for this name (false for automatic names,
  // which change every call, so no residual could ever be used again).
  bool errorFeedback = true;
};

class Engine {
 public:
  Engine(std::unique_ptr<Communicator> comm, EngineConfig config);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const EngineConfig& config() const { return config_; }

  // Throws std::invalid_argument when the name is already in flight on this rank, and runtime_error when
  // the engine has stopped (with the reason).
  std::shared_ptr<Handle> enqueue(Entry entry);
  // Waits for `h` (timeout <= 0: no limit of its own; the engine's timeouts still apply). While the
  // engine thread is idle the calling thread runs the negotiation cycles itself. False on timeout.
  bool waitFor(Handle& h, double timeoutSeconds);
  // Collective: every rank must call it. Completes pending work first; fails what can never complete.
  void shutdown();
  bool running() const { return running_.load(); }
  std::string fatalError() const;
  // The cost model's figures once probed (empty before the first compressed bucket).
  std::string costModelDescription() const;
  // Error-feedback residuals (residual_store.h), this rank's only; no communication. Export copies them; import
  // replaces them and throws std::runtime_error while compressed all-reduces are in flight; release frees
  // the residuals of one tensor name. Safe from any thread (and from completion callbacks).
  std::vector<ResidualState> exportResiduals();
  void importResiduals(std::vector<ResidualState> states);
  void releaseResiduals(const std::string& name);
  size_t residualBytes();

 private:
  enum class StepResult { kBusy, kProgress, kNoProgress, kStopped };
  void loop();
  // One negotiation cycle, unless another thread is running one (kBusy). Errors stop the engine.
  StepResult step();
  bool cycle();  // one negotiation + execution; returns true if anything completed
  std::vector<char> buildMessage();
  void execute(const MatchResult& match);
  void executeAllreduces(const std::vector<const ReadyTensor*>& tensors);
  void executeEager(const ReadyTensor& t, Entry* local);
  void executeBucket(const std::vector<const ReadyTensor*>& bucket);
  void executeCompressedBucket(const std::vector<const ReadyTensor*>& bucket, const std::vector<Entry*>& locals);
  void executeAllgather(const ReadyTensor& t, Entry* local);
  void executeBroadcast(const ReadyTensor& t, Entry* local);
  void trackStalls(const MatchResult& match);
  void failAbandoned(const std::vector<std::string>& abandoned, const MatchResult& match);
  void finish(Entry& e, const std::string& error = std::string());
  void failEverything(const std::string& error, bool timedOut);
  Entry* findPending(const std::string& name);
  CollectiveOptions collectiveOptions(const std::string& name) const;
  // The engine's compressed all-reduce settings (algorithm, block, rounding, seed, segments) for a bucket.
  CompressedAllreduceOptions compressedOptions(const std::string& name, uint32_t block) const;

  std::unique_ptr<Communicator> comm_;
  const EngineConfig config_;
  const int rank_;
  const int size_;

  // Shared with user threads.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Entry> incoming_;
  std::atomic<size_t> pendingCount_{0};   // pending_.size() after the last cycle
  // Held by whichever thread runs a cycle (the engine thread, or a user thread waiting in waitFor):
  // one thread at a time owns all communication.
  std::mutex cycleMu_;
  std::unordered_map<std::string, std::shared_ptr<Handle>> inFlight_;  // name -> handle (rejects duplicates)
  uint64_t nextSeq_ = 0;
  bool stopRequested_ = false;
  std::string fatal_;
  std::string costModelText_;
  std::atomic<bool> running_{true};

  // Only under cycleMu_.
  std::vector<Entry> pending_;  // in submission order
  std::unordered_map<std::string, Entry*> pendingByName_;  // index of pending_, rebuilt every cycle
  std::unordered_map<std::string, Clock::time_point> stallSince_;  // rank 0: partial tensors
  std::unordered_map<std::string, bool> stallWarned_;
  std::vector<std::string> toAbandon_;                              // rank 0: to announce next cycle
  std::vector<char> fusion_;
  std::vector<char> scratch_;
  bool shutdownDone_ = false;
  int participants_ = 1;  // ranks that have not joined, in the cycle being executed
  // Compression state (engine thread).
  CostModel costModel_;
  std::vector<float> work_;
  // Error feedback, keyed by (tensor name, codec) in tensor coordinates, so it survives re-bucketing. Guarded
  // by residualMu_ (never held while completion callbacks run), so user threads can export/import/release.
  std::mutex residualMu_;
  ResidualStore residuals_{rank_};
  std::atomic<int> compressedInFlight_{0};  // enqueued compressed all-reduces not yet finished
  std::vector<float> bucketResidual_;
  std::vector<float> chunkResidual_;
  std::vector<char> halfWork_;  // fp16/bf16 buckets travel as 16-bit values
  PayloadScratch payloadScratch_;  // compressed all-reduce payloads, reused from bucket to bucket
  uint64_t compressedStep_ = 0;

  std::thread thread_;
};

}  // namespace nrt
