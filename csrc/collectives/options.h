// Options shared by every collective: segment size, deadline, message tag, and a name for error messages.
#pragma once

#include <cstddef>
#include <string>

namespace nrt {

// Ring segments: small enough that sends, receives and reductions of consecutive segments overlap, large
// enough that per-message overhead stays small (tuned with benchmarks/allreduce.py --segment-bytes).
constexpr size_t kDefaultSegmentBytes = 512 * 1024;
// Default for every blocking wait (seconds); NEPTUNE_RT_TIMEOUT_SECONDS overrides it from Python.
constexpr double kDefaultTimeoutSeconds = 300.0;

struct CollectiveOptions {
  size_t segmentBytes = kDefaultSegmentBytes;
  double timeoutSeconds = kDefaultTimeoutSeconds;
  int tag = 0;
  std::string name = "collective";  // shown in timeout errors
};

}  // namespace nrt
