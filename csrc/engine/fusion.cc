// Bucket planning (see fusion.h).
#include "engine/fusion.h"

#include <map>
#include <tuple>

namespace nrt {

std::vector<std::vector<const ReadyTensor*>> planBuckets(const std::vector<const ReadyTensor*>& tensors,
                                                         size_t fusionBytes) {
  using Key = std::tuple<int, int, int>;
  std::vector<std::vector<const ReadyTensor*>> buckets;
  std::map<Key, size_t> open;  // key -> index of its open bucket
  std::map<Key, size_t> openBytes;
  for (const ReadyTensor* t : tensors) {
    const Key key{static_cast<int>(t->meta.dtype), static_cast<int>(t->meta.op), t->meta.codec};
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
