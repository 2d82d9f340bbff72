// Bounded waits and poisoning shared by every Communicator implementation (see communicator.h).
#include "comm/communicator.h"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "common/error.h"

namespace nrt {

void Backoff::pause() {
  // Two opposite pulls, measured on 4 emulated 1 Gbit nodes sharing 2 cores: MPI over TCP progresses only
  // inside MPI calls, so napping early slowed a 64 MB ring; but yielding for long (5-20 ms) slowed the
  // compressed all-reduce up to 2x, since waiting ranks then steal the cores that encoding ranks need.
  // Spin for the policy's first polls (latency-bound waits only: a bounded 10-20 us, see kLatencyWait), then
  // yield for the window (200 us for bulk transfers), then nap 50 us between polls. No long busy spin: where
  // ranks share a core, a spinning waiter keeps the very peer it waits for off the CPU.
  if (iter_ < policy_.spins) {
    ++iter_;
    return;
  }
  const auto now = std::chrono::steady_clock::now();
  if (iter_++ == policy_.spins) yieldingSince_ = now;
  if (now - yieldingSince_ < policy_.yieldWindow) {
    sched_yield();
    return;
  }
  std::this_thread::sleep_for(std::chrono::microseconds(50));
}

Request Communicator::isend(const void* ptr, size_t bytes, int peer, int tag) {
  throwIfPoisoned();
  Request r = postSend(ptr, bytes, peer, tag);
  if (r.active) track(r);
  return r;
}

Request Communicator::irecv(void* ptr, size_t bytes, int peer, int tag) {
  throwIfPoisoned();
  Request r = postRecv(ptr, bytes, peer, tag);
  if (r.active) track(r);
  return r;
}

Request Communicator::iallreduce(void* buffer, size_t count, DataType dtype, ReduceOp op) {
  throwIfPoisoned();
  NRT_CHECK_ARG(nativeAllreduce(dtype, op), "neptune_rt: rank ", rank(), ": this transport has no native all-reduce of ",
                dtypeName(dtype), " ", reduceOpName(op));
  Request r = postAllreduce(buffer, count, dtype, op);
  if (r.active) track(r);
  return r;
}

Request Communicator::postAllreduce(void*, size_t, DataType dtype, ReduceOp op) {
  throw std::logic_error(concat("neptune_rt: no native all-reduce of ", dtypeName(dtype), " ", reduceOpName(op)));
}

bool Communicator::test(Request& req, size_t* received) {
  throwIfPoisoned();
  if (!req.active) {
    if (received) *received = 0;
    return true;
  }
  const Request before = req;
  if (!testPosted(req, received)) return false;
  untrack(before);
  return true;
}

void Communicator::wait(Request& req, const Deadline& deadline, const char* what, size_t* received,
                        WaitPolicy policy) {
  Backoff backoff(policy);
  uint32_t checks = 0;
  while (!test(req, received)) {
    // The deadline is checked every few polls (Backoff reads the clock anyway, but a Deadline is cheap to skip).
    if ((++checks & 63u) == 0 && deadline.expired()) {
      const int peer = req.peer;
      const std::string error =
          peer < 0 ? concat("neptune_rt: rank ", rank(), " timed out in an all-reduce of ", req.bytes,
                            " bytes with all ", size(), " ranks during ", what, " (are all ranks alive and running the "
                            "same collectives? raise NEPTUNE_RT_TIMEOUT_SECONDS if one is just slow)")
                   : concat("neptune_rt: rank ", rank(), " timed out waiting to ", req.isRecv ? "receive " : "send ",
                            req.bytes, " bytes ", req.isRecv ? "from" : "to", " rank ", peer, " during ", what,
                            " (is rank ", peer, " alive and running the same collectives? raise "
                            "NEPTUNE_RT_TIMEOUT_SECONDS if it is just slow)");
      poison(error, /*timedOut=*/true);  // `req` and every other posted request are abandoned, not freed
      throw TimeoutError(error);
    }
    backoff.pause();
  }
}

void Communicator::waitAll(std::vector<Request>& reqs, const Deadline& deadline, const char* what) {
  for (auto& r : reqs) wait(r, deadline, what);
}

void Communicator::poison(const std::string& error, bool timedOut) {
  std::vector<Request> posted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (poisoned_.load(std::memory_order_relaxed)) return;
    error_ = error;
    timedOut_ = timedOut;
    for (auto& entry : posted_) posted.push_back(entry.second);
    posted_.clear();
    abandoned_ = posted.size();
    poisoned_.store(true, std::memory_order_release);
  }
  for (Request& r : posted) abandon(r);
}

std::string Communicator::poisonError() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

bool Communicator::poisonTimedOut() const {
  std::lock_guard<std::mutex> lock(mu_);
  return timedOut_;
}

size_t Communicator::abandonedRequests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return abandoned_;
}

void Communicator::throwIfPoisoned() const {
  if (!poisoned()) return;
  std::string error;
  bool timedOut;
  {
    std::lock_guard<std::mutex> lock(mu_);
    error = error_;
    timedOut = timedOut_;
  }
  error += concat("\n  (rank ", rank(), "'s communicator failed earlier with the error above and is disabled: "
                  "every later call fails at once; shut down and exit, see docs/failures.md)");
  if (timedOut) throw TimeoutError(error);
  throw std::runtime_error(error);
}

size_t Communicator::StorageHash::operator()(const std::array<unsigned char, 16>& s) const {
  uint64_t a, b;
  std::memcpy(&a, s.data(), 8);
  std::memcpy(&b, s.data() + 8, 8);
  return std::hash<uint64_t>()(a ^ (b * 0x9e3779b97f4a7c15ull));
}

void Communicator::track(const Request& r) {
  std::lock_guard<std::mutex> lock(mu_);
  posted_.emplace(r.storage, r);
}

void Communicator::untrack(const Request& r) {
  std::lock_guard<std::mutex> lock(mu_);
  posted_.erase(r.storage);
}

PostedBuffers::~PostedBuffers() {
  if (std::uncaught_exceptions() <= uncaught_) return;  // the collective completed: nothing is posted
  // Ended by an exception. A transport error or timeout has poisoned the communicator with its own
  // message already; any other error (a bad payload, a size mismatch) leaves peers out of step just the same.
  comm_.poison(concat("neptune_rt: rank ", comm_.rank(), ": '", what_,
                      "' ended by an error with requests still posted (the error was raised by that call)"),
               /*timedOut=*/false);
  for (auto& leak : leakers_) leak();
}

}  // namespace nrt
