// Compressed buckets: gather the bucket's tensors into fp32 with their error-feedback residuals (weighted
// for this step only), let the cost model pick dense or a codec, run the compressed all-reduce, scatter
// results back and store the residuals unweighted (residual_store.h). Also the engine's residual calls
// (export/import/release). Exercised by tests/test_engine.py (codecs) and tests/test_residuals.py.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "collectives/allreduce.h"
#include "collectives/reduce.h"
#include "collectives/ring.h"
#include "codecs/format.h"
#include "codecs/quantize.h"
#include "common/error.h"
#include "engine/engine.h"

namespace nrt {

uint64_t denseWireBytes(size_t bytes, int n) {
  if (n <= 1) return 0;
  if (chooseAllreduceAlgorithm(bytes, n) == AllreduceAlgorithm::kRecursiveDoubling)
    return static_cast<uint64_t>(std::ceil(std::log2(n))) * bytes;
  return static_cast<uint64_t>(2.0 * (n - 1) / n * static_cast<double>(bytes));
}

uint64_t encodedBytes(Codec codec, size_t count, uint64_t rawBytes, uint32_t block) {
  if (count == 0) return 0;
  if (codec == Codec::kNone) return rawBytes;
  if (codecSummable(codec)) return count * 2;
  return payloadBytes(codec, count, block);
}

namespace {

void addInto(float* __restrict dst, const float* __restrict src, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] += src[i];
}

// fp16/bf16 payloads can be summed as they are: the dense ring on the 16-bit values (each addition widened
// to fp32) moves the same bytes as the two-phase algorithm in one pipelined pass. Error feedback keeps what
// the cast dropped: r += g; q = cast(r); r -= q. Returns the bytes this rank sent.
uint64_t reduceAsHalves(Communicator& comm, const CollectiveOptions& opts, uint8_t codec, float* work,
                        float* residual, size_t count, std::vector<char>& halfWork) {
  const int size = comm.size(), rank = comm.rank();
  const DataType half = codec == codec_format::kFp16 ? DataType::kFloat16 : DataType::kBFloat16;
  halfWork.resize(count * 2);
  char* halves = halfWork.data();
  // Above the recursive-doubling range, always this ring (also where a dense fp32 bucket would take
  // halving-doubling): the casts overlapping the transfers are measured here, the other way is not.
  if (chooseAllreduceAlgorithm(count * 2, size) != AllreduceAlgorithm::kRecursiveDoubling) {
    // The casts ride the ring: each chunk is cast just before the ring first reads it, and each all-gathered
    // segment is widened back as it lands, so both overlap the transfers (a whole-buffer cast before and
    // after cost 10% at 4x1 Gbit, 64 MB, against DDP's fp16 hook).
    RingPlan plan;
    plan.base = halves;
    plan.elemSize = 2;
    plan.dtype = half;
    plan.op = ReduceOp::kSum;
    splitEvenly(count, size, plan.chunkOffset, plan.chunkCount);
    const size_t segElems = ringSegmentElems(plan, opts);
    plan.beforeOwnValues = [&](int c) {
      const size_t off = plan.chunkOffset[c];
      quantize::encodeCast(codec, work + off, residual ? residual + off : nullptr, plan.chunkCount[c],
                           halves + off * 2);
    };
    plan.onGathered = [&](int c, size_t seg) {
      const size_t off = plan.chunkOffset[c] + seg * segElems;
      convertToF32(halves + off * 2, half, std::min(segElems, plan.chunkCount[c] - seg * segElems), work + off);
    };
    runRing(comm, plan, opts);
    const int mine = (rank + 1) % size;  // the chunk this rank reduced: never all-gathered to itself
    convertToF32(halves + plan.chunkOffset[mine] * 2, half, plan.chunkCount[mine], work + plan.chunkOffset[mine]);
  } else {
    quantize::encodeCast(codec, work, residual, count, halves);
    AllreduceOptions o;
    static_cast<CollectiveOptions&>(o) = opts;
    o.buffer = halves;
    o.count = count;
    o.dtype = half;
    o.op = ReduceOp::kSum;
    allreduce(comm, o);
    convertToF32(halves, half, count, work);
  }
  return denseWireBytes(count * 2, size);
}

// The `step` of a bucket's stochastic-rounding stream (codec.h: draws depend on seed, step, rank, index): the
// bucket's name hashed (FNV-1a) and mixed with its call count, so that every bucket has its own stream
// whatever order the buckets run in.
uint64_t roundingStream(const std::string& name, uint64_t calls) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return codec_format::mix64(h) + calls;
}

