// Launchers of the CUDA codec kernels (codec_kernels.cu), declared without CUDA headers so the pybind11
// module (module.cc, compiled by the host compiler) can call them. Same semantics and payload bytes as the
// CPU codecs (csrc/codecs/codec.h); checked against them by tests/test_codecs_cuda.py on a GPU.
#pragma once

#include <cstddef>
#include <cstdint>

namespace nrt {
namespace cuda {

struct EncodeArgs {
  uint8_t codec = 3;
  uint32_t blockSize = 256;
  bool stochastic = false;
  uint64_t seed = 0, step = 0, rank = 0, indexBase = 0;
};

// All pointers are device pointers (4-byte aligned); every call synchronizes the device and throws
// std::runtime_error naming the failed CUDA call, std::invalid_argument for bad arguments or payloads.
size_t encode(const EncodeArgs& a, const float* src, size_t n, float* residual, void* out, size_t outBytes);
void decode(const void* payload, size_t bytes, float* dst, size_t dstCount, bool add);
int deviceCount();  // 0 when there is no device or no driver

}  // namespace cuda
}  // namespace nrt
