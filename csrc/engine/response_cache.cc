// The response cache (see response_cache.h).
#include "engine/response_cache.h"

#include <algorithm>
#include <cmath>

namespace nrt {

namespace {
bool sameKey(const TensorMeta& a, const TensorMeta& b) {
  return a.name == b.name && a.type == b.type && a.dtype == b.dtype && a.op == b.op && a.codec == b.codec &&
         a.root == b.root && a.shape == b.shape && a.group == b.group && a.groupSize == b.groupSize &&
         a.groupIndex == b.groupIndex;
}
}  // namespace

bool ResponseCache::cacheable(const TensorMeta& meta) {
  return meta.type == OpType::kAllreduce || meta.type == OpType::kBroadcast;
}

ResponseCache::Found ResponseCache::lookup(const TensorMeta& meta, double prescale, double postscale) const {
  auto it = byName_.find(meta.name);
  if (it == byName_.end()) return {};
  const Slot& s = slots_[it->second];
  // NaN (a slot filled on a rank that had joined) equals nothing: that rank's first use invalidates it.
  const bool hit = sameKey(s.meta, meta) && s.prescale == prescale && s.postscale == postscale;
  return {hit ? Lookup::kHit : Lookup::kInvalid, it->second};
}

bool ResponseCache::insert(const TensorMeta& meta, double prescale, double postscale) {
  if (capacity_ == 0) return false;
  auto named = byName_.find(meta.name);
  if (named != byName_.end()) erase(named->second);  // defensive: a name holds one slot
  uint32_t slot;
  bool evicted = false;
  if (!free_.empty()) {
    auto lowest = std::min_element(free_.begin(), free_.end());
    slot = *lowest;
    free_.erase(lowest);
  } else if (slots_.size() < capacity_) {
    slot = static_cast<uint32_t>(slots_.size());
    slots_.emplace_back();
  } else {
    slot = 0;
    for (uint32_t i = 1; i < slots_.size(); ++i)
      if (slots_[i].lastUse < slots_[slot].lastUse) slot = i;
    byName_.erase(slots_[slot].meta.name);
    evicted = true;
  }
  Slot& s = slots_[slot];
  s.meta = meta;
  s.prescale = prescale;
  s.postscale = postscale;
  s.used = true;
  s.lastUse = ++clock_;
  byName_[meta.name] = slot;
  return evicted;
}

void ResponseCache::erase(uint32_t slot) {
  if (!occupied(slot)) return;
  byName_.erase(slots_[slot].meta.name);
  slots_[slot] = Slot{};
  free_.push_back(slot);
}

void setBit(std::vector<uint8_t>& bits, uint32_t slot) {
  if (bits.size() <= slot / 8) bits.resize(slot / 8 + 1, 0);
  bits[slot / 8] |= static_cast<uint8_t>(1u << (slot % 8));
}

bool testBit(const std::vector<uint8_t>& bits, uint32_t slot) {
  return slot / 8 < bits.size() && (bits[slot / 8] >> (slot % 8)) & 1u;
}

}  // namespace nrt
