// Completion queue (see completion_queue.h).
#include "engine/completion_queue.h"

#include <iostream>
#include <stdexcept>

namespace nrt {

CompletionQueue::CompletionQueue() {
  thread_ = std::thread([this] { run(); });
  threadId_ = thread_.get_id();
}

CompletionQueue::~CompletionQueue() {
  if (!onQueueThread()) stop();
  else if (thread_.joinable()) thread_.detach();  // destroyed by a callback's own last reference
}

void CompletionQueue::runOne(const std::function<void()>& task) {
  try {
    task();
  } catch (const std::exception& e) {
    // A user callback must not take the queue down (later callbacks still have to run): report it, go on.
    std::cerr << "neptune_rt: a completion callback raised: " << e.what() << std::endl;
  }
}

void CompletionQueue::push(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopped_) {
      tasks_.push_back(std::move(task));
      cv_.notify_one();
      return;
    }
  }
  runOne(task);
}

void CompletionQueue::push(std::vector<std::function<void()>>&& tasks) {
  if (tasks.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopped_) {
      size_t queued = 0;
      try {
        for (; queued < tasks.size(); ++queued) tasks_.push_back(std::move(tasks[queued]));
      } catch (...) {  // out of memory: what was queued runs, the rest stays with the caller for a later push
        tasks.erase(tasks.begin(), tasks.begin() + static_cast<std::ptrdiff_t>(queued));
        if (queued) cv_.notify_one();
        throw;
      }
      tasks.clear();
      cv_.notify_one();  // one wake-up for the batch
      return;
    }
  }
  for (const auto& t : tasks) runOne(t);
  tasks.clear();
}

void CompletionQueue::stop() {
  if (onQueueThread())
    throw std::logic_error(
        "neptune_rt: shutdown() was called from a completion callback, which would wait for itself; "
        "call it from the thread that runs the training loop");
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void CompletionQueue::run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stopping_ || !tasks_.empty(); });
    if (tasks_.empty()) break;  // stopping and drained
    std::function<void()> task = std::move(tasks_.front());
    tasks_.pop_front();
    lock.unlock();
    runOne(task);
    task = nullptr;  // release what it captured (a Python callable) before taking the lock again
    lock.lock();
  }
  stopped_ = true;
}

}  // namespace nrt
