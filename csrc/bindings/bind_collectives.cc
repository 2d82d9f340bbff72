// Bindings for the direct collectives (run on the calling thread over a duplicated communicator; used by
// tests and benchmarks to exercise algorithms without the engine) and for MPI facts.
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "bindings/buffer.h"
#include "collectives/allreduce.h"
#include "comm/mpi_communicator.h"

namespace py = pybind11;

namespace nrt {

namespace {

CollectiveOptions baseOptions(const std::string& name, size_t segmentBytes, double timeout, int tag) {
  CollectiveOptions o;
  o.name = name;
  if (segmentBytes > 0) o.segmentBytes = segmentBytes;
  o.timeoutSeconds = timeout;
  o.tag = tag;
  return o;
}

}  // namespace

void registerCollectives(py::module_& m) {
  py::class_<Communicator>(m, "Communicator", "Point-to-point over a duplicated MPI communicator")
      .def(py::init([](py::handle comm, double timeout) {
             return communicatorFromMpi4py(comm, timeout, "Communicator()");
           }),
           py::arg("mpi_comm"), py::arg("timeout") = kDefaultTimeoutSeconds,
           "Collective: duplicates mpi_comm (TimeoutError after `timeout` s if a peer does not join)")
      .def_property_readonly("rank", &Communicator::rank)
      .def_property_readonly("size", &Communicator::size)
      .def_property_readonly("local_rank", &Communicator::localRank)
      .def_property_readonly("local_size", &Communicator::localSize)
      .def_property_readonly(
          "failed",
          [](const Communicator& c) { return c.poisoned() ? py::object(py::str(c.poisonError())) : py::none(); },
          "None, or the first error after which this communicator was disabled (every call fails with it)")
      .def_property_readonly("abandoned_requests", &Communicator::abandonedRequests,
                             "requests left posted when it was disabled (never freed, nor their buffers)")
      .def("describe", &Communicator::describe);

  m.def("choose_allreduce_algorithm",
        [](size_t bytes, int world) {
          return std::string(allreduceAlgorithmName(chooseAllreduceAlgorithm(bytes, world)));
        },
        py::arg("nbytes"), py::arg("world_size"), "The algorithm the engine uses for a dense bucket of this size");
  m.attr("RECURSIVE_DOUBLING_MAX_BYTES") = kRecursiveDoublingMaxBytes;
  m.attr("DEFAULT_SEGMENT_BYTES") = kDefaultSegmentBytes;

  m.def(
      "allreduce_inplace",
      [](Communicator& comm, py::buffer buf, const std::string& dtype, const std::string& op,
         const std::string& algorithm, size_t segmentBytes, double timeout, const std::string& name, int tag) {
        BufferView view = viewBuffer(buf, dtype, /*writable=*/true, name);
        AllreduceOptions o;
        static_cast<CollectiveOptions&>(o) = baseOptions(name, segmentBytes, timeout, tag);
        o.buffer = view.ptr;
        o.count = view.count;
        o.dtype = view.dtype;
        o.op = reduceOpFromName(op);
        o.algorithm = allreduceAlgorithmFromName(algorithm);
        runDirect(comm, {buf}, [&] { allreduce(comm, o); });
      },
      py::arg("comm"), py::arg("buffer"), py::arg("dtype"), py::arg("op") = "sum", py::arg("algorithm") = "auto",
      py::arg("segment_bytes") = 0, py::arg("timeout") = kDefaultTimeoutSeconds, py::arg("name") = "allreduce",
      py::arg("tag") = 0, "In-place all-reduce on the calling thread (testing and benchmarks)");

  m.def(
      "reduce_scatter_inplace",
      [](Communicator& comm, py::buffer buf, const std::string& dtype, std::vector<size_t> counts,
         const std::string& op, size_t segmentBytes, double timeout, const std::string& name, int tag) {
        BufferView view = viewBuffer(buf, dtype, true, name);
        size_t total = 0;
        for (size_t c : counts) total += c;
        NRT_CHECK_ARG(total == view.count, "neptune_rt: reduce_scatter '", name, "': block counts sum to ", total,
                      " but the buffer has ", view.count, " elements");
        ReduceScatterOptions o;
        static_cast<CollectiveOptions&>(o) = baseOptions(name, segmentBytes, timeout, tag);
        o.buffer = view.ptr;
        o.counts = std::move(counts);
        o.dtype = view.dtype;
        o.op = reduceOpFromName(op);
        runDirect(comm, {buf}, [&] { reduceScatter(comm, o); });
      },
      py::arg("comm"), py::arg("buffer"), py::arg("dtype"), py::arg("counts"), py::arg("op") = "sum",
      py::arg("segment_bytes") = 0, py::arg("timeout") = kDefaultTimeoutSeconds, py::arg("name") = "reduce_scatter",
      py::arg("tag") = 0);

  m.def(
      "allgatherv_inplace",
      [](Communicator& comm, py::buffer buf, std::vector<size_t> bytes, size_t segmentBytes, double timeout,
         const std::string& name, int tag) {
        BufferView view = viewBuffer(buf, "uint8", true, name);
        size_t total = 0;
        for (size_t b : bytes) total += b;
        NRT_CHECK_ARG(total == view.count, "neptune_rt: allgather '", name, "': block sizes sum to ", total,
                      " bytes but the buffer has ", view.count);
        AllgatherOptions o;
        static_cast<CollectiveOptions&>(o) = baseOptions(name, segmentBytes, timeout, tag);
        o.buffer = view.ptr;
        o.bytes = std::move(bytes);
        runDirect(comm, {buf}, [&] { allgatherv(comm, o); });
      },
      py::arg("comm"), py::arg("buffer"), py::arg("bytes"), py::arg("segment_bytes") = 0,
      py::arg("timeout") = kDefaultTimeoutSeconds, py::arg("name") = "allgather", py::arg("tag") = 0);

  m.def(
      "broadcast_inplace",
      [](Communicator& comm, py::buffer buf, int root, size_t segmentBytes, double timeout, const std::string& name,
         int tag) {
        BufferView view = viewBuffer(buf, "uint8", true, name);
        BroadcastOptions o;
        static_cast<CollectiveOptions&>(o) = baseOptions(name, segmentBytes, timeout, tag);
        o.buffer = view.ptr;
        o.bytes = view.count;
        o.root = root;
        runDirect(comm, {buf}, [&] { broadcast(comm, o); });
      },
      py::arg("comm"), py::arg("buffer"), py::arg("root"), py::arg("segment_bytes") = 0,
      py::arg("timeout") = kDefaultTimeoutSeconds, py::arg("name") = "broadcast", py::arg("tag") = 0);

  m.def("mpi_info", [] {
    MpiInfo i = queryMpiInfo();
    py::dict d;
    d["library_version"] = i.libraryVersion;
    d["version"] = py::make_tuple(i.versionMajor, i.versionMinor);
    d["initialized"] = i.initialized;
    d["thread_level"] = i.threadLevel;
    d["thread_multiple"] = i.threadMultiple;
    return d;
  });
  m.def("abort_mpi", &abortMpi, py::arg("code") = 1,
        "MPI_Abort(COMM_WORLD): the exit path after a fatal communication error, so no rank hangs");
}

}  // namespace nrt
