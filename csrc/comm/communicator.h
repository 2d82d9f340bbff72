// The Communicator seam: non-blocking point-to-point over bytes with bounded waits, and poisoning after a
// failure. Collective algorithms are written against this interface only; mpi_communicator.cc is the one
// implementation over MPI (and the only file that includes <mpi.h>). Exercised through every collective
// test, and by tests/test_failures.py (timeouts, poisoning, leaked buffers).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/deadline.h"
#include "common/types.h"

namespace nrt {

// Opaque request slot; an implementation stores its native handle in `storage`.
struct Request {
  std::array<unsigned char, 16> storage{};
  bool active = false;
  int peer = -1;  // -1: a collective of the whole communicator (iallreduce)
  bool isRecv = false;
  size_t bytes = 0;
};

// How a waiter polls: spin, yield (MPI progresses only inside MPI calls), then nap (communicator.cc).
struct WaitPolicy {
  uint32_t spins;                       // polls before the first yield
  std::chrono::microseconds yieldWindow;  // then yield for this long, then nap between polls
};
// Bulk transfers: no spin and a short yield window, so waiting ranks leave the cores to ranks that encode or
// reduce (communicator.cc).
constexpr WaitPolicy kBulkWait{0, std::chrono::microseconds(200)};
// Latency-bound messages (negotiation, small all-reduces): a message is often microseconds away, and a yield
// costs about a microsecond of syscall here even on a free core, a nap far more. 64 polls (10-20 us) first: a
// 4 KB all-reduce through the engine took 95 us with them and 104 us without (medians of 5 alternated rounds, 4
// ranks on 2 cores; 16.8 and 18.6 us on 2 ranks with a core each), within the rounds' spread
// (benchmarks/results/engine_latency_np{4,2}_ab.json). Peers arrive within a few ms of each other, and a nap then
// adds straight to latency: yield for 5 ms.
constexpr WaitPolicy kLatencyWait{64, std::chrono::microseconds(5000)};

// Spin, yield, then sleep: waits stay responsive without starving ranks that share a core.
class Backoff {
 public:
  explicit Backoff(WaitPolicy policy = kBulkWait) : policy_(policy) {}
  void pause();
  void reset() { iter_ = 0; }

 private:
  uint32_t iter_ = 0;
  WaitPolicy policy_;
  std::chrono::steady_clock::time_point yieldingSince_{};
};

// A communicator that saw a failure (a wait past its deadline, a failed transport call, a collective that
// ended by an exception) is poisoned: it keeps the first error, every later isend/irecv/test/wait throws it
// at once, and the requests still posted are abandoned (receives cancelled where the transport can, none
// ever freed). Their buffers may still be read or written by the transport, so whoever owns them must
// never free them (PostedBuffers below, the engine's deleter, neptune_rt/engine.py): after a failure the
// process may only shut down and exit (docs/failures.md).
class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Ranks of this communicator on this node (same host), and this rank's index among them.
  virtual int localRank() const { return 0; }
  virtual int localSize() const { return 1; }

  // Start a send/receive of `bytes` bytes to/from `peer`. A zero-byte call returns an inactive request.
  Request isend(const void* ptr, size_t bytes, int peer, int tag);
  Request irecv(void* ptr, size_t bytes, int peer, int tag);

  // A whole-communicator in-place all-reduce run by the transport itself (MPI_Iallreduce: the library's own
  // tuned algorithms), where nativeAllreduce(dtype, op) says it has one; every rank must call it in the same
  // order. Waited on like any request (wait() with a deadline). Poisoning leaves it posted (a collective cannot
  // be cancelled): its buffer must then never be freed, as for any abandoned request. Average is a sum here.
  virtual bool nativeAllreduce(DataType dtype, ReduceOp op) const { return false; }
  Request iallreduce(void* buffer, size_t count, DataType dtype, ReduceOp op);

  // True when the request has completed (an inactive request is complete). Sets `received` (bytes that
  // actually arrived, for receives that may be shorter than posted) when not null.
  bool test(Request& req, size_t* received = nullptr);

  // Wait for one request; when the deadline passes, poisons the communicator and throws TimeoutError
  // naming the peer. `policy`: how to poll meanwhile (kLatencyWait for latency-critical small messages).
  void wait(Request& req, const Deadline& deadline, const char* what = "transfer", size_t* received = nullptr,
            WaitPolicy policy = kBulkWait);
  void waitAll(std::vector<Request>& reqs, const Deadline& deadline, const char* what = "transfer");

  // Records the first failure and abandons every request still posted. Later calls throw `error` (as a
  // TimeoutError when `timedOut`). Thread-safe; a second call keeps the first error.
  void poison(const std::string& error, bool timedOut);
  bool poisoned() const { return poisoned_.load(std::memory_order_acquire); }
  std::string poisonError() const;
  bool poisonTimedOut() const;
  // Requests abandoned by poisoning (still owned by the transport, never freed).
  size_t abandonedRequests() const;
  // Throws the first error if poisoned.
  void throwIfPoisoned() const;

  // Empty when several threads may call into the transport at once (the engine's thread communicates
  // while user code runs); otherwise what is wrong and how to fix it.
  virtual std::string threadSupportProblem() const { return {}; }

  // A short human-readable description ("MPI rank 2/4 on host x").
  virtual std::string describe() const = 0;

 protected:
  virtual Request postSend(const void* ptr, size_t bytes, int peer, int tag) = 0;
  virtual Request postRecv(void* ptr, size_t bytes, int peer, int tag) = 0;
  virtual bool testPosted(Request& req, size_t* received) = 0;
  virtual Request postAllreduce(void* buffer, size_t count, DataType dtype, ReduceOp op);
  // Give up on a posted request for good: cancel it if the transport can, keep its handle, never free it.
  virtual void abandon(Request& req) = 0;

 private:
  // Posted requests are registered until they complete, so that poisoning can find them all (matched by
  // their native handle, which is unique while the request is active).
  void track(const Request& r);
  void untrack(const Request& r);

  std::atomic<bool> poisoned_{false};
  mutable std::mutex mu_;
  std::string error_;
  bool timedOut_ = false;
  struct StorageHash {
    size_t operator()(const std::array<unsigned char, 16>& s) const;
  };
  // Active requests by native handle: a ring with small segments posts thousands at once.
  std::unordered_map<std::array<unsigned char, 16>, Request, StorageHash> posted_;
  size_t abandoned_ = 0;
};

// Keeps a collective's buffers alive when it ends by an exception: the communicator is then poisoned
// (first error kept; if no transport error poisoned it yet, a note naming the collective), and every
// buffer handed to keep() is moved to the heap and never freed, because a posted request may still land
// in it. Declare it after the buffers, so that it runs first as the stack unwinds.
class PostedBuffers {
 public:
  PostedBuffers(Communicator& comm, std::string what)
      : comm_(comm), what_(std::move(what)), uncaught_(std::uncaught_exceptions()) {}
  ~PostedBuffers();
  PostedBuffers(const PostedBuffers&) = delete;
  PostedBuffers& operator=(const PostedBuffers&) = delete;

  // `buffer` must be movable without moving its storage (std::vector, unique_ptr, PayloadScratch...).
  template <typename Buffer>
  void keep(Buffer& buffer) {
    leakers_.push_back([&buffer] { (void)new Buffer(std::move(buffer)); });  // deliberately never deleted
  }

 private:
  Communicator& comm_;
  std::string what_;
  int uncaught_;
  std::vector<std::function<void()>> leakers_;
};

}  // namespace nrt
