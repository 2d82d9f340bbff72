// Compressed buckets: gather the bucket's tensors into fp32 with their error-feedback residuals, let the
// cost model pick dense or a codec, run the compressed all-reduce, scatter results and residuals back.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "collectives/allreduce.h"
#include "collectives/reduce.h"
#include "collectives/ring.h"
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
  std::string key;  // the bucket's composition: keys the second quantization's residual
  for (const ReadyTensor* t : bucket) {
    count += t->meta.numel();
    key += t->meta.name + '\n';
  }
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
  } else if (codec == kAutoCodecId) {
    codec = codec_format::kInt8;
  }

  // Residuals exist only for tensors that have been compressed; a bucket that goes dense and has none
  // skips them entirely (no allocation, no extra passes over memory).
  const bool compress = codec != codec_format::kNone;
  bool dirty = false;
  for (Entry* e : locals) dirty = dirty || (e && dirtyResiduals_.count(e->meta.name));
  const bool withResidual = compress || dirty;
  const auto residualOf = [&](const std::string& name, size_t n) -> std::vector<float>& {
    std::vector<float>& r = residuals_[name];
    if (r.size() != n) r.assign(n, 0.0f);
    return r;
  };

  // A lone fp32 tensor is worked on in its own output buffer with its own residual; several tensors (or
  // other float types) are gathered into the fp32 work buffer, residuals alongside.
  const bool direct = bucket.size() == 1 && locals[0] != nullptr && head.dtype == DataType::kFloat32;
  float* work;
  float* residual = nullptr;
  if (direct) {
    Entry& e = *locals[0];
    if (e.output != e.input) std::memcpy(e.output, e.input, count * sizeof(float));
    work = static_cast<float*>(e.output);
    scaleInPlace(work, count, DataType::kFloat32, e.prescale);
    if (withResidual) residual = residualOf(e.meta.name, count).data();
  } else {
    work_.resize(count);
    work = work_.data();
    if (withResidual) {
      bucketResidual_.resize(count);
      residual = bucketResidual_.data();
    }
    size_t offset = 0;
    for (size_t i = 0; i < bucket.size(); ++i) {
      const size_t n = bucket[i]->meta.numel();
      if (Entry* e = locals[i]) {
        convertToF32(e->input, head.dtype, n, work + offset);
        scaleInPlace(work + offset, n, DataType::kFloat32, e->prescale);
        if (residual) {
          const std::vector<float>& r = residualOf(e->meta.name, n);
          std::copy(r.begin(), r.end(), residual + offset);
        }
      } else {  // joined rank: contributes zeros, keeps no error feedback
        std::fill_n(work + offset, n, 0.0f);
        if (residual) std::fill_n(residual + offset, n, 0.0f);
      }
      offset += n;
    }
  }

  uint64_t wire;
  if (!compress) {
    // Dense is predicted faster: send any error-feedback residual along, exactly, and clear it.
    if (residual) {
      for (size_t i = 0; i < count; ++i) work[i] += residual[i];
      std::fill_n(residual, count, 0.0f);
    }
    AllreduceOptions o;
    static_cast<CollectiveOptions&>(o) = collectiveOptions(head.name);
    o.buffer = work;
    o.count = count;
    o.dtype = DataType::kFloat32;
    o.op = ReduceOp::kSum;
    allreduce(*comm_, o);
    wire = denseWireBytes(count * sizeof(float), size_);
  } else if (codecSummable(static_cast<Codec>(codec))) {
    // fp16/bf16 payloads can be summed as they are: the dense ring on the 16-bit values (each addition
    // widened to fp32) moves the same bytes as the two-phase algorithm in one pipelined pass. Error
    // feedback keeps what the cast dropped: r += g; q = cast(r); r -= q.
    const DataType half = codec == codec_format::kFp16 ? DataType::kFloat16 : DataType::kBFloat16;
    halfWork_.resize(count * 2);
    char* halves = halfWork_.data();
    const CollectiveOptions opts = collectiveOptions(head.name);
    if (chooseAllreduceAlgorithm(count * 2, size_) == AllreduceAlgorithm::kRing) {
      // The casts ride the ring: each chunk is cast just before the ring first reads it, and each all-gathered
      // segment is widened back as it lands, so both overlap the transfers (a whole-buffer cast before and
      // after cost 10% at 4x1 Gbit, 64 MB, against DDP's fp16 hook).
      RingPlan plan;
      plan.base = halves;
      plan.elemSize = 2;
      plan.dtype = half;
      plan.op = ReduceOp::kSum;
      splitEvenly(count, size_, plan.chunkOffset, plan.chunkCount);
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
      runRing(*comm_, plan, opts);
      const int mine = (rank_ + 1) % size_;  // the chunk this rank reduced: never all-gathered to itself
      convertToF32(halves + plan.chunkOffset[mine] * 2, half, plan.chunkCount[mine], work + plan.chunkOffset[mine]);
    } else {
      quantize::encodeCast(codec, work, residual, count, halves);
      AllreduceOptions o;
      static_cast<CollectiveOptions&>(o) = opts;
      o.buffer = halves;
      o.count = count;
      o.dtype = half;
      o.op = ReduceOp::kSum;
      allreduce(*comm_, o);
      convertToF32(halves, half, count, work);
    }
    wire = denseWireBytes(count * 2, size_);
  } else {
    const ChunkRange mine = ownedChunk(count, size_, rank_);
    std::vector<float>& chunkResidual = chunkResiduals_[key];
    if (chunkResidual.size() != mine.count) chunkResidual.assign(mine.count, 0.0f);
    CompressedAllreduceOptions o = compressedOptions(head.name, block);
    o.buffer = work;
    o.count = count;
    o.codec = static_cast<Codec>(codec);
    o.step = compressedStep_++;
    o.residual = residual;
    o.chunkResidual = chunkResidual.data();
    o.chunkResidualCount = chunkResidual.size();
    o.scratch = &payloadScratch_;
    wire = compressedAllreduce(*comm_, o).wireBytes;
  }

  size_t offset = 0;
  for (size_t i = 0; i < bucket.size(); ++i) {
    const size_t n = bucket[i]->meta.numel();
    if (Entry* e = locals[i]) {
      float* result = work + offset;
      if (head.op == ReduceOp::kAverage) scaleInPlace(result, n, DataType::kFloat32, 1.0 / participants_);
      scaleInPlace(result, n, DataType::kFloat32, e->postscale);
      if (!direct) {
        if (residual) std::copy_n(residual + offset, n, residuals_[e->meta.name].begin());
        convertFromF32(result, head.dtype, n, e->output);
      }
      if (compress) {
        dirtyResiduals_.insert(e->meta.name);
      } else {
        dirtyResiduals_.erase(e->meta.name);
      }
      e->handle->codecUsed = codecName(static_cast<Codec>(codec));
      e->handle->wireBytes = wire;
      finish(*e);
    }
    offset += n;
  }
}

}  // namespace nrt
