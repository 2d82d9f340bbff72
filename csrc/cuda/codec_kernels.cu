// CUDA codec kernels (`..._kernel`) and their launchers: the same arithmetic and payload bytes as the CPU
// codecs (quantize.cc), op for op, with explicitly rounded intrinsics (__fmul_rn, __fadd_rn, ...) so nvcc
// cannot contract them into FMAs. Compared byte for byte with the CPU codecs by tests/test_codecs_cuda.py.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>

#include "codecs/format.h"
#include "codecs/payload_check.h"
#include "common/error.h"
#include "cuda/codecs_cuda.h"

#define NRT_CUDA_CHECK(call)                                                                                  \
  do {                                                                                                        \
    const cudaError_t nrt_err_ = (call);                                                                      \
    if (nrt_err_ != cudaSuccess)                                                                              \
      throw std::runtime_error(::nrt::concat("neptune_rt: CUDA call ", #call, " failed: ",                     \
                                             cudaGetErrorString(nrt_err_)));                                  \
  } while (0)

namespace nrt {
namespace cuda {

namespace cf = codec_format;

namespace {

constexpr int kThreads = 256;
constexpr unsigned kWarp = 32;
constexpr unsigned kWarpsPerBlock = kThreads / kWarp;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr unsigned kMaxGrid = 65535;
constexpr float kRoundMagic = 12582912.0f;  // see quantize.cc: (v + M) - M rounds to nearest even

// fp16 / bf16 bits exactly as common/half.h produces them (NaN -> 0x7e00 | sign, resp. quiet bf16 NaN).
__device__ uint16_t toHalfBits(float f) {
  const uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>(0x7e00u | ((u >> 16) & 0x8000u));
  return __half_as_ushort(__float2half_rn(f));
}
__device__ float fromHalfBits(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ uint16_t toBf16Bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
__device__ float fromBf16Bits(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }

__device__ int8_t quantizeOne(float x, float inv, float lv, bool stochastic, uint64_t key, uint64_t index) {
  float v = __fmul_rn(x, inv);
  v = v > -lv ? v : -lv;
  v = v < lv ? v : lv;
  if (stochastic) {
    float f = floorf(__fadd_rn(v, cf::uniform01(key, index)));
    f = f < lv ? f : lv;
    return static_cast<int8_t>(static_cast<int32_t>(f));
  }
  v = __fsub_rn(__fadd_rn(v, kRoundMagic), kRoundMagic);
  return static_cast<int8_t>(static_cast<int32_t>(v));
}

__global__ void encode_cast_kernel(uint8_t codec, const float* src, float* residual, size_t n, void* body) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    float x = src[i];
    if (residual != nullptr) x = __fadd_rn(residual[i], x);
    float d = x;
    if (codec == cf::kNone) {
      static_cast<float*>(body)[i] = x;
    } else if (codec == cf::kFp16) {
      const uint16_t h = toHalfBits(x);
      static_cast<uint16_t*>(body)[i] = h;
      d = fromHalfBits(h);
    } else {
      const uint16_t h = toBf16Bits(x);
      static_cast<uint16_t*>(body)[i] = h;
      d = fromBf16Bits(h);
    }
    if (residual != nullptr) residual[i] = codec == cf::kNone ? 0.0f : __fsub_rn(x, d);
  }
}

// One warp per codec block (a thread block runs kWarpsPerBlock of them), no shared memory and no block-wide
// barriers: (error feedback) -> scale -> quantize + pack -> residual update. The absmax is an integer max of the
// |x| bit patterns (order-free, so shuffles give the CPU's answer); the onebit sum of x*x keeps quantize.cc's order
// (lane l < 8 sums elements l, l+8, ...; the 8 partial sums are then added in lane order).
__global__ void encode_blocks_kernel(uint8_t codec, const float* src, float* residual, size_t n, uint32_t block,
                                     bool stochastic, uint64_t key, uint64_t indexBase, uint8_t* body) {
  const unsigned lane = threadIdx.x % kWarp;
  const uint64_t warpsInGrid = static_cast<uint64_t>(gridDim.x) * (blockDim.x / kWarp);
  const uint64_t nb = cf::numBlocks(n, block);
  float* scales = reinterpret_cast<float*>(body);
  uint8_t* packed = body + nb * sizeof(float);
  const float lv = cf::levels(codec);
  for (uint64_t b = static_cast<uint64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp; b < nb;
       b += warpsInGrid) {  // warp-uniform loop: every lane reaches every shuffle below
    const size_t off = b * block;
    const size_t len = n - off < block ? n - off : block;
    const float* x = src + off;
    float* r = residual != nullptr ? residual + off : nullptr;
    if (r != nullptr) {
      for (size_t i = lane; i < len; i += kWarp) r[i] = __fadd_rn(r[i], x[i]);
      __syncwarp();  // the lanes read each other's sums below
      x = r;
    }
    float scale, inv = 0.0f;
    if (codec == cf::kOneBit) {
      float acc = 0.0f;
      if (lane < 8)
        for (size_t i = lane; i < len; i += 8) acc = __fadd_rn(acc, __fmul_rn(x[i], x[i]));
      float s = __shfl_sync(kFullMask, acc, 0);
      for (int l = 1; l < 8; ++l) s = __fadd_rn(s, __shfl_sync(kFullMask, acc, l));
      scale = __fsqrt_rn(__fdiv_rn(s, static_cast<float>(len)));  // the block's RMS, as quantize.cc
    } else {
      uint32_t m = 0;
      for (size_t i = lane; i < len; i += kWarp) {
        const uint32_t a = __float_as_uint(x[i]) & 0x7fffffffu;
        m = a > m ? a : m;
      }
      for (int o = kWarp / 2; o > 0; o >>= 1) {
        const uint32_t other = __shfl_xor_sync(kFullMask, m, o);
        m = other > m ? other : m;
      }
      const float amax = __uint_as_float(m);
      scale = __fdiv_rn(amax, lv);
      inv = __fdiv_rn(lv, amax);
      if (amax < cf::kMinScaleInput) scale = inv = 0.0f;
    }
    if (lane == 0) scales[b] = scale;
    const uint64_t base = indexBase + off;
    if (codec == cf::kInt8) {
      for (size_t i = lane; i < len; i += kWarp) {
        const int8_t q = quantizeOne(x[i], inv, lv, stochastic, key, base + i);
        packed[off + i] = static_cast<uint8_t>(q);
        if (r != nullptr) r[i] = __fsub_rn(x[i], __fmul_rn(static_cast<float>(q), scale));
      }
    } else if (codec == cf::kInt4) {
      for (size_t j = lane; 2 * j < len; j += kWarp) {
        const size_t i0 = 2 * j, i1 = 2 * j + 1;
        const int8_t q0 = quantizeOne(x[i0], inv, lv, stochastic, key, base + i0);
        const int8_t q1 = i1 < len ? quantizeOne(x[i1], inv, lv, stochastic, key, base + i1) : 0;
        packed[off / 2 + j] = static_cast<uint8_t>((q0 & 0x0f) | ((q1 & 0x0f) << 4));
        if (r != nullptr) {
          r[i0] = __fsub_rn(x[i0], __fmul_rn(static_cast<float>(q0), scale));
          if (i1 < len) r[i1] = __fsub_rn(x[i1], __fmul_rn(static_cast<float>(q1), scale));
        }
      }
    } else {
      for (size_t j = lane; 8 * j < len; j += kWarp) {
        uint8_t bits = 0;
        for (size_t l = 0; l < 8 && 8 * j + l < len; ++l) {
          const size_t i = 8 * j + l;
          const bool negative = x[i] < 0.0f;
          bits |= static_cast<uint8_t>(!negative) << l;
          if (r != nullptr) r[i] = __fsub_rn(x[i], negative ? -scale : scale);
        }
        packed[off / 8 + j] = bits;
      }
    }
  }
}

__global__ void decode_cast_kernel(uint8_t codec, const void* body, size_t n, float* dst, bool add) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    float v;
    if (codec == cf::kNone) {
      v = static_cast<const float*>(body)[i];
    } else if (codec == cf::kFp16) {
      v = fromHalfBits(static_cast<const uint16_t*>(body)[i]);
    } else {
      v = fromBf16Bits(static_cast<const uint16_t*>(body)[i]);
    }
    dst[i] = add ? __fadd_rn(dst[i], v) : v;
  }
}

