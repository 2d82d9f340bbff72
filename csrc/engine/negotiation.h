// A negotiation round's message for a group of ranks: each member's announcement list (tensor_meta.h),
// plus the running reduction of the small all-reduces the members inlined ("eager sums"). Two groups'
// messages combine into their union, reducing eager sums of the same tensor as they meet, so one
// recursive-doubling exchange both negotiates and all-reduces small tensors, moving each tensor's data
// once per round (as an all-reduce would), not once per rank (as an allgather would).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/types.h"

namespace nrt {

struct EagerSum {
  DataType dtype = DataType::kFloat32;
  ReduceOp op = ReduceOp::kSum;
  uint64_t count = 0;         // elements
  uint32_t contributors = 0;  // ranks whose data is in `data`
  std::vector<char> data;
};

struct GroupMessage {
  std::map<int32_t, std::vector<char>> ranks;  // rank -> its announcement list
  std::map<std::string, EagerSum> sums;        // tensor name -> reduction over its contributors so far

  std::vector<char> serialize() const;
  static GroupMessage parse(const char* data, size_t len, int fromRank);
  // The union of two disjoint groups. Sums of one name are reduced when dtype, op and count agree, and
  // dropped otherwise (the metadata check then reports the mismatch). combine(a, b) and combine(b, a) are
  // identical to the bit, since the reductions are commutative: every rank ends with the same message.
  static GroupMessage combine(GroupMessage a, const GroupMessage& b);
};

}  // namespace nrt
