// Error helpers: checks throw with context (rank, peer, tensor); never exit() in the library.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace nrt {

// Thrown when a blocking wait runs past its deadline; Python sees it as TimeoutError.
class TimeoutError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Builds a message from streamable parts: nrt::concat("rank ", r, ": peer ", p).
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace nrt

#define NRT_CHECK(cond, ...)                                                                     \
  do {                                                                                           \
    if (!(cond)) throw std::runtime_error(::nrt::concat(__VA_ARGS__, " [check ", #cond, "]")); \
  } while (0)

#define NRT_CHECK_ARG(cond, ...)                                                        \
  do {                                                                                  \
    if (!(cond)) throw std::invalid_argument(::nrt::concat(__VA_ARGS__));              \
  } while (0)