// Eight values per thread (block sizes are multiples of 8, so a group never straddles two scales): one scale
// load and one 1-, 4- or 8-byte packed load per group, and two float4 stores when dst is 16-byte aligned.
// The payload body is 4-byte aligned (checked by decode()), and so is every group's packed data.
__global__ void decode_blocks_kernel(uint8_t codec, const uint8_t* body, size_t n, uint32_t block, float* dst,
                                     bool add) {
  const uint64_t nb = cf::numBlocks(n, block);
  const float* scales = reinterpret_cast<const float*>(body);
  const uint8_t* packed = body + nb * sizeof(float);
  const bool vectorStore = (reinterpret_cast<uintptr_t>(dst) & 15u) == 0;
  const size_t groups = (n + 7) / 8;
  for (size_t g = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t i0 = 8 * g;
    const size_t len = n - i0 < 8 ? n - i0 : 8;  // only the last group is short
    const float scale = scales[i0 / block];
    float v[8];
    if (codec == cf::kInt8) {
      uint32_t w[2] = {0, 0};
      if (len == 8) {
        w[0] = *reinterpret_cast<const uint32_t*>(packed + i0);
        w[1] = *reinterpret_cast<const uint32_t*>(packed + i0 + 4);
      } else {
        for (size_t l = 0; l < len; ++l) w[l / 4] |= static_cast<uint32_t>(packed[i0 + l]) << (8 * (l % 4));
      }
      for (int l = 0; l < 8; ++l) {
        const int8_t q = static_cast<int8_t>(static_cast<uint8_t>(w[l / 4] >> (8 * (l % 4))));
        v[l] = __fmul_rn(static_cast<float>(q), scale);
      }
    } else if (codec == cf::kInt4) {
      uint32_t w = 0;  // element l is the nibble at bits 4l (low nibble first, as the encoder packs)
      if (len == 8) {
        w = *reinterpret_cast<const uint32_t*>(packed + i0 / 2);
      } else {
        for (size_t b = 0; 2 * b < len; ++b) w |= static_cast<uint32_t>(packed[i0 / 2 + b]) << (8 * b);
      }
      for (int l = 0; l < 8; ++l) {
        const int8_t q = static_cast<int8_t>(static_cast<int8_t>(static_cast<uint8_t>((w >> (4 * l)) << 4)) >> 4);
        v[l] = __fmul_rn(static_cast<float>(q), scale);
      }
    } else {
      const uint8_t bits = packed[i0 / 8];
      for (int l = 0; l < 8; ++l) v[l] = ((bits >> l) & 1u) ? scale : -scale;
    }
    float* out = dst + i0;
    if (len == 8 && vectorStore) {
      float4* out4 = reinterpret_cast<float4*>(out);
      if (add) {
        const float4 a = out4[0], b = out4[1];
        v[0] = __fadd_rn(a.x, v[0]);
        v[1] = __fadd_rn(a.y, v[1]);
        v[2] = __fadd_rn(a.z, v[2]);
        v[3] = __fadd_rn(a.w, v[3]);
        v[4] = __fadd_rn(b.x, v[4]);
        v[5] = __fadd_rn(b.y, v[5]);
        v[6] = __fadd_rn(b.z, v[6]);
        v[7] = __fadd_rn(b.w, v[7]);
      }
      out4[0] = make_float4(v[0], v[1], v[2], v[3]);
      out4[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
      for (size_t l = 0; l < len; ++l) out[l] = add ? __fadd_rn(out[l], v[l]) : v[l];
    }
  }
}

unsigned gridFor(uint64_t work) {
  return static_cast<unsigned>(std::min<uint64_t>(std::max<uint64_t>(work, 1), kMaxGrid));
}

void checkAligned(const void* p, const char* what) {
  NRT_CHECK_ARG((reinterpret_cast<uintptr_t>(p) & 3u) == 0, "neptune_rt: CUDA codec ", what, " pointer 0x", std::hex,
                reinterpret_cast<uintptr_t>(p), std::dec, " is not 4-byte aligned");
}

void finishLaunch() {
  NRT_CUDA_CHECK(cudaGetLastError());
  NRT_CUDA_CHECK(cudaDeviceSynchronize());
}

// Launchers.
void encodeCast(uint8_t codec, const float* src, float* residual, size_t n, void* body) {
  encode_cast_kernel<<<gridFor((n + kThreads - 1) / kThreads), kThreads>>>(codec, src, residual, n, body);
  finishLaunch();
}

void encodeBlocks(uint8_t codec, const float* src, float* residual, size_t n, uint32_t block, bool stochastic,
                  uint64_t key, uint64_t indexBase, void* body) {
  const uint64_t grid = (cf::numBlocks(n, block) + kWarpsPerBlock - 1) / kWarpsPerBlock;
  encode_blocks_kernel<<<gridFor(grid), kThreads>>>(codec, src, residual, n, block, stochastic, key, indexBase,
                                                    static_cast<uint8_t*>(body));
  finishLaunch();
}

void decodeCast(uint8_t codec, const void* body, size_t n, float* dst, bool add) {
  decode_cast_kernel<<<gridFor((n + kThreads - 1) / kThreads), kThreads>>>(codec, body, n, dst, add);
  finishLaunch();
}

void decodeBlocks(uint8_t codec, const void* body, size_t n, uint32_t block, float* dst, bool add) {
  const uint64_t groups = (n + 7) / 8;
  decode_blocks_kernel<<<gridFor((groups + kThreads - 1) / kThreads), kThreads>>>(
      codec, static_cast<const uint8_t*>(body), n, block, dst, add);
  finishLaunch();
}

}  // namespace

int deviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver / no device: report none, leave no sticky error behind
    return 0;
  }
  return n;
}

size_t encode(const EncodeArgs& a, const float* src, size_t n, float* residual, void* out, size_t outBytes) {
  NRT_CHECK_ARG(a.codec < cf::kNumCodecs, "neptune_rt: unknown codec id ", int(a.codec));
  cf::checkBlock(a.codec, a.blockSize);
  NRT_CHECK_ARG(n <= cf::kMaxCount, "neptune_rt: codec count ", n, " is above the limit ", cf::kMaxCount);
  const bool blockCodec = cf::isBlockCodec(a.codec);
  const uint32_t block = blockCodec ? a.blockSize : 0;
  const size_t bytes = cf::payloadBytesFor(a.codec, n, block);
  NRT_CHECK_ARG(outBytes >= bytes, "neptune_rt: CUDA encode of ", n, " values with codec ", cf::codecNameOf(a.codec),
                " needs ", bytes, " bytes of output, got ", outBytes);
  NRT_CHECK_ARG(n == 0 || src != nullptr, "neptune_rt: CUDA encode got a null source");
  checkAligned(src, "source");
  checkAligned(residual, "residual");
  checkAligned(out, "payload");
  const bool stochastic = a.stochastic && (a.codec == cf::kInt8 || a.codec == cf::kInt4);
  cf::Header h{};
  h.magic = cf::kMagic;
  h.version = cf::kVersion;
  h.codec = a.codec;
  h.flags = static_cast<uint8_t>((stochastic ? cf::kFlagStochastic : 0) | (residual ? cf::kFlagErrorFeedback : 0));
  h.count = n;
  h.blockSize = block;
  char* base = static_cast<char*>(out);
  NRT_CUDA_CHECK(cudaMemcpy(base, &h, sizeof(h), cudaMemcpyHostToDevice));
  const size_t pad = cf::paddingBytes(h);
  if (pad > 0) NRT_CUDA_CHECK(cudaMemset(base + bytes - pad, 0, pad));
  if (n == 0) return bytes;
  void* body = base + cf::kHeaderBytes;
  if (blockCodec) {
    const uint64_t key = stochastic ? cf::streamKey(a.seed, a.step, a.rank) : 0;
    encodeBlocks(a.codec, src, residual, n, block, stochastic, key, a.indexBase, body);
  } else {
    encodeCast(a.codec, src, residual, n, body);
  }
  return bytes;
}

