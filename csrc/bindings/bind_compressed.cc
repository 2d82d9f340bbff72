// Bindings for the direct compressed all-reduce (csrc/collectives/compressed_allreduce.h), run on the calling
// thread like bind_collectives.cc's: argument checks, GIL release, docstrings. Used by
// tests/test_compressed_allreduce.py and benchmarks.
#include <pybind11/stl.h>

#include <optional>

#include "bindings/bindings.h"
#include "bindings/buffer.h"
#include "collectives/compressed_allreduce.h"

namespace py = pybind11;

namespace nrt {

namespace {

float* floatData(py::buffer& buf, const std::string& what, size_t* count) {
  const std::string format = buf.request(false).format;
  NRT_CHECK_ARG(format == py::format_descriptor<float>::format(), "neptune_rt: ", what,
                " must be a writable float32 array, got buffer format '", format, "'");
  BufferView v = viewBuffer(buf, "float32", /*writable=*/true, what);
  *count = v.count;
  return static_cast<float*>(v.ptr);
}

}  // namespace

void registerCompressed(py::module_& m) {
  m.attr("MIN_SEGMENT_PAYLOAD") = kMinSegmentPayload;
  m.def(
      "choose_compressed_algorithm",
      [](int worldSize) { return std::string(compressedAlgorithmName(chooseCompressedAlgorithm(worldSize))); },
      py::arg("world_size"), "The compressed all-reduce algorithm used by default for this many ranks");
  m.def(
      "owned_chunk",
      [](size_t count, int world, int rank) {
        NRT_CHECK_ARG(world > 0 && rank >= 0 && rank < world, "neptune_rt: rank ", rank, " is not in a world of ",
                      world);
        ChunkRange c = ownedChunk(count, world, rank);
        return py::make_tuple(c.offset, c.count);
      },
      py::arg("count"), py::arg("world_size"), py::arg("rank"),
      "(offset, count) of the chunk `rank` reduces in the two-phase algorithm (its chunk_residual size)");

  m.def(
      "compressed_allreduce_inplace",
      [](Communicator& comm, py::buffer buf, const std::string& codec, const std::string& algorithm, uint32_t block,
         const std::string& rounding, uint64_t seed, uint64_t step, std::optional<py::buffer> residual,
         std::optional<py::buffer> chunkResidual, size_t segmentBytes, double timeout, const std::string& name,
         int tag) {
        CompressedAllreduceOptions o;
        o.name = name;
        o.minSegmentPayload = segmentBytes > 0 ? 0 : kMinSegmentPayload;  // explicit sizes are taken as they are
        if (segmentBytes > 0) o.segmentBytes = segmentBytes;
        o.timeoutSeconds = timeout;
        o.tag = tag;
        o.buffer = floatData(buf, "buffer", &o.count);
        o.codec = codecFromName(codec);
        o.algorithm = compressedAlgorithmFromName(algorithm);
        o.blockSize = block;
        o.rounding = roundingFromName(rounding);
        o.seed = seed;
        o.step = step;
        if (residual) {
          size_t n = 0;
          o.residual = floatData(*residual, "residual", &n);
          NRT_CHECK_ARG(n == o.count, "neptune_rt: residual of '", name, "' has ", n, " floats, the buffer ", o.count);
        }
        if (chunkResidual) o.chunkResidual = floatData(*chunkResidual, "chunk_residual", &o.chunkResidualCount);
        return runDirect(comm, {buf, residual ? py::handle(*residual) : py::handle(),
                                chunkResidual ? py::handle(*chunkResidual) : py::handle()},
                         [&] { return compressedAllreduce(comm, o).wireBytes; });
      },
      py::arg("comm"), py::arg("buffer"), py::arg("codec"), py::arg("algorithm") = "two_phase",
      py::arg("block") = codec_format::kDefaultBlockSize, py::arg("rounding") = "nearest", py::arg("seed") = 0,
      py::arg("step") = 0, py::arg("residual") = py::none(), py::arg("chunk_residual") = py::none(),
      py::arg("segment_bytes") = 0, py::arg("timeout") = kDefaultTimeoutSeconds,
      py::arg("name") = "compressed_allreduce", py::arg("tag") = 0,
      "In-place compressed sum all-reduce of a float32 buffer; returns the payload bytes this rank sent");
}

}  // namespace nrt
