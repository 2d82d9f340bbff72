// Byte-level writer and bounds-checked reader for the engine's negotiation messages. Host byte order:
// every rank of a job runs the same build on the same kind of machine.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/error.h"

namespace nrt::wire {

template <typename T>
void put(std::vector<char>& b, T v) {
  const char* p = reinterpret_cast<const char*>(&v);
  b.insert(b.end(), p, p + sizeof(T));
}

inline void putString(std::vector<char>& b, const std::string& s) {
  NRT_CHECK_ARG(s.size() <= 65535, "neptune_rt: tensor name of ", s.size(), " characters is too long");
  put<uint16_t>(b, static_cast<uint16_t>(s.size()));
  b.insert(b.end(), s.begin(), s.end());
}

inline void putBytes(std::vector<char>& b, const void* data, size_t n) {
  put<uint64_t>(b, n);
  b.insert(b.end(), static_cast<const char*>(data), static_cast<const char*>(data) + n);
}

// Reads what the writer wrote; any read past the end throws, naming the rank the bytes came from.
class Reader {
 public:
  Reader(const char* d, size_t n, int fromRank) : d_(d), n_(n), rank_(fromRank) {}
  template <typename T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, d_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  const char* take(size_t bytes) {
    need(bytes);
    const char* p = d_ + pos_;
    pos_ += bytes;
    return p;
  }
  std::string str() {
    const uint16_t len = get<uint16_t>();
    const char* p = take(len);
    return std::string(p, len);
  }
  std::vector<char> bytes() {
    const uint64_t len = get<uint64_t>();
    const char* p = take(len);
    return std::vector<char>(p, p + len);
  }
  size_t position() const { return pos_; }
  bool done() const { return pos_ == n_; }
  [[noreturn]] void corrupt(const std::string& what) const {
    throw std::runtime_error(concat("neptune_rt: negotiation message ", source(), " is corrupt: ", what,
                                    " (do all ranks run the same neptune_rt build?)"));
  }

 private:
  void need(size_t bytes) const {
    if (bytes > n_ - pos_)
      throw std::runtime_error(concat("neptune_rt: negotiation message ", source(), " is truncated (",
                                      n_, " bytes, needed ", pos_ + bytes, "); ranks may run different builds"));
  }
  // rank < 0: a message this rank holds already (its own, or its group's combined so far).
  std::string source() const { return rank_ < 0 ? std::string("held by this rank") : concat("from rank ", rank_); }
  const char* d_;
  size_t n_;
  size_t pos_ = 0;
  int rank_;
};

}  // namespace nrt::wire
