// What a rank announces about each tensor it wants to communicate, and the wire format of one rank's
// negotiation message (a list of announcements; small tensors' data travels beside it, negotiation.h).
// Parsing is bounds-checked: a corrupt message raises, never reads past the buffer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/types.h"

namespace nrt {

enum class OpType : uint8_t { kAllreduce = 0, kAllgather, kBroadcast, kBarrier, kJoin, kShutdown };
const char* opTypeName(OpType t);

struct TensorMeta {
  std::string name;
  OpType type = OpType::kAllreduce;
  DataType dtype = DataType::kFloat32;
  ReduceOp op = ReduceOp::kSum;
  uint8_t codec = 0;  // 0 = dense; other ids are codecs (csrc/codecs)
  int32_t root = 0;   // broadcast root
  std::vector<int64_t> shape;
  // All-reduces submitted together as one group (Engine::enqueueGroup) travel as one bucket, members in index
  // order, once every member is ready: fusion then follows the submission, never arrival timing.
  std::string group;       // empty: not grouped (fused by arrival, see fusion.h)
  uint32_t groupSize = 0;
  uint32_t groupIndex = 0;

  size_t numel() const;
  size_t bytes() const { return numel() * dtypeSize(dtype); }
  std::string describe() const;  // e.g. "allreduce float32[3, 4] op=sum codec=0"
};

// One announcement as received.
struct Announcement {
  TensorMeta meta;
};

struct RankMessage {
  bool joined = false;
  std::string failure;                 // non-empty: this rank's engine failed (why); every rank stops
  std::vector<std::string> abandoned;  // rank 0 only: names whose stall timed out; all ranks fail them
  uint32_t cacheCapacity = 0;          // this rank's NEPTUNE_RT_CACHE_CAPACITY: every rank must use the same
  uint8_t denseAlgorithm = 0;          // and its NEPTUNE_RT_ALLREDUCE_ALGORITHM (an AllreduceAlgorithm) and
  uint64_t nativeAllreduceBytes = 0;   // resolved NEPTUNE_RT_NATIVE_ALLREDUCE_BYTES (else ranks pick different collectives)
  std::vector<uint8_t> cachedReady;    // bit vector: response-cache slots this rank has ready (response_cache.h)
  std::vector<uint32_t> cacheInvalid;  // slots whose name this rank submitted with another key: every rank evicts
  std::vector<Announcement> entries;   // the rest, with full metadata
};

class MessageWriter {
 public:
  explicit MessageWriter(bool joined, const std::vector<std::string>& abandoned,
                         const std::string& failure = std::string(), const std::vector<uint8_t>& cachedReady = {},
                         const std::vector<uint32_t>& cacheInvalid = {}, uint32_t cacheCapacity = 0,
                         uint8_t denseAlgorithm = 0, uint64_t nativeAllreduceBytes = 0);
  // Appends an announcement if the message stays within `capacity` bytes; returns false (and writes
  // nothing) otherwise.
  bool add(const TensorMeta& meta, size_t capacity);
  const std::vector<char>& bytes() const { return buf_; }
  size_t size() const { return buf_.size(); }

 private:
  std::vector<char> buf_;
  uint32_t count_ = 0;
  size_t countPos_ = 0;
};

RankMessage parseRankMessage(const char* data, size_t len, int fromRank);

}  // namespace nrt
