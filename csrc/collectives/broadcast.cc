// Broadcast: binomial tree (log2 n rounds) for small messages; a pipelined chain root -> root+1 -> ...
// for large ones, where every link carries the buffer once and segments overlap along the chain.
#include <algorithm>

#include "collectives/allreduce.h"
#include "common/error.h"

namespace nrt {

namespace {

void binomialTree(Communicator& comm, const BroadcastOptions& o, const Deadline& deadline) {
  const int n = comm.size();
  const int vr = (comm.rank() - o.root + n) % n;  // rank relative to the root
  const auto real = [&](int v) { return (v + o.root) % n; };
  int mask = 1;
  while (mask < n) {  // receive from the parent: clear our lowest set bit
    if (vr & mask) {
      Request rv = comm.irecv(o.buffer, o.bytes, real(vr - mask), o.tag);
      comm.wait(rv, deadline, o.name.c_str());
      break;
    }
    mask <<= 1;
  }
  std::vector<Request> sends;
  for (mask >>= 1; mask > 0; mask >>= 1) {
    if (vr + mask < n) sends.push_back(comm.isend(o.buffer, o.bytes, real(vr + mask), o.tag));
  }
  comm.waitAll(sends, deadline, o.name.c_str());
}

void pipelinedChain(Communicator& comm, const BroadcastOptions& o, const Deadline& deadline) {
  constexpr size_t kWindow = 4;
  const int n = comm.size();
  const int vr = (comm.rank() - o.root + n) % n;
  const int prev = (comm.rank() - 1 + n) % n;
  const int next = (comm.rank() + 1) % n;
  const size_t seg = std::max<size_t>(1, o.segmentBytes);
  const size_t segs = (o.bytes + seg - 1) / seg;
  char* base = static_cast<char*>(o.buffer);
  const auto len = [&](size_t k) { return std::min(seg, o.bytes - k * seg); };
  std::vector<Request> recvs(segs), sends;
  size_t posted = 0;
  for (size_t k = 0; k < segs; ++k) {
    if (vr > 0) {
      for (; posted < std::min(segs, k + kWindow); ++posted)
        recvs[posted] = comm.irecv(base + posted * seg, len(posted), prev, o.tag);
      comm.wait(recvs[k], deadline, o.name.c_str());
    }
    if (vr < n - 1) sends.push_back(comm.isend(base + k * seg, len(k), next, o.tag));
  }
  comm.waitAll(sends, deadline, o.name.c_str());
}

}  // namespace

void broadcast(Communicator& comm, const BroadcastOptions& o) {
  const int n = comm.size();
  NRT_CHECK_ARG(o.root >= 0 && o.root < n, "neptune_rt: broadcast '", o.name, "' root ", o.root,
                " is not a rank of this ", n, "-rank communicator");
  if (n == 1 || o.bytes == 0) return;
  const Deadline deadline = Deadline::after(o.timeoutSeconds);
  PostedBuffers posted(comm, o.name);  // requests touch only the caller's buffer: this poisons on an error
  if (o.bytes <= kBroadcastTreeMaxBytes) {
    binomialTree(comm, o, deadline);
  } else {
    pipelinedChain(comm, o, deadline);
  }
}

}  // namespace nrt
