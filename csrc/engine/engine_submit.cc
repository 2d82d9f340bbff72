// Submission side of the engine (see engine.h): argument checks at enqueue (so a bad call fails in its caller,
// before any peer waits for it), single and grouped enqueue, and the engine's log lines. Exercised by
// tests/test_engine_callbacks.py (validation) and tests/test_engine_stats.py (groups, logging).
#include <cmath>
#include <iostream>
#include <string_view>

#include "common/error.h"
#include "engine/engine.h"

namespace nrt {

void checkEntry(const Entry& e, int rank, int size) {
  const TensorMeta& m = e.meta;
  const auto where = [&] { return concat("neptune_rt: rank ", rank, ": tensor '", m.name, "'"); };
  NRT_CHECK_ARG(!m.name.empty() && m.name.size() <= 1024, "neptune_rt: rank ", rank,
                ": a tensor name must have 1 to 1024 characters, got ", m.name.size());
  NRT_CHECK_ARG(m.shape.size() <= 32, where(), " has ", m.shape.size(), " dimensions; at most 32 are supported");
  uint64_t numel = 1;
  for (int64_t d : m.shape) {
    NRT_CHECK_ARG(d >= 0, where(), " has a negative dimension (shape ", m.describe(), "); pass the real shape");
    NRT_CHECK_ARG(!__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel), where(), " (shape ",
                  m.describe(), ") has more elements than 2^64");
  }
  uint64_t bytes;
  NRT_CHECK_ARG(!__builtin_mul_overflow(numel, static_cast<uint64_t>(dtypeSize(m.dtype)), &bytes) &&
                    bytes <= (uint64_t{1} << 48),
                where(), " (shape ", m.describe(), ") is larger than 2^48 bytes");
  if (m.type == OpType::kAllreduce) {
    NRT_CHECK_ARG(std::isfinite(e.prescale) && std::isfinite(e.postscale), where(), ": prescale ", e.prescale,
                  " and postscale ", e.postscale, " must be finite");
    NRT_CHECK_ARG(isFloating(m.dtype) || (e.prescale == 1.0 && e.postscale == 1.0), where(), " is ",
                  dtypeName(m.dtype), ", and prescale/postscale factors (here ", e.prescale, " and ", e.postscale,
                  ") apply only to floating tensors: scale the result yourself, or use a floating dtype");
    const uint8_t codec = m.codec & ~kForceCodecBit;
    NRT_CHECK_ARG(codec < codec_format::kNumCodecs || isAutoCodec(codec), where(), ": unknown codec id ",
                  int(codec));
    NRT_CHECK_ARG(codec == codec_format::kNone || isFloating(m.dtype), where(), " is ", dtypeName(m.dtype),
                  "; compression codecs need a floating dtype (use codec='none')");
  }
  if (m.type == OpType::kBroadcast)
    NRT_CHECK_ARG(m.root >= 0 && m.root < size, where(), ": broadcast root ", m.root, " is not a rank of this ",
                  size, "-rank job");
}

void Engine::wakeForSubmission() {
  stats_.addSubmitWakeup();
  cv_.notify_one();
}

void Engine::notifySubmission(Driver driver) {
  // In its drive window the engine thread wakes by itself, and in caller-driven mode it looks every millisecond; a
  // waiting caller drives the cycle (and notifies the engine thread of anything it leaves behind, e.g. on a
  // timeout). Work nobody will drive is handed over with this one wake-up (not one here and one in leaveToEngine).
  if (driver == Driver::kEngine) handOverLocked();
  else if (driver == Driver::kAnyone && wakeOnWork_ && !callerDriven_) wakeForSubmission();
}

std::shared_ptr<Handle> Engine::enqueue(Entry e, Driver driver) {
  NRT_CHECK_ARG(e.meta.groupSize == 0, "neptune_rt: rank ", rank_, ": tensor '", e.meta.name,
                "' names a group; submit groups with enqueueGroup");
  if (e.meta.type != OpType::kShutdown) checkEntry(e, rank_, size_);
  std::lock_guard<std::mutex> lock(mu_);
  if (!running_.load()) throw std::runtime_error(fatal_.empty() ? "neptune_rt: the engine has stopped" : fatal_);
  if (inFlight_.count(e.meta.name))
    throw std::invalid_argument(concat("neptune_rt: rank ", rank_, ": a tensor named '", e.meta.name,
                                       "' is already in flight; synchronize it before submitting the name again, "
                                       "or give this one another name"));
  e.handle = std::make_shared<Handle>(e.meta.name);
  e.handle->submittedAsync = driver != Driver::kCaller;
  e.seq = nextSeq_++;
  e.queuedAt = Clock::now();
  auto handle = e.handle;
  incoming_.push_back(std::move(e));
  // Once queued: the entry keeps the handle (and so the name inFlight_ views) alive until finish/failEverything.
  inFlight_.insert(handle->name());
  if (incoming_.back().meta.codec != codec_format::kNone) ++compressedInFlight_;  // import_residuals refuses meanwhile
  lastSubmitAt_ = incoming_.back().queuedAt;
  notifySubmission(driver);
  return handle;
}

