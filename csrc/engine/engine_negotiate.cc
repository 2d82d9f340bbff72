// This rank's side of a negotiation cycle (see engine.h): the message it sends (cached tensors as bits of the
// response cache's bit vector, the rest as full announcements, small all-reduces' data as eager sums), and what
// the response cache learns from the tensors a cycle runs. Exercised by tests/test_engine_cache.py.
#include <algorithm>
#include <cmath>

#include "collectives/reduce.h"
#include "engine/engine.h"
#include "engine/negotiation.h"

namespace nrt {

FramedMessage Engine::buildMessage() {
  const bool joined = std::any_of(pending_.begin(), pending_.end(),
                                  [](const Entry& e) { return e.meta.type == OpType::kJoin; });
  // Cached tensors are one bit each; the rest (and names cached with another key, whose slot every rank then
  // drops) are announced in full.
  std::vector<uint8_t> cachedReady;
  std::vector<uint32_t> cacheInvalid;
  std::vector<bool> hit(pending_.size(), false);
  localBySlot_.assign(cache_.slotCount(), nullptr);
  for (size_t i = 0; i < pending_.size(); ++i) {
    Entry& e = pending_[i];
    if (e.meta.type == OpType::kJoin) continue;
    const ResponseCache::Found found = cache_.lookup(e.meta, e.prescale, e.postscale);
    if (found.state == ResponseCache::Lookup::kHit) {
      setBit(cachedReady, found.slot);
      localBySlot_[found.slot] = &e;
      hit[i] = true;
    } else if (found.state == ResponseCache::Lookup::kInvalid) {
      cacheInvalid.push_back(found.slot);
    }
  }
  MessageWriter w(joined, toAbandon_, std::string(), cachedReady, cacheInvalid,
                  static_cast<uint32_t>(config_.cacheCapacity), static_cast<uint8_t>(config_.denseAlgorithm),
                  config_.nativeAllreduceBytes);
  toAbandon_.clear();
  std::vector<const Entry*> eager;
  size_t eagerBudget = config_.negotiationBytes / 2;  // the announcements keep the other half
  bool full = false;
  for (size_t i = 0; i < pending_.size(); ++i) {
    const Entry& e = pending_[i];
    if (e.meta.type == OpType::kJoin) continue;
    if (!hit[i] && (full || !w.add(e.meta, config_.negotiationBytes / 2))) {
      full = true;  // the rest is announced next cycle
      continue;
    }
    const size_t bytes = e.meta.bytes();
    // Small all-reduces ride along; with an adaptive codec too, since no codec beats the dense path on a
    // latency-bound message (a forced codec is honoured).
    const bool codecAllows = e.meta.codec == codec_format::kNone ||
                             (!(e.meta.codec & kForceCodecBit) && isFloating(e.meta.dtype));
    // Grouped tensors never: their group travels as one bucket (fusion.h).
    const bool rides = e.meta.type == OpType::kAllreduce && e.meta.groupSize == 0 && codecAllows && bytes > 0 &&
                       bytes <= config_.eagerBytes && bytes + e.meta.name.size() + 64 <= eagerBudget;
    if (!rides) continue;
    eager.push_back(&e);
    eagerBudget -= bytes + e.meta.name.size() + 64;
  }
  // Names are unique among pending entries (a name in flight is refused), so the order is strict.
  std::sort(eager.begin(), eager.end(), [](const Entry* a, const Entry* b) { return a->meta.name < b->meta.name; });
  size_t sumBytes = 0;
  for (const Entry* e : eager) sumBytes += e->meta.bytes() + e->meta.name.size();
  GroupMessageWriter own(rank_, w.bytes(), eager.size(), sumBytes);
  for (const Entry* e : eager) {
    char* data = own.addSum(e->meta.name, e->meta.dtype, e->meta.op, e->meta.numel(), e->input, e->meta.bytes());
    scaleInPlace(data, e->meta.numel(), e->meta.dtype, e->prescale);
  }
  return own.finish();
}

void Engine::learn(const MatchResult& match) {
  uint64_t hits = 0, misses = 0, evicted = 0;
  for (const ReadyTensor& t : match.ready) {
    if (!t.executed) continue;
    if (t.cacheSlot != ResponseCache::kNoSlot) {
      cache_.use(t.cacheSlot);
      ++hits;
      continue;
    }
    if (!ResponseCache::cacheable(t.meta)) continue;
    ++misses;
    const Entry* local = findPending(t.meta.name);  // not finished yet: nothing has run
    const double nan = std::nan("");
    evicted += cache_.insert(t.meta, local ? local->prescale : nan, local ? local->postscale : nan);
  }
  stats_.addCacheLookups(hits, misses);
  if (evicted) stats_.addCacheChanges(0, evicted);
}

}  // namespace nrt
