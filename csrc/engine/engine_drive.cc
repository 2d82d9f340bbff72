// Who runs the engine's cycles (see engine.h): the engine thread's loop, which leaves freshly queued work to a
// caller about to wait for it, and waitFor/waitForAll, which drive cycles on the waiting thread. Exercised by every
// engine test; tests/test_engine_groups.py checks that work nobody waits on still completes.
#include <algorithm>
#include <chrono>

#include "engine/engine.h"

namespace nrt {

// Caller-driven mode. Asynchronous work that its submitter waits for at once (allreduce_async_(x).wait(), Horovod's
// synchronize) is driven by that caller (waitFor), yet each submission used to wake this thread, and each wake-up is
// a context switch on a core the caller and its peers need (4 KB allreduce_async_ + wait, 1 rank pinned: 25-31 us
// against 5-7 us synchronous, 0.8 switches per call). Once kCallerDrivenStreak asynchronous submissions were driven
// to completion by their own waiting callers' cycles since the streak was last reset (this thread finding work left
// with nobody waiting, idling out of the mode, or leaveToEngine), submissions stop notifying it: it looks every
// kCallerDrivenCheck instead and leaves queued work to callers for that long, not the drive window. The first entry
// it finds left that long with nobody waiting ends the mode (that entry started up to about two kCallerDrivenCheck
// late, once), and so does kCallerDrivenIdle without submissions (then it sleeps until notified, as outside the
// mode). Work its submitter will not drive (a completion callback, a passive wait,
// DistributedOptimizer's buckets) ends the mode at once (leaveToEngine).
constexpr int kCallerDrivenStreak = 8;
constexpr auto kCallerDrivenCheck = std::chrono::milliseconds(1);
constexpr auto kCallerDrivenIdle = std::chrono::milliseconds(10);

void Engine::sleepUntilWork(std::unique_lock<std::mutex>& lock) {
  // Idle ranks sleep until work arrives: peers that need us wait in the exchange meanwhile. Outside caller-driven
  // mode a submission notifies this thread, and so does the mode's start (waitFor), which turns the sleep into
  // timed looks.
  const auto ready = [&] { return hasWorkLocked() || stopRequested_ || !running_.load(); };
  while (!ready()) {
    if (!callerDriven_) {
      cv_.wait(lock, [&] { return ready() || callerDriven_; });
      continue;
    }
    cv_.wait_for(lock, kCallerDrivenCheck, ready);
    if (!ready() && Clock::now() - lastSubmitAt_ > kCallerDrivenIdle) {
      callerDriven_ = false;
      callerStreak_ = 0;
      stats_.setCallerDriven(false);
    }
  }
}

bool Engine::hasWorkLocked() const {
  return !incoming_.empty() || pendingCount_.load(std::memory_order_acquire) > 0;
}

// Work queued while nobody cycles is often waited on at once by its submitter (a synchronous all-reduce), and a
// waiting caller drives the cycle on its own thread (waitFor). If the engine thread cycled too, the two would
// hand the cycle back and forth: two context switches per 4 KB all-reduce, on cores the peers need. So the engine
// thread leaves queued work to a caller for config_.driveWindow (NEPTUNE_RT_DRIVE_WINDOW_US) from its submission,
// and sleeps while callers drive; it cycles once the oldest queued entry has waited that long with no caller, or
// when work from an earlier cycle is pending (peers not ready yet). Asynchronous work thus starts at most
// driveWindow later (in caller-driven mode, above, up to about two kCallerDrivenCheck). A caller that is slower
// than the window to come back from its submission to its wait (a 200-member group often is: the wake-up of this
// thread takes its core first) pays a hand-off; synchronous calls
// (allreduce_now, grouped_allreduce_) avoid that by not waking this thread at all (docs/design.md, "Who drives").
bool Engine::leaveToCaller(std::unique_lock<std::mutex>& lock) {
  const auto stopping = [&] { return stopRequested_ || !running_.load(); };
  while (!stopping()) {
    if (waiters_ > 0) {
      // Sleep until the last caller leaves work behind (waitFor notifies then, and when caller-driven mode starts);
      // the timeout guards against a missed wake-up, and in the mode it is the look that finds work nobody drives.
      const auto look = callerDriven_ ? std::chrono::duration_cast<Clock::duration>(kCallerDrivenCheck)
                                      : std::chrono::duration_cast<Clock::duration>(std::chrono::milliseconds(10));
      const bool driven = callerDriven_;  // a change of mode changes the look's period: start again
      cv_.wait_for(lock, look, [&] {
        return (waiters_ == 0 && hasWorkLocked()) || stopping() || callerDriven_ != driven;
      });
      continue;
    }
    if (!hasWorkLocked()) return true;  // callers did it all: back to sleep
    if (pendingCount_.load(std::memory_order_acquire) > 0 || incoming_.empty() || startNow_) return false;
    const auto window = callerDriven_ ? std::chrono::duration_cast<Clock::duration>(kCallerDrivenCheck)
                                      : std::chrono::duration_cast<Clock::duration>(config_.driveWindow);
    const auto due = incoming_.front().queuedAt + window;
    if (Clock::now() >= due) {  // nobody came for it: this thread cycles, and submissions wake it again
      callerStreak_ = 0;
      callerDriven_ = false;
      stats_.setCallerDriven(false);
      return false;
    }
    // Not notified (enqueue leaves us be meanwhile): the window runs out, or a stop ends it, or leaveToEngine hands
    // the queue over (startNow_), or ends caller-driven mode.
    wakeOnWork_ = false;
    const bool driven = callerDriven_;
    cv_.wait_until(lock, due, [&] { return waiters_ > 0 || stopping() || startNow_ || (driven && !callerDriven_); });
    wakeOnWork_ = true;
  }
  return false;
}

void Engine::leaveToEngine() {
  std::lock_guard<std::mutex> lock(mu_);
  handOverLocked();
}

void Engine::handOverLocked() {
  callerStreak_ = 0;
  const bool wasDriven = callerDriven_;
  if (wasDriven) {
    callerDriven_ = false;
    stats_.setCallerDriven(false);
  }
  if (!incoming_.empty()) {
    // Nobody will drive what is queued: the engine thread starts it at once instead of leaving it to a caller for the
    // drive window (a DistributedOptimizer bucket, waited on passively, started that much later), and in
    // caller-driven mode instead of at its next look. Once only: until the engine thread takes the queue (and resets
    // startNow_), a later hand-over (e.g. the passive wait after a hand-over submission) has nothing to add.
    if (!startNow_) {
      startNow_ = true;
      wakeForSubmission();
    }
  } else if (wasDriven && hasWorkLocked()) {
    wakeForSubmission();  // work of an earlier cycle: ends the mode's 1 ms pause
  }
}

void Engine::loop() {
  const auto stopping = [&] { return stopRequested_ || !running_.load(); };
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      sleepUntilWork(lock);
      const bool callersDidIt = leaveToCaller(lock);
      startNow_ = false;  // what was handed over is queued for the cycle below (or was driven by callers)
      if (callersDidIt || stopping()) {
        if (stopping()) break;
        continue;
      }
    }
    switch (step()) {
      case StepResult::kStopped:
        return;
      case StepResult::kBusy:
      case StepResult::kProgress:
        break;  // a caller drives (leaveToCaller waits for it), or there may be more to do
      case StepResult::kNoProgress: {
        std::unique_lock<std::mutex> lock(mu_);
        // New submissions end this pause by notifying; in caller-driven mode they do not, so it lasts at most a look.
        auto pause = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(config_.cycleSeconds));
        if (callerDriven_) pause = std::min(pause, std::chrono::duration_cast<Clock::duration>(kCallerDrivenCheck));
        cv_.wait_for(lock, pause, [&] { return !incoming_.empty() || stopping(); });
        break;
      }
    }
  }
  std::lock_guard<std::mutex> cycleLock(cycleMu_);
  failEverything(shutdownDone_ ? "neptune_rt has been shut down" : "neptune_rt: the engine was stopped", false);
}

