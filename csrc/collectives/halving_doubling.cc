// Rabenseifner's dense all-reduce for a power-of-two world: a reduce-scatter by recursive halving, then an
// allgather by recursive doubling that retraces it. Each rank sends the ring's 2(n-1)/n S bytes, in 2 log2 n
// pairwise exchanges instead of the ring's 2(n-1) neighbour steps: fewer points where a rank waits for a peer
// that is off its core (4 ranks on 2 cores, 2.5 MB: 2.0-2.1 ms for Open MPI's own Rabenseifner against 3.5-4.5 ms
// for its ring, benchmarks/results/mpi_allreduce_algorithms_np4.json; docs/design.md, "Dense buckets").
// Exercised by tests/test_collectives.py.
#include <algorithm>
#include <memory>

#include "collectives/allreduce.h"
#include "collectives/reduce.h"
#include "common/error.h"

namespace nrt {

namespace {

// Receives posted ahead of the segment being reduced (as in ring.cc): the link stays busy while we reduce,
// and the scratch memory stays at kRecvWindow segments.
constexpr size_t kRecvWindow = 4;

struct Range {
  size_t lo;
  size_t hi;  // elements [lo, hi) of the buffer
  size_t size() const { return hi - lo; }
};

class HalvingDoubling {
 public:
  HalvingDoubling(Communicator& comm, const AllreduceOptions& o)
      : comm_(comm),
        o_(o),
        base_(static_cast<char*>(o.buffer)),
        esize_(dtypeSize(o.dtype)),
        segElems_(std::max<size_t>(1, o.segmentBytes / esize_)),
        deadline_(Deadline::after(o.timeoutSeconds)) {}

  void run() {
    const int n = comm_.size(), r = comm_.rank();
    // Halving: the partner of step `mask` holds the same range (the two differ only in a bit not yet used);
    // the rank whose bit is clear keeps the lower half. The kept half is reduced, the other half sent.
    std::vector<std::pair<Range, bool>> before;  // each halving step's whole range and whether we kept its lower half
    Range mine{0, o_.count};
    const size_t slotBytes = std::min(segElems_, o_.count / 2 + 1) * esize_;
    std::unique_ptr<char[]> scratch(new char[kRecvWindow * slotBytes]);  // every byte is received before use
    PostedBuffers posted(comm_, o_.name);  // on an error a receive may still be posted into scratch
    posted.keep(scratch);
    for (int mask = 1; mask < n; mask <<= 1) {
      const int partner = r ^ mask;
      const size_t mid = mine.lo + mine.size() / 2;
      const Range lower{mine.lo, mid}, upper{mid, mine.hi};
      const bool keepLower = (r & mask) == 0;
      before.push_back({mine, keepLower});
      mine = keepLower ? lower : upper;
      reduceStep(partner, keepLower ? upper : lower, mine, scratch.get(), slotBytes);
    }
    if (o_.op == ReduceOp::kAverage)
      finalizeAverage(base_ + mine.lo * esize_, mine.size(), o_.dtype, o_.averageDivisor > 0 ? o_.averageDivisor : n);
    // Doubling: retrace the halving steps, swapping fully reduced halves with the same partners.
    for (int mask = n >> 1, step = static_cast<int>(before.size()) - 1; mask >= 1; mask >>= 1, --step) {
      const auto [whole, keptLower] = before[step];
      const Range theirs = keptLower ? Range{mine.hi, whole.hi} : Range{whole.lo, mine.lo};
      gatherStep(r ^ mask, mine, theirs);
      mine = whole;
    }
  }

 private:
  // Posts `range` to `peer` in segments; the requests go to `out`.
  void postSends(const Range& range, int peer, std::vector<Request>& out) {
    for (size_t at = range.lo; at < range.hi; at += segElems_)
      out.push_back(comm_.isend(base_ + at * esize_, std::min(segElems_, range.hi - at) * esize_, peer, o_.tag));
  }

  // Waits yield for the latency window (5 ms), not the bulk window of the ring's waits: each of the few steps
  // waits for a peer's whole half at once, and a nap there adds straight to the step. With the bulk window it lost
  // to the ring at 2.5 MB in both runs of a noisy hour; with this one it won in 4 of 5 (docs/design.md,
  // benchmarks/results/dense_hd_window_*.json).
  void waitChecked(Request& rq, size_t expected, int peer) {
    size_t received = 0;
    comm_.wait(rq, deadline_, o_.name.c_str(), &received, kLatencyWait);
    // Scratch is uninitialized: a short segment (peers with different plans) must never be reduced.
    NRT_CHECK(received == expected, "neptune_rt: rank ", comm_.rank(), ": segment of ", o_.name, " from rank ",
              peer, " has ", received, " bytes, ", expected, " expected");
  }

  // Sends `give` to `peer` and reduces the peer's `keep` into ours, a segment at a time as it arrives.
  void reduceStep(int peer, const Range& give, const Range& keep, char* scratch, size_t slotBytes) {
    std::vector<Request> sends;
    postSends(give, peer, sends);
    const size_t segs = (keep.size() + segElems_ - 1) / segElems_;
    std::vector<Request> recvs(segs);
    const auto segLen = [&](size_t k) { return std::min(segElems_, keep.size() - k * segElems_); };
    size_t postedRecvs = 0;
    for (size_t k = 0; k < segs; ++k) {
      for (; postedRecvs < std::min(segs, k + kRecvWindow); ++postedRecvs)
        recvs[postedRecvs] = comm_.irecv(scratch + (postedRecvs % kRecvWindow) * slotBytes, segLen(postedRecvs) * esize_,
                                         peer, o_.tag);
      waitChecked(recvs[k], segLen(k) * esize_, peer);
      reduceInto(base_ + (keep.lo + k * segElems_) * esize_, scratch + (k % kRecvWindow) * slotBytes, segLen(k),
                 o_.dtype, o_.op);
    }
    // The halves we sent are received into in the allgather: they must have left first.
    comm_.waitAll(sends, deadline_, o_.name.c_str());
  }

  // Sends our reduced `mine` to `peer` and receives its `theirs` in place.
  void gatherStep(int peer, const Range& mine, const Range& theirs) {
    std::vector<Request> sends, recvs;
    std::vector<size_t> expected;
    for (size_t at = theirs.lo; at < theirs.hi; at += segElems_) {
      expected.push_back(std::min(segElems_, theirs.hi - at) * esize_);
      recvs.push_back(comm_.irecv(base_ + at * esize_, expected.back(), peer, o_.tag));
    }
    postSends(mine, peer, sends);
    for (size_t k = 0; k < recvs.size(); ++k) waitChecked(recvs[k], expected[k], peer);
    comm_.waitAll(sends, deadline_, o_.name.c_str());
  }

  Communicator& comm_;
  const AllreduceOptions& o_;
  char* base_;
  const size_t esize_;
  const size_t segElems_;
  const Deadline deadline_;
};

}  // namespace

void halvingDoublingAllreduce(Communicator& comm, const AllreduceOptions& o) {
  const int n = comm.size();
  NRT_CHECK_ARG(n > 0 && (n & (n - 1)) == 0, "neptune_rt: rank ", comm.rank(), ": all-reduce '", o.name,
                "' asked for halving_doubling, which needs a power-of-two world; this one has ", n,
                " ranks: use algorithm 'ring' or 'auto'");
  HalvingDoubling(comm, o).run();
}

}  // namespace nrt
