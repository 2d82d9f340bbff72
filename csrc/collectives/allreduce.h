// Dense collectives as free functions with an options struct (Gloo style): all-reduce (ring, recursive
// doubling or halving-doubling, picked by chooseAllreduceAlgorithm), reduce-scatter, variable-size allgather, broadcast.
// All work in place on caller-owned buffers; exercised by tests/test_collectives.py under mpirun.
#pragma once

#include <cstddef>
#include <vector>

#include "collectives/options.h"
#include "comm/communicator.h"
#include "common/types.h"

namespace nrt {

enum class AllreduceAlgorithm { kAuto = 0, kRing, kRecursiveDoubling, kHalvingDoubling };
const char* allreduceAlgorithmName(AllreduceAlgorithm a);
AllreduceAlgorithm allreduceAlgorithmFromName(const std::string& name);

// Below this size the latency of the ring's 2(n-1) steps dominates; recursive doubling needs ceil(log2 n)
// (+2 for a non-power-of-two world) exchanges of the whole buffer. Measured on shared memory, 4 ranks: the
// ring overtakes at a few hundred KB; 64 KiB keeps recursive doubling where it clearly wins.
constexpr size_t kRecursiveDoublingMaxBytes = 64 * 1024;

// Halving-doubling's upper bound in the decision function. Measured (benchmarks/dense_native.py, 4 ranks): on
// shared memory over 2 cores it beat our ring by about 1.1x at 2.5 MB in 4 of 5 runs (a wash at 1 MB), tied at
// 4 MB and lost at 8 MB; on
// 4 emulated 1 Gbit nodes it tied at 2.5 MB and lost 1.3x at 16 and 64 MB, where the ring's pipelining across
// steps keeps the link busy and halving-doubling drains it at every step.
constexpr size_t kHalvingDoublingMaxBytes = 4 << 20;

// The explicit decision function: tested, and used by the engine for every bucket. Above
// kRecursiveDoublingMaxBytes and up to kHalvingDoublingMaxBytes: halving-doubling where the world is a power of
// two of at least 4 ranks (the ring's bytes in 2 log2 n steps instead of 2(n-1); halving_doubling.cc); else the
// ring (a fold would cost a non-power-of-two world a whole extra buffer; with 2 ranks the two are the same
// exchange, and the ring pipelines it).
AllreduceAlgorithm chooseAllreduceAlgorithm(size_t bytes, int worldSize);
// The algorithm allreduce() runs for `requested` (kAuto: the decision function's choice).
AllreduceAlgorithm resolveAllreduceAlgorithm(AllreduceAlgorithm requested, size_t bytes, int worldSize);

struct AllreduceOptions;
// Rabenseifner's all-reduce (halving_doubling.cc); throws std::invalid_argument unless the world is a power of two.
void halvingDoublingAllreduce(Communicator& comm, const AllreduceOptions& opts);

struct AllreduceOptions : CollectiveOptions {
  void* buffer = nullptr;
  size_t count = 0;
  DataType dtype = DataType::kFloat32;
  ReduceOp op = ReduceOp::kSum;
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::kAuto;
  int averageDivisor = 0;  // for kAverage: 0 means the world size
};
void allreduce(Communicator& comm, const AllreduceOptions& opts);

// Reduce-scatter: `buffer` holds sum(counts) elements on every rank; afterwards rank r's block
// (at offset sum(counts[:r])) holds the reduction of that block over all ranks. Other blocks are scratch.
struct ReduceScatterOptions : CollectiveOptions {
  void* buffer = nullptr;
  std::vector<size_t> counts;
  DataType dtype = DataType::kFloat32;
  ReduceOp op = ReduceOp::kSum;
};
void reduceScatter(Communicator& comm, const ReduceScatterOptions& opts);

// Allgather with a different number of bytes per rank: `buffer` holds sum(bytes) bytes; rank r's own
// block (at offset sum(bytes[:r])) is filled in by the caller, the others are received.
struct AllgatherOptions : CollectiveOptions {
  void* buffer = nullptr;
  std::vector<size_t> bytes;
};
void allgatherv(Communicator& comm, const AllgatherOptions& opts);

// Broadcast `bytes` bytes from `root`: binomial tree for small messages, pipelined chain for large ones.
constexpr size_t kBroadcastTreeMaxBytes = 256 * 1024;
struct BroadcastOptions : CollectiveOptions {
  void* buffer = nullptr;
  size_t bytes = 0;
  int root = 0;
};
void broadcast(Communicator& comm, const BroadcastOptions& opts);

}  // namespace nrt
