// Dense all-reduce: the decision function, recursive doubling for small buffers, halving-doubling
// (halving_doubling.cc) or the ring for large ones, and the ring's two halves exposed on their own
// (reduce-scatter, allgatherv).
#include "collectives/allreduce.h"

#include <cstring>
#include <numeric>

#include "collectives/doubling.h"
#include "collectives/reduce.h"
#include "collectives/ring.h"
#include "common/error.h"

namespace nrt {

const char* allreduceAlgorithmName(AllreduceAlgorithm a) {
  switch (a) {
    case AllreduceAlgorithm::kAuto: return "auto";
    case AllreduceAlgorithm::kRing: return "ring";
    case AllreduceAlgorithm::kRecursiveDoubling: return "recursive_doubling";
    case AllreduceAlgorithm::kHalvingDoubling: return "halving_doubling";
  }
  return "?";
}

AllreduceAlgorithm allreduceAlgorithmFromName(const std::string& name) {
  for (auto a : {AllreduceAlgorithm::kAuto, AllreduceAlgorithm::kRing, AllreduceAlgorithm::kRecursiveDoubling,
                 AllreduceAlgorithm::kHalvingDoubling})
    if (name == allreduceAlgorithmName(a)) return a;
  throw std::invalid_argument("unknown all-reduce algorithm '" + name +
                              "' (auto, ring, recursive_doubling, halving_doubling)");
}

AllreduceAlgorithm chooseAllreduceAlgorithm(size_t bytes, int worldSize) {
  // With two ranks both algorithms send the whole buffer once each way; the ring pipelines, so use it
  // above the latency-bound sizes just as for larger worlds.
  if (worldSize <= 1 || bytes <= kRecursiveDoublingMaxBytes) return AllreduceAlgorithm::kRecursiveDoubling;
  const bool powerOfTwo = (worldSize & (worldSize - 1)) == 0;
  return powerOfTwo && worldSize >= 4 && bytes <= kHalvingDoublingMaxBytes ? AllreduceAlgorithm::kHalvingDoubling
                                                                            : AllreduceAlgorithm::kRing;
}

AllreduceAlgorithm resolveAllreduceAlgorithm(AllreduceAlgorithm requested, size_t bytes, int worldSize) {
  return requested == AllreduceAlgorithm::kAuto ? chooseAllreduceAlgorithm(bytes, worldSize) : requested;
}

namespace {

// Recursive doubling on the shared schedule (doubling.h): fold, exchange whole buffers with the partner of
// each step, unfold. Each exchange combines the same two operands on both sides, the lower rank's first (min, max
// and NaN payloads depend on the order), so all ranks end bitwise equal.
void recursiveDoubling(Communicator& comm, const AllreduceOptions& o) {
  const DoublingSchedule plan(comm.size(), comm.rank());
  const size_t bytes = o.count * dtypeSize(o.dtype);
  const Deadline deadline = Deadline::after(o.timeoutSeconds);
  const char* what = o.name.c_str();
  std::vector<char> incoming(bytes);
  PostedBuffers posted(comm, o.name);  // on an error a receive may still be posted into `incoming`
  posted.keep(incoming);
  const auto wait = [&](Request& rq) { comm.wait(rq, deadline, what, nullptr, kLatencyWait); };

  const int foldPartner = plan.foldPartner();
  if (foldPartner >= 0) {
    if (plan.foldedAway()) {
      Request s = comm.isend(o.buffer, bytes, foldPartner, o.tag);
      wait(s);
    } else {
      Request rv = comm.irecv(incoming.data(), bytes, foldPartner, o.tag);
      wait(rv);
      reduceInto(o.buffer, incoming.data(), o.count, o.dtype, o.op);
    }
  }
  if (!plan.foldedAway()) {
    for (int mask = 1; mask < plan.powerOfTwo(); mask <<= 1) {
      const int partner = plan.partner(mask);
      Request rv = comm.irecv(incoming.data(), bytes, partner, o.tag);
      Request s = comm.isend(o.buffer, bytes, partner, o.tag);
      wait(rv);
      wait(s);
      // The lower rank's data first on both partners: min, max (NaN, +0 against -0) and NaN payloads depend on
      // the operands' order, and the partners must end with the same bytes.
      if (partner < comm.rank()) {
        reduceInto(incoming.data(), o.buffer, o.count, o.dtype, o.op);
        std::memcpy(o.buffer, incoming.data(), bytes);
      } else {
        reduceInto(o.buffer, incoming.data(), o.count, o.dtype, o.op);
      }
    }
    if (o.op == ReduceOp::kAverage)
      finalizeAverage(o.buffer, o.count, o.dtype, o.averageDivisor > 0 ? o.averageDivisor : comm.size());
  }
  if (foldPartner >= 0) {  // unfold: the folding odd rank hands the result back to its even partner
    if (plan.foldedAway()) {
      Request rv = comm.irecv(o.buffer, bytes, foldPartner, o.tag);
      wait(rv);
    } else {
      Request s = comm.isend(o.buffer, bytes, foldPartner, o.tag);
      wait(s);
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
  const AllreduceAlgorithm algo = resolveAllreduceAlgorithm(o.algorithm, o.count * dtypeSize(o.dtype), comm.size());
  if (algo == AllreduceAlgorithm::kRecursiveDoubling) {
    recursiveDoubling(comm, o);
  } else if (algo == AllreduceAlgorithm::kHalvingDoubling) {
    halvingDoublingAllreduce(comm, o);
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
  runRing(comm, plan, o);
}

}  // namespace nrt
