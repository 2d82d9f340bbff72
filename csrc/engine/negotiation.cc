// Group messages of the negotiation (see negotiation.h).
//   u32 magic | u32 nRanks | {i32 rank, u64 len, bytes}* | u32 nSums
//   | {u16 nameLen, name, u8 dtype, u8 op, u64 count, u32 contributors, u64 len, data}*
#include "engine/negotiation.h"

#include "collectives/reduce.h"
#include "engine/wire.h"

namespace nrt {

namespace {
constexpr uint32_t kGroupMagic = 0x4e52544d;  // "NRTM"
}

std::vector<char> GroupMessage::serialize() const {
  std::vector<char> out;
  wire::put<uint32_t>(out, kGroupMagic);
  wire::put<uint32_t>(out, static_cast<uint32_t>(ranks.size()));
  for (const auto& [rank, bytes] : ranks) {
    wire::put<int32_t>(out, rank);
    wire::putBytes(out, bytes.data(), bytes.size());
  }
  wire::put<uint32_t>(out, static_cast<uint32_t>(sums.size()));
  for (const auto& [name, s] : sums) {
    wire::putString(out, name);
    wire::put<uint8_t>(out, static_cast<uint8_t>(s.dtype));
    wire::put<uint8_t>(out, static_cast<uint8_t>(s.op));
    wire::put<uint64_t>(out, s.count);
    wire::put<uint32_t>(out, s.contributors);
    wire::putBytes(out, s.data.data(), s.data.size());
  }
  return out;
}

GroupMessage GroupMessage::parse(const char* data, size_t len, int fromRank) {
  wire::Reader r(data, len, fromRank);
  if (r.get<uint32_t>() != kGroupMagic) r.corrupt("bad magic number");
  GroupMessage g;
  const uint32_t nRanks = r.get<uint32_t>();
  for (uint32_t i = 0; i < nRanks; ++i) {
    const int32_t rank = r.get<int32_t>();
    g.ranks[rank] = r.bytes();
  }
  const uint32_t nSums = r.get<uint32_t>();
  for (uint32_t i = 0; i < nSums; ++i) {
    std::string name = r.str();
    EagerSum s;
    const uint8_t dtype = r.get<uint8_t>(), op = r.get<uint8_t>();
    if (dtype > static_cast<uint8_t>(DataType::kInt8) || op > static_cast<uint8_t>(ReduceOp::kMax))
      r.corrupt("unknown dtype or op in an eager sum");
    s.dtype = static_cast<DataType>(dtype);
    s.op = static_cast<ReduceOp>(op);
    s.count = r.get<uint64_t>();
    s.contributors = r.get<uint32_t>();
    s.data = r.bytes();
    if (s.data.size() != s.count * dtypeSize(s.dtype)) r.corrupt("eager sum '" + name + "' has the wrong size");
    g.sums.emplace(std::move(name), std::move(s));
  }
  if (!r.done()) r.corrupt("trailing bytes");
  return g;
}

GroupMessage GroupMessage::combine(GroupMessage a, const GroupMessage& b) {
  for (const auto& [rank, bytes] : b.ranks) a.ranks[rank] = bytes;
  for (const auto& [name, theirs] : b.sums) {
    auto it = a.sums.find(name);
    if (it == a.sums.end()) {
      a.sums.emplace(name, theirs);
      continue;
    }
    EagerSum& mine = it->second;
    if (mine.dtype != theirs.dtype || mine.op != theirs.op || mine.count != theirs.count) {
      a.sums.erase(it);
      continue;
    }
    reduceInto(mine.data.data(), theirs.data.data(), mine.count, mine.dtype, mine.op);
    mine.contributors += theirs.contributors;
  }
  return a;
}

}  // namespace nrt