// The range [a, b) of bucket elements where a tensor at [offset, offset + n) meets this rank's chunk.
struct Overlap {
  size_t a = 0, b = 0;
  size_t len() const { return b > a ? b - a : 0; }
};
Overlap overlap(const ChunkRange& owned, size_t offset, size_t n) {
  return {std::max(owned.offset, offset), std::min(owned.offset + owned.count, offset + n)};
}

}  // namespace

CompressedAllreduceOptions Engine::compressedOptions(const std::string& name, uint32_t block) const {
  CompressedAllreduceOptions o;
  static_cast<CollectiveOptions&>(o) = collectiveOptions(name);
  o.blockSize = block;
  o.rounding = config_.rounding;
  o.seed = config_.seed;
  o.algorithm = config_.compressedAlgorithm;
  o.minSegmentPayload = config_.minSegmentPayload;
  return o;
}

void Engine::executeCompressedBucket(const std::vector<const ReadyTensor*>& bucket, const std::vector<Entry*>& locals) {
  const TensorMeta& head = bucket.front()->meta;
  if (!isFloating(head.dtype)) {  // metadata is agreed, so every rank fails these identically
    for (Entry* e : locals)
      if (e) finish(*e, concat("neptune_rt: tensor '", e->meta.name, "' is ", dtypeName(head.dtype),
                               "; compression codecs need a floating dtype (use codec='none')"));
    return;
  }
  size_t count = 0;
  for (const ReadyTensor* t : bucket) count += t->meta.numel();
  const uint32_t block = config_.codecBlock;
  const bool adaptive = config_.useCostModel && !(head.codec & kForceCodecBit);
  uint8_t codec = head.codec & ~kForceCodecBit;
  if (size_ == 1) {
    codec = codec_format::kNone;  // nothing travels: the exact value costs nothing
  } else if (adaptive) {
    costModel_.probe(*comm_, compressedOptions("cost model probe", block), codec);  // no-op once probed
    {
      std::lock_guard<std::mutex> lock(mu_);
      costModelText_ = costModel_.describe();
    }
    codec = costModel_.choose(codec, count, count * dtypeSize(head.dtype), size_);
  } else if (isAutoCodec(codec)) {
    codec = codec_format::kInt8;
  }

  // Error feedback (residual_store.h): residuals are kept unweighted. A tensor with weight w (its prescale)
  // contributes w * (g + r) and keeps r' = (w (g + r) - D(Q(.))) / w: the codec works on the weighted slot
  // w * r, which is unweighted again afterwards, so a change of weight never rescales stale error. w = 0 sends
  // nothing of the tensor and keeps r' = r + g. Residuals exist only for tensors that were compressed: a
  // bucket that goes dense sends them along exactly and frees them.
  const bool compress = codec != codec_format::kNone;
  const uint8_t requested = head.codec & ~kForceCodecBit;  // the residual's key: the codec asked for
  const bool twoPhase = compress && !codecSummable(static_cast<Codec>(codec)) &&
                        config_.compressedAlgorithm == CompressedAlgorithm::kTwoPhase;
  const ChunkRange owned = twoPhase ? ownedChunk(count, size_, rank_) : ChunkRange{};
  std::unique_lock<std::mutex> residualLock(residualMu_);
  std::vector<float*> stored(bucket.size(), nullptr);  // each tensor's own residual (null: no error feedback)
  bool withResidual = false;
  for (size_t i = 0; i < bucket.size(); ++i) {
    Entry* e = locals[i];
    if (!e || !e->errorFeedback) continue;  // joined ranks and automatic names keep no error feedback
    const size_t n = bucket[i]->meta.numel();
    stored[i] = compress ? residuals_.acquire(e->meta.name, requested, n) : residuals_.find(e->meta.name, requested, n);
    withResidual = withResidual || stored[i] != nullptr;
  }
  const auto weightOf = [&](size_t i) { return static_cast<float>(locals[i]->prescale); };

  // A lone fp32 tensor is worked on in its own output buffer (and, unless its weight is 0, its residual in
  // place), and so are fp32 members in place and back to back in memory (views of one flat buffer, as
  // DistributedOptimizer and the DDP hook submit a compressed bucket); other buckets are gathered into the fp32
  // work buffer. Residuals of several tensors go to the weighted slots of bucketResidual_.
  const bool fp32 = head.dtype == DataType::kFloat32;
  const bool lone = bucket.size() == 1 && locals[0] != nullptr && fp32;
  const bool direct = lone || (fp32 && adjacentInPlace(bucket, locals));
  compressedPacked_ = !direct;
  const bool slotInPlace = lone && stored[0] != nullptr && weightOf(0) != 0.0f;
  float* work;
  float* residual = nullptr;  // the weighted slots, bucket coordinates
  if (direct) {
    Entry& e = *locals[0];
    if (e.output != e.input) std::memcpy(e.output, e.input, count * sizeof(float));  // a lone tensor only
    work = static_cast<float*>(e.output);
  } else {
    work_.resize(count);
    work = work_.data();
  }
  if (withResidual && !slotInPlace) {
    bucketResidual_.resize(count);
    residual = bucketResidual_.data();
  } else if (slotInPlace) {
    residual = stored[0];
  }
  size_t offset = 0;
  for (size_t i = 0; i < bucket.size(); ++i) {
    const size_t n = bucket[i]->meta.numel();
    float* x = work + offset;
    if (Entry* e = locals[i]) {
      if (!direct) convertToF32(e->input, head.dtype, n, x);
      const float w = weightOf(i);
      if (stored[i] && w == 0.0f) addInto(stored[i], x, n);  // r' = r + g; its slot stays zero
      if (residual && !slotInPlace) {
        if (stored[i] && w != 0.0f) {
          for (size_t k = 0; k < n; ++k) residual[offset + k] = stored[i][k] * w;
        } else {
          std::fill_n(residual + offset, n, 0.0f);
        }
      } else if (slotInPlace) {
        scaleInPlace(residual, n, DataType::kFloat32, e->prescale);
      }
      scaleInPlace(x, n, DataType::kFloat32, e->prescale);
    } else {  // joined rank: contributes zeros, keeps no error feedback
      std::fill_n(x, n, 0.0f);
      if (residual) std::fill_n(residual + offset, n, 0.0f);
    }
    offset += n;
  }

  // The two-phase second residual lives with the tensors too: each tensor keeps it for the elements of the
  // chunk this rank reduces; what falls outside that chunk now is fed into this rank's own slot (spill).
  float* chunkResidual = nullptr;
  offset = 0;
  const bool chunkInPlace = bucket.size() == 1 && stored[0] != nullptr;
  if (twoPhase && !chunkInPlace) {
    chunkResidual_.assign(owned.count, 0.0f);
    chunkResidual = chunkResidual_.data();
  }
  for (size_t i = 0; i < bucket.size(); ++i) {
    const size_t n = bucket[i]->meta.numel();
    if (stored[i]) {
      const Overlap o = twoPhase ? overlap(owned, offset, n) : Overlap{};
      float* r2 = residuals_.reduced(locals[i]->meta.name, o.len() ? o.a - offset : 0, o.len(), residual + offset);
      if (chunkInPlace) {
        chunkResidual = r2;
      } else if (o.len()) {
        std::copy_n(r2, o.len(), chunkResidual + (o.a - owned.offset));
      }
    }
    offset += n;
  }
  if (twoPhase && !chunkResidual) {  // a lone tensor without error feedback
    chunkResidual_.assign(owned.count, 0.0f);
    chunkResidual = chunkResidual_.data();
  }

  uint64_t wire;
  if (!compress) {
    // Dense is predicted faster: send the residuals along, exactly (they are freed below).
    if (residual) addInto(work, residual, count);
    AllreduceOptions o;
    static_cast<CollectiveOptions&>(o) = collectiveOptions(head.name);
    o.buffer = work;
    o.count = count;
    o.dtype = DataType::kFloat32;
    o.op = ReduceOp::kSum;
    allreduce(*comm_, o);
    wire = denseWireBytes(count * sizeof(float), size_);
  } else if (codecSummable(static_cast<Codec>(codec))) {
    wire = reduceAsHalves(*comm_, collectiveOptions(head.name), codec, work, residual, count, halfWork_);
  } else {
    CompressedAllreduceOptions o = compressedOptions(head.name, block);
    o.buffer = work;
    o.count = count;
    o.codec = static_cast<Codec>(codec);
    o.step = roundingStream(head.name, compressedCalls_[head.name]++);
    o.residual = residual;
    o.chunkResidual = chunkResidual;
    o.chunkResidualCount = twoPhase ? owned.count : 0;
    o.scratch = &payloadScratch_;
    wire = compressedAllreduce(*comm_, o).wireBytes;
  }

  // Residuals back to unweighted units, into the store (or freed after a dense bucket).
  offset = 0;
  for (size_t i = 0; i < bucket.size(); ++i) {
    const size_t n = bucket[i]->meta.numel();
    const float w = stored[i] ? weightOf(i) : 0.0f;
    if (stored[i] && !compress) {
      if (w != 0.0f) residuals_.release(locals[i]->meta.name);  // sent; with w = 0 it is kept (r + g)
    } else if (stored[i]) {
      if (w != 0.0f && (w != 1.0f || !slotInPlace)) {  // w = 0: r' = r + g already
        const float* slot = residual + offset;
        float* r = stored[i];
        for (size_t k = 0; k < n; ++k) r[k] = slot[k] / w;
      }
      const Overlap o = twoPhase && !chunkInPlace ? overlap(owned, offset, n) : Overlap{};
      if (o.len())
        std::copy_n(chunkResidual + (o.a - owned.offset), o.len(),
                    residuals_.reduced(locals[i]->meta.name, o.a - offset, o.len(), nullptr));
    }
    offset += n;
  }
  residualLock.unlock();  // completion callbacks may call export/import/release

  offset = 0;
  for (size_t i = 0; i < bucket.size(); ++i) {
    const size_t n = bucket[i]->meta.numel();
    if (Entry* e = locals[i]) {
      float* result = work + offset;
      if (head.op == ReduceOp::kAverage) scaleInPlace(result, n, DataType::kFloat32, 1.0 / participants_);
      scaleInPlace(result, n, DataType::kFloat32, e->postscale);
      if (!direct) convertFromF32(result, head.dtype, n, e->output);
      e->handle->codecUsed = codecName(static_cast<Codec>(codec));
      e->handle->wireBytes = wire;
      finish(*e);
    }
    offset += n;
  }
}

std::vector<ResidualState> Engine::exportResiduals() {
  std::lock_guard<std::mutex> lock(residualMu_);
  return residuals_.exportAll();
}

void Engine::importResiduals(std::vector<ResidualState> states) {
  const int inFlight = compressedInFlight_.load();
  if (inFlight > 0)
    throw std::runtime_error(concat("neptune_rt: rank ", rank_, ": import_residuals while ", inFlight,
                                    " compressed all-reduce(s) are in flight; wait for their handles first"));
  std::lock_guard<std::mutex> lock(residualMu_);
  residuals_.importAll(std::move(states));
}

void Engine::releaseResiduals(const std::string& name) {
  std::lock_guard<std::mutex> lock(residualMu_);
  residuals_.release(name);
}

size_t Engine::residualBytes() {
  std::lock_guard<std::mutex> lock(residualMu_);
  return residuals_.bytes();
}

}  // namespace nrt
