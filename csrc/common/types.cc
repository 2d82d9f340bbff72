// Names and sizes of the element types and reduction operators (see types.h).
#include "common/types.h"

#include <stdexcept>

namespace nrt {

namespace {
struct DtypeInfo {
  DataType dtype;
  const char* name;
  size_t size;
};
constexpr DtypeInfo kDtypes[] = {
    {DataType::kFloat32, "float32", 4}, {DataType::kFloat64, "float64", 8}, {DataType::kFloat16, "float16", 2},
    {DataType::kBFloat16, "bfloat16", 2}, {DataType::kInt32, "int32", 4},   {DataType::kInt64, "int64", 8},
    {DataType::kUInt8, "uint8", 1},       {DataType::kInt8, "int8", 1},
};
constexpr const char* kOpNames[] = {"sum", "average", "min", "max"};
}  // namespace

size_t dtypeSize(DataType dtype) { return kDtypes[static_cast<int>(dtype)].size; }
const char* dtypeName(DataType dtype) { return kDtypes[static_cast<int>(dtype)].name; }
bool isFloating(DataType dtype) {
  return dtype == DataType::kFloat32 || dtype == DataType::kFloat64 || dtype == DataType::kFloat16 ||
         dtype == DataType::kBFloat16;
}

DataType dtypeFromName(const std::string& name) {
  for (const auto& info : kDtypes) {
    if (name == info.name) return info.dtype;
  }
  throw std::invalid_argument("unsupported dtype '" + name +
                              "' (supported: float32, float64, float16, bfloat16, int32, int64, uint8, int8)");
}

const char* reduceOpName(ReduceOp op) { return kOpNames[static_cast<int>(op)]; }
ReduceOp reduceOpFromName(const std::string& name) {
  for (int i = 0; i < 4; ++i) {
    if (name == kOpNames[i]) return static_cast<ReduceOp>(i);
  }
  throw std::invalid_argument("unsupported reduce op '" + name + "' (supported: sum, average, min, max)");
}

}  // namespace nrt
