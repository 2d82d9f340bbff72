// Communicator over an MPI communicator (duplicated, so neptune_rt traffic never matches user messages).
// The only header that refers to MPI types is mpi_communicator.cc; this one keeps MPI_Comm opaque.
#pragma once

#include <memory>

#include "comm/communicator.h"

namespace nrt {

// `mpiComm` points to an MPI_Comm (e.g. from mpi4py's PyMPIComm_Get). The communicator is duplicated.
std::unique_ptr<Communicator> makeMpiCommunicator(const void* mpiComm);

// MPI facts for `neptune-rt info` and init checks.
struct MpiInfo {
  std::string libraryVersion;
  int versionMajor = 0, versionMinor = 0;
  int threadLevel = -1;  // MPI_THREAD_* of the running library; -1 if MPI is not initialized
  bool initialized = false;
  bool threadMultiple = false;
};
MpiInfo queryMpiInfo();
// Calls MPI_Abort on COMM_WORLD: only for the exit path after a fatal communication error, so that no
// rank hangs in MPI_Finalize on a peer that will never answer.
void abortMpi(int code);

}  // namespace nrt
