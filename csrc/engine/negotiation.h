// A negotiation round's message for a group of ranks: each member's announcement list (tensor_meta.h),
// plus the running reduction of the small all-reduces the members inlined ("eager sums"). Two groups'
// messages combine into their union, reducing eager sums of the same tensor as they meet, so one
// recursive-doubling exchange both negotiates and all-reduces small tensors, moving each tensor's data
// once per round (as an all-reduce would), not once per rank (as an allgather would).
//
// Messages are read in place (GroupMessage holds views into the received bytes) and written straight into the
// exchange's framed layout: a small all-reduce's data is copied into its rank's message once, and a combine step
// writes each sum once and reduces the other side's into it, where parsing into owned maps and serializing again
// cost six copies of the data per round.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "collectives/exchange.h"
#include "common/types.h"

namespace nrt {

// One rank's message: its announcement list, then the data of the small all-reduces it inlines, which must be
// added in ascending name order (every message keeps its sums sorted, so a combine is one merge).
class GroupMessageWriter {
 public:
  // `sums`: how many addSum calls follow; `sumBytes`: their data bytes and names (reserved up front).
  GroupMessageWriter(int32_t rank, const std::vector<char>& announcements, size_t sums, size_t sumBytes = 0);
  // Appends a sum of one contributor, a copy of `bytes` bytes at `data`, and returns where the copy lies (8-byte
  // aligned, for scaling in place; valid until the next addSum).
  char* addSum(const std::string& name, DataType dtype, ReduceOp op, uint64_t count, const void* data, size_t bytes);
  FramedMessage finish();

 private:
  FramedMessage msg_;
  size_t sums_;
  size_t added_ = 0;
};

struct GroupMessage {  // views into a message's bytes, valid while they live
  struct Sum {
    std::string_view name;
    DataType dtype = DataType::kFloat32;
    ReduceOp op = ReduceOp::kSum;
    uint64_t count = 0;         // elements
    uint32_t contributors = 0;  // ranks whose data is in `data`
    const char* data = nullptr;
    size_t bytes = 0;
  };
  struct Rank {
    int32_t rank = 0;
    const char* data = nullptr;  // its announcement list
    size_t bytes = 0;
  };
  std::vector<Rank> ranks;  // ascending rank
  std::vector<Sum> sums;    // ascending name

  // Bounds- and order-checked; the error names `fromRank`.
  static GroupMessage parse(const FramedMessage& m, int fromRank);
  const Rank* findRank(int32_t rank) const;
  const Sum* findSum(std::string_view name) const;
  // The union of two disjoint groups. Sums of one name are reduced when dtype, op and count agree, and
  // dropped otherwise (the metadata check then reports the mismatch). combine(a, b) and combine(b, a) are
  // identical to the bit (the group holding the lower rank is always the first operand: min, max and NaN
  // payloads depend on the order), so every rank ends with the same message.
  static FramedMessage combine(const GroupMessage& a, const GroupMessage& b);
  // The exchange's combine step (exchange.h) over two framed group messages.
  static FramedMessage combineFramed(const FramedMessage& ours, const FramedMessage& theirs, int theirRank);
};

}  // namespace nrt
