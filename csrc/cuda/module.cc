// The optional extension neptune_rt._C_cuda: CUDA codecs on raw device pointers (ints, e.g. tensor.data_ptr()),
// same names and payloads as the CPU codecs. Bindings only; tests/test_codecs_cuda.py skips without a GPU.
#include <pybind11/pybind11.h>

#include <string>

#include "codecs/payload_check.h"
#include "cuda/codecs_cuda.h"

namespace py = pybind11;

namespace {

uint8_t codecId(const std::string& name) {
  for (uint8_t i = 0; i < nrt::codec_format::kNumCodecs; ++i)
    if (name == nrt::codec_format::codecNameOf(i)) return i;
  throw std::invalid_argument("neptune_rt: unknown codec '" + name + "' (none, fp16, bf16, int8, int4, onebit)");
}

bool stochastic(const std::string& rounding) {
  NRT_CHECK_ARG(rounding == "nearest" || rounding == "stochastic", "neptune_rt: unknown rounding '", rounding,
                "' (nearest, stochastic)");
  return rounding == "stochastic";
}

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "neptune_rt CUDA codecs (same payload format as neptune_rt._C's CPU codecs)";
  m.def("device_count", &nrt::cuda::deviceCount, "CUDA devices visible (0 without a device or driver)");
  m.def(
      "payload_bytes",
      [](const std::string& codec, size_t count, uint32_t block) {
        const uint8_t id = codecId(codec);
        nrt::codec_format::checkBlock(id, block);
        return nrt::codec_format::payloadBytesFor(id, count, nrt::codec_format::isBlockCodec(id) ? block : 0);
      },
      py::arg("codec"), py::arg("count"), py::arg("block") = nrt::codec_format::kDefaultBlockSize);
  m.def(
      "encode",
      [](const std::string& codec, uintptr_t src, size_t n, uintptr_t residual, uintptr_t out, size_t outBytes,
         uint32_t block, const std::string& rounding, uint64_t seed, uint64_t step, uint64_t rank, uint64_t indexBase) {
        nrt::cuda::EncodeArgs a;
        a.codec = codecId(codec);
        a.blockSize = block;
        a.stochastic = stochastic(rounding);
        a.seed = seed;
        a.step = step;
        a.rank = rank;
        a.indexBase = indexBase;
        py::gil_scoped_release release;
        return nrt::cuda::encode(a, ptr<const float>(src), n, ptr<float>(residual), ptr<void>(out), outBytes);
      },
      py::arg("codec"), py::arg("src"), py::arg("n"), py::arg("residual"), py::arg("out"), py::arg("out_bytes"),
      py::arg("block") = nrt::codec_format::kDefaultBlockSize, py::arg("rounding") = "nearest", py::arg("seed") = 0,
      py::arg("step") = 0, py::arg("rank") = 0, py::arg("index_base") = 0,
      "Encode n float32 at device address `src` into `out` (residual: device address or 0); returns bytes written");
  const auto decodeAny = [](uintptr_t payload, size_t bytes, uintptr_t dst, size_t count, bool add) {
    py::gil_scoped_release release;
    nrt::cuda::decode(ptr<const void>(payload), bytes, ptr<float>(dst), count, add);
  };
  m.def(
      "decode",
      [decodeAny](uintptr_t payload, size_t bytes, uintptr_t dst, size_t count) {
        decodeAny(payload, bytes, dst, count, false);
      },
      py::arg("payload"), py::arg("bytes"), py::arg("dst"), py::arg("count"), "dst = decoded payload (device)");
  m.def(
      "decode_add",
      [decodeAny](uintptr_t payload, size_t bytes, uintptr_t dst, size_t count) {
        decodeAny(payload, bytes, dst, count, true);
      },
      py::arg("payload"), py::arg("bytes"), py::arg("dst"), py::arg("count"), "dst += decoded payload (device)");
}
