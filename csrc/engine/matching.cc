// Matching of announcements across ranks (see matching.h).
#include "engine/matching.h"

#include <algorithm>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

namespace nrt {

std::string rankList(const std::vector<int>& ranks) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < ranks.size(); ++i) os << (i ? ", " : "") << ranks[i];
  os << "]";
  return os.str();
}

namespace {

bool sameShapeFor(const TensorMeta& a, const TensorMeta& b) {
  if (a.type != OpType::kAllgather) return a.shape == b.shape;
  // Allgather concatenates along the first dimension: only the trailing dimensions must agree.
  if (a.shape.size() != b.shape.size() || a.shape.empty()) return a.shape.size() == b.shape.size();
  for (size_t d = 1; d < a.shape.size(); ++d)
    if (a.shape[d] != b.shape[d]) return false;
  return true;
}

bool sameMeta(const TensorMeta& a, const TensorMeta& b) {
  return a.type == b.type && a.dtype == b.dtype && a.op == b.op && a.codec == b.codec && a.root == b.root &&
         a.group == b.group && a.groupSize == b.groupSize && a.groupIndex == b.groupIndex && sameShapeFor(a, b);
}

std::string mismatchMessage(const ReadyTensor& t) {
  std::ostringstream os;
  os << "neptune_rt: tensor '" << t.meta.name << "' was submitted with different arguments on different ranks:";
  for (size_t r = 0; r < t.perRank.size(); ++r)
    if (t.perRank[r]) os << "\n  rank " << r << ": " << t.perRank[r]->meta.describe();
  os << "\nEvery rank must submit a tensor of this name with the same operation, dtype, shape, op, codec and root"
        " (and in the same group, at the same position, if grouped).";
  return os.str();
}

// Operations that cannot run while some ranks have joined (they contribute nothing).
std::string joinError(const TensorMeta& m, const std::vector<RankMessage>& msgs, const std::vector<int>& joined) {
  if (joined.empty()) return {};
  if (m.type == OpType::kAllreduce && (m.op == ReduceOp::kMin || m.op == ReduceOp::kMax))
    return "neptune_rt: tensor '" + m.name + "': ranks " + rankList(joined) +
           " have joined and contribute nothing; only sum and average all-reduces can run during join";
  if (m.type == OpType::kBroadcast && msgs[m.root].joined)
    return "neptune_rt: tensor '" + m.name + "': broadcast root " + std::to_string(m.root) + " has already joined";
  return {};
}

// Cached tensors: ready where every participant set the slot's bit, partial (for stall reports) where some did.
void matchCached(const std::vector<RankMessage>& msgs, const std::vector<int>& participants,
                 const ResponseCache& cache, MatchResult& result) {
  size_t bytes = 0;
  for (int r : participants) bytes = std::max(bytes, msgs[r].cachedReady.size());
  // Only slots some participant has ready: a full cache (1024 slots) scanned slot by slot, with the have/missing
  // lists built for each, tripled the time of a 4 KB all-reduce (benchmarks/results/latency_4k_full_cache_*.json).
  std::vector<uint8_t> anyReady(bytes, 0);
  for (int r : participants)
    for (size_t b = 0; b < msgs[r].cachedReady.size(); ++b) anyReady[b] |= msgs[r].cachedReady[b];
  size_t candidates = 0;
  for (uint8_t byte : anyReady) candidates += static_cast<size_t>(__builtin_popcount(byte));
  result.ready.reserve(candidates + msgs[participants.front()].entries.size());
  for (uint32_t slot = 0; slot < bytes * 8 && slot < cache.slotCount(); ++slot) {
    if (!testBit(anyReady, slot)) continue;
    if (!cache.occupied(slot)) continue;  // invalidated this cycle: its owners announce it in full next cycle
    size_t haveCount = 0;  // the lists only for partial slots: ready ones (the steady state) allocate nothing here
    for (int r : participants) haveCount += testBit(msgs[r].cachedReady, slot);
    if (haveCount == 0) continue;
    const TensorMeta& meta = cache.meta(slot);
    if (haveCount < participants.size()) {
      std::vector<int> have, missing;
      for (int r : participants) (testBit(msgs[r].cachedReady, slot) ? have : missing).push_back(r);
      result.partial.push_back({meta.name, have, missing});
      continue;
    }
    ReadyTensor t;
    t.meta = meta;
    t.cacheSlot = slot;
    t.error = joinError(meta, msgs, result.joined);
    result.ready.push_back(std::move(t));
  }
}

}  // namespace

MatchResult matchAnnouncements(const std::vector<RankMessage>& msgs, const ResponseCache& cache) {
  MatchResult result;
  const int n = static_cast<int>(msgs.size());
  std::vector<int> participants;
  for (int r = 0; r < n; ++r) (msgs[r].joined ? result.joined : participants).push_back(r);
  if (participants.empty()) {
    result.allJoined = true;
    return result;
  }
  matchCached(msgs, participants, cache, result);
  // The steady state: every tensor came by its cache bit, nothing was announced in full.
  if (std::all_of(participants.begin(), participants.end(), [&](int r) { return msgs[r].entries.empty(); }))
    return result;

  std::vector<std::unordered_map<std::string, const Announcement*>> byName(n);
  for (int r : participants)
    for (const auto& a : msgs[r].entries) byName[r].emplace(a.meta.name, &a);

  // Order: as the first participating rank announced (identical on every rank).
  for (const auto& a : msgs[participants.front()].entries) {
    ReadyTensor t;
    t.meta = a.meta;
    t.perRank.assign(n, nullptr);
    std::vector<int> have, missing;
    for (int r : participants) {
      auto it = byName[r].find(a.meta.name);
      if (it == byName[r].end()) {
        missing.push_back(r);
        continue;
      }
      have.push_back(r);
      t.perRank[r] = it->second;
    }
    if (!missing.empty()) {
      result.partial.push_back({a.meta.name, have, missing});
      continue;
    }
    for (int r : participants)
      if (!sameMeta(t.meta, t.perRank[r]->meta)) t.error = mismatchMessage(t);
    if (t.error.empty()) t.error = joinError(t.meta, msgs, result.joined);
    result.ready.push_back(std::move(t));
  }
  // Names other participants announced that the first one did not: partial too (for stall reports).
  std::unordered_set<std::string> seen;
  for (const auto& a : msgs[participants.front()].entries) seen.insert(a.meta.name);
  for (size_t i = 1; i < participants.size(); ++i) {
    for (const auto& a : msgs[participants[i]].entries) {
      if (!seen.insert(a.meta.name).second) continue;
      PartialTensor p{a.meta.name, {}, {}};
      for (int r : participants) (byName[r].count(a.meta.name) ? p.have : p.missing).push_back(r);
      result.partial.push_back(std::move(p));
    }
  }
  return result;
}

}  // namespace nrt
