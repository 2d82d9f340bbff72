// Hand-vectorized x86 paths for the loops g++ cannot vectorize from plain C++ (fp16 casts: half.h branches;
// onebit sign packing: a movemask). Picked at run time when the CPU has AVX2 + F16C; results are bit-identical
// to the portable loops (tests/test_codecs.py compares both against the numpy reference).
#pragma once

#include <cstddef>
#include <cstdint>

namespace nrt {
namespace simd {

// True when the CPU has AVX2 + F16C and the paths are enabled; false on other architectures, and callers
// then use the portable loops. Tests switch the paths off to check the portable loops give the same bytes.
bool haveAvx2F16c();
void setSimdEnabled(bool enabled);

// out = fp16(x) (RNE); with r: r = x - float(out) (x may alias r).
void floatToHalfF16c(const float* x, uint16_t* out, float* r, size_t n);
// dst = float(in), or dst += float(in).
void halfToFloatF16c(const uint16_t* in, float* dst, size_t n, bool add);
// Bit l of byte j = !(x[8j + l] < 0), for n a multiple of 8.
void packSignsAvx2(const float* x, uint8_t* out, size_t n);
// Onebit over `blocks` consecutive blocks of `len` values each (a multiple of 8), the same bytes as quantize.cc's
// portable loops: x = g, or with error feedback x = (r += g); block b's scale sqrt(sum x*x / len) (the sum in 8
// lanes, lane l over elements l, l+8, ..., lanes added in order 0..7) as fp32 bytes at scales + 4b, its sign bits
// (as packSignsAvx2) at bits + b * len / 8, and with r: r = x - (x < 0 ? -scale : scale). Without feedback one
// pass per block; with it two, block b's second interleaved with block b+1's first (where the portable loops
// make four passes block by block).
void encodeOneBitBlocksAvx2(const float* g, float* r, size_t blocks, size_t len, uint8_t* scales, uint8_t* bits);
// dst[8j + l] (=|+=) bit(j, l) ? scale : -scale, for n a multiple of 8.
void unpackSignsAvx2(const uint8_t* bits, float* dst, size_t n, float scale, bool add);

}  // namespace simd
}  // namespace nrt