void decode(const void* payload, size_t bytes, float* dst, size_t dstCount, bool add) {
  NRT_CHECK_ARG(bytes >= cf::kHeaderBytes, "neptune_rt: truncated payload: ", bytes, " bytes is shorter than the ",
                cf::kHeaderBytes, "-byte header");
  checkAligned(payload, "payload");
  checkAligned(dst, "destination");
  cf::Header h;
  NRT_CUDA_CHECK(cudaMemcpy(&h, payload, sizeof(h), cudaMemcpyDeviceToHost));
  cf::checkHeader(h, bytes);
  const size_t pad = cf::paddingBytes(h);
  unsigned char tail[4] = {0, 0, 0, 0};
  if (pad > 0)
    NRT_CUDA_CHECK(cudaMemcpy(tail, static_cast<const char*>(payload) + bytes - pad, pad, cudaMemcpyDeviceToHost));
  NRT_CHECK_ARG((tail[0] | tail[1] | tail[2] | tail[3]) == 0, "neptune_rt: payload padding is not zero");
  NRT_CHECK_ARG(h.count == dstCount, "neptune_rt: payload holds ", h.count, " values but the destination has ",
                dstCount);
  if (h.count == 0) return;
  const void* body = static_cast<const char*>(payload) + cf::kHeaderBytes;
  if (cf::isBlockCodec(h.codec)) {
    decodeBlocks(h.codec, body, h.count, h.blockSize, dst, add);
  } else {
    decodeCast(h.codec, body, h.count, dst, add);
  }
}

}  // namespace cuda
}  // namespace nrt
