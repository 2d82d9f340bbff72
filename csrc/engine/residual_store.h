// Error-feedback state of one engine (one device): a residual per tensor name, kept for the codec the tensor
// was compressed with. Exercised through the engine by tests/test_residuals.py (keys, release, unweighted
// units, export/import round trip) and tests/test_compressed_allreduce.py.
//
// Two residuals per tensor, both in element coordinates of the tensor, so they survive any re-bucketing:
//  - own: what this rank's codec dropped from its own contribution (count values, unweighted units);
//  - reduced: the two-phase algorithm's second quantization error, for the elements of the tensor that this
//    rank reduced last time (a range [offset, offset + len) of the tensor, in the units of the sum).
// The interface speaks in (name, codec, count) and raw float pointers so a device-resident store can offer
// the same calls; export/import go through host copies (ResidualState). Not thread-safe: the engine guards it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace nrt {

// A host copy of one tensor's residuals (export/import, checkpoints).
struct ResidualState {
  std::string name;
  uint8_t codec = 0;             // the codec the tensor was requested with (format id, or kAutoCodecId)
  std::vector<float> own;        // count values
  std::vector<float> reduced;    // empty, or count values: zero outside the elements this rank reduced
};

class ResidualStore {
 public:
  explicit ResidualStore(int rank) : rank_(rank) {}  // the rank names itself in warnings
  // This rank's residual of (name, codec), `count` floats; nullptr when there is none. A residual kept under
  // another codec is freed (a name keeps one residual); one of another size (imported, or the name reused for
  // another shape) is discarded with a warning naming the tensor.
  float* find(const std::string& name, uint8_t codec, size_t count);
  // As find, but creates a zero-filled residual when there is none.
  float* acquire(const std::string& name, uint8_t codec, size_t count);
  // The reduced residual of `name` (which must exist: acquire first), moved to cover [offset, offset + len) of
  // the tensor: values that stay in range are carried, the others are added to spill[element] (the tensor's
  // own-residual slot, in the units of the sum, so they still reach the sum through the first quantization).
  // Returns len floats, or nullptr when len == 0 (the reduced residual is then freed).
  float* reduced(const std::string& name, size_t offset, size_t len, float* spill);
  void release(const std::string& name);
  void clear();
  size_t tensors() const { return byName_.size(); }
  size_t bytes() const;  // floats held, in bytes

  std::vector<ResidualState> exportAll() const;  // sorted by name
  // Replaces everything held. Sizes are checked at first use (find/acquire), where the tensor's count is known.
  void importAll(std::vector<ResidualState> states);

 private:
  struct Residual {
    uint8_t codec = 0;
    std::vector<float> own;
    size_t reducedOffset = 0;
    std::vector<float> reduced;
    bool imported = false;
  };
  Residual* lookup(const std::string& name, uint8_t codec, size_t count);

  const int rank_;
  std::unordered_map<std::string, Residual> byName_;
  std::unordered_set<std::string> warned_;  // size mismatches are reported once per name
};

}  // namespace nrt
