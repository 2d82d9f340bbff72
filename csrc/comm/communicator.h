// The Communicator seam: non-blocking point-to-point over bytes with bounded waits. Collective algorithms
// are written against this interface only; mpi_communicator.cc is the one implementation over MPI (and the
// only file that includes <mpi.h>). Exercised through every collective test.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/deadline.h"

namespace nrt {

// Opaque request slot; an implementation stores its native handle in `storage`.
struct Request {
  std::array<unsigned char, 16> storage{};
  bool active = false;
  int peer = -1;
  bool isRecv = false;
  size_t bytes = 0;
};

// How a waiter polls: spin, then yield (MPI progresses only inside MPI calls), then nap (communicator.cc).
// Bulk transfers: short, so waiting ranks leave the cores to ranks that encode or reduce (communicator.cc).
constexpr std::chrono::microseconds kBulkYieldWindow{200};
// Negotiation: peers arrive within a few ms of each other, and a nap then adds straight to latency.
constexpr std::chrono::microseconds kLatencyYieldWindow{5000};

class Backoff {
 public:
  explicit Backoff(std::chrono::microseconds yieldWindow = kBulkYieldWindow) : yieldWindow_(yieldWindow) {}
  void pause();
  void reset() { iter_ = 0; }

 private:
  uint32_t iter_ = 0;
  std::chrono::microseconds yieldWindow_;
  std::chrono::steady_clock::time_point yieldingSince_{};
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Start a send/receive of `bytes` bytes to/from `peer`. A zero-byte call returns an inactive request.
  virtual Request isend(const void* ptr, size_t bytes, int peer, int tag) = 0;
  virtual Request irecv(void* ptr, size_t bytes, int peer, int tag) = 0;

  // True when the request has completed (an inactive request is complete). Sets `received` (bytes that
  // actually arrived, for receives that may be shorter than posted) when not null.
  virtual bool test(Request& req, size_t* received = nullptr) = 0;

  // Wait for one request; throws TimeoutError naming the peer when the deadline passes. `yieldWindow`: how
  // long to keep yielding before napping between polls (longer for latency-critical small messages).
  void wait(Request& req, const Deadline& deadline, const char* what = "transfer", size_t* received = nullptr,
            std::chrono::microseconds yieldWindow = kBulkYieldWindow);
  void waitAll(std::vector<Request>& reqs, const Deadline& deadline, const char* what = "transfer");

  // Abandon a request that will never complete (after a timeout), so its buffer may be released.
  virtual void cancel(Request& req) = 0;

  // A short human-readable description ("MPI rank 2/4 on host x").
  virtual std::string describe() const = 0;
};

// Spin briefly, then yield, then sleep: waits stay responsive without starving ranks that share a core.
}  // namespace nrt
