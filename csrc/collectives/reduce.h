// Elementwise reduction kernels used by every collective: dst = op(dst, src). fp16/bf16 are widened to
// fp32 for each addition and rounded once. Average reduces as a sum; finalizeAverage divides afterwards.
#pragma once

#include <cstddef>

#include "common/types.h"

namespace nrt {

void reduceInto(void* dst, const void* src, size_t count, DataType dtype, ReduceOp op);
// Divide by `divisor` (integers truncate toward zero, as C++ division does).
void finalizeAverage(void* buf, size_t count, DataType dtype, int divisor);
// buf *= factor (floating types only; integers are left unscaled when factor == 1, rejected otherwise).
void scaleInPlace(void* buf, size_t count, DataType dtype, double factor);

}  // namespace nrt

namespace nrt {
// Widen any floating dtype to fp32 (the codecs' input) and narrow back (round to nearest even).
void convertToF32(const void* src, DataType dtype, size_t count, float* dst);
void convertFromF32(const float* src, DataType dtype, size_t count, void* dst);
}  // namespace nrt
