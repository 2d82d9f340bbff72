// Element types and reduction operators shared by collectives, codecs and the engine.
// Exercised by every collective test (tests/test_collectives.py sweeps all dtypes x ops).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace nrt {

enum class DataType : uint8_t { kFloat32 = 0, kFloat64, kFloat16, kBFloat16, kInt32, kInt64, kUInt8, kInt8 };
enum class ReduceOp : uint8_t { kSum = 0, kAverage, kMin, kMax };

size_t dtypeSize(DataType dtype);
const char* dtypeName(DataType dtype);
DataType dtypeFromName(const std::string& name);  // throws std::invalid_argument naming the value
bool isFloating(DataType dtype);

const char* reduceOpName(ReduceOp op);
ReduceOp reduceOpFromName(const std::string& name);

}  // namespace nrt
