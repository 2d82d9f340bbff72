// Entry point of the private extension neptune_rt._C; each concept registers its own bindings.
#include "bindings/bindings.h"
#include "common/error.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "neptune_rt private extension: MPI collectives, background engine, gradient codecs";
  pybind11::register_exception<nrt::TimeoutError>(m, "CollectiveTimeout", PyExc_TimeoutError);
  nrt::registerCollectives(m);
  nrt::registerHandles(m);
  nrt::registerEngine(m);
  nrt::registerCodecs(m);
  nrt::registerCompressed(m);
}