bool Engine::waitFor(Handle& h, double timeoutSeconds) {
  // A thread that waits drives the cycles itself while the engine thread is idle: a synchronous
  // operation then costs no thread hand-offs. Only one thread at a time runs a cycle (cycleMu_). A
  // completion callback may wait too: it runs on the completion thread, which never holds cycleMu_.
  if (h.done()) return true;
  const double t0 = monotonicSeconds();
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++waiters_;
  }
  struct AddWait {
    Engine& engine;
    const Handle& handle;
    double t0;
    bool drove = false;  // a cycle this caller ran completed the handle
    ~AddWait() {
      engine.stats_.addWait(monotonicSeconds() - t0);
      bool modeStarts = false;
      {
        std::lock_guard<std::mutex> lock(engine.mu_);
        if (drove && handle.submittedAsync && !engine.callerDriven_ &&
            ++engine.callerStreak_ >= kCallerDrivenStreak) {
          engine.callerDriven_ = true;
          engine.stats_.setCallerDriven(true);
          modeStarts = true;  // the engine thread may sleep untimed: it must switch to timed looks
        }
        const bool last = --engine.waiters_ == 0;
        // The mode's start always notifies, other waiters or not: the engine thread may sleep untimed, or in a wait
        // entered before the mode whose period is the old one.
        if (!modeStarts && (!last || !engine.hasWorkLocked())) return;
      }
      engine.cv_.notify_all();  // the engine thread takes over what is left (or starts looking)
    }
  } addWait{*this, h, t0};
  const Deadline deadline = Deadline::after(timeoutSeconds);
  while (!h.done()) {
    if (deadline.expired()) return false;
    switch (step()) {
      case StepResult::kProgress:
        if (h.done()) addWait.drove = true;
        continue;
      case StepResult::kStopped:
        return h.wait(timeoutSeconds);  // completed (or failed) by now
      case StepResult::kBusy:
        stats_.addHandoff();
        h.wait(0.001);  // the engine thread is driving; it will complete us or hand back
        break;
      case StepResult::kNoProgress:
        h.wait(config_.cycleSeconds);  // peers have not submitted yet
        break;
    }
  }
  return true;
}

bool Engine::waitForAll(const HandleGroup& group, double timeoutSeconds) {
  // Members of a group complete together (one bucket), so this is one real wait followed by checks; a member
  // left behind (a failure path completes them one by one) gets what remains of the time.
  const Deadline deadline = Deadline::after(timeoutSeconds);
  for (auto it = group.members.rbegin(); it != group.members.rend(); ++it) {
    if ((*it)->done()) continue;
    double left = 0;
    if (timeoutSeconds > 0) {
      left = std::chrono::duration<double>(deadline.at() - Clock::now()).count();
      if (left <= 0) return false;
    }
    if (!waitFor(**it, left)) return false;
  }
  return true;
}

}  // namespace nrt
