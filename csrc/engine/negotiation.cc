// Group messages of the negotiation (see negotiation.h), as payloads of FramedMessage:
//   u32 magic | u32 nRanks | {i32 rank, u64 len, bytes}* (ascending rank) | u32 nSums
//   | {u16 nameLen, name, u8 dtype, u8 op, u64 count, u32 contributors, u64 len, zeros to 8-byte alignment, data}*
//     (ascending name)
// Offsets are counted from the payload's start, which FramedMessage places 8-byte aligned: the reductions then
// read and write aligned elements of every dtype.
#include "engine/negotiation.h"

#include <algorithm>
#include <cstring>

#include "collectives/reduce.h"
#include "engine/wire.h"

namespace nrt {

namespace {

constexpr uint32_t kGroupMagic = 0x4e52544e;  // "NRTN"
constexpr size_t kAlign = 8;

size_t payloadOffset(const FramedMessage& m) { return m.bytes.size() - FramedMessage::kHeaderBytes; }

void padToAlignment(FramedMessage& m) {
  const size_t pad = (kAlign - payloadOffset(m) % kAlign) % kAlign;
  m.bytes.insert(m.bytes.end(), pad, '\0');
}

// The fields of a sum up to its data, then the padding to the data's alignment.
void putSumHeader(FramedMessage& m, std::string_view name, DataType dtype, ReduceOp op, uint64_t count,
                  uint32_t contributors, size_t bytes) {
  NRT_CHECK_ARG(name.size() <= 65535, "neptune_rt: tensor name of ", name.size(), " characters is too long");
  wire::put<uint16_t>(m.bytes, static_cast<uint16_t>(name.size()));
  m.bytes.insert(m.bytes.end(), name.begin(), name.end());
  wire::put<uint8_t>(m.bytes, static_cast<uint8_t>(dtype));
  wire::put<uint8_t>(m.bytes, static_cast<uint8_t>(op));
  wire::put<uint64_t>(m.bytes, count);
  wire::put<uint32_t>(m.bytes, contributors);
  wire::put<uint64_t>(m.bytes, bytes);
  padToAlignment(m);
}

char* appendData(FramedMessage& m, const char* data, size_t bytes) {
  const size_t at = m.bytes.size();
  m.bytes.insert(m.bytes.end(), data, data + bytes);
  return m.bytes.data() + at;
}

void putRank(FramedMessage& m, const GroupMessage::Rank& r) {
  wire::put<int32_t>(m.bytes, r.rank);
  wire::put<uint64_t>(m.bytes, r.bytes);
  m.bytes.insert(m.bytes.end(), r.data, r.data + r.bytes);
}

void patchCount(FramedMessage& m, size_t at, uint32_t count) { std::memcpy(m.bytes.data() + at, &count, sizeof(count)); }

}  // namespace

GroupMessageWriter::GroupMessageWriter(int32_t rank, const std::vector<char>& announcements, size_t sums,
                                       size_t sumBytes)
    : sums_(sums) {
  msg_.bytes.reserve(FramedMessage::kHeaderBytes + 24 + announcements.size() + sumBytes + sums * (24 + kAlign));
  wire::put<uint32_t>(msg_.bytes, kGroupMagic);
  wire::put<uint32_t>(msg_.bytes, 1);
  putRank(msg_, {rank, announcements.data(), announcements.size()});
  wire::put<uint32_t>(msg_.bytes, static_cast<uint32_t>(sums));
}

char* GroupMessageWriter::addSum(const std::string& name, DataType dtype, ReduceOp op, uint64_t count,
                                 const void* data, size_t bytes) {
  NRT_CHECK(added_ < sums_, "neptune_rt: more eager sums than announced to the message writer");
  ++added_;
  putSumHeader(msg_, name, dtype, op, count, 1, bytes);
  return appendData(msg_, static_cast<const char*>(data), bytes);
}

FramedMessage GroupMessageWriter::finish() {
  NRT_CHECK(added_ == sums_, "neptune_rt: fewer eager sums than announced to the message writer");
  return std::move(msg_);
}

GroupMessage GroupMessage::parse(const FramedMessage& m, int fromRank) {
  wire::Reader r(m.data(), m.size(), fromRank);
  if (r.get<uint32_t>() != kGroupMagic) r.corrupt("bad magic number");
  GroupMessage g;
  const uint32_t nRanks = r.get<uint32_t>();
  if (nRanks > m.size() / 12) r.corrupt("too many ranks");
  g.ranks.reserve(nRanks);
  for (uint32_t i = 0; i < nRanks; ++i) {
    Rank rank;
    rank.rank = r.get<int32_t>();
    rank.bytes = r.get<uint64_t>();
    rank.data = r.take(rank.bytes);
    if (!g.ranks.empty() && g.ranks.back().rank >= rank.rank) r.corrupt("ranks out of order");
    g.ranks.push_back(rank);
  }
  const uint32_t nSums = r.get<uint32_t>();
  if (nSums > m.size() / 24) r.corrupt("too many eager sums");
  g.sums.reserve(nSums);
  for (uint32_t i = 0; i < nSums; ++i) {
    Sum s;
    const uint16_t nameLen = r.get<uint16_t>();
    s.name = std::string_view(r.take(nameLen), nameLen);
    const uint8_t dtype = r.get<uint8_t>(), op = r.get<uint8_t>();
    if (dtype > static_cast<uint8_t>(DataType::kInt8) || op > static_cast<uint8_t>(ReduceOp::kMax))
      r.corrupt("unknown dtype or op in an eager sum");
    s.dtype = static_cast<DataType>(dtype);
    s.op = static_cast<ReduceOp>(op);
    s.count = r.get<uint64_t>();
    s.contributors = r.get<uint32_t>();
    s.bytes = r.get<uint64_t>();
    r.take((kAlign - r.position() % kAlign) % kAlign);
    s.data = r.take(s.bytes);
    if (reinterpret_cast<uintptr_t>(s.data) % kAlign != 0) r.corrupt("eager sum '" + std::string(s.name) + "' misaligned");
    if (s.bytes % dtypeSize(s.dtype) != 0 || s.count != s.bytes / dtypeSize(s.dtype))
      r.corrupt("eager sum '" + std::string(s.name) + "' has the wrong size");
    if (!g.sums.empty() && g.sums.back().name >= s.name) r.corrupt("eager sums out of order");
    g.sums.push_back(s);
  }
  if (!r.done()) r.corrupt("trailing bytes");
  return g;
}

const GroupMessage::Rank* GroupMessage::findRank(int32_t rank) const {
  auto it = std::lower_bound(ranks.begin(), ranks.end(), rank, [](const Rank& r, int32_t v) { return r.rank < v; });
  return it != ranks.end() && it->rank == rank ? &*it : nullptr;
}

const GroupMessage::Sum* GroupMessage::findSum(std::string_view name) const {
  auto it = std::lower_bound(sums.begin(), sums.end(), name, [](const Sum& s, std::string_view v) { return s.name < v; });
  return it != sums.end() && it->name == name ? &*it : nullptr;
}

FramedMessage GroupMessage::combine(const GroupMessage& a, const GroupMessage& b) {
  size_t reserve = 12;
  for (const GroupMessage* g : {&a, &b}) {
    for (const Rank& r : g->ranks) reserve += 12 + r.bytes;
    for (const Sum& s : g->sums) reserve += 26 + kAlign + s.name.size() + s.bytes;
  }
  FramedMessage out;
  out.bytes.reserve(out.bytes.size() + reserve);  // no reallocation below: a reduced sum's pointer stays valid
  wire::put<uint32_t>(out.bytes, kGroupMagic);
  const size_t rankCountAt = out.bytes.size();
  wire::put<uint32_t>(out.bytes, 0);
  uint32_t nRanks = 0;
  // Both lists are sorted: one merge. The groups are disjoint: a rank in both is refused.
  for (size_t i = 0, j = 0; i < a.ranks.size() || j < b.ranks.size(); ++nRanks) {
    if (j == b.ranks.size() || (i < a.ranks.size() && a.ranks[i].rank < b.ranks[j].rank)) {
      putRank(out, a.ranks[i++]);
    } else {
      NRT_CHECK(i == a.ranks.size() || a.ranks[i].rank != b.ranks[j].rank, "neptune_rt: the negotiation met rank ",
                b.ranks[j].rank, "'s message twice (a corrupt message, or ranks out of step)");
      putRank(out, b.ranks[j++]);
    }
  }
  patchCount(out, rankCountAt, nRanks);
  const bool lowerFirst = b.ranks.empty() || (!a.ranks.empty() && a.ranks.front().rank < b.ranks.front().rank);
  const size_t sumCountAt = out.bytes.size();
  wire::put<uint32_t>(out.bytes, 0);
  uint32_t nSums = 0;
  const auto copy = [&](const Sum& s) {
    putSumHeader(out, s.name, s.dtype, s.op, s.count, s.contributors, s.bytes);
    appendData(out, s.data, s.bytes);
    ++nSums;
  };
  for (size_t i = 0, j = 0; i < a.sums.size() || j < b.sums.size();) {
    if (j == b.sums.size() || (i < a.sums.size() && a.sums[i].name < b.sums[j].name)) {
      copy(a.sums[i++]);
    } else if (i == a.sums.size() || b.sums[j].name < a.sums[i].name) {
      copy(b.sums[j++]);
    } else {
      const Sum& mine = a.sums[i++];
      const Sum& theirs = b.sums[j++];
      if (mine.dtype != theirs.dtype || mine.op != theirs.op || mine.count != theirs.count) continue;  // dropped
      // The lower ranks' sum first on both sides of the exchange: min, max (NaN, +0 against -0) and even sums (NaN
      // payloads) depend on the operands' order, and both sides must compute the same bytes.
      const Sum& first = lowerFirst ? mine : theirs;
      const Sum& second = lowerFirst ? theirs : mine;
      putSumHeader(out, first.name, first.dtype, first.op, first.count, first.contributors + second.contributors,
                   first.bytes);
      reduceInto(appendData(out, first.data, first.bytes), second.data, first.count, first.dtype, first.op);
      ++nSums;
    }
  }
  patchCount(out, sumCountAt, nSums);
  return out;
}

FramedMessage GroupMessage::combineFramed(const FramedMessage& ours, const FramedMessage& theirs, int theirRank) {
  return combine(parse(ours, -1), parse(theirs, theirRank));
}

}  // namespace nrt
