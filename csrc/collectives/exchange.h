// A recursive-doubling exchange of messages whose sizes nobody knows in advance: receivers post buffers
// of the largest possible size and read the actual length, and at every step the two groups' messages
// are merged by a caller-supplied `combine`. With concatenation it is an allgather; the engine's
// negotiation combines announcement lists and reduces small tensors on the way. Either way it costs one
// latency-bound collective (ceil(log2 n) steps, +2 for a non-power-of-two world), not two.
#pragma once

#include <functional>
#include <vector>

#include "collectives/options.h"
#include "comm/communicator.h"

namespace nrt {

struct ExchangeOptions : CollectiveOptions {
  size_t capacity = 0;                // the largest block any rank may contribute
  double slowSeconds = 0;             // > 0: call onSlow once if the exchange takes longer than this
  std::function<void()> onSlow;
};

// A message as it travels: kHeaderBytes at the front for the exchange's framing (it writes the payload's length
// there), then the payload. Writers append the payload to `bytes`; the exchange sends from and receives into this
// layout, so a message is never copied between the writer, MPI and the combine step. The payload starts
// kHeaderBytes into a heap block, so an offset that is a multiple of 8 within it is 8-byte aligned.
struct FramedMessage {
  static constexpr size_t kHeaderBytes = sizeof(uint64_t);
  std::vector<char> bytes = std::vector<char>(kHeaderBytes);

  const char* data() const { return bytes.data() + kHeaderBytes; }
  size_t size() const { return bytes.size() < kHeaderBytes ? 0 : bytes.size() - kHeaderBytes; }  // 0 once moved from
};

// Merges two groups' messages (the caller's group first) into a new message; must give the same bytes whichever
// side calls it with which order of arguments, so that every rank ends with the same message.
using Combine = std::function<FramedMessage(const FramedMessage& ours, const FramedMessage& theirs, int theirRank)>;

// Returns the message of the whole communicator. Each rank's own message must be at most `capacity`
// bytes, and a combined message at most the sum of its parts (the negotiation's re-aligned eager sums may add up to
// 7 bytes each, well inside the 64 bytes of overhead each sum's budget allows: engine_negotiate.cc).
FramedMessage exchangeCombine(Communicator& comm, FramedMessage mine, const ExchangeOptions& opts,
                              const Combine& combine);

}  // namespace nrt
