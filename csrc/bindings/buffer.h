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
  // The buffer protocol itself, not pybind11::buffer_info (whose shape and strides vectors and format string cost
  // three allocations per tensor of a grouped submission); released on every path, as buffer_info would be.
  Py_buffer view;
  if (PyObject_GetBuffer(buf.ptr(), &view, PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) != 0)
    throw pybind11::error_already_set();
  struct Release {
    Py_buffer* v;
    ~Release() { PyBuffer_Release(v); }
  } release{&view};
  if (shape) shape->assign(view.shape, view.shape + view.ndim);
  BufferView v;
  v.dtype = dtypeFromName(dtype);
  const size_t esize = dtypeSize(v.dtype);
  size_t expected = static_cast<size_t>(view.itemsize);
  for (int d = view.ndim - 1; d >= 0; --d) {
    NRT_CHECK_ARG(view.shape[d] <= 1 || view.strides[d] == static_cast<Py_ssize_t>(expected),
                  "neptune_rt: tensor '", name, "' is not contiguous (strides do not match a C-contiguous layout); "
                  "pass a contiguous copy (numpy.ascontiguousarray / tensor.contiguous())");
    expected *= static_cast<size_t>(view.shape[d]);
  }
  v.bytes = static_cast<size_t>(view.len);
  NRT_CHECK_ARG(v.bytes % esize == 0, "neptune_rt: tensor '", name, "' has ", v.bytes,
                " bytes, not a whole number of ", dtype, " elements");
  v.ptr = view.buf;
  v.count = v.bytes / esize;
  return v;
}

}  // namespace nrt
