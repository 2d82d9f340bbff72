// Negotiation outcome, computed identically on every rank from all ranks' messages (a pure function, so
// no rank can decide differently): which tensors are ready everywhere, in which order, and which ones
// disagree in metadata (an error on every rank before any data moves).
#pragma once

#include <string>
#include <vector>

#include "engine/response_cache.h"
#include "engine/tensor_meta.h"

namespace nrt {

struct ReadyTensor {
  TensorMeta meta;                              // from the first participating rank
  std::vector<const Announcement*> perRank;     // nullptr for ranks that have joined; empty for a cache hit
  uint32_t cacheSlot = ResponseCache::kNoSlot;  // ready by the bit vectors: its metadata came from the cache
  const char* eagerResult = nullptr;            // set by the engine: the reduction arrived with negotiation
  std::string error;                            // non-empty: metadata mismatch, fail on every rank
  mutable bool executed = false;                // set by the engine once it ran (the cache learns from these)
};

struct PartialTensor {
  std::string name;
  std::vector<int> have;     // participating ranks that announced it
  std::vector<int> missing;  // participating ranks that did not
};

struct MatchResult {
  std::vector<ReadyTensor> ready;
  std::vector<PartialTensor> partial;
  std::vector<int> joined;  // ranks that have called join
  bool allJoined = false;
};

// Ready tensors: first the cached ones every participating rank marked ready, in slot order, then the announced
// ones. `cache` must already have dropped the slots any rank invalidated this cycle.
MatchResult matchAnnouncements(const std::vector<RankMessage>& msgs, const ResponseCache& cache);

// "[0, 2, 3]"
std::string rankList(const std::vector<int>& ranks);

}  // namespace nrt
