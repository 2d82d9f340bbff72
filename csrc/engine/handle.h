// A handle on one enqueued operation: completion flag, error, results (allgather output), callbacks.
// Completed by whichever thread runs the engine's cycle; waited on by user threads (with a timeout). Its
// callbacks never run under the cycle lock: complete() hands them back, and the engine runs them on its
// completion queue (completion_queue.h).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace nrt {

class Handle {
 public:
  explicit Handle(std::string name) : name_(std::move(name)) {}

  const std::string& name() const { return name_; }
  bool done() const;  // lock-free: a group's waits poll every member
  bool failed() const;  // done with an error (error() without copying it)
  // Blocks until done or `timeoutSeconds` pass (<= 0: until done; the engine's own timeouts bound that).
  // Returns false on timeout. Does not throw: check error() afterwards.
  bool wait(double timeoutSeconds) const;
  std::string error() const;
  bool timedOut() const;
  // Runs `fn` on the engine's completion thread once the handle completes, or at once on this thread if it
  // already has.
  void addCallback(std::function<void()> fn);

  // Results of an allgather (bytes and shape), and the value returned by join.
  std::vector<char> output;
  std::vector<int64_t> outputShape;
  int64_t value = 0;
  // All-reduce: the codec that moved the data ("none" = dense) and the payload bytes this rank sent.
  std::string codecUsed = "none";
  uint64_t wireBytes = 0;
  // Submitted without callerWaits (asynchronously): Engine::waitFor counts such handles that its caller drove to
  // completion towards caller-driven mode (engine_drive.cc).
  bool submittedAsync = false;

  // Engine side: marks the handle done (waiters wake) and returns its callbacks, for the caller to run
  // outside any engine lock. Empty if it was done already.
  [[nodiscard]] std::vector<std::function<void()>> complete(const std::string& error = std::string(),
                                                             bool timedOut = false);

 private:
  std::string name_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  bool done_ = false;
  std::atomic<bool> doneFlag_{false};  // mirrors done_ for done() and the lock-free spin in wait()
  bool timedOut_ = false;
  std::string error_;
  std::vector<std::function<void()>> callbacks_;
};

// The handles of one grouped submission (Engine::enqueueGroup), waited on as one: its members run as one bucket, so
// they complete together. Lets a binding hand back one object instead of one per tensor.
struct HandleGroup {
  std::vector<std::shared_ptr<Handle>> members;
  bool done() const;
  // The first failed member's index, or -1.
  long firstError() const;
  // Waits for every member within one overall timeout (<= 0: no limit of its own) as Handle::wait does: without
  // running the engine's cycles (Engine::waitForAll runs them). False on timeout.
  bool wait(double timeoutSeconds) const;
  // Runs `fn` once, when every member is done (as Handle::addCallback: on the engine's completion thread, or at
  // once if all are), from one native callback on the last member (a countdown over the rest only where they are
  // not done by then): a callback per member into the caller's language would cost a call per tensor.
  void addCallback(std::function<void()> fn);
};

}  // namespace nrt
