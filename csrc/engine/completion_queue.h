// The completion queue: completion callbacks (and the engine's log lines) run here, on a thread of their own,
// in the order the engine completed them. So no user code ever runs while the cycle lock is held (a callback
// may wait on another handle: that waiting thread then drives cycles itself), and slow callback work (the DDP
// hook's copy-back and decompression) never holds up communication. Exercised by tests/test_engine.py
// ("callbacks" scenario of tests/workers/engine_worker.py).
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace nrt {

class CompletionQueue {
 public:
  CompletionQueue();
  ~CompletionQueue();  // stop()
  CompletionQueue(const CompletionQueue&) = delete;
  CompletionQueue& operator=(const CompletionQueue&) = delete;

  // Queued work runs on the queue's thread; after stop(), on the caller's thread at once.
  void push(std::function<void()> task);
  // A batch: one lock and one wake-up of the queue's thread for all of them. Moves them out of `tasks` (empty
  // afterwards); if queueing runs out of memory, the ones not queued stay in `tasks` and the error propagates.
  void push(std::vector<std::function<void()>>&& tasks);
  // Runs what is queued, then ends the thread. Idempotent. Throws std::logic_error on the queue's own thread
  // (it would wait for itself).
  void stop();
  bool onQueueThread() const { return std::this_thread::get_id() == threadId_; }

 private:
  void run();
  static void runOne(const std::function<void()>& task);

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  bool stopped_ = false;
  std::thread thread_;
  std::thread::id threadId_;
};

}  // namespace nrt
