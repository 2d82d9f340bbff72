// The background engine: one thread owns all communication. User threads enqueue named operations and get
// Handles; each cycle the thread negotiates with its peers which tensors every rank has submitted (and
// checks that their metadata agree), fuses small all-reduces into buckets, runs the collectives, and
// completes the handles. Small all-reduces travel inside the negotiation message itself ("eager"), so
// they cost one latency-bound exchange. Exercised by tests/test_engine.py under mpirun.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "codecs/codec.h"
#include "collectives/allreduce.h"
#include "collectives/compressed_allreduce.h"
#include "collectives/exchange.h"
#include "collectives/options.h"
#include "comm/communicator.h"
#include "engine/completion_queue.h"
#include "engine/cost_model.h"
#include "engine/engine_stats.h"
#include "engine/handle.h"
#include "engine/matching.h"
#include "engine/residual_store.h"
#include "engine/response_cache.h"
#include "engine/tensor_meta.h"

namespace nrt {

struct EngineConfig {
  size_t fusionBytes = 64 << 20;         // NEPTUNE_RT_FUSION_BYTES
  size_t eagerBytes = 16 << 10;          // NEPTUNE_RT_EAGER_BYTES: all-reduces this small ride in negotiation
  size_t negotiationBytes = 256 << 10;   // capacity of one rank's negotiation message
  double cycleSeconds = 0.001;           // NEPTUNE_RT_CYCLE_TIME_MS: pause after a cycle that made no progress
  // NEPTUNE_RT_DRIVE_WINDOW_US: how long the engine thread leaves freshly queued work to a caller about to wait
  // for it (Engine::leaveToCaller, engine_drive.cc); asynchronous work nobody waits on starts this much later (about
  // 2 ms, once, in caller-driven mode: see there).
  std::chrono::microseconds driveWindow{50};
  double timeoutSeconds = kDefaultTimeoutSeconds;  // NEPTUNE_RT_TIMEOUT_SECONDS
  double stallWarningSeconds = 60;       // NEPTUNE_RT_STALL_WARNING_SECONDS
  size_t segmentBytes = kDefaultSegmentBytes;      // NEPTUNE_RT_SEGMENT_BYTES
  size_t minSegmentPayload = kMinSegmentPayload;    // compressed segments; 0 once a segment size is set
  // Compression (codec != none): NEPTUNE_RT_CODEC_BLOCK, _ROUNDING, _SEED, _COMPRESSED_ALGORITHM, _COST_MODEL.
  uint32_t codecBlock = codec_format::kDefaultBlockSize;
  Rounding rounding = Rounding::kNearest;
  uint64_t seed = 0;
  CompressedAlgorithm compressedAlgorithm = CompressedAlgorithm::kAuto;  // as documented: by world size
  bool useCostModel = true;  // false: always use the requested codec ("auto" then means int8)
  bool deterministic = false;  // NEPTUNE_RT_DETERMINISTIC: no timing-based decisions (cost_model.h)
  size_t cacheCapacity = 1024;  // NEPTUNE_RT_CACHE_CAPACITY: response-cache slots (response_cache.h); 0: none
  // NEPTUNE_RT_NATIVE_ALLREDUCE_BYTES (useNativeAllreduce); 0: never. The binding's default ('auto') is
  // defaultNativeAllreduceBytes(n, denseAlgorithm); this one is for engines made in C++.
  size_t nativeAllreduceBytes = 1 << 20;
  // NEPTUNE_RT_ALLREDUCE_ALGORITHM: our algorithm for dense buckets above kRecursiveDoublingMaxBytes (auto:
  // chooseAllreduceAlgorithm; ring; halving_doubling, power-of-two worlds only).
  AllreduceAlgorithm denseAlgorithm = AllreduceAlgorithm::kAuto;
};

// Log levels of Engine::setLogSink (Python's logging levels).
constexpr int kLogInfo = 20;
constexpr int kLogWarning = 30;

// Bytes one rank sends in a dense all-reduce of `bytes` (ring: 2(n-1)/n S; recursive doubling: log2 n S).
uint64_t denseWireBytes(size_t bytes, int n);
// A compressed bucket of `count` values (`rawBytes` in the tensors' own dtype) as the codec that ran encoded it, one
// copy: rawBytes where it went dense (the cost model's choice, and always in a 1-rank world), count * 2 for
// fp16/bf16, the payload of int8/int4/onebit; 0 for an empty bucket (stats: bytes_encoded).
uint64_t encodedBytes(Codec codec, size_t count, uint64_t rawBytes, uint32_t block);

struct Entry {
  TensorMeta meta;
  const void* input = nullptr;
  void* output = nullptr;  // allreduce/broadcast write here (may equal input); allgather fills handle->output
  double prescale = 1.0;
  double postscale = 1.0;
  std::shared_ptr<Handle> handle;
  uint64_t seq = 0;
  Clock::time_point queuedAt{};  // when enqueue queued it (the engine thread's drive window, engine_drive.cc)
  // Compressed all-reduces: keep an error-feedback residual for this name (false for automatic names,
  // which change every call, so no residual could ever be used again).
  bool errorFeedback = true;
};

// Dense buckets above our recursive-doubling range and up to EngineConfig::nativeAllreduceBytes go to the
// transport's own all-reduce (MPI_Iallreduce) where it has one for the dtype. The default depends on what ours
// would be (benchmarks/dense_native.py, shared memory, 4 ranks; docs/design.md, "Dense buckets"): against our ring
// Open MPI's won at 256 KB and tied from 1 to 4 MB (kNativeAllreduceMaxBytes); against halving-doubling it won at
// 128 KB, tied at 256 KB and lost 1.2-1.3x from 512 KB to 2.5 MB (kNativeBeforeHalvingDoublingBytes).
constexpr size_t kNativeAllreduceMaxBytes = 1 << 20;
constexpr size_t kNativeBeforeHalvingDoublingBytes = 256 << 10;
// The default of NEPTUNE_RT_NATIVE_ALLREDUCE_BYTES for a world of n ranks whose large dense buckets use `algorithm`.
size_t defaultNativeAllreduceBytes(int n, AllreduceAlgorithm algorithm);
// The explicit decision function of executeBucket (engine_execute.cc).
bool useNativeAllreduce(const Communicator& comm, size_t bytes, size_t maxBytes, DataType dtype, ReduceOp op);

// True when a bucket's members are all in place (output == input) and follow each other in memory in bucket order
// (views of one flat buffer): the collective then runs on them where they lie (engine_execute.cc).
bool adjacentInPlace(const std::vector<const ReadyTensor*>& bucket, const std::vector<Entry*>& locals);

// Throws std::invalid_argument, naming the rank and the tensor, for what no rank could ever run: negative
// dimensions or a byte size that overflows, a prescale/postscale other than 1 on an integer tensor (or one
// that is not finite), a codec on an integer tensor or an unknown codec id, a broadcast root outside the job.
// Called by enqueue, so the caller learns at once, before any peer waits for this rank.
void checkEntry(const Entry& e, int rank, int size);

class Engine {
 public:
  Engine(std::unique_ptr<Communicator> comm, EngineConfig config);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const EngineConfig& config() const { return config_; }
  // Poisoned after a communication failure (communicator.h); then the engine must never be destroyed,
  // since requests left posted may still touch its buffers (bind_engine.cc keeps it).
  Communicator& communicator() { return *comm_; }

