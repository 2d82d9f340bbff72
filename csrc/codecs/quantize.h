// Internal: the CPU hot loops behind codec.h, on already-validated arguments (no header, no checks).
// Callers: codec.cc, and the dtype conversions and fp16/bf16 buckets of the collectives and the engine
// (the cast loops with error feedback); tests reach them through nrt::encode / nrt::decode.
#pragma once

#include <cstddef>
#include <cstdint>

namespace nrt {
namespace quantize {

// Cast codecs (none / fp16 / bf16): body = n values. With a residual (error feedback) the loops do
// r += src; q = Q(r); r -= D(q) a cache-sized piece at a time; without one they encode src.
void encodeCast(uint8_t codec, const float* src, float* residual, size_t n, void* body);
void decodeCast(uint8_t codec, const void* body, size_t n, float* dst, bool add);

// Block codecs (int8 / int4 / onebit): body = scales then packed values. `key` is the stochastic stream
// key (format.h streamKey), used when `stochastic`; element i draws uniform01(key, indexBase + i).
void encodeBlocks(uint8_t codec, const float* src, float* residual, size_t n, uint32_t block, bool stochastic,
                  uint64_t key, uint64_t indexBase, void* body);
void decodeBlocks(uint8_t codec, const void* body, size_t n, uint32_t block, float* dst, bool add);

}  // namespace quantize
}  // namespace nrt
