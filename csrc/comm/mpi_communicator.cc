// Communicator over MPI point-to-point (MPI_Isend/Irecv/Test/Cancel), with a set-up whose collective
// calls (MPI_Comm_idup, MPI_Iallgather) are polled against a deadline. The only file that includes <mpi.h>.
#include "comm/mpi_communicator.h"

#include <mpi.h>

#include <climits>
#include <cstring>
#include <vector>

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

const char* threadLevelName(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    default: return "MPI_THREAD_MULTIPLE";
  }
}

// One blocking step of set-up, as a non-blocking call polled until the deadline.
struct SetupStep {
  const char* call;  // "MPI_Comm_idup"
  int index;         // step `index` of kSetupSteps
  const char* doing;  // "duplicating the communicator"
};
constexpr int kSetupSteps = 2;

void waitSetup(MPI_Request* req, const Deadline& deadline, double timeoutSeconds, const SetupStep& step,
               const std::string& caller, int rank, int size) {
  Backoff backoff(kLatencyWait);
  while (true) {
    int done = 0;
    checkMpi(MPI_Test(req, &done, MPI_STATUS_IGNORE), step.call, rank);
    if (done) return;
    if (deadline.expired()) break;
    backoff.pause();
  }
  // MPI cannot cancel a non-blocking collective: the request stays pending (and its buffers allocated).
  throw TimeoutError(concat(
      "neptune_rt: rank ", rank, ": ", caller, " timed out after ", timeoutSeconds, " s in ", step.call,
      " on a communicator of ", size, " ranks (set-up step ", step.index, " of ", kSetupSteps, ": ", step.doing,
      "). Likely cause: ranks out of step: one rank called ", caller, " while others did not (a peer has "
      "already shut down or exited, is stuck before ", caller, ", or called init()/shutdown() a different "
      "number of times). Call init() and shutdown() the same number of times on every rank, or raise "
      "NEPTUNE_RT_TIMEOUT_SECONDS if a rank is only slow to start. This process cannot use MPI collectives "
      "again: let it exit (the exit handler aborts the job)."));
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm parent, double timeoutSeconds, const std::string& caller) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    NRT_CHECK(initialized, "neptune_rt: MPI is not initialized (import mpi4py.MPI first)");
    int parentRank = 0, parentSize = 1;
    MPI_Comm_rank(parent, &parentRank);
    MPI_Comm_size(parent, &parentSize);
    const Deadline deadline = Deadline::after(timeoutSeconds);
    // Heap state that a pending request may still write after a timeout: released only on success.
    auto dup = std::make_unique<MPI_Comm>(MPI_COMM_NULL);
    auto req = std::make_unique<MPI_Request>(MPI_REQUEST_NULL);
    checkMpi(MPI_Comm_idup(parent, dup.get(), req.get()), "MPI_Comm_idup", parentRank);
    try {
      waitSetup(req.get(), deadline, timeoutSeconds, {"MPI_Comm_idup", 1, "duplicating the communicator"}, caller,
                parentRank, parentSize);
    } catch (...) {
      (void)dup.release();  // leaked on purpose: MPI writes the new communicator here if the peers ever come
      (void)req.release();
      throw;
    }
    comm_ = *dup;
    // Errors come back as return codes so they become exceptions with context, not aborts.
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    findLocalRanks(deadline, timeoutSeconds, caller);
  }

  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    // A poisoned communicator keeps its abandoned requests (and so itself) for good. A healthy one is
    // released; MPI_Comm_free waits for no peer in Open MPI (tests/test_failures.py checks it returns).
    if (!finalized && !poisoned() && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int localRank() const override { return localRank_; }
  int localSize() const override { return localSize_; }

  std::string threadSupportProblem() const override {
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    if (level >= MPI_THREAD_MULTIPLE) return {};
    return concat("the neptune_rt engine needs MPI_THREAD_MULTIPLE (its thread calls MPI while your code runs), "
                  "but MPI was initialized with ", threadLevelName(level), ". Fix: initialize MPI with "
                  "MPI_THREAD_MULTIPLE: with mpi4py, leave mpi4py.rc.thread_level at its default 'multiple' "
                  "(set before importing mpi4py.MPI); in C/C++, MPI_Init_thread(..., MPI_THREAD_MULTIPLE, "
                  "&provided); and use an MPI library built with thread support");
  }

  std::string describe() const override {
    char host[MPI_MAX_PROCESSOR_NAME];
    int len = 0;
    MPI_Get_processor_name(host, &len);
    return concat("MPI rank ", rank_, "/", size_, " on ", std::string(host, len));
  }

 protected:
  Request postSend(const void* ptr, size_t bytes, int peer, int tag) override {
    Request r = makeRequest(peer, bytes, false);
    if (bytes == 0) return r;
    checkCount(bytes, peer);
    fail(MPI_Isend(ptr, static_cast<int>(bytes), MPI_BYTE, peer, tag, comm_, &native(r)), "MPI_Isend");
    r.active = true;
    return r;
  }

  Request postRecv(void* ptr, size_t bytes, int peer, int tag) override {
    Request r = makeRequest(peer, bytes, true);
    if (bytes == 0) return r;
    checkCount(bytes, peer);
    fail(MPI_Irecv(ptr, static_cast<int>(bytes), MPI_BYTE, peer, tag, comm_, &native(r)), "MPI_Irecv");
    r.active = true;
    return r;
  }

  bool testPosted(Request& r, size_t* received) override {
    int done = 0;
    MPI_Status status;
    fail(MPI_Test(&native(r), &done, &status), "MPI_Test");
    if (!done) return false;
    r.active = false;
    if (received) {
      int count = 0;
      MPI_Get_count(&status, MPI_BYTE, &count);
      *received = static_cast<size_t>(count);
    }
    return true;
  }

  bool nativeAllreduce(DataType dtype, ReduceOp) const override { return mpiType(dtype) != MPI_DATATYPE_NULL; }

  Request postAllreduce(void* buffer, size_t count, DataType dtype, ReduceOp op) override {
    Request r = makeRequest(-1, count * dtypeSize(dtype), false);  // not a receive: abandon() never cancels it
    if (count == 0) return r;
    NRT_CHECK(count <= static_cast<size_t>(INT_MAX), "neptune_rt: rank ", rank_, ": all-reduce of ", count,
              " elements exceeds MPI's int count");
    const MPI_Op mpiOp = op == ReduceOp::kMin ? MPI_MIN : op == ReduceOp::kMax ? MPI_MAX : MPI_SUM;
    fail(MPI_Iallreduce(MPI_IN_PLACE, buffer, static_cast<int>(count), mpiType(dtype), mpiOp, comm_, &native(r)),
         "MPI_Iallreduce");
    r.active = true;
    return r;
  }

  void abandon(Request& r) override {
    // A receive not yet matched is cancelled, so a late message is not delivered into its buffer; a send
    // (cancelling sends is deprecated and unreliable) or a matched receive may still complete. Either way
    // the handle is never freed and the buffer stays with whoever keeps it alive (PostedBuffers).
    if (r.isRecv) MPI_Cancel(&native(r));
    abandoned_.push_back(native(r));
    r.active = false;
  }

 private:
  // A failed MPI call poisons the communicator with its message, then throws it.
  void fail(int rc, const char* call) {
    if (rc == MPI_SUCCESS) return;
    try {
      checkMpi(rc, call, rank_);
    } catch (const std::exception& e) {
      poison(e.what(), /*timedOut=*/false);
      throw;
    }
  }

  // MPI's own type for a dtype whose MPI sum matches ours; MPI_DATATYPE_NULL otherwise (our ring then): the 16-bit
  // floats have no standard MPI type, and Open MPI's 8-bit integer sums did not wrap on overflow as ours do
  // (tests/test_engine.py, api at 4 and 5 ranks, int8 sums of +-40 per rank).
  static MPI_Datatype mpiType(DataType dtype) {
    switch (dtype) {
      case DataType::kFloat32: return MPI_FLOAT;
      case DataType::kFloat64: return MPI_DOUBLE;
      case DataType::kInt32: return MPI_INT32_T;
      case DataType::kInt64: return MPI_INT64_T;
      default: return MPI_DATATYPE_NULL;
    }
  }

  // Local rank and size: the ranks whose processor name equals ours (what MPI_COMM_TYPE_SHARED gives on
  // ordinary clusters), from one MPI_Iallgather with a deadline instead of a blocking MPI_Comm_split_type.
  void findLocalRanks(const Deadline& deadline, double timeoutSeconds, const std::string& caller) {
    auto names = std::make_unique<std::vector<char>>(static_cast<size_t>(size_) * MPI_MAX_PROCESSOR_NAME, '\0');
    auto mine = std::make_unique<std::vector<char>>(MPI_MAX_PROCESSOR_NAME, '\0');
    int len = 0;
    MPI_Get_processor_name(mine->data(), &len);
    auto req = std::make_unique<MPI_Request>(MPI_REQUEST_NULL);
    checkMpi(MPI_Iallgather(mine->data(), MPI_MAX_PROCESSOR_NAME, MPI_CHAR, names->data(), MPI_MAX_PROCESSOR_NAME,
                            MPI_CHAR, comm_, req.get()),
             "MPI_Iallgather", rank_);
    try {
      waitSetup(req.get(), deadline, timeoutSeconds, {"MPI_Iallgather", 2, "finding the ranks on each node"},
                caller, rank_, size_);
    } catch (const std::exception& e) {
      poison(e.what(), /*timedOut=*/true);  // the communicator is never freed, the buffers never released
      (void)names.release();
      (void)mine.release();
      (void)req.release();
      throw;
    }
    localSize_ = 0;
    for (int p = 0; p < size_; ++p) {
      if (std::strncmp(names->data() + static_cast<size_t>(p) * MPI_MAX_PROCESSOR_NAME, mine->data(),
                       MPI_MAX_PROCESSOR_NAME) != 0)
        continue;
      if (p < rank_) ++localRank_;
      ++localSize_;
    }
  }

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
  int localRank_ = 0;
  int localSize_ = 1;
  std::vector<MPI_Request> abandoned_;  // never freed: MPI may still own them
};

}  // namespace

std::unique_ptr<Communicator> makeMpiCommunicator(const void* mpiComm, double timeoutSeconds,
                                                  const std::string& caller) {
  NRT_CHECK_ARG(mpiComm != nullptr, "neptune_rt: null MPI communicator");
  MPI_Comm comm = *static_cast<const MPI_Comm*>(mpiComm);
  NRT_CHECK_ARG(comm != MPI_COMM_NULL, "neptune_rt: MPI_COMM_NULL given as communicator");
  return std::make_unique<MpiCommunicator>(comm, timeoutSeconds, caller);
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
