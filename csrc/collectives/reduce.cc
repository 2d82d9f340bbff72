// Reduction kernels (see reduce.h). Plain loops the compiler vectorizes; target_clones adds an AVX2 copy
// chosen at load time, so one binary is portable and still uses wide registers where the CPU has them.
#include "collectives/reduce.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "common/error.h"
#include "codecs/format.h"
#include "codecs/quantize.h"
#include "common/half.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define NRT_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define NRT_MULTIVERSION
#endif

namespace nrt {

namespace {

#define NRT_DEFINE_REDUCE(NAME, T, EXPR)                                                              \
  NRT_MULTIVERSION void NAME(T* __restrict dst, const T* __restrict src, size_t n) {                   \
    for (size_t i = 0; i < n; ++i) {                                                                   \
      const T a = dst[i];                                                                              \
      const T b = src[i];                                                                              \
      dst[i] = (EXPR);                                                                                 \
    }                                                                                                  \
  }

NRT_DEFINE_REDUCE(sumF32, float, a + b)
NRT_DEFINE_REDUCE(minF32, float, b < a ? b : a)
NRT_DEFINE_REDUCE(maxF32, float, b > a ? b : a)
NRT_DEFINE_REDUCE(sumF64, double, a + b)
NRT_DEFINE_REDUCE(minF64, double, b < a ? b : a)
NRT_DEFINE_REDUCE(maxF64, double, b > a ? b : a)
NRT_DEFINE_REDUCE(sumI32, int32_t, a + b)
NRT_DEFINE_REDUCE(minI32, int32_t, b < a ? b : a)
NRT_DEFINE_REDUCE(maxI32, int32_t, b > a ? b : a)
NRT_DEFINE_REDUCE(sumI64, int64_t, a + b)
NRT_DEFINE_REDUCE(minI64, int64_t, b < a ? b : a)
NRT_DEFINE_REDUCE(maxI64, int64_t, b > a ? b : a)
NRT_DEFINE_REDUCE(sumU8, uint8_t, static_cast<uint8_t>(a + b))
NRT_DEFINE_REDUCE(minU8, uint8_t, b < a ? b : a)
NRT_DEFINE_REDUCE(maxU8, uint8_t, b > a ? b : a)
NRT_DEFINE_REDUCE(sumI8, int8_t, static_cast<int8_t>(a + b))
NRT_DEFINE_REDUCE(minI8, int8_t, b < a ? b : a)
NRT_DEFINE_REDUCE(maxI8, int8_t, b > a ? b : a)

// Half types: widen both operands to fp32, combine, round once.
#define NRT_DEFINE_REDUCE_HALF(NAME, TO_F, FROM_F, EXPR)                                              \
  NRT_MULTIVERSION void NAME(uint16_t* __restrict dst, const uint16_t* __restrict src, size_t n) {     \
    for (size_t i = 0; i < n; ++i) {                                                                   \
      const float a = TO_F(dst[i]);                                                                    \
      const float b = TO_F(src[i]);                                                                    \
      dst[i] = FROM_F(EXPR);                                                                           \
    }                                                                                                  \
  }

NRT_DEFINE_REDUCE_HALF(sumF16, halfToFloat, floatToHalf, a + b)
NRT_DEFINE_REDUCE_HALF(minF16, halfToFloat, floatToHalf, b < a ? b : a)
NRT_DEFINE_REDUCE_HALF(maxF16, halfToFloat, floatToHalf, b > a ? b : a)
NRT_DEFINE_REDUCE_HALF(sumBF16, bf16ToFloat, floatToBf16, a + b)
NRT_DEFINE_REDUCE_HALF(minBF16, bf16ToFloat, floatToBf16, b < a ? b : a)
NRT_DEFINE_REDUCE_HALF(maxBF16, bf16ToFloat, floatToBf16, b > a ? b : a)

#if defined(__x86_64__) && defined(__GNUC__)
// fp16 with the F16C conversion instructions (8 lanes at a time); the scalar loop above is the fallback
// and the tail. Same results: both widen exactly and round the fp32 result to nearest even once.
#define NRT_DEFINE_REDUCE_F16C(NAME, SCALAR, VEXPR)                                                   \
  __attribute__((target("avx2,f16c"))) void NAME(uint16_t* __restrict dst, const uint16_t* __restrict src, \
                                                 size_t n) {                                          \
    size_t i = 0;                                                                                      \
    for (; i + 8 <= n; i += 8) {                                                                       \
      const __m256 a = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(dst + i)));     \
      const __m256 b = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));     \
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(VEXPR, _MM_FROUND_TO_NEAREST_INT)); \
    }                                                                                                  \
    SCALAR(dst + i, src + i, n - i);                                                                   \
  }
NRT_DEFINE_REDUCE_F16C(sumF16Fast, sumF16, _mm256_add_ps(a, b))
NRT_DEFINE_REDUCE_F16C(minF16Fast, minF16, _mm256_min_ps(b, a))
NRT_DEFINE_REDUCE_F16C(maxF16Fast, maxF16, _mm256_max_ps(b, a))
const bool kHasF16c = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#else
const bool kHasF16c = false;
#define sumF16Fast sumF16
#define minF16Fast minF16
#define maxF16Fast maxF16
#endif