  // Who will run a submission's cycles (engine_drive.cc):
  //  kAnyone: asynchronous; its submitter may wait at once and drive it, so the engine thread, woken, leaves it to
  //           a caller for the drive window first;
  //  kCaller: the caller waits for it at once (waitFor, which drives the cycle on its own thread), so the engine
  //           thread is not woken: a synchronous operation then costs no thread wake-up, which on shared cores
  //           preempts a peer rank;
  //  kEngine: nobody will drive it (a passive wait or a completion callback follows): leaveToEngine's hand-over
  //           at submission, one wake-up of the engine thread, which starts it at once.
  enum class Driver : uint8_t { kAnyone, kCaller, kEngine };
  // Throws std::invalid_argument when the name is already in flight on this rank, and runtime_error when
  // the engine has stopped (with the reason).
  std::shared_ptr<Handle> enqueue(Entry entry, Driver driver = Driver::kAnyone);
  // All-reduces that travel as one bucket, in this order, once all are ready everywhere (fusion.h): the
  // deterministic plan that makes compressed results reproducible. Same dtype, op and codec; accepted or
  // refused as a whole.
  std::vector<std::shared_ptr<Handle>> enqueueGroup(std::vector<Entry> entries, Driver driver = Driver::kAnyone);
  // Work submitted so far will not be driven by a waiting caller (a passive wait, a completion callback, the
  // PyTorch binding's gradient buckets): ends caller-driven mode and wakes the engine thread to start it at once,
  // without the drive window. It also resets the streak, so a job whose buckets are waited on passively
  // (DistributedOptimizer) never enters the mode.
  void leaveToEngine();
  // Turns "callerWaits" (the bindings' flags) and "hand over" into a Driver.
  static Driver driverFor(bool callerWaits, bool handOver) {
    return callerWaits ? Driver::kCaller : handOver ? Driver::kEngine : Driver::kAnyone;
  }
  // Waits for `h` (timeout <= 0: no limit of its own; the engine's timeouts still apply). While the
  // engine thread is idle the calling thread runs the negotiation cycles itself. False on timeout.
  bool waitFor(Handle& h, double timeoutSeconds);
  // Waits for every member of `group` within one overall timeout (as waitFor). False on timeout.
  bool waitForAll(const HandleGroup& group, double timeoutSeconds);
  // Collective: every rank must call it. Completes pending work first; fails what can never complete.
  // Returns "" when every rank agreed to stop, else why not (a timeout, or the engine had failed).
  std::string shutdown();
  bool running() const { return running_.load(); }
  std::string fatalError() const;
  // The cost model's figures once probed (empty before the first compressed bucket).
  std::string costModelDescription() const;
  // Counters and bucket records; read from any thread.
  EngineStats& stats() { return stats_; }
  // Where the engine's INFO/WARNING lines go (called on the completion thread, never under an engine lock).
  void setLogSink(std::function<void(int, const std::string&)> sink);
  // Tests: the next cycle on this rank throws `what` as if the engine thread had failed there.
  void failNextCycleForTesting(const std::string& what);
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
  bool hasWorkLocked() const;  // under mu_: work queued or pending
  // Under mu_, on the engine thread: sleeps while a caller drives or may be about to; false once it should cycle.
  bool leaveToCaller(std::unique_lock<std::mutex>& lock);
  void sleepUntilWork(std::unique_lock<std::mutex>& lock);  // the engine thread's idle sleep (engine_drive.cc)
  void wakeForSubmission();  // under mu_: notify the engine thread of a submission (counted in stats)
  void handOverLocked();  // under mu_: leaveToEngine's work
  void notifySubmission(Driver driver);  // under mu_: after queueing, wake the engine thread as `driver` says
  // One negotiation cycle, unless another thread is running one (kBusy). Errors stop the engine.
  StepResult step();
  bool cycle();  // one negotiation + execution; returns true if anything completed
  FramedMessage buildMessage();
  void execute(const MatchResult& match);
  // The response cache learns from what runs this cycle (identically on every rank), before any handle completes.
  void learn(const MatchResult& match);
  void executeEager(const ReadyTensor& t, Entry* local);
  void executeBucket(const std::vector<const ReadyTensor*>& bucket);
  void executeCompressedBucket(const std::vector<const ReadyTensor*>& bucket, const std::vector<Entry*>& locals);
  // Runs executeCompressedBucket and adds its record to stats_ (engine_execute.cc).
  void recordCompressedBucket(const std::vector<const ReadyTensor*>& bucket, const std::vector<Entry*>& locals);
  void executeAllgather(const ReadyTensor& t, Entry* local);
  void executeBroadcast(const ReadyTensor& t, Entry* local);
  void trackStalls(const MatchResult& match);
  void failAbandoned(const std::vector<std::string>& abandoned, const MatchResult& match);
  void finish(Entry& e, const std::string& error = std::string());  // callbacks wait for flushCallbacks()
  void flushCallbacks();
  void log(int level, const std::string& message);
  // After a failure of this rank's own (not a peer's, not a timeout): one last negotiation that tells the
  // peers why, so they stop in their next cycle instead of waiting out the timeout.
  void announceFailure(const std::string& error);
  void failEverything(const std::string& error, bool timedOut);
  // The local entry of a tensor by name, or null (none, or finished already). Indexes pending_ on the first
  // call of a cycle: a cycle of cached tensors only never needs the index (localOf).
  Entry* findPending(const std::string& name);
  // The local entry of a ready tensor: by its cache slot when it was ready by the bit vectors, else by name.
  Entry* localOf(const ReadyTensor& t);
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
  bool wakeOnWork_ = true;                 // enqueue notifies the engine thread (not in its drive window)
  // Caller-driven mode (engine_drive.cc): once kCallerDrivenStreak asynchronous submissions were driven to
  // completion by their waiting callers, enqueue stops notifying the engine thread, which looks every
  // kCallerDrivenCheck instead.
  bool callerDriven_ = false;
  int callerStreak_ = 0;
  // leaveToEngine: what is queued will not be driven by a caller, so the engine thread starts it without waiting out
  // the drive window (cleared once a cycle takes the queue).
  bool startNow_ = false;
  Clock::time_point lastSubmitAt_{};
  int waiters_ = 0;                        // threads in waitFor (they may drive cycles); the engine thread
                                           // sleeps while they do
  // Held by whichever thread runs a cycle (the engine thread, or a user thread waiting in waitFor):
  // one thread at a time owns all communication.
  std::mutex cycleMu_;
  // Names in flight (rejects duplicates): views of Handle::name(), whose handles the queued entries keep alive
  // until finish() or failEverything() removes them here.
  std::unordered_set<std::string_view> inFlight_;
  uint64_t nextSeq_ = 0;
  bool stopRequested_ = false;
  std::string fatal_;
  std::string costModelText_;
  std::function<void(int, const std::string&)> logSink_;
  std::string injectedFailure_;
  std::atomic<bool> running_{true};
  EngineStats stats_;

