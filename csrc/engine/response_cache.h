// The response cache (Horovod's idea): once a tensor has been negotiated and run, every rank gives it the same
// slot, so later cycles announce it as one bit of a bit vector instead of its metadata. Every rank holds an
// identical cache because it changes only on agreed results (the same inserts, uses and evictions in the same
// order), so slot numbers mean the same tensor everywhere. The key is the whole announcement (name, operation,
// dtype, shape, op, codec, root, group) plus this rank's prescale and postscale: any change invalidates the slot
// and the tensor takes the full metadata path again, where mismatches are checked as before.
// Exercised by tests/test_engine_cache.py under mpirun.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/tensor_meta.h"

namespace nrt {

class ResponseCache {
 public:
  static constexpr uint32_t kNoSlot = UINT32_MAX;
  explicit ResponseCache(size_t capacity) : capacity_(capacity) {}

  size_t capacity() const { return capacity_; }
  size_t size() const { return byName_.size(); }
  // Only all-reduces and broadcasts (an allgather's shape differs per rank; the rest are control operations).
  static bool cacheable(const TensorMeta& meta);

  enum class Lookup { kMiss, kHit, kInvalid };
  struct Found {
    Lookup state = Lookup::kMiss;
    uint32_t slot = kNoSlot;
  };
  // kHit: this rank's entry has the cached key; kInvalid: the name is cached with another key.
  Found lookup(const TensorMeta& meta, double prescale, double postscale) const;
  const TensorMeta& meta(uint32_t slot) const { return slots_[slot].meta; }
  bool occupied(uint32_t slot) const { return slot < slots_.size() && slots_[slot].used; }
  size_t slotCount() const { return slots_.size(); }  // slots ever allocated (bit vectors are this long)

  // Agreed updates; every rank calls them in the same order. `use` marks a slot as just used; `insert` gives a
  // tensor a slot (the lowest free one, else the least recently used one's; returns true if that evicted one);
  // a rank without a local entry (joined) passes NaN scales, which no later entry can hit.
  void use(uint32_t slot) { slots_[slot].lastUse = ++clock_; }
  bool insert(const TensorMeta& meta, double prescale, double postscale);
  void erase(uint32_t slot);

 private:
  struct Slot {
    TensorMeta meta;
    double prescale = 1, postscale = 1;
    uint64_t lastUse = 0;
    bool used = false;
  };
  size_t capacity_;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;  // erased slots, reused lowest first
  std::unordered_map<std::string, uint32_t> byName_;
  uint64_t clock_ = 0;
};

// Bit vectors of slots: bit s of byte s/8. Trailing zero bytes are trimmed, so steady state sends
// ceil(highest ready slot / 8) bytes.
void setBit(std::vector<uint8_t>& bits, uint32_t slot);
bool testBit(const std::vector<uint8_t>& bits, uint32_t slot);

}  // namespace nrt
