// Wire format of negotiation messages (see tensor_meta.h). Little-endian host layout: every rank of one
// job runs the same build on the same kind of machine.
//   header:  u32 magic | u8 joined | u32 nAbandoned | {u16 len, name}* | u16 len, failure
//            | u32 cacheCapacity | u8 denseAlgorithm | u64 nativeAllreduceBytes | u64 len, cached-ready bit vector | u32 nInvalid | u32 slot* | u32 nEntries (patched at the end)
//   entry:   u16 nameLen | name | u8 type | u8 dtype | u8 op | u8 codec | i32 root | u8 ndim | i64 shape[ndim]
//            | u16 groupLen | group | u32 groupSize | u32 groupIndex
#include "engine/tensor_meta.h"

#include <cstring>
#include <sstream>
#include <stdexcept>

#include "common/error.h"
#include "engine/wire.h"

namespace nrt {

namespace {
constexpr uint32_t kMagic = 0x4e52544e;  // "NRTN"
using wire::put;
using wire::putString;
}  // namespace

const char* opTypeName(OpType t) {
  switch (t) {
    case OpType::kAllreduce: return "allreduce";
    case OpType::kAllgather: return "allgather";
    case OpType::kBroadcast: return "broadcast";
    case OpType::kBarrier: return "barrier";
    case OpType::kJoin: return "join";
    case OpType::kShutdown: return "shutdown";
  }
  return "?";
}

size_t TensorMeta::numel() const {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

std::string TensorMeta::describe() const {
  std::ostringstream os;
  os << opTypeName(type) << " " << dtypeName(dtype) << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  if (type == OpType::kAllreduce) os << " op=" << reduceOpName(op) << " codec=" << static_cast<int>(codec);
  if (type == OpType::kBroadcast) os << " root=" << root;
  if (groupSize) os << " group='" << group << "' (" << groupIndex + 1 << " of " << groupSize << ")";
  return os.str();
}

MessageWriter::MessageWriter(bool joined, const std::vector<std::string>& abandoned, const std::string& failure,
                             const std::vector<uint8_t>& cachedReady, const std::vector<uint32_t>& cacheInvalid,
                             uint32_t cacheCapacity, uint8_t denseAlgorithm, uint64_t nativeAllreduceBytes) {
  put<uint32_t>(buf_, kMagic);
  put<uint8_t>(buf_, joined ? 1 : 0);
  put<uint32_t>(buf_, static_cast<uint32_t>(abandoned.size()));
  for (const auto& a : abandoned) putString(buf_, a);
  putString(buf_, failure.substr(0, 4096));
  put<uint32_t>(buf_, cacheCapacity);
  put<uint8_t>(buf_, denseAlgorithm);
  put<uint64_t>(buf_, nativeAllreduceBytes);
  wire::putBytes(buf_, cachedReady.data(), cachedReady.size());
  put<uint32_t>(buf_, static_cast<uint32_t>(cacheInvalid.size()));
  for (uint32_t slot : cacheInvalid) put<uint32_t>(buf_, slot);
  countPos_ = buf_.size();
  put<uint32_t>(buf_, 0);  // entry count, patched by add()
}

bool MessageWriter::add(const TensorMeta& m, size_t capacity) {
  const size_t need = 2 + m.name.size() + 4 + 4 + 1 + 8 * m.shape.size() + 2 + m.group.size() + 8;
  if (buf_.size() + need > capacity) return false;
  putString(buf_, m.name);
  put<uint8_t>(buf_, static_cast<uint8_t>(m.type));
  put<uint8_t>(buf_, static_cast<uint8_t>(m.dtype));
  put<uint8_t>(buf_, static_cast<uint8_t>(m.op));
  put<uint8_t>(buf_, m.codec);
  put<int32_t>(buf_, m.root);
  put<uint8_t>(buf_, static_cast<uint8_t>(m.shape.size()));
  for (int64_t d : m.shape) put<int64_t>(buf_, d);
  putString(buf_, m.group);
  put<uint32_t>(buf_, m.groupSize);
  put<uint32_t>(buf_, m.groupIndex);
  ++count_;
  std::memcpy(buf_.data() + countPos_, &count_, sizeof(count_));
  return true;
}

RankMessage parseRankMessage(const char* data, size_t len, int fromRank) {
  wire::Reader r(data, len, fromRank);
  const uint32_t magic = r.get<uint32_t>();
  if (magic != kMagic) r.corrupt("bad magic number");
  RankMessage msg;
  msg.joined = r.get<uint8_t>() != 0;
  const uint32_t nAbandoned = r.get<uint32_t>();
  for (uint32_t i = 0; i < nAbandoned; ++i) msg.abandoned.push_back(r.str());
  msg.failure = r.str();
  msg.cacheCapacity = r.get<uint32_t>();
  msg.denseAlgorithm = r.get<uint8_t>();
  msg.nativeAllreduceBytes = r.get<uint64_t>();
  const uint64_t bitBytes = r.get<uint64_t>();
  const char* bits = r.take(bitBytes);
  msg.cachedReady.assign(bits, bits + bitBytes);
  const uint32_t nInvalid = r.get<uint32_t>();
  if (nInvalid > len / 4) r.corrupt("too many invalidated cache slots");
  msg.cacheInvalid.resize(nInvalid);
  for (auto& slot : msg.cacheInvalid) slot = r.get<uint32_t>();
  const uint32_t n = r.get<uint32_t>();
  msg.entries.reserve(n);
  for (uint32_t i = 0; i < n; ++i) {
    Announcement a;
    a.meta.name = r.str();
    const uint8_t type = r.get<uint8_t>(), dtype = r.get<uint8_t>(), op = r.get<uint8_t>();
    if (type > static_cast<uint8_t>(OpType::kShutdown) || dtype > static_cast<uint8_t>(DataType::kInt8) ||
        op > static_cast<uint8_t>(ReduceOp::kMax))
      r.corrupt("unknown operation, dtype or op");
    a.meta.type = static_cast<OpType>(type);
    a.meta.dtype = static_cast<DataType>(dtype);
    a.meta.op = static_cast<ReduceOp>(op);
    a.meta.codec = r.get<uint8_t>();
    a.meta.root = r.get<int32_t>();
    const uint8_t ndim = r.get<uint8_t>();
    a.meta.shape.resize(ndim);
    for (auto& d : a.meta.shape) d = r.get<int64_t>();
    a.meta.group = r.str();
    a.meta.groupSize = r.get<uint32_t>();
    a.meta.groupIndex = r.get<uint32_t>();
    msg.entries.push_back(std::move(a));
  }
  return msg;
}

}  // namespace nrt
