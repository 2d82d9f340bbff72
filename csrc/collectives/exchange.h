// Allgather of blocks whose sizes nobody knows in advance (each at most `capacity` bytes), in one
// recursive-doubling pass: receivers post `capacity`-sized buffers and read the actual length. The engine
// negotiates with it every cycle, so it must cost one latency-bound collective, not two.
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

// Returns every rank's block, indexed by rank.
std::vector<std::vector<char>> exchangeBlocks(Communicator& comm, const std::vector<char>& mine,
                                              const ExchangeOptions& opts);

}  // namespace nrt
