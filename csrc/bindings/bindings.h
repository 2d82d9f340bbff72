// Registration functions of the pybind11 module neptune_rt._C, one per concept (bind_*.cc).
// Bindings hold no logic: argument checks, GIL release, docstrings.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>

#include "comm/communicator.h"

namespace nrt {
// mpi4py_bridge.cc: wraps any mpi4py communicator (COMM_WORLD, a Split sub-communicator).
std::unique_ptr<Communicator> communicatorFromMpi4py(pybind11::handle comm);
void registerCollectives(pybind11::module_& m);  // bind_collectives.cc: direct collectives + info
void registerEngine(pybind11::module_& m);       // bind_engine.cc: background engine and handles
void registerCodecs(pybind11::module_& m);       // bind_codecs.cc: quantization codecs (CPU)
void registerCompressed(pybind11::module_& m);   // bind_compressed.cc: compressed all-reduce
}  // namespace nrt
