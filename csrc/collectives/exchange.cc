// Recursive-doubling exchange with a combine step (see exchange.h), on the shared schedule of doubling.h. Messages travel framed (u64 length, bytes) and cut into pieces below the
// usual MPI eager limits, so a message just over 4 KiB costs a second eager send rather than a rendezvous
// handshake (which needs the receiving rank on a CPU, expensive when ranks share cores).
#include "collectives/exchange.h"

#include <cstring>
#include <deque>

#include "collectives/doubling.h"
#include "common/error.h"

namespace nrt {

namespace {

class Exchanger {
 public:
  Exchanger(Communicator& comm, const ExchangeOptions& o)
      : comm_(comm), o_(o), deadline_(Deadline::after(o.timeoutSeconds)), start_(Clock::now()) {}

  std::deque<std::vector<char>>& buffers() { return buffers_; }

  // Receive one message of at most `maxBytes` from `peer`.
  std::vector<char> recv(int peer, size_t maxBytes) {
    std::vector<char>& first = buffer(kPiece);
    Request rq = comm_.irecv(first.data(), kPiece, peer, o_.tag);
    size_t got = 0;
    waitReporting(rq, &got);
    NRT_CHECK(got >= sizeof(uint64_t), "neptune_rt: rank ", comm_.rank(), ": short negotiation piece from rank ", peer);
    uint64_t total;
    std::memcpy(&total, first.data(), sizeof(total));
    NRT_CHECK(total <= maxBytes && got == std::min<uint64_t>(kPiece, total + sizeof(total)), "neptune_rt: rank ",
              comm_.rank(), ": bad negotiation message from rank ", peer, " (", total, " bytes announced, at most ",
              maxBytes, " expected)");
    std::vector<char>& out = buffer(total);
    std::memcpy(out.data(), first.data() + sizeof(total), got - sizeof(total));
    std::vector<Request> rest;
    for (size_t off = kPiece; off < total + sizeof(total); off += kPiece)
      rest.push_back(comm_.irecv(out.data() + off - sizeof(total), std::min(kPiece, total + sizeof(total) - off), peer,
                                 o_.tag));
    for (Request& r : rest) waitReporting(r, nullptr);
    return std::move(out);  // complete: nothing is posted into it any more
  }
  void send(const std::vector<char>& data, int peer) {
    std::vector<Request> reqs = postSend(data, peer);
    for (Request& r : reqs) waitReporting(r, nullptr);
  }
  std::vector<char> sendRecv(const std::vector<char>& data, int peer, size_t maxBytes) {
    std::vector<Request> reqs = postSend(data, peer);
    std::vector<char> out = recv(peer, maxBytes);
    for (Request& r : reqs) waitReporting(r, nullptr);
    return out;
  }

 private:
  // Below Open MPI's shared-memory eager limit (4 KiB including its header); other transports' are larger.
  static constexpr size_t kPiece = 4000;

  std::vector<Request> postSend(const std::vector<char>& data, int peer) {
    const uint64_t total = data.size();
    std::vector<char>& framed = buffer(sizeof(total) + data.size());
    std::memcpy(framed.data(), &total, sizeof(total));
    std::memcpy(framed.data() + sizeof(total), data.data(), data.size());
    std::vector<Request> reqs;
    for (size_t off = 0; off < framed.size(); off += kPiece)
      reqs.push_back(comm_.isend(framed.data() + off, std::min(kPiece, framed.size() - off), peer, o_.tag));
    return reqs;
  }

  void waitReporting(Request& rq, size_t* got) {
    if (o_.slowSeconds > 0 && !warned_ && o_.onSlow) {
      const auto warnAt = start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.slowSeconds));
      Backoff backoff(kLatencyYieldWindow);
      while (!comm_.test(rq, got)) {
        const auto now = Clock::now();
        if (now >= deadline_.at()) break;  // let wait() raise the timeout
        if (now >= warnAt) {
          warned_ = true;
          o_.onSlow();
          break;
        }
        backoff.pause();
      }
      if (!rq.active) return;  // completed while polling: `got` is already set
    }
    comm_.wait(rq, deadline_, o_.name.c_str(), got, kLatencyYieldWindow);
  }

  // Every buffer a request is posted into or from lives here until the exchange ends (a deque: adding one
  // moves no other), so that a failed exchange can leave them all to its PostedBuffers.
  std::vector<char>& buffer(size_t bytes) { return buffers_.emplace_back(bytes); }

  std::deque<std::vector<char>> buffers_;
  Communicator& comm_;
  const ExchangeOptions& o_;
  Deadline deadline_;
  Clock::time_point start_;
  bool warned_ = false;
};

}  // namespace

std::vector<char> exchangeCombine(Communicator& comm, std::vector<char> mine, const ExchangeOptions& o,
                                  const Combine& combine) {
  const int n = comm.size();
  const int r = comm.rank();
  NRT_CHECK_ARG(mine.size() <= o.capacity, "neptune_rt: exchange message of ", mine.size(),
                " bytes exceeds the capacity of ", o.capacity);
  if (n == 1) return mine;
  const DoublingSchedule plan(n, r);
  Exchanger ex(comm, o);
  PostedBuffers posted(comm, o.name);  // after `ex`: on an error its buffers are left to pending requests
  posted.keep(ex.buffers());

  const int foldPartner = plan.foldPartner();
  if (plan.foldedAway()) {  // hand our message to the partner, get the whole one back at the end
    ex.send(mine, foldPartner);
    return ex.recv(foldPartner, o.capacity * n);
  }
  if (foldPartner >= 0) mine = combine(mine, ex.recv(foldPartner, o.capacity), foldPartner);
  for (int mask = 1; mask < plan.powerOfTwo(); mask <<= 1) {
    // The partner's side holds `mask` virtual ranks, each standing for at most two real ones.
    const int partner = plan.partner(mask);
    mine = combine(mine, ex.sendRecv(mine, partner, o.capacity * 2 * mask), partner);
  }
  if (foldPartner >= 0) ex.send(mine, foldPartner);
  return mine;
}

}  // namespace nrt
