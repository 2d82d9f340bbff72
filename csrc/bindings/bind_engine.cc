// Bindings for the background engine (its handles and cost model: bind_handles.cc; the all-reduce entries:
// allreduce_entries.cc). Python keeps the buffers alive until completion (neptune_rt/engine.py); here: argument
// checks, GIL release, docstrings, and the two ends of an engine's life: set-up with a deadline, and a shut-down
// that raises when the ranks did not stop together.
#include <optional>
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>

#include "bindings/allreduce_entries.h"
#include "bindings/bindings.h"
#include "bindings/buffer.h"
#include "engine/engine.h"

namespace py = pybind11;

namespace nrt {

namespace {

// Shut-down is collective; when it fails, say which step, the communicator size and the likely cause.
void shutdownOrThrow(Engine& e) {
  const bool wasRunning = e.running();
  std::string error;
  {
    py::gil_scoped_release release;
    error = e.shutdown();
  }
  if (!wasRunning || error.empty()) return;  // an engine that failed before has reported its error already
  const Communicator& comm = e.communicator();
  const std::string msg = concat(
      "neptune_rt: rank ", e.rank(), ": shutdown() did not complete on a communicator of ", e.size(),
      " ranks (shut-down step 1 of 1: agreeing with every rank to stop): ", error,
      "\n  Likely cause: ranks out of step: this rank called shutdown() while others did not (a peer stopped, "
      "hangs, or exited without shutdown()). Every rank must call shutdown() (or exit normally: the exit "
      "handler calls it). This process cannot use neptune_rt again: let it exit (the exit handler aborts "
      "the job).");
  if (comm.poisoned() && !comm.poisonTimedOut()) throw std::runtime_error(msg);
  throw TimeoutError(msg);  // the negotiation, or the stop itself, ran past NEPTUNE_RT_TIMEOUT_SECONDS
}

// Error-feedback residuals cross the boundary as (name, codec name, own float32[count], reduced float32[count]
// or None); residuals are keyed by the codec requested, so "auto" and "auto_lowbit" are keys too.
uint8_t requestedCodecId(const std::string& name, const std::string& tensor) {
  const uint8_t c = requestedCodecIdFromName(name);  // throws, listing the names
  NRT_CHECK_ARG(c != codec_format::kNone, "neptune_rt: residual of tensor '", tensor,
                "' is keyed by codec 'none', which keeps no error feedback");
  return static_cast<uint8_t>(c);
}

py::array_t<float> floatCopy(const std::vector<float>& v) {
  py::array_t<float> a(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(float));
  return a;
}

std::vector<float> floatVector(const py::array_t<float, py::array::c_style | py::array::forcecast>& a,
                               const std::string& tensor) {
  NRT_CHECK_ARG(a.ndim() == 1, "neptune_rt: residual of tensor '", tensor, "' must be one-dimensional, got ",
                a.ndim(), " dimensions");
  return std::vector<float>(a.data(), a.data() + a.size());
}

std::shared_ptr<Handle> submit(Engine& engine, Entry e, bool handOver) {
  py::gil_scoped_release release;
  return engine.enqueue(std::move(e), Engine::driverFor(false, handOver));
}

// Destroying an engine drains its completion queue, whose Python callbacks need the GIL: never hold it then.
// An engine whose communicator failed is never destroyed: requests left posted may still read or write its
// buffers (fusion, scratch, payloads). Its thread is stopped; its memory is leaked on purpose.
struct EngineDeleter {
  void operator()(Engine* e) const {
    auto release = [e] {
      if (e->communicator().poisoned())
        e->shutdown();  // joins the stopped thread and drains callbacks; no communication
      else
        delete e;
    };
    if (PyGILState_Check()) {
      py::gil_scoped_release unlock;
      release();
    } else {
      release();
    }
  }
};
using EnginePtr = std::unique_ptr<Engine, EngineDeleter>;

// The engine's log lines go to Python's logging ("neptune_rt" logger), called on the completion thread.
std::function<void(int, const std::string&)> pythonLogSink() {
  py::gil_scoped_acquire gil;
  auto logger = std::shared_ptr<py::object>(
      new py::object(py::module_::import("logging").attr("getLogger")("neptune_rt")), [](py::object* o) {
        py::gil_scoped_acquire acquire;
        delete o;
      });
  return [logger](int level, const std::string& line) {
    py::gil_scoped_acquire acquire;
    logger->attr("log")(level, line);
  };
}

}  // namespace

void registerEngine(py::module_& m) {
  m.attr("CODEC_AUTO_ID") = kAutoCodecId;
  m.attr("CODEC_AUTO_LOWBIT_ID") = kAutoLowBitCodecId;
  m.attr("CODEC_FORCE_BIT") = kForceCodecBit;
  m.attr("MIN_COMPRESSED_BYTES") = kMinCompressedBytes;
  m.attr("COMPRESSION_REQUIRED_SPEEDUP") = kCompressionRequiredSpeedup;
  m.attr("BUCKET_RECORDS_KEPT") = EngineStats::kRecordCapacity;
  py::class_<Engine, EnginePtr>(m, "Engine", "Background communication engine over an mpi4py communicator")
      .def(py::init([](py::handle comm, size_t fusionBytes, size_t eagerBytes, double cycleMs, double timeout,
                       double stallWarning, size_t segmentBytes, uint32_t codecBlock, const std::string& rounding,
                       uint64_t seed, const std::string& compressedAlgorithm, bool costModel, bool deterministic,
                       size_t cacheCapacity, std::optional<size_t> nativeAllreduceBytes,
                       const std::string& allreduceAlgorithm, double driveWindowUs) {
             EngineConfig c;
             c.denseAlgorithm = allreduceAlgorithmFromName(allreduceAlgorithm);
             // A non-mpi4py object is refused with its own message by communicatorFromMpi4py below.
             const int worldSize = py::hasattr(comm, "Get_size") ? comm.attr("Get_size")().cast<int>() : 1;
             NRT_CHECK_ARG(c.denseAlgorithm != AllreduceAlgorithm::kRecursiveDoubling,
                           "neptune_rt: allreduce_algorithm 'recursive_doubling' is for small buffers only (the engine "
                           "uses it up to 64 KiB); choose auto, ring or halving_doubling for larger buckets");
             NRT_CHECK_ARG(c.denseAlgorithm != AllreduceAlgorithm::kHalvingDoubling ||
                               (worldSize & (worldSize - 1)) == 0,
                           "neptune_rt: allreduce_algorithm 'halving_doubling' needs a power-of-two world; this one "
                           "has ", worldSize, " ranks: use auto or ring");
             c.fusionBytes = fusionBytes;
             c.eagerBytes = eagerBytes;
             c.cycleSeconds = cycleMs / 1000.0;
             NRT_CHECK_ARG(std::isfinite(driveWindowUs) && driveWindowUs >= 0 && driveWindowUs <= 1e6,
                           "neptune_rt: drive_window_us ", driveWindowUs, " must be between 0 and 1000000");
             c.driveWindow = std::chrono::microseconds(std::llround(driveWindowUs));
             c.timeoutSeconds = timeout;
             c.stallWarningSeconds = stallWarning;
             if (segmentBytes) {
               c.segmentBytes = segmentBytes;
               c.minSegmentPayload = 0;  // an explicit segment size is taken as it is
             }
             checkBlockSize(Codec::kInt8, codecBlock);
             c.codecBlock = codecBlock;
             c.rounding = roundingFromName(rounding);
             c.seed = seed;
             c.compressedAlgorithm = compressedAlgorithmFromName(compressedAlgorithm);
             c.useCostModel = costModel;
             c.deterministic = deterministic;
             NRT_CHECK_ARG(cacheCapacity <= (1u << 20), "neptune_rt: cache_capacity ", cacheCapacity,
                           " is too large (at most 1048576 slots; 0 disables the response cache)");
             c.cacheCapacity = cacheCapacity;
             c.nativeAllreduceBytes = nativeAllreduceBytes ? *nativeAllreduceBytes
                                                           : defaultNativeAllreduceBytes(worldSize, c.denseAlgorithm);
             NRT_CHECK_ARG(c.eagerBytes + 4096 < c.negotiationBytes, "neptune_rt: eager_bytes ", c.eagerBytes,
                           " must stay below ", c.negotiationBytes - 4096);
             EnginePtr engine(new Engine(communicatorFromMpi4py(comm, timeout, "init()"), c));
             engine->setLogSink(pythonLogSink());
             return engine;
           }),
           py::arg("mpi_comm"), py::arg("fusion_bytes"), py::arg("eager_bytes"), py::arg("cycle_ms"),
           py::arg("timeout"), py::arg("stall_warning"), py::arg("segment_bytes"),
           py::arg("codec_block") = codec_format::kDefaultBlockSize, py::arg("rounding") = "nearest",
           py::arg("seed") = 0, py::arg("compressed_algorithm") = "auto", py::arg("cost_model") = true,
           py::arg("deterministic") = false,
           py::arg("cache_capacity") = 1024, py::arg("native_allreduce_bytes") = py::none(),
           py::arg("allreduce_algorithm") = "auto", py::arg("drive_window_us") = 50.0)
      .def_property_readonly("rank", &Engine::rank)
      .def_property_readonly("size", &Engine::size)
      .def_property_readonly("running", &Engine::running)
      .def_property_readonly("fatal_error", &Engine::fatalError)
      .def_property_readonly("local_rank", [](Engine& e) { return e.communicator().localRank(); })
      .def_property_readonly("local_size", [](Engine& e) { return e.communicator().localSize(); })
      .def_property_readonly(
          "communication_failed",
          [](Engine& e) {
            const Communicator& c = e.communicator();
            return c.poisoned() ? py::object(py::str(c.poisonError())) : py::none();
          },
          "None, or the first communication error (then the engine and the buffers it used are never freed)")
      .def_property_readonly("abandoned_requests", [](Engine& e) { return e.communicator().abandonedRequests(); })
      .def_property_readonly("cost_model", &Engine::costModelDescription,
                             "The probed cost model (empty until the first compressed bucket)")
      .def(
          "enqueue_allreduce",
          [](Engine& engine, const std::string& name, py::buffer input, py::buffer output, const std::string& dtype,
             std::vector<int64_t> shape, const std::string& op, int codec, double prescale, double postscale,
             bool errorFeedback, bool handOver) {
            return submit(engine, allreduceEntry(engine, name, input, output, dtype, std::move(shape), op, codec,
                                                 prescale, postscale, errorFeedback), handOver);
          },
          py::arg("name"), py::arg("input"), py::arg("output"), py::arg("dtype"), py::arg("shape"), py::arg("op"),
          py::arg("codec") = 0, py::arg("prescale") = 1.0, py::arg("postscale") = 1.0, py::arg("error_feedback") = true,
          py::arg("hand_over") = false,
          "hand_over=True: nobody will drive it (a passive wait or a callback follows): the engine thread starts it "
          "at once, woken once")
      // A synchronous all-reduce in one call (Engine::enqueue's callerWaits): None once it completed cleanly, else
      // the handle that says how it ended.
      .def("allreduce_now", &allreduceNow, py::arg("name"), py::arg("input"), py::arg("output"), py::arg("dtype"),
           py::arg("shape"), py::arg("op"), py::arg("codec") = 0, py::arg("prescale") = 1.0,
           py::arg("postscale") = 1.0, py::arg("error_feedback") = true)
      // The same on memory given by address (contiguous, `bytes` long each, kept alive by the caller). Internal: it
      // writes wherever it is told to (neptune_rt.engine passes a CPU torch tensor's data_ptr()).
      .def("_allreduce_now_at", &allreduceNowAt, py::arg("name"), py::arg("input"), py::arg("output"),
           py::arg("bytes"), py::arg("dtype"), py::arg("shape"), py::arg("op"), py::arg("codec") = 0,
           py::arg("prescale") = 1.0, py::arg("postscale") = 1.0, py::arg("error_feedback") = true)
      // enqueue_allreduce on memory given by address, as _allreduce_now_at (internal, for the same callers).
      .def(
          "_enqueue_allreduce_at",
          [](Engine& engine, const std::string& name, uintptr_t input, uintptr_t output, size_t bytes,
             const std::string& dtype, std::vector<int64_t> shape, const std::string& op, int codec, double prescale,
             double postscale, bool errorFeedback, bool handOver) {
            return submit(engine, allreduceEntryAt(engine, name, input, output, bytes, dtype, std::move(shape), op,
                                                   codec, prescale, postscale, errorFeedback), handOver);
          },
          py::arg("name"), py::arg("input"), py::arg("output"), py::arg("bytes"), py::arg("dtype"), py::arg("shape"),
          py::arg("op"), py::arg("codec") = 0, py::arg("prescale") = 1.0, py::arg("postscale") = 1.0,
          py::arg("error_feedback") = true, py::arg("hand_over") = false)
      .def(
          "enqueue_allgather",
          [](Engine& engine, const std::string& name, py::buffer input, const std::string& dtype,
             std::vector<int64_t> shape) {
            NRT_CHECK_ARG(!shape.empty(), "neptune_rt: allgather of '", name, "' needs at least one dimension");
            Entry e;
            e.meta = makeMeta(name, OpType::kAllgather, dtype, std::move(shape));
            checkEntry(e, engine.rank(), engine.size());
            BufferView in = viewBuffer(input, dtype, false, name);
            checkSize(e.meta, in);
            e.input = in.ptr;
            return submit(engine, std::move(e), false);
          },
          py::arg("name"), py::arg("input"), py::arg("dtype"), py::arg("shape"))
      .def(
          "enqueue_broadcast",
          [](Engine& engine, const std::string& name, py::buffer input, py::buffer output, const std::string& dtype,
             std::vector<int64_t> shape, int root) {
            Entry e;
            e.meta = makeMeta(name, OpType::kBroadcast, dtype, std::move(shape));
            e.meta.root = root;
            checkEntry(e, engine.rank(), engine.size());
            BufferView in = viewBuffer(input, dtype, false, name), out = viewBuffer(output, dtype, true, name);
            checkSize(e.meta, in);
            checkSize(e.meta, out);
            e.input = in.ptr;
            e.output = out.ptr;
            return submit(engine, std::move(e), false);
          },
          py::arg("name"), py::arg("input"), py::arg("output"), py::arg("dtype"), py::arg("shape"), py::arg("root"))
      .def(
          "enqueue_barrier",
          [](Engine& engine, const std::string& name) {
            Entry e;
            e.meta = makeMeta(name, OpType::kBarrier, "uint8", {0});
            return submit(engine, std::move(e), false);
          },
          py::arg("name"))
      .def(
          "enqueue_join",
          [](Engine& engine, const std::string& name) {
            Entry e;
            e.meta = makeMeta(name, OpType::kJoin, "uint8", {0});
            return submit(engine, std::move(e), false);
          },
          py::arg("name"))
      .def(
          "enqueue_group_allreduce",
          [](Engine& engine, std::vector<std::string> names, const py::list& inputs, const py::object& outputs,
             const std::string& dtype, const py::object& shapes, const std::string& op, int codec, double prescale,
             double postscale, bool callerWaits, bool handOver) {
            NRT_CHECK_ARG(!(callerWaits && handOver), "neptune_rt: a group is driven by its caller or handed over, "
                          "not both");
            const bool inPlace = outputs.is_none();
            const size_t n = names.size();
            NRT_CHECK_ARG(inputs.size() == n && (inPlace || py::len(outputs) == n) &&
                              (shapes.is_none() || py::len(shapes) == n),
                          "neptune_rt: a group needs as many names, inputs, outputs and shapes (got ", n, ", ",
                          inputs.size(), ", ", inPlace ? n : py::len(outputs), ", ",
                          shapes.is_none() ? n : py::len(shapes), ")");
            std::vector<Entry> entries;
            entries.reserve(n);
            GroupTemplate group(engine, dtype, op, codec, prescale, postscale);
            for (size_t i = 0; i < n; ++i) {
              py::buffer in = inputs[i].cast<py::buffer>();
              const py::object shape = shapes.is_none() ? py::none() : py::object(shapes[py::int_(i)]);
              if (inPlace) {
                entries.push_back(group.entry(std::move(names[i]), in, nullptr, shape));
              } else {
                py::buffer out = outputs[py::int_(i)].cast<py::buffer>();
                entries.push_back(group.entry(std::move(names[i]), in, &out, shape));
              }
            }
            auto handles = std::make_shared<HandleGroup>();
            py::gil_scoped_release release;
            handles->members = engine.enqueueGroup(std::move(entries), Engine::driverFor(callerWaits, handOver));
            if (callerWaits) {
              try {
                engine.waitForAll(*handles, 0.0);
              } catch (...) {
                // As in allreduce_now: the caller's own wait meets the same error, holding the buffers alive.
              }
            }
            return handles;
          },
          py::arg("names"), py::arg("inputs"), py::arg("outputs") = py::none(), py::arg("dtype"),
          py::arg("shapes") = py::none(), py::arg("op"), py::arg("codec") = 0, py::arg("prescale") = 1.0,
          py::arg("postscale") = 1.0, py::arg("caller_waits") = false, py::arg("hand_over") = false,
          "All-reduces that travel as one bucket, in this order (deterministic fusion); one HandleGroup. "
          "outputs=None: in place; shapes=None: each buffer's own shape; caller_waits=True: enqueue without waking "
          "the engine thread and drive the cycles on this thread until the group is done (synchronous calls); "
          "hand_over=True: nobody will drive it, the engine thread starts it at once (woken once)")
      .def("wait_group", [](Engine& e, const HandleGroup& g, double timeout) { return e.waitForAll(g, timeout); },
           py::arg("group"), py::arg("timeout") = 0.0, py::call_guard<py::gil_scoped_release>(),
           "Wait for every member of a group, running negotiation cycles on this thread while the engine is idle")
      .def("stats", [](Engine& e) { return engineStatsDict(e.stats().totals()); },
           "Cumulative counters since the engine started (no synchronisation)")
      .def("bucket_records", [](Engine& e, bool clear) { return bucketRecordList(e.stats().records(clear)); },
           py::arg("clear") = true, "The last BUCKET_RECORDS_KEPT per-bucket records, oldest first")
      .def("_fail_next_cycle", &Engine::failNextCycleForTesting, py::arg("what"),
           "Tests only: this rank's next cycle fails with `what`, as if its engine thread had failed")
      .def("_leave_to_engine", &Engine::leaveToEngine,
           "Internal: what was submitted will not be driven by a waiting caller (passive waits, callbacks, gradient "
           "buckets): the engine thread takes it now (ends caller-driven mode, engine_drive.cc)")
      .def("wait", [](Engine& e, Handle& h, double timeout) { return e.waitFor(h, timeout); }, py::arg("handle"),
           py::arg("timeout") = 0.0, py::call_guard<py::gil_scoped_release>(),
           "Wait for a handle, running negotiation cycles on this thread while the engine thread is idle")
      // Error-feedback residuals (engine/residual_store.h): this rank's, no communication.
      .def("export_residuals",
           [](Engine& engine) {
             std::vector<ResidualState> states;
             {
               py::gil_scoped_release release;
               states = engine.exportResiduals();
             }
             py::list out;
             for (const ResidualState& s : states) {
               py::object reduced = s.reduced.empty() ? py::object(py::none()) : py::object(floatCopy(s.reduced));
               out.append(py::make_tuple(s.name, requestedCodecName(s.codec), floatCopy(s.own), reduced));
             }
             return out;
           },
           "[(name, codec, own float32[count], reduced float32[count] or None)], sorted by name")
      .def("import_residuals",
           [](Engine& engine, const std::vector<py::tuple>& items) {
             std::vector<ResidualState> states;
             for (const py::tuple& t : items) {
               NRT_CHECK_ARG(t.size() == 4, "neptune_rt: import_residuals takes (name, codec, own, reduced) tuples");
               ResidualState s;
               s.name = t[0].cast<std::string>();
               s.codec = requestedCodecId(t[1].cast<std::string>(), s.name);
               s.own = floatVector(t[2].cast<py::array_t<float, py::array::c_style | py::array::forcecast>>(), s.name);
               if (!t[3].is_none()) {
                 s.reduced =
                     floatVector(t[3].cast<py::array_t<float, py::array::c_style | py::array::forcecast>>(), s.name);
                 NRT_CHECK_ARG(s.reduced.size() == s.own.size(), "neptune_rt: residual of tensor '", s.name,
                               "': the reduced row has ", s.reduced.size(), " values, the own row ", s.own.size());
               }
               states.push_back(std::move(s));
             }
             py::gil_scoped_release release;
             engine.importResiduals(std::move(states));
           },
           py::arg("items"), "Replace this rank's residuals; raises while compressed all-reduces are in flight")
      .def("release_residuals", &Engine::releaseResiduals, py::arg("name"),
           py::call_guard<py::gil_scoped_release>(), "Free the error-feedback residuals of one tensor name")
      .def_property_readonly("residual_bytes", &Engine::residualBytes, "Bytes of residuals held on this rank")
      .def("shutdown", &shutdownOrThrow,
           "Collective: every rank calls it; completes negotiated work, then stops the thread. TimeoutError "
           "(or RuntimeError) when the ranks did not stop together; no error if the engine had failed before");
}

}  // namespace nrt
