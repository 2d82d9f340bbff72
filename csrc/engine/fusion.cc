// Bucket planning (see fusion.h).
#include "engine/fusion.h"

#include <map>
#include <string>
#include <tuple>

namespace nrt {

std::vector<std::vector<const ReadyTensor*>> planBuckets(const std::vector<const ReadyTensor*>& tensors,
                                                         size_t fusionBytes) {
  using Key = std::tuple<int, int, int>;
  const auto keyOf = [](const ReadyTensor* t) {
    return Key{static_cast<int>(t->meta.dtype), static_cast<int>(t->meta.op), t->meta.codec};
  };
  std::vector<std::vector<const ReadyTensor*>> buckets;

  // Groups: members by index; a complete group becomes one bucket where its first member stood.
  std::map<std::string, std::vector<const ReadyTensor*>> groups;
  for (const ReadyTensor* t : tensors) {
    if (t->meta.groupSize == 0) continue;
    auto& members = groups[t->meta.group];
    members.resize(t->meta.groupSize, nullptr);
    if (t->meta.groupIndex < members.size()) members[t->meta.groupIndex] = t;
  }
  const auto complete = [](const std::vector<const ReadyTensor*>& members) {
    for (const ReadyTensor* m : members)
      if (!m) return false;
    return true;
  };

  std::map<Key, size_t> open;  // key -> index of its open bucket
  std::map<Key, size_t> openBytes;
  for (const ReadyTensor* t : tensors) {
    if (t->meta.groupSize) {
      auto it = groups.find(t->meta.group);
      if (it == groups.end() || !complete(it->second)) continue;  // not all here yet (or planned already)
      // Members must share dtype, op and codec to share a buffer (Engine::enqueueGroup checks it); split by
      // key anyway, in index order, so a bad group can never mix them.
      std::map<Key, size_t> byKey;
      for (const ReadyTensor* m : it->second) {
        auto [k, fresh] = byKey.emplace(keyOf(m), buckets.size());
        if (fresh) buckets.emplace_back();
        buckets[k->second].push_back(m);
      }
      groups.erase(it);
      continue;
    }
    const Key key = keyOf(t);
    const size_t bytes = t->meta.bytes();
    auto it = open.find(key);
    if (it != open.end() && openBytes[key] + bytes <= fusionBytes) {
      buckets[it->second].push_back(t);
      openBytes[key] += bytes;
      continue;
    }
    open[key] = buckets.size();
    openBytes[key] = bytes;
    buckets.push_back({t});
  }
  return buckets;
}

}  // namespace nrt
