// Compressed all-reduce (see compressed_allreduce.h): the two-phase and requantizing-ring algorithms share
// the segment layout and the all-gather of reduced payloads with its final decode (FusedRingGather, which
// sends each reduced segment on as soon as it is encoded); they differ in how the reduced chunks are
// produced. Exercised by tests/test_compressed_allreduce.py.
#include "collectives/compressed_allreduce.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "collectives/ring.h"
#include "common/error.h"

namespace nrt {

namespace {

// Where every segment lives: chunk c covers elements [chunkOffset[c], +chunkCount[c]); its segments are
// segElems long (the last shorter) and their payloads sit back to back in a per-chunk payload area.
struct Layout {
  std::vector<size_t> chunkOffset, chunkCount, chunkPayload;
  size_t segElems = 1;
  size_t fullSegPayload = 0;
  Codec codec = Codec::kNone;
  uint32_t block = 0;

  size_t segs(int c) const { return (chunkCount[c] + segElems - 1) / segElems; }
  size_t segOffset(int c, size_t k) const { return chunkOffset[c] + k * segElems; }  // elements
  size_t segLen(int c, size_t k) const { return std::min(segElems, chunkCount[c] - k * segElems); }
  size_t segPayloadOffset(size_t k) const { return k * fullSegPayload; }  // bytes, within the chunk's area
  size_t segPayload(int c, size_t k) const { return payloadBytes(codec, segLen(c, k), block); }
};

Layout makeLayout(const CompressedAllreduceOptions& o, int n) {
  Layout L;
  L.codec = o.codec;
  L.block = o.blockSize;
  splitEvenly(o.count, n, L.chunkOffset, L.chunkCount);
  const size_t unit = codecSummable(o.codec) ? 1 : o.blockSize;  // segments hold whole blocks
  constexpr size_t kProbe = size_t{1} << 20;  // values per payload byte, measured on a large payload
  const size_t minElems = o.minSegmentPayload * kProbe / payloadBytes(o.codec, kProbe, o.blockSize);
  const size_t wanted = std::max(o.segmentBytes / sizeof(float), minElems);
  L.segElems = std::max(unit, wanted / unit * unit);
  L.fullSegPayload = payloadBytes(o.codec, L.segElems, o.blockSize);
  L.chunkPayload.resize(n);
  for (int c = 0; c < n; ++c) {
    const size_t s = L.segs(c);
    L.chunkPayload[c] = s == 0 ? 0 : (s - 1) * L.fullSegPayload + L.segPayload(c, s - 1);
  }
  return L;
}

// A payload area of one call: a slot of the caller's PayloadScratch, or the call's own (payload sizes are
// multiples of 4, so every payload in it stays 4-byte aligned).
class Bytes {
 public:
  Bytes(PayloadScratch* shared, int slot, size_t n) : base_(shared ? shared : &own_) {
    data_ = base_->reserve(slot, n);
  }
  char* at(size_t offset) { return data_ + offset; }
  // The call's own area, for PostedBuffers (a shared PayloadScratch belongs to the engine, which keeps it).
  PayloadScratch& own() { return own_; }

 private:
  PayloadScratch own_;
  PayloadScratch* base_;
  char* data_ = nullptr;
};

// On an exception (timeout, bad payload) the communicator is poisoned, so every request still posted is
// abandoned, and the call's payload areas are never freed (PostedBuffers); the requests' handles are kept
// here only to be waited on.
struct InFlight {
  std::vector<Request> reqs;
};

void checkReceived(const Communicator& comm, size_t got, size_t expected, int peer, const std::string& name) {
  NRT_CHECK(got == expected, "neptune_rt: compressed all-reduce '", name, "': rank ", comm.rank(), " received ",
            got, " bytes from rank ", peer, ", expected ", expected,
            " (do all ranks use the same codec, block size, count and segment size?)");
}

void waitExact(Communicator& comm, Request& req, const Deadline& deadline, const std::string& name) {
  size_t got = 0;
  const size_t expected = req.bytes;
  const int peer = req.peer;
  comm.wait(req, deadline, name.c_str(), &got);
  checkReceived(comm, got, expected, peer, name);
}

EncodeParams encodeParams(const CompressedAllreduceOptions& o, uint64_t stream) {
  EncodeParams p;
  p.codec = o.codec;
  p.blockSize = o.blockSize;
  p.rounding = o.rounding;
  p.seed = o.seed;
  p.step = o.step;
  p.rank = stream;
  return p;
}

thread_local CodecSeconds tlsCodecSeconds;

// Adds the seconds of its scope to `acc`.
class CodecTimer {
 public:
  explicit CodecTimer(double& acc) : acc_(acc), t0_(Clock::now()) {}
  ~CodecTimer() { acc_ += std::chrono::duration<double>(Clock::now() - t0_).count(); }

