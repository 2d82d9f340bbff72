// The one recursive-doubling schedule (MPICH's), shared by the dense all-reduce for small buffers
// (allreduce.cc) and the negotiation exchange (exchange.cc). A world of n ranks that is not a power of two
// first folds: of its first 2*rem ranks (rem = n - p, p the largest power of two <= n) each even rank hands
// its data to the odd rank above it and sits out; the p remaining ranks take virtual ranks 0..p-1 and
// exchange with virtual partner v ^ mask for mask = 1, 2, .. p/2; finally each odd folding rank hands the
// result back to its even partner. Exercised by tests/test_collectives.py (world sizes 1..5).
#pragma once

namespace nrt {

class DoublingSchedule {
 public:
  DoublingSchedule(int worldSize, int rank) : rank_(rank) {
    while (p_ * 2 <= worldSize) p_ *= 2;
    rem_ = worldSize - p_;
    if (rank < 2 * rem_) {
      virtualRank_ = rank % 2 == 0 ? -1 : rank / 2;
    } else {
      virtualRank_ = rank - rem_;
    }
  }
  int powerOfTwo() const { return p_; }              // p: ranks taking part in the exchange steps
  bool foldedAway() const { return virtualRank_ < 0; }  // an even rank below 2*rem: hands off, waits
  int virtualRank() const { return virtualRank_; }
  // The rank this one pairs with in the fold (and the unfold), or -1 if it does not fold.
  int foldPartner() const {
    if (rank_ >= 2 * rem_) return -1;
    return rank_ % 2 == 0 ? rank_ + 1 : rank_ - 1;
  }
  // The real rank of the partner in the step of `mask` (1, 2, .., p/2); only for ranks not folded away.
  int partner(int mask) const { return realRank(virtualRank_ ^ mask); }
  int realRank(int v) const { return v < rem_ ? v * 2 + 1 : v + rem_; }

 private:
  int rank_;
  int p_ = 1;
  int rem_ = 0;
  int virtualRank_ = 0;
};

}  // namespace nrt
