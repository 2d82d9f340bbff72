// Handle completion and waiting (see handle.h).
#include "engine/handle.h"

#include <sched.h>

#include <chrono>
#include <new>

namespace nrt {

bool Handle::done() const { return doneFlag_.load(std::memory_order_acquire); }

bool Handle::failed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !error_.empty();
}

bool Handle::wait(double timeoutSeconds) const {
  // Small operations complete within tens of microseconds: yield-spin that long before sleeping, since a
  // futex sleep and wake-up costs as much again. Yielding keeps oversubscribed cores usable meanwhile.
  constexpr auto kSpin = std::chrono::microseconds(200);
  const auto spinUntil = std::chrono::steady_clock::now() + kSpin;
  while (!doneFlag_.load(std::memory_order_acquire) && std::chrono::steady_clock::now() < spinUntil) sched_yield();
  std::unique_lock<std::mutex> lock(mu_);
  if (timeoutSeconds <= 0) {
    cv_.wait(lock, [&] { return done_; });
    return true;
  }
  return cv_.wait_for(lock, std::chrono::duration<double>(timeoutSeconds), [&] { return done_; });
}

std::string Handle::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

bool Handle::timedOut() const {
  std::lock_guard<std::mutex> lock(mu_);
  return timedOut_;
}

void Handle::addCallback(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!done_) {
      callbacks_.push_back(std::move(fn));
      return;
    }
  }
  fn();
}

std::vector<std::function<void()>> Handle::complete(const std::string& error, bool timedOut) {
  std::vector<std::function<void()>> callbacks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return callbacks;
    done_ = true;
    error_ = error;
    timedOut_ = timedOut;
    doneFlag_.store(true, std::memory_order_release);  // last: done() then sees the results and the error
    callbacks.swap(callbacks_);
  }
  cv_.notify_all();
  return callbacks;
}

bool HandleGroup::done() const {
  for (const auto& h : members)
    if (!h->done()) return false;
  return true;
}

bool HandleGroup::wait(double timeoutSeconds) const {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeoutSeconds);
  for (auto it = members.rbegin(); it != members.rend(); ++it) {  // they complete together: the last one first
    if ((*it)->done()) continue;
    double left = 0;
    if (timeoutSeconds > 0) {
      left = std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
      if (left <= 0) return false;
    }
    if (!(*it)->wait(left)) return false;
  }
  return true;
}

namespace {

// Runs `fn` once every one of `others` is done: at once if they are, else when the last of them completes (a
// countdown over all of them; one done already counts at once). Out of memory for the countdown, it waits for them
// here instead: members always complete, by the engine's timeouts or its shut-down at the latest.
void runWhenAllDone(const std::vector<std::shared_ptr<Handle>>& others,
                    const std::shared_ptr<std::function<void()>>& fn) {
  bool allDone = true;
  for (const auto& h : others) allDone = allDone && h->done();
  if (allDone) return (*fn)();
  std::shared_ptr<std::atomic<size_t>> remaining;
  try {
    remaining = std::make_shared<std::atomic<size_t>>(others.size());
  } catch (const std::bad_alloc&) {
    for (const auto& h : others) h->wait(0.0);
    return (*fn)();
  }
  size_t registered = 0;
  try {
    for (const auto& h : others) {
      h->addCallback([remaining, fn] {
        if (remaining->fetch_sub(1, std::memory_order_acq_rel) == 1) (*fn)();
      });
      ++registered;
    }
  } catch (const std::bad_alloc&) {  // count the members left out as done, so that fn still runs once
    const size_t left = others.size() - registered;
    if (remaining->fetch_sub(left, std::memory_order_acq_rel) == left) (*fn)();
    throw;
  }
}

}  // namespace

void HandleGroup::addCallback(std::function<void()> fn) {
  if (members.empty()) return fn();
  // The engine completes a group's members in one cycle and hands their callbacks to the completion thread after
  // that cycle (Engine::flushCallbacks): one callback on the last member then finds every member done. Where it
  // does not (members failing one by one), it counts down the rest. A callback per member cost two allocations
  // and a completion-queue task each: 200 per step of a 200-tensor DDP bucket.
  // The callback holds the other members, not the last one, whose own callback list holds it.
  auto shared = std::make_shared<std::function<void()>>(std::move(fn));
  std::vector<std::shared_ptr<Handle>> others(members.begin(), members.end() - 1);
  members.back()->addCallback([others = std::move(others), shared] { runWhenAllDone(others, shared); });
}

long HandleGroup::firstError() const {
  for (size_t i = 0; i < members.size(); ++i)
    if (members[i]->failed()) return static_cast<long>(i);
  return -1;
}

}  // namespace nrt
