// Communicator over MPI point-to-point (MPI_Isend/Irecv/Test/Cancel). The only file that includes <mpi.h>.
#include "comm/mpi_communicator.h"

#include <mpi.h>

#include <climits>
#include <cstring>

#include "common/error.h"

namespace nrt {

namespace {

static_assert(sizeof(MPI_Request) <= sizeof(Request::storage), "MPI_Request does not fit a Request slot");

void checkMpi(int rc, const char* call, int rank) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw std::runtime_error(concat("neptune_rt: rank ", rank, ": ", call, " failed: ", std::string(msg, len)));
}

MPI_Request& native(Request& r) { return *reinterpret_cast<MPI_Request*>(r.storage.data()); }

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm parent) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    NRT_CHECK(initialized, "neptune_rt: MPI is not initialized (import mpi4py.MPI first)");
    checkMpi(MPI_Comm_dup(parent, &comm_), "MPI_Comm_dup", -1);
    // Errors come back as return codes so they become exceptions with context, not aborts.
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Request isend(const void* ptr, size_t bytes, int peer, int tag) override {
    Request r = makeRequest(peer, bytes, false);
    if (bytes == 0) return r;
    checkCount(bytes, peer);
    checkMpi(MPI_Isend(ptr, static_cast<int>(bytes), MPI_BYTE, peer, tag, comm_, &native(r)), "MPI_Isend", rank_);
    r.active = true;
    return r;
  }

  Request irecv(void* ptr, size_t bytes, int peer, int tag) override {
    Request r = makeRequest(peer, bytes, true);
    if (bytes == 0) return r;
    checkCount(bytes, peer);
    checkMpi(MPI_Irecv(ptr, static_cast<int>(bytes), MPI_BYTE, peer, tag, comm_, &native(r)), "MPI_Irecv", rank_);
    r.active = true;
    return r;
  }

  bool test(Request& r, size_t* received) override {
    if (!r.active) {
      if (received) *received = 0;
      return true;
    }
    int done = 0;
    MPI_Status status;
    checkMpi(MPI_Test(&native(r), &done, &status), "MPI_Test", rank_);
    if (!done) return false;
    r.active = false;
    if (received) {
      int count = 0;
      MPI_Get_count(&status, MPI_BYTE, &count);
      *received = static_cast<size_t>(count);
    }
    return true;
  }

  void cancel(Request& r) override {
    if (!r.active) return;
    MPI_Cancel(&native(r));
    MPI_Request_free(&native(r));
    r.active = false;
  }

  std::string describe() const override {
    char host[MPI_MAX_PROCESSOR_NAME];
    int len = 0;
    MPI_Get_processor_name(host, &len);
    return concat("MPI rank ", rank_, "/", size_, " on ", std::string(host, len));
  }

 private:
  static Request makeRequest(int peer, size_t bytes, bool isRecv) {
    Request r;
    r.peer = peer;
    r.bytes = bytes;
    r.isRecv = isRecv;
    return r;
  }
  void checkCount(size_t bytes, int peer) const {
    NRT_CHECK(bytes <= static_cast<size_t>(INT_MAX), "neptune_rt: rank ", rank_, ": message of ", bytes,
              " bytes to/from rank ", peer, " exceeds MPI's int count; lower the segment size");
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> makeMpiCommunicator(const void* mpiComm) {
  NRT_CHECK_ARG(mpiComm != nullptr, "neptune_rt: null MPI communicator");
  MPI_Comm comm = *static_cast<const MPI_Comm*>(mpiComm);
  NRT_CHECK_ARG(comm != MPI_COMM_NULL, "neptune_rt: MPI_COMM_NULL given as communicator");
  return std::make_unique<MpiCommunicator>(comm);
}

MpiInfo queryMpiInfo() {
  MpiInfo info;
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(version, &len);
  info.libraryVersion.assign(version, static_cast<size_t>(len));
  while (!info.libraryVersion.empty() && (info.libraryVersion.back() == '\n' || info.libraryVersion.back() == '\0'))
    info.libraryVersion.pop_back();
  MPI_Get_version(&info.versionMajor, &info.versionMinor);
  int initialized = 0;
  MPI_Initialized(&initialized);
  info.initialized = initialized != 0;
  if (info.initialized) {
    MPI_Query_thread(&info.threadLevel);
    info.threadMultiple = info.threadLevel >= MPI_THREAD_MULTIPLE;
  }
  return info;
}

void abortMpi(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

}  // namespace nrt