  // Only under cycleMu_.
  std::vector<Entry> pending_;  // in submission order
  // Index of pending_, built at most once a cycle, on first use (findPending); its keys view the entries' own
  // names (pending_ is not resized meanwhile).
  std::unordered_map<std::string_view, Entry*> pendingByName_;
  bool pendingIndexed_ = false;
  // This cycle: the local entry behind each cache slot whose bit this rank set (buildMessage), so cached tensors
  // find their entries without the name index.
  std::vector<Entry*> localBySlot_;
  std::unordered_map<std::string, Clock::time_point> stallSince_;  // rank 0: partial tensors
  std::unordered_map<std::string, bool> stallWarned_;
  std::vector<std::string> toAbandon_;                              // rank 0: to announce next cycle
  std::vector<char> fusion_;
  std::vector<char> scratch_;
  ResponseCache cache_{config_.cacheCapacity};
  bool shutdownDone_ = false;
  int participants_ = 1;  // ranks that have not joined, in the cycle being executed
  // Groups with a failed member: (the error, members failed so far); the rest fail as they become ready.
  std::unordered_map<std::string, std::pair<std::string, uint32_t>> failedGroups_;
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
  // Stochastic rounding's stream per compressed bucket: (bucket's first tensor name, how many times it was
  // compressed). Independent of the order buckets run in, which cycle boundaries (timing) can change: with a
  // global counter, two buckets run in the other order drew each other's streams (engine_compressed.cc).
  std::unordered_map<std::string, uint64_t> compressedCalls_;
  bool compressedPacked_ = false;  // the last compressed bucket was gathered into work_ (its bucket record says so)
  bool deferFinish_ = false;  // finish() collects into deferredFinish_ (recordCompressedBucket)
  std::vector<std::pair<Entry*, std::string>> deferredFinish_;

  // Callbacks of handles finished by the cycle in progress (cycle owner only), pushed to completions_ as one batch
  // per bucket by flushCallbacks().
  std::vector<std::function<void()>> finishedCallbacks_;
  CompletionQueue completions_;  // callbacks and log lines; outlives the engine thread (declared before it)
  std::thread thread_;
};

}  // namespace nrt
