// Bounded waits shared by every Communicator implementation (see communicator.h).
#include "comm/communicator.h"

#include <sched.h>

#include <chrono>
#include <thread>

#include "common/error.h"

namespace nrt {

void Backoff::pause() {
  // Two opposite pulls, measured on 4 emulated 1 Gbit nodes sharing 2 cores: MPI over TCP progresses only
  // inside MPI calls, so napping early slowed a 64 MB ring; but yielding for long (5-20 ms) slowed the
  // compressed all-reduce up to 2x, since waiting ranks then steal the cores that encoding ranks need.
  // Spin briefly, yield for the window (200 us for bulk transfers), then nap 50 us between polls.
  constexpr uint32_t kSpinIters = 64;
  ++iter_;
  if (iter_ < kSpinIters) return;
  const auto now = std::chrono::steady_clock::now();
  if (iter_ == kSpinIters) yieldingSince_ = now;
  if (now - yieldingSince_ < yieldWindow_) {
    sched_yield();
    return;
  }
  std::this_thread::sleep_for(std::chrono::microseconds(50));
}

void Communicator::wait(Request& req, const Deadline& deadline, const char* what, size_t* received,
                        std::chrono::microseconds yieldWindow) {
  Backoff backoff(yieldWindow);
  uint32_t checks = 0;
  while (!test(req, received)) {
    // Reading the clock costs more than a test; check it every few iterations.
    if ((++checks & 63u) == 0 && deadline.expired()) {
      const int peer = req.peer;
      const bool isRecv = req.isRecv;
      const size_t bytes = req.bytes;
      cancel(req);
      throw TimeoutError(concat("neptune_rt: rank ", rank(), " timed out waiting to ", isRecv ? "receive " : "send ",
                                bytes, " bytes ", isRecv ? "from" : "to", " rank ", peer, " during ", what,
                                " (is rank ", peer, " alive and running the same collectives? raise "
                                "NEPTUNE_RT_TIMEOUT_SECONDS if it is just slow)"));
    }
    backoff.pause();
  }
}

void Communicator::waitAll(std::vector<Request>& reqs, const Deadline& deadline, const char* what) {
  for (auto& r : reqs) wait(r, deadline, what);
}

}  // namespace nrt
