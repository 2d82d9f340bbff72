// Recursive-doubling allgather of variable-size blocks (see exchange.h). Blocks travel packed as
// [i32 rank][u32 length][bytes]...; a non-power-of-two world folds its first 2*rem ranks pairwise first.
#include "collectives/exchange.h"

#include <cstring>

#include "common/error.h"

namespace nrt {

namespace {

constexpr size_t kBlockHeader = 8;

void appendBlock(std::vector<char>& packed, int rank, const char* data, size_t len) {
  const int32_t r = rank;
  const uint32_t l = static_cast<uint32_t>(len);
  packed.insert(packed.end(), reinterpret_cast<const char*>(&r), reinterpret_cast<const char*>(&r) + 4);
  packed.insert(packed.end(), reinterpret_cast<const char*>(&l), reinterpret_cast<const char*>(&l) + 4);
  packed.insert(packed.end(), data, data + len);
}

void unpackInto(const char* data, size_t len, std::vector<std::vector<char>>& out, int fromRank) {
  size_t pos = 0;
  while (pos < len) {
    NRT_CHECK(len - pos >= kBlockHeader, "neptune_rt: truncated exchange block from rank ", fromRank);
    int32_t r;
    uint32_t l;
    std::memcpy(&r, data + pos, 4);
    std::memcpy(&l, data + pos + 4, 4);
    pos += kBlockHeader;
    NRT_CHECK(r >= 0 && static_cast<size_t>(r) < out.size() && l <= len - pos, "neptune_rt: corrupt exchange block from rank ",
              fromRank, " (claims rank ", r, ", ", l, " bytes)");
    out[r].assign(data + pos, data + pos + l);
    pos += l;
  }
}

class Exchanger {
 public:
  Exchanger(Communicator& comm, const ExchangeOptions& o)
      : comm_(comm), o_(o), deadline_(Deadline::after(o.timeoutSeconds)), start_(Clock::now()) {}

  // Receive up to `maxBytes` from `peer`; returns the bytes that arrived.
  std::vector<char> recv(int peer, size_t maxBytes) {
    std::vector<char> buf(maxBytes);
    Request rq = comm_.irecv(buf.data(), maxBytes, peer, o_.tag);
    size_t got = 0;
    waitReporting(rq, &got);
    buf.resize(got);
    return buf;
  }
  void send(const std::vector<char>& data, int peer) {
    Request rq = comm_.isend(data.data(), data.size(), peer, o_.tag);
    waitReporting(rq, nullptr);
  }
  std::vector<char> sendRecv(const std::vector<char>& data, int peer, size_t maxBytes) {
    std::vector<char> buf(maxBytes);
    Request rr = comm_.irecv(buf.data(), maxBytes, peer, o_.tag);
    Request rs = comm_.isend(data.data(), data.size(), peer, o_.tag);
    size_t got = 0;
    waitReporting(rr, &got);
    waitReporting(rs, nullptr);
    buf.resize(got);
    return buf;
  }

 private:
  void waitReporting(Request& rq, size_t* got) {
    if (o_.slowSeconds > 0 && !warned_ && o_.onSlow) {
      const auto warnAt = start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.slowSeconds));
      Backoff backoff;
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
    comm_.wait(rq, deadline_, o_.name.c_str(), got);
  }

  Communicator& comm_;
  const ExchangeOptions& o_;
  Deadline deadline_;
  Clock::time_point start_;
  bool warned_ = false;
};

}  // namespace

std::vector<std::vector<char>> exchangeBlocks(Communicator& comm, const std::vector<char>& mine,
                                              const ExchangeOptions& o) {
  const int n = comm.size();
  const int r = comm.rank();
  NRT_CHECK_ARG(mine.size() <= o.capacity, "neptune_rt: exchange block of ", mine.size(),
                " bytes exceeds the capacity of ", o.capacity);
  std::vector<std::vector<char>> out(n);
  out[r] = mine;
  if (n == 1) return out;
  const size_t slot = o.capacity + kBlockHeader;
  int p = 1;
  while (p * 2 <= n) p *= 2;
  const int rem = n - p;
  Exchanger ex(comm, o);

  std::vector<char> packed;
  appendBlock(packed, r, mine.data(), mine.size());
  if (r < 2 * rem && r % 2 == 0) {  // folded away: hand our block to r+1, get everything back at the end
    ex.send(packed, r + 1);
    std::vector<char> all = ex.recv(r + 1, slot * n);
    unpackInto(all.data(), all.size(), out, r + 1);
    return out;
  }
  if (r < 2 * rem) {
    std::vector<char> theirs = ex.recv(r - 1, slot);
    packed.insert(packed.end(), theirs.begin(), theirs.end());
  }
  const int v = r < 2 * rem ? r / 2 : r - rem;
  const auto real = [rem](int vr) { return vr < rem ? vr * 2 + 1 : vr + rem; };
  for (int mask = 1; mask < p; mask <<= 1) {
    // The partner's side holds `mask` virtual ranks, each standing for at most two real ones.
    std::vector<char> theirs = ex.sendRecv(packed, real(v ^ mask), slot * 2 * mask);
    packed.insert(packed.end(), theirs.begin(), theirs.end());
  }
  unpackInto(packed.data(), packed.size(), out, r);
  if (r < 2 * rem) ex.send(packed, r - 1);
  return out;
}

}  // namespace nrt
