// Pipelined ring (see ring.h for the vocabulary). One loop walks the receive units (step, segment) in
// order; each unit is: wait for its receive -> reduce it into place (reduce-scatter steps only) ->
// forward the same segment to the right as the next step's send.
#include "collectives/ring.h"

#include <algorithm>
#include <cstring>
#include <memory>

#include "collectives/reduce.h"
#include "common/error.h"

namespace nrt {

namespace {

// Receives posted ahead of the one being processed: enough to keep the link busy while we reduce,
// few enough that scratch memory stays at kRecvWindow segments.
constexpr size_t kRecvWindow = 4;

struct Step {
  bool reduce;  // reduce-scatter step (recv -> scratch -> reduce) or all-gather step (recv in place)
  int sendChunk;
  int recvChunk;
};

struct RecvUnit {
  size_t step;
  size_t seg;
  size_t elemOffset;  // from base
  size_t elems;
};

}  // namespace

void splitEvenly(size_t count, int n, std::vector<size_t>& offset, std::vector<size_t>& length) {
  offset.assign(n, 0);
  length.assign(n, 0);
  const size_t base = count / n, extra = count % n;
  size_t pos = 0;
  for (int i = 0; i < n; ++i) {
    offset[i] = pos;
    length[i] = base + (static_cast<size_t>(i) < extra ? 1 : 0);
    pos += length[i];
  }
}

size_t ringSegmentElems(const RingPlan& plan, const CollectiveOptions& opts) {
  return std::max<size_t>(1, opts.segmentBytes / plan.elemSize);
}

void runRing(Communicator& comm, const RingPlan& p, const CollectiveOptions& opts) {
  const int n = comm.size();
  const int r = comm.rank();
  NRT_CHECK(p.chunkOffset.size() == static_cast<size_t>(n) && p.chunkCount.size() == static_cast<size_t>(n),
            "neptune_rt: ring plan has ", p.chunkCount.size(), " chunks for ", n, " ranks");
  if (n == 1) return;
  NRT_CHECK(!(p.reduceScatter && p.allgather) || p.agShift == p.rsShift + 1,
            "neptune_rt: ring all-gather must start from the chunk reduce-scatter finished");
  const int right = (r + 1) % n;
  const int left = (r - 1 + n) % n;
  const auto mod = [n](long x) { return static_cast<int>(((x % n) + n) % n); };
  const size_t segElems = ringSegmentElems(p, opts);
  const auto segCount = [&](int chunk) { return (p.chunkCount[chunk] + segElems - 1) / segElems; };
  const auto segPtr = [&](int chunk, size_t seg) {
    return p.base + (p.chunkOffset[chunk] + seg * segElems) * p.elemSize;
  };
  const auto segLen = [&](int chunk, size_t seg) {
    return std::min(segElems, p.chunkCount[chunk] - seg * segElems);
  };
  const Deadline deadline = Deadline::after(opts.timeoutSeconds);

  std::vector<Step> steps;
  if (p.reduceScatter)
    for (int s = 0; s < n - 1; ++s) steps.push_back({true, mod(r + p.rsShift - s), mod(r + p.rsShift - s - 1)});
  if (p.allgather)
    for (int s = 0; s < n - 1; ++s) steps.push_back({false, mod(r + p.agShift - s), mod(r + p.agShift - s - 1)});
  const size_t lastReduceStep = p.reduceScatter ? static_cast<size_t>(n - 2) : SIZE_MAX;

  std::vector<RecvUnit> units;
  for (size_t g = 0; g < steps.size(); ++g) {
    const int c = steps[g].recvChunk;
    for (size_t k = 0; k < segCount(c); ++k) units.push_back({g, k, p.chunkOffset[c] + k * segElems, segLen(c, k)});
  }

  // Sends in posting order; firstSendOfChunk[c] indexes the reduce-scatter send of chunk c's segment 0, so an
  // all-gather receive into that chunk can first make sure the old contents have left.
  std::vector<Request> sends;
  std::vector<long> firstSendOfChunk(n, -1);
  const auto postStepSends = [&](size_t g, size_t seg) {
    const int c = steps[g].sendChunk;
    if (steps[g].reduce && seg == 0) firstSendOfChunk[c] = static_cast<long>(sends.size());
    sends.push_back(comm.isend(segPtr(c, seg), segLen(c, seg) * p.elemSize, right, opts.tag));
  };
  // Uninitialized: every byte is received before it is read, and zeroing kRecvWindow segments (2 MiB at the
  // default segment size) cost more than the packing of a 2.5 MB bucket (benchmarks/engine_overhead.py).
  const size_t slotBytes = std::min(segElems, *std::max_element(p.chunkCount.begin(), p.chunkCount.end())) *
                           p.elemSize;
  std::unique_ptr<char[]> scratch(new char[kRecvWindow * slotBytes]);
  // On an error, requests may still be posted into scratch (and into the caller's buffer, which the caller
  // keeps): the communicator is poisoned and scratch is never freed.
  PostedBuffers posted(comm, opts.name);
  posted.keep(scratch);
  if (p.reduceScatter && p.beforeOwnValues) p.beforeOwnValues(steps[0].sendChunk);
  for (size_t k = 0; k < segCount(steps[0].sendChunk); ++k) postStepSends(0, k);

  std::vector<Request> recvs(units.size());
  size_t postedRecvs = 0;
  const auto postRecvsUpTo = [&](size_t limit) {
    for (; postedRecvs < std::min(limit, units.size()); ++postedRecvs) {
      const RecvUnit& u = units[postedRecvs];
      const Step& st = steps[u.step];
      void* dst;
      if (st.reduce) {
        dst = scratch.get() + (postedRecvs % kRecvWindow) * slotBytes;
      } else {
        const long first = firstSendOfChunk[st.recvChunk];
        if (first >= 0) comm.wait(sends[first + u.seg], deadline, opts.name.c_str());
        dst = p.base + u.elemOffset * p.elemSize;
      }
      recvs[postedRecvs] = comm.irecv(dst, u.elems * p.elemSize, left, opts.tag);
    }
  };

  for (size_t i = 0; i < units.size(); ++i) {
    postRecvsUpTo(i + kRecvWindow);
    const RecvUnit& u = units[i];
    const Step& st = steps[u.step];
    if (st.reduce && u.seg == 0 && p.beforeOwnValues) p.beforeOwnValues(st.recvChunk);  // while it arrives
    size_t received = 0;
    comm.wait(recvs[i], deadline, opts.name.c_str(), &received);
    // Scratch is uninitialized: a short segment (peers with different plans) must never be reduced.
    NRT_CHECK(received == u.elems * p.elemSize, "neptune_rt: rank ", comm.rank(), ": ring segment of ", opts.name,
              " from rank ", left, " has ", received, " bytes, ", u.elems * p.elemSize, " expected");
    char* place = p.base + u.elemOffset * p.elemSize;
    if (st.reduce) {
      reduceInto(place, scratch.get() + (i % kRecvWindow) * slotBytes, u.elems, p.dtype, p.op);
      if (u.step == lastReduceStep && p.averageDivisor > 1) finalizeAverage(place, u.elems, p.dtype, p.averageDivisor);
    }
    if (u.step + 1 < steps.size()) postStepSends(u.step + 1, u.seg);
    if (!st.reduce && p.onGathered) p.onGathered(st.recvChunk, u.seg);
  }
  // A chunk that arrives with no segments (count < n) still has to be divided when it is ours: nothing to do.
  comm.waitAll(sends, deadline, opts.name.c_str());
}

}  // namespace nrt
