// The pipelined ring: the engine under ring all-reduce, reduce-scatter and allgather.
//
// Vocabulary (as in Gloo): the buffer is cut into one chunk per rank, each chunk into segments. A ring of
// n ranks takes n-1 reduce-scatter steps, after which rank r holds the fully reduced chunk
// (r + rsShift + 1) mod n, then n-1 all-gather steps that circulate the reduced chunks. Every rank sends
// to its right neighbour (r+1) and receives from its left (r-1). Within and across steps, segments
// pipeline: receives are posted a window ahead, a segment is forwarded as soon as it has been reduced,
// so the wire, the reduction and the next receive overlap. Bytes sent per rank: 2(n-1)/n * S.
#pragma once

#include <cstddef>
#include <functional>
#include <vector>

#include "collectives/options.h"
#include "comm/communicator.h"
#include "common/types.h"

namespace nrt {

struct RingPlan {
  char* base = nullptr;
  size_t elemSize = 1;
  std::vector<size_t> chunkOffset;  // per chunk index, in elements from base
  std::vector<size_t> chunkCount;   // per chunk index, in elements
  bool reduceScatter = true;
  bool allgather = true;
  int rsShift = 0;  // reduce-scatter step s sends chunk (r + rsShift - s)
  int agShift = 1;  // all-gather step s sends chunk (r + agShift - s)
  DataType dtype = DataType::kFloat32;
  ReduceOp op = ReduceOp::kSum;
  int averageDivisor = 0;  // >1: divide each fully reduced segment before it is all-gathered
  // Called for each all-gather segment once it has arrived and been forwarded (chunk, segment index), so
  // callers can consume data while the rest is still on the wire.
  std::function<void(int chunk, size_t seg)> onGathered;
  // Reduce-scatter only: called once per chunk just before this rank's own values of it are first read (sent
  // at step 0, or reduced into later), so callers can produce them lazily while other chunks are on the
  // wire (the engine's fp32 -> fp16 cast with error feedback).
  std::function<void(int chunk)> beforeOwnValues;
};

// Elements per segment of a ring plan (a chunk's last segment is shorter).
size_t ringSegmentElems(const RingPlan& plan, const CollectiveOptions& opts);

void runRing(Communicator& comm, const RingPlan& plan, const CollectiveOptions& opts);

// Splits `count` elements into n chunks whose sizes differ by at most one (the first ones get the extra).
void splitEvenly(size_t count, int n, std::vector<size_t>& offset, std::vector<size_t>& length);

}  // namespace nrt