template <typename T, typename F3>
void dispatch3(void* dst, const void* src, size_t n, ReduceOp op, F3 sum, F3 mn, F3 mx) {
  T* d = static_cast<T*>(dst);
  const T* s = static_cast<const T*>(src);
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAverage:
      sum(d, s, n);
      return;
    case ReduceOp::kMin:
      mn(d, s, n);
      return;
    case ReduceOp::kMax:
      mx(d, s, n);
      return;
  }
}

template <typename T>
void scaleT(T* buf, size_t n, double factor) {
  const T f = static_cast<T>(factor);
  for (size_t i = 0; i < n; ++i) buf[i] = buf[i] * f;
}

template <typename T>
void divideT(T* buf, size_t n, int divisor) {
  const T d = static_cast<T>(divisor);
  for (size_t i = 0; i < n; ++i) buf[i] = static_cast<T>(buf[i] / d);
}

}  // namespace

void reduceInto(void* dst, const void* src, size_t n, DataType dtype, ReduceOp op) {
  switch (dtype) {
    case DataType::kFloat32: return dispatch3<float>(dst, src, n, op, sumF32, minF32, maxF32);
    case DataType::kFloat64: return dispatch3<double>(dst, src, n, op, sumF64, minF64, maxF64);
    case DataType::kInt32: return dispatch3<int32_t>(dst, src, n, op, sumI32, minI32, maxI32);
    case DataType::kInt64: return dispatch3<int64_t>(dst, src, n, op, sumI64, minI64, maxI64);
    case DataType::kUInt8: return dispatch3<uint8_t>(dst, src, n, op, sumU8, minU8, maxU8);
    case DataType::kInt8: return dispatch3<int8_t>(dst, src, n, op, sumI8, minI8, maxI8);
    case DataType::kFloat16:
      if (kHasF16c) return dispatch3<uint16_t>(dst, src, n, op, sumF16Fast, minF16Fast, maxF16Fast);
      return dispatch3<uint16_t>(dst, src, n, op, sumF16, minF16, maxF16);
    case DataType::kBFloat16: return dispatch3<uint16_t>(dst, src, n, op, sumBF16, minBF16, maxBF16);
  }
}

void scaleInPlace(void* buf, size_t n, DataType dtype, double factor) {
  if (factor == 1.0) return;
  switch (dtype) {
    case DataType::kFloat32: return scaleT(static_cast<float*>(buf), n, factor);
    case DataType::kFloat64: return scaleT(static_cast<double*>(buf), n, factor);
    case DataType::kFloat16: {
      auto* h = static_cast<uint16_t*>(buf);
      const float f = static_cast<float>(factor);
      for (size_t i = 0; i < n; ++i) h[i] = floatToHalf(halfToFloat(h[i]) * f);
      return;
    }
    case DataType::kBFloat16: {
      auto* h = static_cast<uint16_t*>(buf);
      const float f = static_cast<float>(factor);
      for (size_t i = 0; i < n; ++i) h[i] = floatToBf16(bf16ToFloat(h[i]) * f);
      return;
    }
    default:
      throw std::invalid_argument(concat("neptune_rt: cannot scale a ", dtypeName(dtype), " tensor by ", factor,
                                         " (prescale/postscale need a floating dtype)"));
  }
}

void finalizeAverage(void* buf, size_t n, DataType dtype, int divisor) {
  if (divisor == 1) return;
  switch (dtype) {
    case DataType::kInt32: return divideT(static_cast<int32_t*>(buf), n, divisor);
    case DataType::kInt64: return divideT(static_cast<int64_t*>(buf), n, divisor);
    case DataType::kUInt8: return divideT(static_cast<uint8_t*>(buf), n, divisor);
    case DataType::kInt8: return divideT(static_cast<int8_t*>(buf), n, divisor);
    default: return scaleInPlace(buf, n, dtype, 1.0 / divisor);
  }
}

}  // namespace nrt

namespace nrt {

void convertToF32(const void* src, DataType dtype, size_t n, float* dst) {
  switch (dtype) {
    case DataType::kFloat32: std::copy_n(static_cast<const float*>(src), n, dst); return;
    case DataType::kFloat64: {
      const double* s = static_cast<const double*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
      return;
    }
    case DataType::kFloat16:  // the codecs' cast loops (vectorized, F16C where the CPU has it)
      return quantize::decodeCast(codec_format::kFp16, src, n, dst, /*add=*/false);
    case DataType::kBFloat16:
      return quantize::decodeCast(codec_format::kBf16, src, n, dst, /*add=*/false);
    default:
      throw std::invalid_argument(concat("neptune_rt: compression needs a floating dtype, got ", dtypeName(dtype)));
  }
}

void convertFromF32(const float* src, DataType dtype, size_t n, void* dst) {
  switch (dtype) {
    case DataType::kFloat32: std::copy_n(src, n, static_cast<float*>(dst)); return;
    case DataType::kFloat64: {
      double* d = static_cast<double*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = src[i];
      return;
    }
    case DataType::kFloat16:
      return quantize::encodeCast(codec_format::kFp16, src, /*residual=*/nullptr, n, dst);
    case DataType::kBFloat16:
      return quantize::encodeCast(codec_format::kBf16, src, /*residual=*/nullptr, n, dst);
    default:
      throw std::invalid_argument(concat("neptune_rt: compression needs a floating dtype, got ", dtypeName(dtype)));
  }
}

}  // namespace nrt
