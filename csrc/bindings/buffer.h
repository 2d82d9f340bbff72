// Turning a Python buffer (numpy array, torch CPU tensor's numpy view, memoryview) into a checked raw view.
#pragma once

#include <pybind11/numpy.h>
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
// The checks every way of viewing ends with: whole elements of `dtype`.
inline BufferView checkedView(void* ptr, size_t bytes, const std::string& dtype, const std::string& name) {
  BufferView v;
  v.dtype = dtypeFromName(dtype);
  const size_t esize = dtypeSize(v.dtype);
  NRT_CHECK_ARG(bytes % esize == 0, "neptune_rt: tensor '", name, "' has ", bytes, " bytes, not a whole number of ",
                dtype, " elements");
  v.ptr = ptr;
  v.bytes = bytes;
  v.count = bytes / esize;
  return v;
}

inline BufferView viewBuffer(pybind11::buffer& buf, const std::string& dtype, bool writable, const std::string& name,
                             std::vector<int64_t>* shape = nullptr) {
  namespace npd = pybind11::detail;
  // A numpy array (not a subclass) that is C-contiguous, and writable if it must be: read from the array itself.
  // Anything else, and any refusal, takes the buffer protocol below (its errors are the ones callers report).
  if (Py_TYPE(buf.ptr()) == npd::npy_api::get().PyArray_Type_) {
    const auto array = pybind11::reinterpret_borrow<pybind11::array>(buf);
    const int flags = array.flags();
    if ((flags & npd::npy_api::NPY_ARRAY_C_CONTIGUOUS_) &&
        (!writable || (flags & npd::npy_api::NPY_ARRAY_WRITEABLE_))) {
      if (shape) shape->assign(array.shape(), array.shape() + array.ndim());
      return checkedView(const_cast<void*>(array.data()), static_cast<size_t>(array.nbytes()), dtype, name);
    }
  }
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
  size_t expected = static_cast<size_t>(view.itemsize);
  // No strides (ctypes arrays, say) means C-contiguous.
  for (int d = view.strides ? view.ndim - 1 : -1; d >= 0; --d) {
    NRT_CHECK_ARG(view.shape[d] <= 1 || view.strides[d] == static_cast<Py_ssize_t>(expected),
                  "neptune_rt: tensor '", name, "' is not contiguous (strides do not match a C-contiguous layout); "
                  "pass a contiguous copy (numpy.ascontiguousarray / tensor.contiguous())");
    expected *= static_cast<size_t>(view.shape[d]);
  }
  return checkedView(view.buf, static_cast<size_t>(view.len), dtype, name);
}

}  // namespace nrt