 private:
  double& acc_;
  Clock::time_point t0_;
};

template <typename... Args>
void timedDecode(Args&&... args) {
  CodecTimer t(tlsCodecSeconds.decode);
  ::nrt::decode(std::forward<Args>(args)...);
}

template <typename... Args>
void timedDecodeAdd(Args&&... args) {
  CodecTimer t(tlsCodecSeconds.decode);
  ::nrt::decodeAdd(std::forward<Args>(args)...);
}

// This rank's error feedback for the values at element `off` (null without error feedback).
float* residualAt(const CompressedAllreduceOptions& o, size_t off) { return o.residual ? o.residual + off : nullptr; }

size_t encodeSegment(EncodeParams p, const Layout& L, int c, size_t k, const float* src, float* residual,
                     char* out) {
  p.indexBase = L.segOffset(c, k);
  CodecTimer t(tlsCodecSeconds.encode);
  return encode(p, src, L.segLen(c, k), residual, out, L.segPayload(c, k));
}

// The all-gather of reduced payloads: slot p (rank p's contribution, at slotOffset[p] in the gather buffer)
// holds chunk (p + shift) mod n, the chunk rank p finished reducing.
struct GatherPlan {
  std::vector<int> chunkOfSlot;
  std::vector<size_t> slotOffset;  // n + 1 entries, the last one is the total
};

GatherPlan makeGatherPlan(const Layout& L, int n, int shift) {
  GatherPlan g;
  g.slotOffset.assign(n + 1, 0);
  for (int p = 0; p < n; ++p) {
    g.chunkOfSlot.push_back((p + shift) % n);
    g.slotOffset[p + 1] = g.slotOffset[p] + L.chunkPayload[g.chunkOfSlot[p]];
  }
  return g;
}

// The all-gather of reduced payloads along the ring, fused with the phase that produces them: slot p holds
// the chunk rank p finished. Every receive is posted up front (each into its own slot area, tag + 1), our own
// slot's segments leave the moment they are encoded (not after the whole first phase has drained), and our
// own slot is decoded while the others' segments are still on the wire, one segment per poll that finds
// nothing arrived. Every rank decodes the same bytes, so all end bitwise equal.
class FusedRingGather {
 public:
  FusedRingGather(Communicator& comm, const CompressedAllreduceOptions& o, const Layout& L, const GatherPlan& plan,
                  Bytes& gather, InFlight& inflight)
      : comm_(comm), o_(o), L_(L), plan_(plan), gather_(gather), inflight_(inflight), n_(comm.size()),
        r_(comm.rank()) {
    // All-gather step s receives slot r-1-s from the left and (but for the last step) forwards it.
    for (int s = 0; s + 1 < n_; ++s) {
      const int p = mod(r_ - 1 - s);
      for (size_t k = 0; k < L_.segs(slotChunk(p)); ++k) {
        units_.push_back({s, p, k, inflight_.reqs.size()});
        inflight_.reqs.push_back(comm_.irecv(payload(p, k), L_.segPayload(slotChunk(p), k), left(), tag()));
      }
    }
  }

  // Segment k of our own slot has just been encoded: it starts along the ring at once.
  size_t sendOwn(size_t k, size_t bytes) {
    if (n_ == 1) return 0;
    inflight_.reqs.push_back(comm_.isend(payload(r_, k), bytes, right(), tag()));
    return bytes;
  }

