// Compressed all-reduce (sum) of an fp32 buffer through a codec, over the Communicator seam. Two
// algorithms, both pipelined by segments and both ending bitwise identical on every rank (every rank
// decodes the same bytes). Exercised by tests/test_compressed_allreduce.py under mpirun (2..5 ranks).
//
// Vocabulary: one chunk per rank (splitEvenly), each chunk cut into segments of whole codec blocks; every
// segment travels as its own self-describing payload. Bytes sent per rank ~ 2(n-1)/n * S * ratio.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "codecs/codec.h"
#include "collectives/options.h"
#include "comm/communicator.h"

namespace nrt {

enum class CompressedAlgorithm {
  // Each rank encodes its n chunks once (with its error feedback) and sends chunk j to rank j (an all-to-all
  // in n-1 pairwise steps, one flow per link); rank j sums the n decoded contributions in fp32 in a fixed
  // order (its own, then r-1, r-2, ...), re-encodes the sum (second error
  // feedback, chunkResidual), and the encoded sums are all-gathered along the ring unchanged.
  kTwoPhase = 0,
  // The dense ring with decode-add-encode at every reduce-scatter hop, then the same payload all-gather.
  // Each hop's quantization error goes into the residual of the rank that made it, so the error stays
  // fed back; it still grows with the number of hops (partial sums get larger scales).
  kRequantizingRing,
  // chooseCompressedAlgorithm(world size), resolved when the all-reduce runs (NEPTUNE_RT_COMPRESSED_ALGORITHM's
  // documented default).
  kAuto,
};
const char* compressedAlgorithmName(CompressedAlgorithm a);
// The default for a job of `worldSize` ranks (NEPTUNE_RT_COMPRESSED_ALGORITHM=auto): the requantizing ring up
// to kRingMaxRanks, the two-phase algorithm above. At 4 emulated 1 Gbit nodes with 64 MB the ring was
// 1.25x faster for int8 (its flows stay on the two neighbour links, as the dense ring's do); its error and
// its latency grow with the n-1 hops, while the two-phase quantizes twice at any n. The crossover above
// 8 ranks is a judgment, not a measurement.
constexpr int kRingMaxRanks = 8;
CompressedAlgorithm chooseCompressedAlgorithm(int worldSize);
CompressedAlgorithm compressedAlgorithmFromName(const std::string& name);

// Payload scratch that outlives a call: 4-byte aligned, grown on demand, never zero-filled. Fresh buffers per
// call (a quarter of the fp32 size, three times over) cost page faults and a memset that took about a fifth
// of a 64 MB int8 all-reduce's CPU time. Not thread-safe: one owner runs one all-reduce at a time.
class PayloadScratch {
 public:
  char* reserve(int slot, size_t bytes);

 private:
  struct Area {
    std::unique_ptr<uint32_t[]> words;
    size_t capacityWords = 0;
  };
  Area areas_[3];
};

struct CompressedAllreduceOptions : CollectiveOptions {
  // segmentBytes (inherited) counts uncompressed fp32 bytes per segment; the segment grows until its payload
  // holds minSegmentPayload bytes, and is rounded down to whole blocks (at least one block). Messages use
  // tags `tag` and `tag + 1`.
  size_t minSegmentPayload = 0;
  float* buffer = nullptr;  // in: this rank's gradient; out: the sum over ranks (same on every rank)
  size_t count = 0;
  Codec codec = Codec::kInt8;
  uint32_t blockSize = codec_format::kDefaultBlockSize;
  Rounding rounding = Rounding::kNearest;
  uint64_t seed = 0;
  uint64_t step = 0;  // advance every call so stochastic draws differ between steps
  // This rank's error feedback, `count` floats (nullable: no error feedback). Updated in place.
  float* residual = nullptr;
  // Two-phase only: error feedback of the second quantization of the chunk this rank reduces;
  // ownedChunk(count, n, rank).count floats (nullable). Ignored by the requantizing ring.
  float* chunkResidual = nullptr;
  size_t chunkResidualCount = 0;
  CompressedAlgorithm algorithm = CompressedAlgorithm::kTwoPhase;
  // Reused payload buffers (nullable: the call allocates its own).
  PayloadScratch* scratch = nullptr;
};

// The minimum payload per segment used unless a segment size is asked for explicitly: one message per
// segment, and Open MPI over TCP paid for smaller ones (int4 at 4x1 Gbit, 64 MB: 156 ms with 64 KB payloads,
// 119 ms with 128 KB; int8 was flat from 128 KB to 512 KB). It raises int4's and onebit's segments.
constexpr size_t kMinSegmentPayload = 128 * 1024;

struct ChunkRange {
  size_t offset = 0;
  size_t count = 0;
};
// The chunk a rank reduces in the two-phase algorithm (the size of its chunkResidual).
ChunkRange ownedChunk(size_t count, int worldSize, int rank);

struct CompressedAllreduceResult {
  size_t wireBytes = 0;  // payload bytes this rank sent (headers included)
};

// Stochastic draws use (seed, step, rank, element index) for a rank's own contribution and rank + n
// (two-phase second quantization) so that no two quantizations of one call share a stream.
CompressedAllreduceResult compressedAllreduce(Communicator& comm, const CompressedAllreduceOptions& opts);

// Cumulative seconds the calling thread has spent encoding and decoding inside compressed all-reduces (the
// engine reads it before and after a bucket to split the bucket's time; two clock reads per segment).
struct CodecSeconds {
  double encode = 0;
  double decode = 0;
};
const CodecSeconds& threadCodecSeconds();

}  // namespace nrt
