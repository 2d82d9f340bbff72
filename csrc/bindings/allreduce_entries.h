// The engine bindings' entries: a tensor's metadata and an all-reduce's Entry built from Python arguments, every
// argument checked (shape, dtype, op, codec, buffers), and the synchronous run of one. Shared by bind_engine.cc's
// enqueue_* / *_now methods; no pybind11 registration here.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bindings/buffer.h"
#include "engine/engine.h"

namespace nrt {

TensorMeta makeMeta(const std::string& name, OpType type, const std::string& dtype, std::vector<int64_t> shape);
// The buffer holds exactly the shape's elements, or an error naming the tensor.
void checkSize(const TensorMeta& m, const BufferView& v);

// enqueue_allreduce and allreduce_now: the entry, with every argument checked.
Entry allreduceEntry(const Engine& engine, const std::string& name, pybind11::buffer input, pybind11::buffer output,
                     const std::string& dtype, std::vector<int64_t> shape, const std::string& op, int codec,
                     double prescale, double postscale, bool errorFeedback);
// An all-reduce's entry on memory given by address and size (a CPU torch tensor's data_ptr(): no numpy array is
// made and freed per call). The caller guarantees both regions are contiguous, `bytes` long and alive until
// completion.
Entry allreduceEntryAt(const Engine& engine, const std::string& name, uintptr_t input, uintptr_t output, size_t bytes,
                       const std::string& dtype, std::vector<int64_t> shape, const std::string& op, int codec,
                       double prescale, double postscale, bool errorFeedback);

// A synchronous all-reduce: enqueued without waking the engine thread, then driven to completion on this thread.
// None when it completed cleanly (the common case: no handle object for Python to make and query), else the
// handle, which keeps the buffers' owner waiting and says how it ended.
pybind11::object allreduceNow(Engine& engine, const std::string& name, pybind11::buffer input,
                              pybind11::buffer output, const std::string& dtype, std::vector<int64_t> shape,
                              const std::string& op, int codec, double prescale, double postscale,
                              bool errorFeedback);
pybind11::object allreduceNowAt(Engine& engine, const std::string& name, uintptr_t input, uintptr_t output,
                                size_t bytes, const std::string& dtype, std::vector<int64_t> shape,
                                const std::string& op, int codec, double prescale, double postscale,
                                bool errorFeedback);

// The parts of a grouped all-reduce that every member shares, resolved once: a 200-tensor group then costs about a
// microsecond per member here (names, buffers and checks only).
class GroupTemplate {
 public:
  GroupTemplate(const Engine& engine, const std::string& dtype, const std::string& op, int codec, double prescale,
                double postscale);

  // `output` null: in place. `shape` None: the input buffer's own shape. Takes the name over (no copy).
  Entry entry(std::string&& name, pybind11::buffer& input, pybind11::buffer* output,
              const pybind11::object& shape) const;

 private:
  const Engine& engine_;
  std::string dtypeName_;
  DataType dtype_;
  ReduceOp op_;
  uint8_t codec_ = 0;
  double prescale_, postscale_;
};

}  // namespace nrt