std::vector<std::shared_ptr<Handle>> Engine::enqueueGroup(std::vector<Entry> entries, Driver driver) {
  NRT_CHECK_ARG(!entries.empty(), "neptune_rt: rank ", rank_, ": an empty group of all-reduces");
  NRT_CHECK_ARG(entries.size() < (1u << 20), "neptune_rt: rank ", rank_, ": a group of ", entries.size(),
                " all-reduces is too large (at most 2^20)");
  const TensorMeta& head = entries.front().meta;
  for (size_t i = 0; i < entries.size(); ++i) {
    Entry& e = entries[i];
    NRT_CHECK_ARG(e.meta.type == OpType::kAllreduce, "neptune_rt: rank ", rank_, ": tensor '", e.meta.name,
                  "': only all-reduces can be grouped");
    checkEntry(e, rank_, size_);
    NRT_CHECK_ARG(e.meta.dtype == head.dtype && e.meta.op == head.op && e.meta.codec == head.codec,
                  "neptune_rt: rank ", rank_, ": tensor '", e.meta.name, "' (", e.meta.describe(),
                  ") differs from the group's first, '", head.name, "' (", head.describe(),
                  "): a group's tensors share dtype, op and codec");
    e.meta.group = head.name;  // unique: tensor names in flight are
    e.meta.groupSize = static_cast<uint32_t>(entries.size());
    e.meta.groupIndex = static_cast<uint32_t>(i);
  }
  // Handles first (outside the lock): inFlight_ views their names.
  std::vector<std::shared_ptr<Handle>> handles;
  handles.reserve(entries.size());
  for (Entry& e : entries) {
    e.handle = std::make_shared<Handle>(e.meta.name);
    e.handle->submittedAsync = driver != Driver::kCaller;
    handles.push_back(e.handle);
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!running_.load()) throw std::runtime_error(fatal_.empty() ? "neptune_rt: the engine has stopped" : fatal_);
  // One insertion per name finds a name in flight from an earlier submission and a name twice in this group alike
  // (a set of its own per group cost an allocation per member); a refused group leaves inFlight_ as it was, also
  // when an insertion runs out of memory (its views would outlive the handles freed on the way out).
  const auto rollback = [&](size_t inserted) {
    for (size_t j = 0; j < inserted; ++j) inFlight_.erase(handles[j]->name());
  };
  for (size_t i = 0; i < handles.size(); ++i) {
    bool inserted;
    try {
      inserted = inFlight_.insert(handles[i]->name()).second;
    } catch (...) {
      rollback(i);
      throw;
    }
    if (inserted) continue;
    rollback(i);
    const std::string& name = entries[i].meta.name;
    NRT_CHECK_ARG(inFlight_.count(name), "neptune_rt: rank ", rank_, ": tensor '", name,
                  "' appears twice in one group");
    throw std::invalid_argument(concat("neptune_rt: rank ", rank_, ": a tensor named '", name,
                                       "' is already in flight; synchronize it before submitting the name again"));
  }
  // All members enter the queue together, so they are announced in the same cycle (bar a full message).
  const Clock::time_point now = Clock::now();
  const bool compressed = head.codec != codec_format::kNone;  // a group shares one codec
  const size_t queued = incoming_.size();
  try {
    for (Entry& e : entries) {
      e.seq = nextSeq_++;
      e.queuedAt = now;
      incoming_.push_back(std::move(e));
    }
  } catch (...) {  // out of memory: the group was never queued, and its names are free again
    incoming_.resize(queued);
    for (const auto& h : handles) inFlight_.erase(h->name());
    throw;
  }
  if (compressed) compressedInFlight_ += static_cast<int>(entries.size());  // import_residuals refuses meanwhile
  lastSubmitAt_ = now;
  notifySubmission(driver);
  return handles;
}

void Engine::setLogSink(std::function<void(int, const std::string&)> sink) {
  std::lock_guard<std::mutex> lock(mu_);
  logSink_ = std::move(sink);
}

void Engine::log(int level, const std::string& message) {
  std::function<void(int, const std::string&)> sink;
  {
    std::lock_guard<std::mutex> lock(mu_);
    sink = logSink_;
  }
  if (!sink) {
    if (level >= kLogWarning) std::cerr << message << std::endl;
    return;
  }
  completions_.push([sink, level, message] { sink(level, message); });
}

void Engine::failNextCycleForTesting(const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  injectedFailure_ = what;
}

}  // namespace nrt
