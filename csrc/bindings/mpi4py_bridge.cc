// The one place that talks to mpi4py's C API: an mpi4py communicator object -> our Communicator.
// (mpi4py's API pointers are per translation unit, so import and use must live in the same file.)
#include <mpi4py/mpi4py.h>

#include "bindings/bindings.h"
#include "comm/mpi_communicator.h"

namespace nrt {

std::unique_ptr<Communicator> communicatorFromMpi4py(pybind11::handle comm, double timeoutSeconds,
                                                     const std::string& caller) {
  static const bool imported = [] {
    if (import_mpi4py() < 0) throw pybind11::error_already_set();
    return true;
  }();
  (void)imported;
  if (!PyObject_TypeCheck(comm.ptr(), &PyMPIComm_Type))
    throw pybind11::type_error("neptune_rt: expected an mpi4py communicator (e.g. MPI.COMM_WORLD), got " +
                               std::string(pybind11::str(pybind11::type::of(comm))));
  MPI_Comm* c = PyMPIComm_Get(comm.ptr());
  if (c == nullptr) throw pybind11::error_already_set();
  pybind11::gil_scoped_release release;  // set-up waits for the peers
  return makeMpiCommunicator(c, timeoutSeconds, caller);
}

}  // namespace nrt
