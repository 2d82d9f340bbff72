// Execution of negotiated dense operations (see engine.h): fused all-reduce buckets, eager results,
// allgather and broadcast. Compressed buckets are in engine_compressed.cc.
#include <algorithm>
#include <cstring>

#include "collectives/allreduce.h"
#include "collectives/reduce.h"
#include "common/error.h"
#include "engine/engine.h"
#include "engine/fusion.h"

namespace nrt {

size_t defaultNativeAllreduceBytes(int n, AllreduceAlgorithm algorithm) {
  algorithm = resolveAllreduceAlgorithm(algorithm, kNativeAllreduceMaxBytes, n);
  return algorithm == AllreduceAlgorithm::kHalvingDoubling ? kNativeBeforeHalvingDoublingBytes : kNativeAllreduceMaxBytes;
}

bool useNativeAllreduce(const Communicator& comm, size_t bytes, size_t maxBytes, DataType dtype, ReduceOp op) {
  return comm.size() > 1 && bytes > kRecursiveDoublingMaxBytes && bytes <= maxBytes && comm.nativeAllreduce(dtype, op);
}

// In-place members (output == input) of one bucket that follow each other in memory in bucket order: a user's
// grouped_allreduce_ of views of one flat buffer (the layout of DDP's gradient_as_bucket_view and of our
// DistributedOptimizer's buckets, which submit such a bucket as one flat tensor when dense). The collective then
// runs on them where they are, with no packing or unpacking. Each rank decides for itself: the collective sees
// the members in bucket order either way.
bool adjacentInPlace(const std::vector<const ReadyTensor*>& bucket, const std::vector<Entry*>& locals) {
  if (bucket.size() < 2) return false;
  for (size_t i = 0; i < bucket.size(); ++i) {
    const Entry* e = locals[i];
    if (e == nullptr || e->output != e->input) return false;  // a joined rank's zeros need the fusion buffer
    if (i > 0 && static_cast<const char*>(locals[i - 1]->input) + bucket[i - 1]->meta.bytes() != e->input) return false;
  }
  return true;
}

void Engine::executeEager(const ReadyTensor& t, Entry* local) {
  if (!local) return;  // joined: contributes nothing and needs nothing
  BucketRecord rec;
  rec.start = monotonicSeconds();
  std::memcpy(local->output, t.eagerResult, t.meta.bytes());
  if (t.meta.op == ReduceOp::kAverage) finalizeAverage(local->output, t.meta.numel(), t.meta.dtype, participants_);
  scaleInPlace(local->output, t.meta.numel(), t.meta.dtype, local->postscale);
  local->handle->wireBytes = denseWireBytes(t.meta.bytes(), size_);  // it travelled with the negotiation
  // A bucket of one whose wire time was part of the negotiation (counted there).
  rec.tensors = 1;
  rec.bytesRaw = t.meta.bytes();
  rec.bytesEncoded = rec.bytesRaw;
  rec.bytesWire = local->handle->wireBytes;
  rec.decodeSeconds = monotonicSeconds() - rec.start;
  rec.algorithm = "eager";
  stats_.addBucket(rec, codec_format::kNone);
  finish(*local);
}

void Engine::recordCompressedBucket(const std::vector<const ReadyTensor*>& bucket, const std::vector<Entry*>& locals) {
  // engine_compressed.cc finishes the handles; they complete only once the record is in (a waiter that reads
  // stats() then sees its bucket). The split of the time comes from the compressed all-reduce's codec clock
  // (encode, decode); the rest (packing, wire, scaling) counts as wire time.
  BucketRecord rec;
  rec.start = monotonicSeconds();
  const CodecSeconds before = threadCodecSeconds();
  deferFinish_ = true;
  try {
    executeCompressedBucket(bucket, locals);
  } catch (...) {
    deferFinish_ = false;
    deferredFinish_.clear();  // the engine fails every pending handle
    throw;
  }
  deferFinish_ = false;
  const CodecSeconds& after = threadCodecSeconds();
  rec.encodeSeconds = after.encode - before.encode;
  rec.decodeSeconds = after.decode - before.decode;
  rec.wireSeconds = std::max(0.0, monotonicSeconds() - rec.start - rec.encodeSeconds - rec.decodeSeconds);
  rec.packed = compressedPacked_;
  rec.tensors = static_cast<uint32_t>(bucket.size());
  size_t count = 0;
  for (const ReadyTensor* t : bucket) {
    rec.bytesRaw += t->meta.bytes();
    count += t->meta.numel();
  }
  bool ran = false;
  for (const auto& [e, error] : deferredFinish_) {
    if (!error.empty()) break;  // refused before any data moved: no bucket
    rec.codec = e->handle->codecUsed;
    rec.bytesWire = e->handle->wireBytes;
    rec.bytesEncoded = encodedBytes(codecFromName(rec.codec), count, rec.bytesRaw, config_.codecBlock);
    ran = true;
    break;
  }
  if (ran) stats_.addBucket(rec, static_cast<uint8_t>(codecFromName(rec.codec)));
  std::vector<std::pair<Entry*, std::string>> toFinish;
  toFinish.swap(deferredFinish_);
  for (auto& [e, error] : toFinish) finish(*e, error);
}

void Engine::executeBucket(const std::vector<const ReadyTensor*>& bucket) {
  const TensorMeta& head = bucket.front()->meta;
  std::vector<Entry*> locals;
  locals.reserve(bucket.size());
  for (const ReadyTensor* t : bucket) locals.push_back(localOf(*t));
  if (head.codec != codec_format::kNone) return recordCompressedBucket(bucket, locals);
  BucketRecord rec;
  rec.start = monotonicSeconds();
  const size_t esize = dtypeSize(head.dtype);
  size_t count = 0;
  for (const ReadyTensor* t : bucket) count += t->meta.numel();

  // A lone tensor is reduced in its own output buffer, and so are in-place members that lie back to back in
  // memory; others are packed into the fusion buffer.
  char* buffer;
  const bool direct = (bucket.size() == 1 && locals[0] != nullptr) || adjacentInPlace(bucket, locals);
  if (direct) {
    Entry& e = *locals[0];
    if (e.output != e.input) std::memcpy(e.output, e.input, count * esize);  // a lone tensor only
    buffer = static_cast<char*>(e.output);
    for (size_t i = 0; i < bucket.size(); ++i)
      scaleInPlace(locals[i]->output, bucket[i]->meta.numel(), head.dtype, locals[i]->prescale);
  } else {
    fusion_.resize(count * esize);
    buffer = fusion_.data();
    size_t offset = 0;
    for (size_t i = 0; i < bucket.size(); ++i) {
      const size_t bytes = bucket[i]->meta.bytes();
      if (locals[i]) {
        std::memcpy(buffer + offset, locals[i]->input, bytes);
        scaleInPlace(buffer + offset, bucket[i]->meta.numel(), head.dtype, locals[i]->prescale);
      } else {
        std::memset(buffer + offset, 0, bytes);  // joined rank: contributes zeros
      }
      offset += bytes;
    }
  }
  const double packed = monotonicSeconds();
  AllreduceOptions o;
  static_cast<CollectiveOptions&>(o) = collectiveOptions(bucket.size() == 1 ? head.name : "fused bucket of " + head.name);
  o.buffer = buffer;
  o.count = count;
  o.dtype = head.dtype;
  o.op = head.op;
  o.averageDivisor = participants_;
  if (count * esize > kRecursiveDoublingMaxBytes) o.algorithm = config_.denseAlgorithm;
  const bool native = useNativeAllreduce(*comm_, count * esize, config_.nativeAllreduceBytes, head.dtype, head.op);
  rec.algorithm = native ? "mpi" : allreduceAlgorithmName(resolveAllreduceAlgorithm(o.algorithm, count * esize, size_));
  rec.packed = !direct;
  if (native) {
    // The transport's own all-reduce, polled against the same deadline as our collectives (a timeout poisons the
    // communicator; the buffer, fusion_ or the caller's output, is then never freed).
    Request rq = comm_->iallreduce(buffer, count, head.dtype, head.op);
    comm_->wait(rq, Deadline::after(o.timeoutSeconds), o.name.c_str(), nullptr, kLatencyWait);
    if (head.op == ReduceOp::kAverage) finalizeAverage(buffer, count, head.dtype, participants_);
  } else {
    allreduce(*comm_, o);
  }
  const double reduced = monotonicSeconds();

  const uint64_t wire = denseWireBytes(count * esize, size_);
  size_t offset = 0;
  std::vector<Entry*> done;
  for (size_t i = 0; i < bucket.size(); ++i) {
    const size_t bytes = bucket[i]->meta.bytes();
    if (Entry* e = locals[i]) {
      e->handle->wireBytes = wire;
      if (!direct) std::memcpy(e->output, buffer + offset, bytes);
      scaleInPlace(e->output, bucket[i]->meta.numel(), head.dtype, e->postscale);
      done.push_back(e);
    }
    offset += bytes;
  }
  // Dense: "encode" is packing and prescaling, "decode" unpacking and postscaling.
  rec.tensors = static_cast<uint32_t>(bucket.size());
  rec.bytesRaw = count * esize;
  rec.bytesEncoded = rec.bytesRaw;
  rec.bytesWire = wire;
  rec.encodeSeconds = packed - rec.start;
  rec.wireSeconds = reduced - packed;
  rec.decodeSeconds = monotonicSeconds() - reduced;
  stats_.addBucket(rec, codec_format::kNone);  // before the handles complete: a waiter then sees it counted
  for (Entry* e : done) finish(*e);
}

void Engine::executeAllgather(const ReadyTensor& t, Entry* local) {
  const TensorMeta& m = t.meta;
  size_t rowElems = 1;
  for (size_t d = 1; d < m.shape.size(); ++d) rowElems *= static_cast<size_t>(m.shape[d]);
  const size_t rowBytes = rowElems * dtypeSize(m.dtype);
  AllgatherOptions o;
  static_cast<CollectiveOptions&>(o) = collectiveOptions(m.name);
  int64_t rows = 0;
  for (const Announcement* a : t.perRank) {
    const int64_t r = a ? a->meta.shape[0] : 0;
    o.bytes.push_back(static_cast<size_t>(r) * rowBytes);
    rows += r;
  }
  std::vector<char> discard;
  PostedBuffers posted(*comm_, m.name);  // on a failure requests may still land in `discard`: never freed
  posted.keep(discard);
  std::vector<char>& out = local ? local->handle->output : discard;
  out.resize(static_cast<size_t>(rows) * rowBytes);
  size_t myOffset = 0;
  for (int r = 0; r < rank_; ++r) myOffset += o.bytes[r];
  if (local && o.bytes[rank_]) std::memcpy(out.data() + myOffset, local->input, o.bytes[rank_]);
  o.buffer = out.data();
  allgatherv(*comm_, o);
  if (local) {
    local->handle->outputShape = m.shape;
    local->handle->outputShape[0] = rows;
    finish(*local);
  }
}

void Engine::executeBroadcast(const ReadyTensor& t, Entry* local) {
  BroadcastOptions o;
  static_cast<CollectiveOptions&>(o) = collectiveOptions(t.meta.name);
  o.bytes = t.meta.bytes();
  o.root = t.meta.root;
  std::vector<char> discard;
  PostedBuffers posted(*comm_, t.meta.name);  // on a failure requests may still land in `discard`
  posted.keep(discard);
  if (local) {
    if (local->output != local->input) std::memcpy(local->output, local->input, o.bytes);
    o.buffer = local->output;
  } else {
    discard.resize(o.bytes);
    o.buffer = discard.data();
  }
  broadcast(*comm_, o);
  if (local) finish(*local);
}

}  // namespace nrt
