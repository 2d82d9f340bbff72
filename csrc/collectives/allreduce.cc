// Dense all-reduce: the decision function, recursive doubling for small buffers, the ring for large ones,
// and the ring's two halves exposed on their own (reduce-scatter, allgatherv).
#include "collectives/allreduce.h"

#include <numeric>

#include "collectives/reduce.h"
#include "collectives/ring.h"
#include "common/error.h"

namespace nrt {

const char* allreduceAlgorithmName(AllreduceAlgorithm a) {
  switch (a) {
    case AllreduceAlgorithm::kAuto: return "auto";
    case AllreduceAlgorithm::kRing: return "ring";
    case AllreduceAlgorithm::kRecursiveDoubling: return "recursive_doubling";
  }
  return "?";
}

AllreduceAlgorithm allreduceAlgorithmFromName(const std::string& name) {
  for (auto a : {AllreduceAlgorithm::kAuto, AllreduceAlgorithm::kRing, AllreduceAlgorithm::kRecursiveDoubling})
    if (name == allreduceAlgorithmName(a)) return a;
  throw std::invalid_argument("unknown all-reduce algorithm '" + name + "' (auto, ring, recursive_doubling)");
}

AllreduceAlgorithm chooseAllreduceAlgorithm(size_t bytes, int worldSize) {
  // With two ranks both algorithms send the whole buffer once each way; the ring pipelines, so use it
  // above the latency-bound sizes just as for larger worlds.
  if (worldSize <= 1) return AllreduceAlgorithm::kRecursiveDoubling;
  return bytes <= kRecursiveDoublingMaxBytes ? AllreduceAlgorithm::kRecursiveDoubling : AllreduceAlgorithm::kRing;
}

namespace {

// Recursive doubling (MPICH's scheme): fold the first 2*rem ranks pairwise so a power of two p remains,
// exchange whole buffers with partner (rank ^ mask) for mask = 1, 2, .. p/2, then unfold. Each exchange
// combines the same two operands on both sides in the same commutative way, so all ranks end bitwise equal.
void recursiveDoubling(Communicator& comm, const AllreduceOptions& o) {
  const int n = comm.size();
  const int r = comm.rank();
  const size_t bytes = o.count * dtypeSize(o.dtype);
  const Deadline deadline = Deadline::after(o.timeoutSeconds);
  const char* what = o.name.c_str();
  int p = 1;
  while (p * 2 <= n) p *= 2;
  const int rem = n - p;
  std::vector<char> incoming(bytes);
  PostedBuffers posted(comm, o.name);  // on an error a receive may still be posted into `incoming`
  posted.keep(incoming);

  int virtualRank;  // -1: folded away (an even rank below 2*rem) until the final unfold
  if (r < 2 * rem) {
    if (r % 2 == 0) {
      Request s = comm.isend(o.buffer, bytes, r + 1, o.tag);
      comm.wait(s, deadline, what, nullptr, kLatencyYieldWindow);
      virtualRank = -1;
    } else {
      Request rv = comm.irecv(incoming.data(), bytes, r - 1, o.tag);
      comm.wait(rv, deadline, what, nullptr, kLatencyYieldWindow);
      reduceInto(o.buffer, incoming.data(), o.count, o.dtype, o.op);
      virtualRank = r / 2;
    }
  } else {
    virtualRank = r - rem;
  }
  const auto realRank = [rem](int v) { return v < rem ? v * 2 + 1 : v + rem; };

  if (virtualRank >= 0) {
    for (int mask = 1; mask < p; mask <<= 1) {
      const int partner = realRank(virtualRank ^ mask);
      Request rv = comm.irecv(incoming.data(), bytes, partner, o.tag);
      Request s = comm.isend(o.buffer, bytes, partner, o.tag);
      comm.wait(rv, deadline, what, nullptr, kLatencyYieldWindow);
      comm.wait(s, deadline, what, nullptr, kLatencyYieldWindow);
      reduceInto(o.buffer, incoming.data(), o.count, o.dtype, o.op);
    }
  }
  if (o.op == ReduceOp::kAverage && virtualRank >= 0)
    finalizeAverage(o.buffer, o.count, o.dtype, o.averageDivisor > 0 ? o.averageDivisor : n);

  if (r < 2 * rem) {  // unfold: odd ranks hand the result back to their even partner
    if (r % 2 == 0) {
      Request rv = comm.irecv(o.buffer, bytes, r + 1, o.tag);
      comm.wait(rv, deadline, what, nullptr, kLatencyYieldWindow);
    } else {
      Request s = comm.isend(o.buffer, bytes, r - 1, o.tag);
      comm.wait(s, deadline, what, nullptr, kLatencyYieldWindow);
    }
  }
}

void ringAllreduce(Communicator& comm, const AllreduceOptions& o) {
  RingPlan plan;
  plan.base = static_cast<char*>(o.buffer);
  plan.elemSize = dtypeSize(o.dtype);
  splitEvenly(o.count, comm.size(), plan.chunkOffset, plan.chunkCount);
  plan.rsShift = 0;
  plan.agShift = 1;
  plan.dtype = o.dtype;
  plan.op = o.op;
  if (o.op == ReduceOp::kAverage) plan.averageDivisor = o.averageDivisor > 0 ? o.averageDivisor : comm.size();
  runRing(comm, plan, o);
}

}  // namespace

void allreduce(Communicator& comm, const AllreduceOptions& o) {
  NRT_CHECK_ARG(o.buffer != nullptr || o.count == 0, "neptune_rt: allreduce '", o.name, "' got a null buffer");
  if (comm.size() == 1) {
    if (o.op == ReduceOp::kAverage && o.averageDivisor > 1)
      finalizeAverage(o.buffer, o.count, o.dtype, o.averageDivisor);
    return;
  }
  if (o.count == 0) return;
  AllreduceAlgorithm algo = o.algorithm;
  if (algo == AllreduceAlgorithm::kAuto) algo = chooseAllreduceAlgorithm(o.count * dtypeSize(o.dtype), comm.size());
  if (algo == AllreduceAlgorithm::kRecursiveDoubling) {
    recursiveDoubling(comm, o);
  } else {
    ringAllreduce(comm, o);
  }
}

void reduceScatter(Communicator& comm, const ReduceScatterOptions& o) {
  const int n = comm.size();
  NRT_CHECK_ARG(o.counts.size() == static_cast<size_t>(n), "neptune_rt: reduce_scatter '", o.name, "' got ",
                o.counts.size(), " block counts for ", n, " ranks");
  RingPlan plan;
  plan.base = static_cast<char*>(o.buffer);
  plan.elemSize = dtypeSize(o.dtype);
  plan.chunkCount = o.counts;
  plan.chunkOffset.resize(n);
  std::exclusive_scan(o.counts.begin(), o.counts.end(), plan.chunkOffset.begin(), size_t{0});
  plan.allgather = false;
  plan.rsShift = n - 1;  // so that rank r finishes holding chunk r
  plan.dtype = o.dtype;
  plan.op = o.op;
  if (o.op == ReduceOp::kAverage) plan.averageDivisor = n;
  runRing(comm, plan, o);
}

void allgatherv(Communicator& comm, const AllgatherOptions& o) {
  const int n = comm.size();
  NRT_CHECK_ARG(o.bytes.size() == static_cast<size_t>(n), "neptune_rt: allgather '", o.name, "' got ",
                o.bytes.size(), " block sizes for ", n, " ranks");
  RingPlan plan;
  plan.base = static_cast<char*>(o.buffer);
  plan.elemSize = 1;
  plan.chunkCount = o.bytes;
  plan.chunkOffset.resize(n);
  std::exclusive_scan(o.bytes.begin(), o.bytes.end(), plan.chunkOffset.begin(), size_t{0});
  plan.reduceScatter = false;
  plan.agShift = 0;  // step 0 sends our own block
  plan.onGathered = o.onGathered;
  runRing(comm, plan, o);
}

}  // namespace nrt
