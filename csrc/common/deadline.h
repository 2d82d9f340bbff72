// A point in time after which a blocking wait gives up. Every wait in neptune_rt takes one.
#pragma once

#include <chrono>
#include <limits>

namespace nrt {

using Clock = std::chrono::steady_clock;

class Deadline {
 public:
  static Deadline after(double seconds) {
    Deadline d;
    if (seconds <= 0 || seconds > 1e9) {
      d.at_ = Clock::time_point::max();
    } else {
      d.at_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    }
    return d;
  }
  static Deadline never() { return after(0); }
  bool expired() const { return at_ != Clock::time_point::max() && Clock::now() >= at_; }
  Clock::time_point at() const { return at_; }

 private:
  Clock::time_point at_ = Clock::time_point::max();
};

}  // namespace nrt
