// Bindings for the CPU codecs (csrc/codecs/codec.h) on numpy buffers: argument checks, GIL release,
// docstrings only. Wrapped by neptune_rt/codecs/__init__.py; exercised by tests/test_codecs.py.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "bindings/buffer.h"
#include "codecs/codec.h"
#include "codecs/simd_x86.h"

namespace py = pybind11;

namespace nrt {

namespace {

// A contiguous float32 view; rejects other element types instead of reinterpreting their bytes.
BufferView floatView(py::buffer& buf, bool writable, const std::string& name) {
  const std::string format = buf.request(false).format;
  NRT_CHECK_ARG(format == py::format_descriptor<float>::format(), "neptune_rt: ", name,
                " must be a float32 array, got buffer format '", format, "' (convert with .astype(numpy.float32))");
  return viewBuffer(buf, "float32", writable, name);
}

}  // namespace

void registerCodecs(py::module_& m) {
  m.def("codec_names", [] {
    std::vector<std::string> names;
    for (Codec c : allCodecs()) names.emplace_back(codecName(c));
    return names;
  }, "Codec names in id order");
  m.def("codec_summable", [](const std::string& codec) { return codecSummable(codecFromName(codec)); },
        py::arg("codec"), "True when payloads can be reduced elementwise as they are (fp16, bf16, none)");
  m.def("payload_bytes",
        [](const std::string& codec, size_t count, uint32_t block) {
          return payloadBytes(codecFromName(codec), count, block);
        },
        py::arg("codec"), py::arg("count"), py::arg("block") = codec_format::kDefaultBlockSize,
        "Exact size in bytes (header and padding included) of an encoded buffer of `count` values");
  m.def(
      "_codec_simd",
      [](bool enabled) {
        simd::setSimdEnabled(enabled);
        return simd::haveAvx2F16c();
      },
      py::arg("enabled"), "Testing hook: switch the AVX2/F16C codec paths; returns whether they are in use");
  m.attr("DEFAULT_BLOCK_SIZE") = codec_format::kDefaultBlockSize;
  m.attr("PAYLOAD_HEADER_BYTES") = codec_format::kHeaderBytes;

  // Shared by encode (allocates the payload) and encode_into (caller's buffer, for benchmarks and reuse).
  const auto encodeTo = [](const std::string& codec, py::buffer& src, std::optional<py::buffer>& residual,
                           uint32_t block, const std::string& rounding, uint64_t seed, uint64_t step, uint64_t rank,
                           uint64_t indexBase, void* out, size_t outBytes) {
    BufferView s = floatView(src, false, "src");
    BufferView r;
    if (residual) {
      r = floatView(*residual, true, "residual");
      NRT_CHECK_ARG(r.count == s.count, "neptune_rt: residual has ", r.count, " values, src has ", s.count);
    }
    EncodeParams p;
    p.codec = codecFromName(codec);
    p.blockSize = block;
    p.rounding = roundingFromName(rounding);
    p.seed = seed;
    p.step = step;
    p.rank = rank;
    p.indexBase = indexBase;
    if (out == nullptr) return payloadBytes(p.codec, s.count, block);
    py::gil_scoped_release release;
    return encode(p, static_cast<const float*>(s.ptr), s.count, static_cast<float*>(r.ptr), out, outBytes);
  };
  m.def(
      "encode",
      [encodeTo](const std::string& codec, py::buffer src, std::optional<py::buffer> residual, uint32_t block,
                 const std::string& rounding, uint64_t seed, uint64_t step, uint64_t rank, uint64_t indexBase) {
        const size_t bytes = encodeTo(codec, src, residual, block, rounding, seed, step, rank, indexBase, nullptr, 0);
        py::array_t<uint8_t> out(static_cast<py::ssize_t>(bytes));
        encodeTo(codec, src, residual, block, rounding, seed, step, rank, indexBase, out.mutable_data(), bytes);
        return out;
      },
      py::arg("codec"), py::arg("src"), py::arg("residual") = py::none(),
      py::arg("block") = codec_format::kDefaultBlockSize, py::arg("rounding") = "nearest", py::arg("seed") = 0,
      py::arg("step") = 0, py::arg("rank") = 0, py::arg("index_base") = 0,
      "Encode float32 `src` into a new uint8 payload; with `residual` (float32, same length, updated in place) "
      "error feedback is fused: r += src; q = Q(r); r -= D(q)");
  m.def(
      "encode_into",
      [encodeTo](const std::string& codec, py::buffer src, py::buffer out, std::optional<py::buffer> residual,
                 uint32_t block, const std::string& rounding, uint64_t seed, uint64_t step, uint64_t rank,
                 uint64_t indexBase) {
        BufferView o = viewBuffer(out, "uint8", true, "out");
        return encodeTo(codec, src, residual, block, rounding, seed, step, rank, indexBase, o.ptr, o.bytes);
      },
      py::arg("codec"), py::arg("src"), py::arg("out"), py::arg("residual") = py::none(),
      py::arg("block") = codec_format::kDefaultBlockSize, py::arg("rounding") = "nearest", py::arg("seed") = 0,
      py::arg("step") = 0, py::arg("rank") = 0, py::arg("index_base") = 0,
      "Encode into a caller-owned writable buffer of at least payload_bytes(...) bytes; returns the bytes written");

  const auto decodeInto = [](py::buffer payload, py::buffer dst, bool add) {
    BufferView p = viewBuffer(payload, "uint8", false, "payload");
    BufferView d = floatView(dst, true, "dst");
    py::gil_scoped_release release;
    if (add) {
      decodeAdd(p.ptr, p.bytes, static_cast<float*>(d.ptr), d.count);
    } else {
      decode(p.ptr, p.bytes, static_cast<float*>(d.ptr), d.count);
    }
  };
  m.def("decode", [decodeInto](py::buffer payload, py::buffer dst) { decodeInto(payload, dst, false); },
        py::arg("payload"), py::arg("dst"), "dst = decoded payload (dst: float32 of the payload's count)");
  m.def("decode_add", [decodeInto](py::buffer payload, py::buffer dst) { decodeInto(payload, dst, true); },
        py::arg("payload"), py::arg("dst"), "dst += decoded payload, in float32");
  m.def(
      "payload_header",
      [](py::buffer payload) {
        BufferView p = viewBuffer(payload, "uint8", false, "payload");
        const codec_format::Header h = parsePayload(p.ptr, p.bytes);
        py::dict d;
        d["codec"] = codecName(static_cast<Codec>(h.codec));
        d["count"] = h.count;
        d["block"] = h.blockSize;
        d["stochastic"] = (h.flags & codec_format::kFlagStochastic) != 0;
        d["error_feedback"] = (h.flags & codec_format::kFlagErrorFeedback) != 0;
        return d;
      },
      py::arg("payload"), "Validate a payload and return its header fields");
}

}  // namespace nrt
