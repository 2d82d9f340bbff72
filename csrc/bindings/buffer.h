// Turning a Python buffer (numpy array, torch CPU tensor's numpy view, memoryview) into a checked raw view.
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "common/error.h"
#include "common/types.h"

namespace nrt {

struct BufferView {
  void* ptr = nullptr;
  size_t count = 0;  // elements of `dtype`
  size_t bytes = 0;
  DataType dtype = DataType::kUInt8;
};

// `dtype` names the element type (bfloat16 arrives as a 2-byte buffer); the buffer must be C-contiguous.
// `shape`, when given, receives the buffer's own shape (in its own elements).
inline BufferView viewBuffer(pybind11::buffer& buf, const std::string& dtype, bool writable, const std::string& name,
                             std::vector<int64_t>* shape = nullptr) {
  pybind11::buffer_info info = buf.request(writable);
  if (shape) shape->assign(info.shape.begin(), info.shape.end());
  BufferView v;
  v.dtype = dtypeFromName(dtype);
  const size_t esize = dtypeSize(v.dtype);
  size_t expected = static_cast<size_t>(info.itemsize);
  for (ssize_t d = info.ndim - 1; d >= 0; --d) {
    NRT_CHECK_ARG(info.shape[d] <= 1 || info.strides[d] == static_cast<ssize_t>(expected),
                  "neptune_rt: tensor '", name, "' is not contiguous (strides do not match a C-contiguous layout); "
                  "pass a contiguous copy (numpy.ascontiguousarray / tensor.contiguous())");
    expected *= static_cast<size_t>(info.shape[d]);
  }
  v.bytes = static_cast<size_t>(info.size) * static_cast<size_t>(info.itemsize);
  NRT_CHECK_ARG(v.bytes % esize == 0, "neptune_rt: tensor '", name, "' has ", v.bytes,
                " bytes, not a whole number of ", dtype, " elements");
  v.ptr = info.ptr;
  v.count = v.bytes / esize;
  return v;
}

}  // namespace nrt
