// Communicator over an MPI communicator (duplicated, so neptune_rt traffic never matches user messages).
// The only header that refers to MPI types is mpi_communicator.cc; this one keeps MPI_Comm opaque.
// Set-up and tear-down never block without a deadline (tests/test_failures.py).
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"

namespace nrt {

// `mpiComm` points to an MPI_Comm (e.g. from mpi4py's PyMPIComm_Get). The communicator is duplicated with
// MPI_Comm_idup and the ranks on each node are found with MPI_Iallgather, each polled until
// `timeoutSeconds` (<= 0: no limit); past it a TimeoutError names the call, the communicator size, the
// set-up step and the likely cause, with `caller` ("init()") as the user's entry point. The requests of a
// timed-out set-up are left pending on the parent communicator (MPI cannot cancel them), so that process
// must not use the parent for collectives again: it may only exit (docs/failures.md).
std::unique_ptr<Communicator> makeMpiCommunicator(const void* mpiComm, double timeoutSeconds,
                                                  const std::string& caller);

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
