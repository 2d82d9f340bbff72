// How the engine fails (see engine.h): stalled tensors reported and abandoned by rank 0, every pending handle
// failed once the engine stops, and the failure notice a rank sends its peers when its own engine fails.
// Exercised by tests/test_engine.py (mismatches, stalls, timeouts) and tests/test_engine_callbacks.py.
#include <algorithm>
#include <iostream>
#include <unordered_set>

#include "collectives/exchange.h"
#include "common/error.h"
#include "engine/engine.h"
#include "engine/negotiation.h"

namespace nrt {

void Engine::announceFailure(const std::string& error) {
  // Peers are in (or about to enter) the next negotiation; ours carries the failure instead of tensors.
  // Bounded by the timeout; if it fails too (peers already gone), the local error stands alone.
  try {
    MessageWriter w(false, {}, error);
    ExchangeOptions o;
    static_cast<CollectiveOptions&>(o) = collectiveOptions("negotiation (failure notice)");
    o.capacity = config_.negotiationBytes;
    exchangeCombine(*comm_, GroupMessageWriter(rank_, w.bytes(), 0).finish(), o, GroupMessage::combineFramed);
  } catch (const std::exception&) {
  }
}

void Engine::trackStalls(const MatchResult& match) {
  const auto now = Clock::now();
  std::unordered_set<std::string> partialNow;
  for (const PartialTensor& p : match.partial) {
    partialNow.insert(p.name);
    auto it = stallSince_.emplace(p.name, now).first;
    const double waited = std::chrono::duration<double>(now - it->second).count();
    if (waited >= config_.stallWarningSeconds && !stallWarned_[p.name]) {
      stallWarned_[p.name] = true;
      std::cerr << "neptune_rt: warning: tensor '" << p.name << "' was submitted by ranks " << rankList(p.have)
                << " but not by ranks " << rankList(p.missing) << " for " << static_cast<int>(waited) << " s"
                << std::endl;
    }
    if (waited >= config_.timeoutSeconds) toAbandon_.push_back(p.name);
  }
  for (auto it = stallSince_.begin(); it != stallSince_.end();) {
    if (partialNow.count(it->first) && std::find(toAbandon_.begin(), toAbandon_.end(), it->first) == toAbandon_.end()) {
      ++it;
    } else {
      stallWarned_.erase(it->first);
      it = stallSince_.erase(it);
    }
  }
}

void Engine::failAbandoned(const std::vector<std::string>& abandoned, const MatchResult& match) {
  for (const std::string& name : abandoned) {
    Entry* local = findPending(name);
    if (!local) continue;
    std::string who;
    for (const PartialTensor& p : match.partial)
      if (p.name == name) who = concat(": submitted by ranks ", rankList(p.have), " but never by ranks ", rankList(p.missing));
    finish(*local, concat("neptune_rt: rank ", rank_, ": tensor '", name, "' timed out after ", config_.timeoutSeconds,
                          " s", who, " (a rank skipped this collective or used another name)"));
  }
}

void Engine::failEverything(const std::string& error, bool timedOut) {
  std::vector<Entry> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    running_ = false;
    if (fatal_.empty()) fatal_ = error;
    while (!incoming_.empty()) {
      pending_.push_back(std::move(incoming_.front()));
      incoming_.pop_front();
    }
    all.swap(pending_);
    inFlight_.clear();
    compressedInFlight_ = 0;
  }
  // Callbacks of handles that finished before the failure run first, in completion order.
  for (Entry& e : all)
    for (auto& c : e.handle->complete(error, timedOut)) finishedCallbacks_.push_back(std::move(c));
  flushCallbacks();
}

}  // namespace nrt
