// Registration functions of the pybind11 module neptune_rt._C, one per concept (bind_*.cc).
// Bindings hold no logic: argument checks, GIL release, docstrings.
#pragma once

#include <pybind11/pybind11.h>

#include <initializer_list>
#include <memory>
#include <string>

#include "comm/communicator.h"
#include "engine/engine_stats.h"

namespace nrt {
// mpi4py_bridge.cc: wraps any mpi4py communicator (COMM_WORLD, a Split sub-communicator). Set-up is
// collective with a deadline of `timeoutSeconds`; `caller` names the user's entry point in its errors.
std::unique_ptr<Communicator> communicatorFromMpi4py(pybind11::handle comm, double timeoutSeconds,
                                                     const std::string& caller);

// Runs a direct collective with the GIL released. If it fails and leaves `comm` poisoned, the Python
// objects whose memory it used are kept alive for good: a request left posted may still land in them.
template <typename Fn>
auto runDirect(Communicator& comm, std::initializer_list<pybind11::handle> buffers, Fn&& fn) {
  try {
    pybind11::gil_scoped_release release;
    return fn();
  } catch (...) {  // the GIL is held again here
    if (comm.poisoned())
      for (pybind11::handle b : buffers)
        if (b) b.inc_ref();  // deliberately never released (docs/failures.md)
    throw;
  }
}

void registerCollectives(pybind11::module_& m);  // bind_collectives.cc: direct collectives + info
void registerHandles(pybind11::module_& m);      // bind_handles.cc: handles, handle groups, cost model
void registerEngine(pybind11::module_& m);       // bind_engine.cc: background engine
// bind_engine_stats.cc: the engine's stats() totals and bucket_records() rows as Python objects.
pybind11::dict engineStatsDict(const EngineStats::Totals& totals);
pybind11::list bucketRecordList(const std::vector<BucketRecord>& records);
void registerCodecs(pybind11::module_& m);       // bind_codecs.cc: quantization codecs (CPU)
void registerCompressed(pybind11::module_& m);   // bind_compressed.cc: compressed all-reduce
}  // namespace nrt