  // Receives, forwards and decodes every other slot, and decodes our own; returns the bytes forwarded.
  size_t run(const Deadline& deadline) {
    size_t forwarded = 0;
    for (const Unit& u : units_) {
      Request& req = inflight_.reqs[u.request];  // not used after the push_back below, which may move it
      const size_t expected = req.bytes;
      size_t got = 0;
      bool arrived = false;
      while (ownDecoded_ < L_.segs(slotChunk(r_)) && !(arrived = comm_.test(req, &got))) decode(r_, ownDecoded_++);
      if (!arrived) comm_.wait(req, deadline, o_.name.c_str(), &got);
      checkReceived(comm_, got, expected, left(), o_.name);
      if (u.step + 2 < n_) {  // the last step's slot is the right neighbour's own: it has it already
        inflight_.reqs.push_back(comm_.isend(payload(u.slot, u.seg), got, right(), tag()));
        forwarded += got;
      }
      decode(u.slot, u.seg);
    }
    while (ownDecoded_ < L_.segs(slotChunk(r_))) decode(r_, ownDecoded_++);
    return forwarded;
  }

 private:
  struct Unit {
    int step;
    int slot;
    size_t seg;
    size_t request;  // index into inflight.reqs
  };

  int mod(int x) const { return ((x % n_) + n_) % n_; }
  int left() const { return mod(r_ - 1); }
  int right() const { return mod(r_ + 1); }
  int tag() const { return o_.tag + 1; }
  int slotChunk(int p) const { return plan_.chunkOfSlot[p]; }
  char* payload(int p, size_t k) { return gather_.at(plan_.slotOffset[p] + L_.segPayloadOffset(k)); }
  void decode(int p, size_t k) {
    const int c = slotChunk(p);
    timedDecode(payload(p, k), L_.segPayload(c, k), o_.buffer + L_.segOffset(c, k), L_.segLen(c, k));
  }

