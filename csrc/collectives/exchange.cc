// Recursive-doubling exchange with a combine step (see exchange.h), on the shared schedule of doubling.h. Messages
// travel framed (u64 length, bytes: FramedMessage's layout, so neither side copies them) and cut into pieces below
// the usual MPI eager limits, so a message just over 4 KiB costs a second eager send rather than a rendezvous
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

  // Receive one message of at most `maxBytes` from `peer`, straight into its framed layout: the first piece
  // (length, then the payload's start) lands at the front of the buffer, the rest behind it.
  FramedMessage recv(int peer, size_t maxBytes) {
    std::vector<char>* out = &buffer(std::vector<char>(kFirstBuffer));
    Request rq = comm_.irecv(out->data(), kPiece, peer, o_.tag);
    size_t got = 0;
    waitReporting(rq, &got);
    constexpr size_t kHeader = FramedMessage::kHeaderBytes;
    NRT_CHECK(got >= kHeader, "neptune_rt: rank ", comm_.rank(), ": short negotiation piece from rank ", peer);
    uint64_t total;
    std::memcpy(&total, out->data(), sizeof(total));
    NRT_CHECK(total <= maxBytes && got == std::min<uint64_t>(kPiece, total + kHeader), "neptune_rt: rank ",
              comm_.rank(), ": bad negotiation message from rank ", peer, " (", total, " bytes announced, at most ",
              maxBytes, " expected)");
    if (total + kHeader > out->size()) {  // a long message (announcements of a first step): a bigger buffer
      std::vector<char>& bigger = buffer(std::vector<char>(total + kHeader));
      std::memcpy(bigger.data(), out->data(), got);
      out = &bigger;
    }
    out->resize(total + kHeader);  // shrinks or keeps: nothing is posted into it yet beyond `got`
    std::vector<Request> rest;
    for (size_t off = kPiece; off < total + kHeader; off += kPiece)
      rest.push_back(comm_.irecv(out->data() + off, std::min(kPiece, total + kHeader - off), peer, o_.tag));
    for (Request& r : rest) waitReporting(r, nullptr);
    FramedMessage m;
    m.bytes = std::move(*out);  // complete: nothing is posted into it any more
    return m;
  }
  // The message is sent from its own storage, which waits in buffers() while the sends are posted (a failed
  // exchange leaves it to its PostedBuffers) and is handed back once they complete.
  void send(FramedMessage& m, int peer) {
    std::vector<char>& posted = postSend(m, peer);
    waitAll();
    m.bytes = std::move(posted);
  }
  FramedMessage sendRecv(FramedMessage& m, int peer, size_t maxBytes) {
    std::vector<char>& posted = postSend(m, peer);
    FramedMessage theirs = recv(peer, maxBytes);
    waitAll();
    m.bytes = std::move(posted);
    return theirs;
  }

 private:
  // Below Open MPI's shared-memory eager limit (4 KiB including its header); other transports' are larger.
  // (One rendezvous send of a 4.2 KB message instead of two eager pieces was slower, 2 ranks a core each.)
  static constexpr size_t kPiece = 4000;
  // A first receive buffer that holds two pieces: a small all-reduce's 4 KB riding in the negotiation needs no
  // second buffer and no copy.
  static constexpr size_t kFirstBuffer = 2 * kPiece;

  std::vector<char>& postSend(FramedMessage& m, int peer) {
    const uint64_t total = m.size();
    std::memcpy(m.bytes.data(), &total, sizeof(total));
    std::vector<char>& framed = buffer(std::move(m.bytes));
    for (size_t off = 0; off < framed.size(); off += kPiece)
      sends_.push_back(comm_.isend(framed.data() + off, std::min(kPiece, framed.size() - off), peer, o_.tag));
    return framed;
  }
  void waitAll() {
    for (Request& r : sends_) waitReporting(r, nullptr);
    sends_.clear();
  }

  void waitReporting(Request& rq, size_t* got) {
    if (o_.slowSeconds > 0 && !warned_ && o_.onSlow) {
      const auto warnAt = start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.slowSeconds));
      Backoff backoff(kLatencyWait);
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
    comm_.wait(rq, deadline_, o_.name.c_str(), got, kLatencyWait);
  }

  // Every buffer a request is posted into or from lives here until the exchange ends (a deque: adding one
  // moves no other), so that a failed exchange can leave them all to its PostedBuffers.
  std::vector<char>& buffer(std::vector<char> storage) { return buffers_.emplace_back(std::move(storage)); }

  std::deque<std::vector<char>> buffers_;
  std::vector<Request> sends_;
  Communicator& comm_;
  const ExchangeOptions& o_;
  Deadline deadline_;
  Clock::time_point start_;
  bool warned_ = false;
};

}  // namespace

FramedMessage exchangeCombine(Communicator& comm, FramedMessage mine, const ExchangeOptions& o,
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
    const FramedMessage theirs = ex.sendRecv(mine, partner, o.capacity * 2 * mask);
    mine = combine(mine, theirs, partner);
  }
  if (foldPartner >= 0) ex.send(mine, foldPartner);
  return mine;
}

}  // namespace nrt
