// The engine bindings' all-reduce entries (allreduce_entries.h): Python arguments checked and turned into an Entry,
// and the synchronous run of one.
#include "bindings/allreduce_entries.h"

#include <utility>

namespace py = pybind11;

namespace nrt {

TensorMeta makeMeta(const std::string& name, OpType type, const std::string& dtype, std::vector<int64_t> shape) {
  TensorMeta m;
  m.name = name;
  m.type = type;
  m.dtype = dtypeFromName(dtype);
  m.shape = std::move(shape);
  return m;
}

void checkSize(const TensorMeta& m, const BufferView& v) {
  NRT_CHECK_ARG(v.count == m.numel(), "neptune_rt: tensor '", m.name, "' has ", v.count, " elements but shape ",
                m.describe(), " needs ", m.numel());
}

namespace {

// The entry of an all-reduce without its buffers, every other argument checked (shape first: the size checks of
// the buffers need a sane numel).
Entry allreduceEntryMeta(const Engine& engine, const std::string& name, const std::string& dtype,
                         std::vector<int64_t> shape, const std::string& op, int codec, double prescale,
                         double postscale, bool errorFeedback) {
  Entry e;
  e.errorFeedback = errorFeedback;
  e.meta = makeMeta(name, OpType::kAllreduce, dtype, std::move(shape));
  e.meta.op = reduceOpFromName(op);
  NRT_CHECK_ARG(codec >= 0 && codec <= 0xff, "neptune_rt: tensor '", name, "': codec id ", codec, " is out of range");
  e.meta.codec = static_cast<uint8_t>(codec);
  e.prescale = prescale;
  e.postscale = postscale;
  checkEntry(e, engine.rank(), engine.size());
  return e;
}

void setBuffers(Entry& e, const BufferView& in, const BufferView& out) {
  checkSize(e.meta, in);
  checkSize(e.meta, out);
  e.input = in.ptr;
  e.output = out.ptr;
}

py::object runNow(Engine& engine, Entry e) {
  std::shared_ptr<Handle> h;
  {
    py::gil_scoped_release release;
    h = engine.enqueue(std::move(e), Engine::Driver::kCaller);
    try {
      engine.waitFor(*h, 0.0);
    } catch (...) {
      // Only a failure outside the cycle (allocation) gets here: the entry may still be queued, so the caller
      // must get the handle that keeps its buffers alive; its wait meets the same error again.
    }
  }
  if (h->done() && !h->failed()) return py::none();
  return py::cast(h);
}

}  // namespace

Entry allreduceEntry(const Engine& engine, const std::string& name, py::buffer input, py::buffer output,
                     const std::string& dtype, std::vector<int64_t> shape, const std::string& op, int codec,
                     double prescale, double postscale, bool errorFeedback) {
  Entry e = allreduceEntryMeta(engine, name, dtype, std::move(shape), op, codec, prescale, postscale, errorFeedback);
  setBuffers(e, viewBuffer(input, dtype, false, name), viewBuffer(output, dtype, true, name));
  return e;
}

py::object allreduceNow(Engine& engine, const std::string& name, py::buffer input, py::buffer output,
                        const std::string& dtype, std::vector<int64_t> shape, const std::string& op, int codec,
                        double prescale, double postscale, bool errorFeedback) {
  return runNow(engine, allreduceEntry(engine, name, input, output, dtype, std::move(shape), op, codec, prescale,
                                       postscale, errorFeedback));
}

Entry allreduceEntryAt(const Engine& engine, const std::string& name, uintptr_t input, uintptr_t output, size_t bytes,
                       const std::string& dtype, std::vector<int64_t> shape, const std::string& op, int codec,
                       double prescale, double postscale, bool errorFeedback) {
  Entry e = allreduceEntryMeta(engine, name, dtype, std::move(shape), op, codec, prescale, postscale, errorFeedback);
  NRT_CHECK_ARG(input != 0 && output != 0, "neptune_rt: tensor '", name, "': null data address");
  setBuffers(e, checkedView(reinterpret_cast<void*>(input), bytes, dtype, name),
             checkedView(reinterpret_cast<void*>(output), bytes, dtype, name));
  return e;
}

py::object allreduceNowAt(Engine& engine, const std::string& name, uintptr_t input, uintptr_t output, size_t bytes,
                          const std::string& dtype, std::vector<int64_t> shape, const std::string& op, int codec,
                          double prescale, double postscale, bool errorFeedback) {
  return runNow(engine, allreduceEntryAt(engine, name, input, output, bytes, dtype, std::move(shape), op, codec,
                                         prescale, postscale, errorFeedback));
}

GroupTemplate::GroupTemplate(const Engine& engine, const std::string& dtype, const std::string& op, int codec,
                             double prescale, double postscale)
    : engine_(engine), dtypeName_(dtype), dtype_(dtypeFromName(dtype)), op_(reduceOpFromName(op)),
      prescale_(prescale), postscale_(postscale) {
  NRT_CHECK_ARG(codec >= 0 && codec <= 0xff, "neptune_rt: codec id ", codec, " is out of range");
  codec_ = static_cast<uint8_t>(codec);
}

Entry GroupTemplate::entry(std::string&& name, py::buffer& input, py::buffer* output, const py::object& shape) const {
  Entry e;
  e.meta.name = std::move(name);
  const std::string& tensor = e.meta.name;
  e.meta.type = OpType::kAllreduce;
  e.meta.dtype = dtype_;
  e.meta.op = op_;
  e.meta.codec = codec_;
  e.prescale = prescale_;
  e.postscale = postscale_;
  std::vector<int64_t> bufferShape;
  BufferView in;
  try {
    in = viewBuffer(input, dtypeName_, output == nullptr, tensor, &bufferShape);
  } catch (py::error_already_set& err) {
    // The buffer protocol's own refusal (a read-only array asked for writing) does not say which tensor.
    if (!err.matches(PyExc_BufferError) && !err.matches(PyExc_ValueError)) throw;
    throw std::invalid_argument(concat("neptune_rt: rank ", engine_.rank(), ": tensor '", tensor, "' cannot be used",
                                       output ? "" : " in place",
                                       " (", err.what(), "); pass a ", output ? "" : "writable, ",
                                       "contiguous array"));
  }
  e.meta.shape = shape.is_none() ? std::move(bufferShape) : shape.cast<std::vector<int64_t>>();
  checkEntry(e, engine_.rank(), engine_.size());
  checkSize(e.meta, in);
  e.input = in.ptr;
  e.output = in.ptr;
  if (output) {
    BufferView out = viewBuffer(*output, dtypeName_, true, tensor);
    checkSize(e.meta, out);
    e.output = out.ptr;
  }
  return e;
}

}  // namespace nrt