  Communicator& comm_;
  const CompressedAllreduceOptions& o_;
  const Layout& L_;
  const GatherPlan& plan_;
  Bytes& gather_;
  InFlight& inflight_;
  const int n_, r_;
  std::vector<Unit> units_;
  size_t ownDecoded_ = 0;
};

CompressedAllreduceResult twoPhase(Communicator& comm, const CompressedAllreduceOptions& o) {
  const int n = comm.size(), r = comm.rank();
  const Layout L = makeLayout(o, n);
  const Deadline deadline = Deadline::after(o.timeoutSeconds);
  CompressedAllreduceResult result;

  // Phase 1, an all-to-all as n-1 pairwise steps: in step d rank r sends its encoded chunk r+d to rank r+d
  // and receives rank r-d's encoding of chunk r. One outgoing flow at a time: sending to every peer at once
  // makes n-1 senders converge on each receiver (incast), which overflows switch queues on real Ethernet
  // and halved throughput on the emulated 1 Gbit network. Steps are paced by our own sends only: receives of
  // every step are posted up front, each into its own area, and decoded in step order as they arrive, so a
  // late sender delays only what it sends, not our next step. Segments pipeline within a step.
  std::vector<size_t> chunkArea(n + 1, 0);
  for (int c = 0; c < n; ++c) chunkArea[c + 1] = chunkArea[c] + L.chunkPayload[c];
  const size_t mySegs = L.segs(r);
  const size_t stepArea = L.chunkPayload[r];
  Bytes mine(o.scratch, 0, chunkArea[n]);
  Bytes incoming(o.scratch, 1, stepArea * static_cast<size_t>(std::max(n - 1, 1)));
  const GatherPlan plan = makeGatherPlan(L, n, /*shift=*/0);
  Bytes gather(o.scratch, 2, plan.slotOffset[n]);
  const EncodeParams first = encodeParams(o, static_cast<uint64_t>(r));
  const EncodeParams second = encodeParams(o, static_cast<uint64_t>(n) + r);
  // Our own contribution goes through the codec too (with its error feedback), like everybody else's:
  // encode it and decode it back into place before the first decode-add into our chunk.
  const auto quantizeOwnChunk = [&] {
    for (size_t k = 0; k < mySegs; ++k) {
      const size_t off = L.segOffset(r, k);
      char* out = mine.at(chunkArea[r] + L.segPayloadOffset(k));
      const size_t bytes = encodeSegment(first, L, r, k, o.buffer + off, residualAt(o, off), out);
      timedDecode(out, bytes, o.buffer + off, L.segLen(r, k));
    }
  };
  PostedBuffers posted(comm, o.name);  // after the buffers requests point into: on an error they are kept
  posted.keep(mine.own());
  posted.keep(incoming.own());
  posted.keep(gather.own());
  InFlight inflight;
  // Receive i = (d - 1) * mySegs + k is segment k of step d; requests 0 .. receives-1 are phase one's receives.
  const size_t receives = static_cast<size_t>(n - 1) * mySegs;
  for (int d = 1; d < n; ++d)
    for (size_t k = 0; k < mySegs; ++k)
      inflight.reqs.push_back(comm.irecv(incoming.at((d - 1) * stepArea + L.segPayloadOffset(k)), L.segPayload(r, k),
                                         (r - d + n) % n, o.tag));
  FusedRingGather allgather(comm, o, L, plan, gather, inflight);  // phase 2's receives, after phase 1's
  // A fully reduced segment of our chunk is quantized again at once (second error feedback) into our
  // all-gather slot and starts along the ring, so that work overlaps the last step's transfers.
  const auto encodeReducedSegment = [&](size_t k) {
    float* res2 = o.chunkResidual ? o.chunkResidual + k * L.segElems : nullptr;
    const size_t bytes = encodeSegment(second, L, r, k, o.buffer + L.segOffset(r, k), res2,
                                       gather.at(plan.slotOffset[r] + L.segPayloadOffset(k)));
    result.wireBytes += allgather.sendOwn(k, bytes);
  };
  if (n == 1) {
    quantizeOwnChunk();
    for (size_t k = 0; k < mySegs; ++k) encodeReducedSegment(k);
  }
  size_t nextReceive = 0;  // decoded strictly in order: the sum's order is fixed (own, r-1, r-2, ...)
  const auto addReceived = [&](size_t i) {
    const int d = 1 + static_cast<int>(i / mySegs);
    const size_t k = i % mySegs;
    timedDecodeAdd(incoming.at((d - 1) * stepArea + L.segPayloadOffset(k)), L.segPayload(r, k),
              o.buffer + L.segOffset(r, k), L.segLen(r, k));
    if (d == n - 1) encodeReducedSegment(k);
  };
  const auto addArrived = [&] {  // true when at least one receive was handled
    bool any = false;
    size_t got = 0;
    while (nextReceive < receives && comm.test(inflight.reqs[nextReceive], &got)) {
      checkReceived(comm, got, L.segPayload(r, nextReceive % mySegs),
                    (r - 1 - static_cast<int>(nextReceive / mySegs) + n) % n, o.name);
      addReceived(nextReceive++);
      any = true;
    }
    return any;
  };
  for (int d = 1; d < n; ++d) {
    const int to = (r + d) % n;
    const size_t firstSend = inflight.reqs.size();
    for (size_t k = 0; k < L.segs(to); ++k) {  // encode and send segment by segment: the wire starts early
      const size_t off = L.segOffset(to, k);
      char* out = mine.at(chunkArea[to] + L.segPayloadOffset(k));
      const size_t bytes = encodeSegment(first, L, to, k, o.buffer + off, residualAt(o, off), out);
      inflight.reqs.push_back(comm.isend(out, bytes, to, o.tag));
      result.wireBytes += bytes;
    }
    if (d == 1) quantizeOwnChunk();  // while the first step is on the wire, before any decode-add
    if (d + 1 == n) break;
    // This step's sends leave before the next step's start; meanwhile, add what arrived (which may append
    // all-gather sends: those are not waited for here).
    Backoff backoff;
    const size_t stepSends = inflight.reqs.size();
    for (size_t i = firstSend; i < stepSends; ++i) {
      while (!comm.test(inflight.reqs[i])) {
        if (deadline.expired()) comm.wait(inflight.reqs[i], deadline, o.name.c_str());  // raises the timeout
        if (addArrived()) {
          backoff.reset();
        } else {
          backoff.pause();
        }
      }
    }
  }
  for (; nextReceive < receives; ++nextReceive) {
    waitExact(comm, inflight.reqs[nextReceive], deadline, o.name);
    addReceived(nextReceive);
  }
  // Phase 2: all-gather the encoded sums (our own has been on its way since its last segment was reduced).
  result.wireBytes += allgather.run(deadline);
  comm.waitAll(inflight.reqs, deadline, o.name.c_str());
  return result;
}

CompressedAllreduceResult requantizingRing(Communicator& comm, const CompressedAllreduceOptions& o) {
  const int n = comm.size(), r = comm.rank();
  const int right = (r + 1) % n, left = (r - 1 + n) % n;
  const Layout L = makeLayout(o, n);
  const Deadline deadline = Deadline::after(o.timeoutSeconds);
  const auto mod = [n](int x) { return ((x % n) + n) % n; };
  CompressedAllreduceResult result;
  const EncodeParams params = encodeParams(o, static_cast<uint64_t>(r));

  // Rank p finishes the reduce-scatter holding chunk p+1, so all-gather slot p holds chunk p+1.
  const GatherPlan plan = makeGatherPlan(L, n, /*shift=*/1);
  Bytes gather(o.scratch, 2, plan.slotOffset[n]);

  // Reduce-scatter step s sends chunk r-s and receives chunk r-s-1 (as the dense ring does). Receives are
  // posted for all steps up front (each step has its own area, so nothing is overwritten early).
  std::vector<size_t> stepArea(n, 0);
  for (int s = 0; s + 1 < n; ++s) stepArea[s + 1] = stepArea[s] + L.chunkPayload[mod(r - s - 1)];
  std::vector<size_t> sendArea(n, 0);  // step s sends chunk r-s
  for (int s = 0; s + 1 < n; ++s) sendArea[s + 1] = sendArea[s] + L.chunkPayload[mod(r - s)];
  Bytes incoming(o.scratch, 0, stepArea[n - 1]);
  Bytes outgoing(o.scratch, 1, sendArea[n - 1]);
  PostedBuffers posted(comm, o.name);  // after the buffers requests point into: on an error they are kept
  posted.keep(incoming.own());
  posted.keep(outgoing.own());
  posted.keep(gather.own());
  InFlight inflight;
  std::vector<std::vector<size_t>> recvIndex(n);
  for (int s = 0; s + 1 < n; ++s) {
    const int c = mod(r - s - 1);
    for (size_t k = 0; k < L.segs(c); ++k) {
      recvIndex[s].push_back(inflight.reqs.size());
      inflight.reqs.push_back(
          comm.irecv(incoming.at(stepArea[s] + L.segPayloadOffset(k)), L.segPayload(c, k), left, o.tag));
    }
  }
  FusedRingGather allgather(comm, o, L, plan, gather, inflight);

  if (n == 1) {  // no hops: quantize once with error feedback
    for (size_t k = 0; k < L.segs(0); ++k)
      encodeSegment(params, L, 0, k, o.buffer + L.segOffset(0, k), residualAt(o, L.segOffset(0, k)),
                    gather.at(plan.slotOffset[0] + L.segPayloadOffset(k)));
  } else {
    for (size_t k = 0; k < L.segs(r); ++k) {  // step 0: our own contribution to chunk r
      char* out = outgoing.at(sendArea[0] + L.segPayloadOffset(k));
      const size_t off = L.segOffset(r, k);
      const size_t bytes = encodeSegment(params, L, r, k, o.buffer + off, residualAt(o, off), out);
      inflight.reqs.push_back(comm.isend(out, bytes, right, o.tag));
      result.wireBytes += bytes;
    }
  }
  // Each received segment: add it to our own values of that chunk, quantize the partial sum (our residual
  // absorbs the error) and pass it on; the last step's result is our final chunk, into our gather slot,
  // from where it starts the all-gather at once.
  for (int s = 0; s + 1 < n; ++s) {
    const int c = mod(r - s - 1);
    const bool last = s + 2 == n;
    for (size_t k = 0; k < L.segs(c); ++k) {
      waitExact(comm, inflight.reqs[recvIndex[s][k]], deadline, o.name);
      const size_t off = L.segOffset(c, k);
      timedDecodeAdd(incoming.at(stepArea[s] + L.segPayloadOffset(k)), L.segPayload(c, k), o.buffer + off,
                L.segLen(c, k));
      char* out = last ? gather.at(plan.slotOffset[r] + L.segPayloadOffset(k))
                       : outgoing.at(sendArea[s + 1] + L.segPayloadOffset(k));
      const size_t bytes = encodeSegment(params, L, c, k, o.buffer + off, residualAt(o, off), out);
      if (last) {
        result.wireBytes += allgather.sendOwn(k, bytes);
      } else {
        inflight.reqs.push_back(comm.isend(out, bytes, right, o.tag));
        result.wireBytes += bytes;
      }
    }
  }
  result.wireBytes += allgather.run(deadline);
  comm.waitAll(inflight.reqs, deadline, o.name.c_str());
  return result;
}

}  // namespace

char* PayloadScratch::reserve(int slot, size_t bytes) {
  Area& a = areas_[slot];
  const size_t words = (bytes + 3) / 4;
  if (words > a.capacityWords) {
    a.words.reset();  // release first: the old and the new area need not both exist
    a.words.reset(new uint32_t[words]);  // default-initialized: no zero fill, pages touched when written
    a.capacityWords = words;
  }
  return reinterpret_cast<char*>(a.words.get());
}

const CodecSeconds& threadCodecSeconds() { return tlsCodecSeconds; }

const char* compressedAlgorithmName(CompressedAlgorithm a) {
  switch (a) {
    case CompressedAlgorithm::kTwoPhase: return "two_phase";
    case CompressedAlgorithm::kRequantizingRing: return "ring";
    case CompressedAlgorithm::kAuto: return "auto";
  }
  return "?";
}

CompressedAlgorithm chooseCompressedAlgorithm(int worldSize) {
  return worldSize <= kRingMaxRanks ? CompressedAlgorithm::kRequantizingRing : CompressedAlgorithm::kTwoPhase;
}

CompressedAlgorithm compressedAlgorithmFromName(const std::string& name) {
  if (name == "two_phase") return CompressedAlgorithm::kTwoPhase;
  if (name == "ring") return CompressedAlgorithm::kRequantizingRing;
  if (name == "auto") return CompressedAlgorithm::kAuto;
  throw std::invalid_argument("neptune_rt: unknown compressed all-reduce algorithm '" + name +
                              "' (two_phase, ring, auto)");
}

ChunkRange ownedChunk(size_t count, int worldSize, int rank) {
  std::vector<size_t> off, len;
  splitEvenly(count, worldSize, off, len);
  return {off.at(rank), len.at(rank)};
}

CompressedAllreduceResult compressedAllreduce(Communicator& comm, const CompressedAllreduceOptions& options) {
  CompressedAllreduceOptions o = options;
  if (o.algorithm == CompressedAlgorithm::kAuto) o.algorithm = chooseCompressedAlgorithm(comm.size());
  NRT_CHECK_ARG(o.buffer != nullptr || o.count == 0, "neptune_rt: compressed all-reduce '", o.name,
                "' got a null buffer");
  checkBlockSize(o.codec, o.blockSize);
  if (o.algorithm == CompressedAlgorithm::kTwoPhase && o.chunkResidual != nullptr) {
    const size_t need = ownedChunk(o.count, comm.size(), comm.rank()).count;
    NRT_CHECK_ARG(o.chunkResidualCount == need, "neptune_rt: compressed all-reduce '", o.name, "': rank ",
                  comm.rank(), " needs a chunk residual of ", need, " floats (ownedChunk), got ",
                  o.chunkResidualCount);
  }
  if (o.count == 0) return {};
  return o.algorithm == CompressedAlgorithm::kTwoPhase ? twoPhase(comm, o) : requantizingRing(comm, o);
}

}  // namespace nrt
