// The negotiation cycle and dispatch of what was agreed (see engine.h); who runs the cycles (the engine thread's
// loop, a waiting caller) is in engine_drive.cc, this rank's message and the response cache's updates in
// engine_negotiate.cc. Submission and
// argument checks are in engine_submit.cc, stalls and failures in engine_failures.cc, the collectives in
// engine_execute.cc (dense) and engine_compressed.cc; callbacks run on the completion queue.
#include "engine/engine.h"

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <unordered_set>

#include "collectives/exchange.h"
#include "collectives/reduce.h"
#include "common/error.h"
#include "engine/fusion.h"
#include "engine/negotiation.h"

namespace nrt {

namespace {
const char* const kShutdownName = "__neptune_rt_shutdown__";

// A peer announced that its engine failed: stop here too, without a farewell of our own (the peers know).
class PeerFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

EngineConfig resolved(EngineConfig c, int worldSize) {
  if (c.compressedAlgorithm == CompressedAlgorithm::kAuto) c.compressedAlgorithm = chooseCompressedAlgorithm(worldSize);
  return c;
}

std::string namesOf(const std::vector<Entry>& entries, size_t limit = 8) {
  std::string s;
  for (size_t i = 0; i < entries.size() && i < limit; ++i) s += (i ? ", '" : "'") + entries[i].meta.name + "'";
  if (entries.size() > limit) s += concat(", ... (", entries.size(), " in all)");
  return s.empty() ? "nothing" : s;
}
}  // namespace

Engine::Engine(std::unique_ptr<Communicator> comm, EngineConfig config)
    : comm_(std::move(comm)),
      config_(resolved(config, comm_->size())),
      rank_(comm_->rank()),
      size_(comm_->size()) {
  const std::string threadProblem = comm_->threadSupportProblem();
  if (!threadProblem.empty()) throw std::runtime_error(concat("neptune_rt: rank ", rank_, ": ", threadProblem));
  costModel_.deterministic = config_.deterministic;
  costModel_.log = [this](const std::string& line) { log(kLogInfo, line); };
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopRequested_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::string Engine::shutdown() {
  if (completions_.onQueueThread())
    throw std::logic_error(
        concat("neptune_rt: rank ", rank_, ": shutdown() was called from a completion callback, which runs on "
               "the engine's completion thread and would wait for itself; call it from the training thread"));
  std::string error;
  if (running_.load()) {
    try {
      Entry e;
      e.meta.name = kShutdownName;
      e.meta.type = OpType::kShutdown;
      auto h = enqueue(std::move(e));
      waitFor(*h, 0);  // bounded: the negotiation timeout fails it if a peer never shuts down
      error = h->error();
    } catch (const std::runtime_error& e) {
      error = e.what();  // stopped meanwhile (fatal error): fall through to joining the thread
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopRequested_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  completions_.stop();  // every callback has run when shutdown returns
  {
    std::lock_guard<std::mutex> lock(residualMu_);
    residuals_.clear();  // error feedback ends with the engine: free its memory now
  }
  return error;
}

std::string Engine::costModelDescription() const {
  std::lock_guard<std::mutex> lock(mu_);
  return costModelText_;
}

std::string Engine::fatalError() const {
  std::lock_guard<std::mutex> lock(mu_);
  return fatal_;
}

CollectiveOptions Engine::collectiveOptions(const std::string& name) const {
  CollectiveOptions o;
  o.name = name;
  o.segmentBytes = config_.segmentBytes;
  o.timeoutSeconds = config_.timeoutSeconds;
  return o;
}

Engine::StepResult Engine::step() {
  std::unique_lock<std::mutex> cycleLock(cycleMu_, std::try_to_lock);
  if (!cycleLock) return StepResult::kBusy;
  if (!running_.load() || shutdownDone_) return StepResult::kStopped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!incoming_.empty()) {
      pending_.push_back(std::move(incoming_.front()));
      incoming_.pop_front();
    }
    startNow_ = false;  // whatever was handed over is in this cycle (engine_drive.cc)
  }
  pendingCount_.store(pending_.size(), std::memory_order_release);
  if (pending_.empty()) return StepResult::kNoProgress;  // nothing to negotiate: do not enter the exchange
  struct FlushCallbacks {  // whatever the cycle finished reaches the completion queue, on every way out
    Engine& engine;
    ~FlushCallbacks() {
      try {
        engine.flushCallbacks();
      } catch (...) {  // out of memory: the callbacks not queued wait for the next flush
      }
    }
  } flushCallbacks{*this};
  try {
    const bool progress = cycle();
    pendingCount_.store(pending_.size(), std::memory_order_release);
    if (shutdownDone_) {
      failEverything("neptune_rt has been shut down", false);
      cv_.notify_all();
      return StepResult::kStopped;
    }
    return progress ? StepResult::kProgress : StepResult::kNoProgress;
  } catch (const TimeoutError& e) {
    comm_->poison(e.what(), true);  // no-op if the timeout poisoned it already; the engine never uses it again
    failEverything(concat(e.what(), "\n  pending on rank ", rank_, ": ", namesOf(pending_)), true);
  } catch (const PeerFailure& e) {
    failEverything(concat(e.what(), "\n  pending on rank ", rank_, ": ", namesOf(pending_)), false);
  } catch (const std::exception& e) {
    const std::string error = concat("neptune_rt: rank ", rank_, ": the engine failed: ", e.what(),
                                     "\n  pending on rank ", rank_, ": ", namesOf(pending_));
    announceFailure(error);  // fails fast (and is ignored) when a collective already poisoned the communicator
    comm_->poison(e.what(), false);
    failEverything(error, false);
  }
  cv_.notify_all();
  return StepResult::kStopped;
}

bool Engine::cycle() {
  {
    std::string injected;
    {
      std::lock_guard<std::mutex> lock(mu_);
      injected.swap(injectedFailure_);
    }
    if (!injected.empty()) throw std::runtime_error(injected);
  }
  const double negotiationStart = monotonicSeconds();
  ExchangeOptions o;
  static_cast<CollectiveOptions&>(o) = collectiveOptions("negotiation");
  o.capacity = config_.negotiationBytes;
  o.slowSeconds = config_.stallWarningSeconds;
  o.onSlow = [this] {
    std::cerr << "neptune_rt: warning: rank " << rank_ << " has waited " << config_.stallWarningSeconds
              << " s for its peers to negotiate; pending here: " << namesOf(pending_)
              << " (a rank may be stuck, or not calling the same collectives)" << std::endl;
  };
  pendingIndexed_ = false;  // pending_ does not change until this cycle ends: findPending indexes it once
  FramedMessage own = buildMessage();
  const double built = monotonicSeconds();
  const FramedMessage combined = exchangeCombine(*comm_, std::move(own), o, GroupMessage::combineFramed);
  const double exchanged = monotonicSeconds();
  const GroupMessage all = GroupMessage::parse(combined, -1);  // views into `combined`, which outlives the cycle's work
  std::vector<RankMessage> msgs;
  msgs.reserve(size_);
  for (int r = 0; r < size_; ++r) {
    const GroupMessage::Rank* m = all.findRank(r);
    NRT_CHECK(m != nullptr, "neptune_rt: rank ", rank_, ": the negotiation lost rank ", r, "'s message");
    msgs.push_back(parseRankMessage(m->data, m->bytes, r));
  }
  stats_.addNegotiation(monotonicSeconds() - negotiationStart);
  for (int r = 0; r < size_; ++r)
    if (!msgs[r].failure.empty())
      throw PeerFailure(concat("neptune_rt: rank ", rank_, ": stopping because the engine of rank ", r,
                               " failed:\n  ", msgs[r].failure));
  // Slot numbers mean the same tensor everywhere only if every cache has the same capacity: every rank sees
  // every message, so all of them refuse together.
  for (int r = 0; r < size_; ++r)
    if (msgs[r].cacheCapacity != msgs[0].cacheCapacity)
      throw std::invalid_argument(concat("NEPTUNE_RT_CACHE_CAPACITY differs between ranks (rank 0: ",
                                         msgs[0].cacheCapacity, ", rank ", r, ": ", msgs[r].cacheCapacity,
                                         "); set the same value on every rank"));
  // So must the choice of collective for a dense bucket, or one rank would sit in MPI_Iallreduce while another
  // runs our algorithm, until the timeout.
  for (int r = 0; r < size_; ++r)
    if (msgs[r].denseAlgorithm != msgs[0].denseAlgorithm || msgs[r].nativeAllreduceBytes != msgs[0].nativeAllreduceBytes)
      throw std::invalid_argument(concat(
          "NEPTUNE_RT_ALLREDUCE_ALGORITHM or NEPTUNE_RT_NATIVE_ALLREDUCE_BYTES differs between ranks (rank 0: ",
          allreduceAlgorithmName(static_cast<AllreduceAlgorithm>(msgs[0].denseAlgorithm)), ", ",
          msgs[0].nativeAllreduceBytes, " bytes; rank ", r, ": ",
          allreduceAlgorithmName(static_cast<AllreduceAlgorithm>(msgs[r].denseAlgorithm)), ", ",
          msgs[r].nativeAllreduceBytes, " bytes); set the same values on every rank"));
  // Slots that some rank submitted with another key go on every rank, before matching (response_cache.h).
  uint64_t invalidated = 0;
  for (const RankMessage& m : msgs)
    for (uint32_t slot : m.cacheInvalid)
      if (cache_.occupied(slot)) {
        cache_.erase(slot);
        ++invalidated;
      }
  if (invalidated) stats_.addCacheChanges(invalidated, 0);
  MatchResult match = matchAnnouncements(msgs, cache_);
  // A small all-reduce is done already if every participating rank's data made it into the sum.
  const uint32_t participants = static_cast<uint32_t>(size_ - match.joined.size());
  for (ReadyTensor& t : match.ready) {
    if (t.meta.type != OpType::kAllreduce || !t.error.empty()) continue;
    const GroupMessage::Sum* sum = all.findSum(t.meta.name);
    if (sum && sum->contributors == participants && sum->count == t.meta.numel()) t.eagerResult = sum->data;
  }
  if (rank_ == 0) trackStalls(match);
  const std::vector<std::string>& abandoned = msgs[0].abandoned;
  if (!abandoned.empty()) {
    failAbandoned(abandoned, match);
    std::unordered_set<std::string> gone(abandoned.begin(), abandoned.end());
    match.ready.erase(std::remove_if(match.ready.begin(), match.ready.end(),
                                     [&](const ReadyTensor& t) { return gone.count(t.meta.name) > 0; }),
                      match.ready.end());
  }
  const size_t before = pending_.size();
  const double matched = monotonicSeconds();
  execute(match);
  const double executed = monotonicSeconds();
  stats_.addCycle(built - negotiationStart, exchanged - built, matched - exchanged, executed - matched);
  pending_.erase(std::remove_if(pending_.begin(), pending_.end(), [](const Entry& e) { return e.handle->done(); }),
                 pending_.end());
  pendingIndexed_ = false;  // both point into pending_, which has just changed
  localBySlot_.clear();
  return pending_.size() != before || !abandoned.empty();
}

Entry* Engine::findPending(const std::string& name) {
  if (!pendingIndexed_) {
    pendingByName_.clear();
    pendingByName_.reserve(pending_.size());
    for (Entry& e : pending_) pendingByName_[e.meta.name] = &e;
    pendingIndexed_ = true;
  }
  auto it = pendingByName_.find(name);
  return it == pendingByName_.end() || it->second->handle->done() ? nullptr : it->second;
}

Entry* Engine::localOf(const ReadyTensor& t) {
  if (t.cacheSlot == ResponseCache::kNoSlot) return findPending(t.meta.name);
  // Ready by the bit vectors: this rank set the slot's bit for this entry (buildMessage), or has joined (no entry).
  Entry* e = t.cacheSlot < localBySlot_.size() ? localBySlot_[t.cacheSlot] : nullptr;
  return e == nullptr || e->handle->done() ? nullptr : e;
}

void Engine::finish(Entry& e, const std::string& error) {
  if (deferFinish_) {
    deferredFinish_.emplace_back(&e, error);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    inFlight_.erase(std::string_view(e.meta.name));
  }
  if (e.meta.codec != codec_format::kNone) --compressedInFlight_;
  std::vector<std::function<void()>> callbacks = e.handle->complete(error);
  for (auto& c : callbacks) finishedCallbacks_.push_back(std::move(c));
}

void Engine::flushCallbacks() {
  // One push per bucket, not per member: each push wakes the completion thread, which shares a core with the cycle's
  // owner more often than not, so a 200-member group woke it 200 times and handed the core back and forth.
  completions_.push(std::move(finishedCallbacks_));  // keeps what it could not queue, for the next flush
}

void Engine::execute(const MatchResult& match) {
  participants_ = size_ - static_cast<int>(match.joined.size());
  std::vector<const ReadyTensor*> allreduces, eager;
  bool shutdownReady = false;
  // A group with a failed member can never run as one bucket: its other members fail too, now or whenever
  // they become ready (identically on every rank: errors and readiness are agreed).
  for (const ReadyTensor& t : match.ready)
    if (!t.error.empty() && t.meta.groupSize) failedGroups_.emplace(t.meta.group, std::make_pair(t.error, 0u));
  for (const ReadyTensor& t : match.ready) {
    auto failed = t.meta.groupSize ? failedGroups_.find(t.meta.group) : failedGroups_.end();
    if (!t.error.empty() || failed != failedGroups_.end()) {
      if (Entry* local = localOf(t))
        finish(*local, !t.error.empty() ? t.error
                                        : concat("neptune_rt: rank ", rank_, ": tensor '", t.meta.name,
                                                 "' was grouped with a tensor that failed:\n", failed->second.first));
      if (failed != failedGroups_.end() && ++failed->second.second == t.meta.groupSize) failedGroups_.erase(failed);
      continue;
    }
    if (t.meta.type == OpType::kAllreduce) (t.eagerResult ? eager : allreduces).push_back(&t);
    if (t.meta.type == OpType::kBroadcast) t.executed = true;
    if (t.meta.type == OpType::kShutdown) shutdownReady = true;
  }
  const auto buckets = planBuckets(allreduces, config_.fusionBytes);  // incomplete groups wait
  for (const ReadyTensor* t : eager) t->executed = true;
  for (const auto& bucket : buckets)
    for (const ReadyTensor* t : bucket) t->executed = true;
  learn(match);
  for (const ReadyTensor* t : eager) executeEager(*t, localOf(*t));
  flushCallbacks();
  for (const auto& bucket : buckets) {
    executeBucket(bucket);
    flushCallbacks();  // this bucket's callbacks run while the next one is reduced
  }
  for (const ReadyTensor& t : match.ready) {
    if (!t.error.empty()) continue;
    Entry* local = localOf(t);
    // What finished so far does not wait behind a collective that may block (until its timeout, at worst).
    if (t.meta.type == OpType::kAllgather || t.meta.type == OpType::kBroadcast) flushCallbacks();
    if (t.meta.type == OpType::kAllgather) executeAllgather(t, local);
    if (t.meta.type == OpType::kBroadcast) executeBroadcast(t, local);
    if (t.meta.type == OpType::kBarrier && local) finish(*local);
  }
  if (match.allJoined) {
    for (Entry& e : pending_)
      if (e.meta.type == OpType::kJoin && !e.handle->done()) {
        e.handle->value = match.joined.empty() ? rank_ : match.joined.back();
        finish(e);
      }
  }
  if (shutdownReady) {
    for (Entry& e : pending_) {
      if (e.handle->done() || e.meta.type == OpType::kShutdown) continue;
      finish(e, concat("neptune_rt: shut down on rank ", rank_, " while '", e.meta.name,
                       "' was pending (not every rank submitted it)"));
    }
    for (Entry& e : pending_)
      if (e.meta.type == OpType::kShutdown) finish(e);
    shutdownDone_ = true;
  }
}

}  // namespace nrt
