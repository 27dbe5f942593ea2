// TensorView: a borrowed view (data, shape, strides, dtype, device) of an
// array passed from Python, read through DLPack without a copy.
//
// Why not nb::ndarray alone: it imports through the array's __dlpack__()
// method, which for torch is Python code that builds a capsule, about 6 us
// per argument here (a kernel call takes four to eight arrays). Recent torch
// (2.13 here) also publishes DLPack's C exchange API (DLPack 1.3: a capsule
// named "dlpack_exchange_api" in the type attribute __dlpack_c_exchange_api__),
// whose dltensor_from_py_object_no_sync fills a DLTensor in C, with no
// allocation. The view is valid while the call runs: the caller's Python
// objects keep the tensors alive. Arrays without that API (older torch,
// numpy, ...) go through nb::ndarray, which the caster then keeps alive for
// the call.
#pragma once
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstddef>
#include <cstdint>

namespace dcn_bind {

namespace nb = nanobind;

// The C exchange API's layout, from the DLPack 1.x specification
// (dlpack.h: DLPackExchangeAPIHeader / DLPackExchangeAPI). Only the
// function this module calls is typed; the header's major version is
// checked before use, as the specification asks.
struct DLPackExchangeAPI {
  struct Version {
    uint32_t major, minor;
  } version;
  void* prev_api;
  void* managed_tensor_allocator;
  void* managed_tensor_from_py_object_no_sync;
  void* managed_tensor_to_py_object_no_sync;
  int (*dltensor_from_py_object_no_sync)(void* py_object, nb::dlpack::dltensor* out);
  void* current_work_stream;
};

class TensorView {
 public:
  static constexpr int kMaxRank = 8;

  size_t ndim() const { return size_t(ndim_); }
  int64_t shape(size_t i) const { return shape_[i]; }
  int64_t stride(size_t i) const { return stride_[i]; }
  nb::dlpack::dtype dtype() const { return dtype_; }
  int32_t device_type() const { return device_.device_type; }
  int32_t device_id() const { return device_.device_id; }
  void* data() const { return data_; }
  size_t nbytes() const {
    size_t n = (size_t(dtype_.bits) * dtype_.lanes + 7) / 8;
    for (int i = 0; i < ndim_; ++i) n *= size_t(shape_[i]);
    return n;
  }

  // From a filled DLTensor (strides may be null: C-contiguous). False if
  // the rank exceeds kMaxRank.
  bool assign(const nb::dlpack::dltensor& t) {
    if (t.ndim < 0 || t.ndim > kMaxRank) return false;
    ndim_ = t.ndim;
    dtype_ = t.dtype;
    device_ = t.device;
    data_ = static_cast<char*>(t.data) + t.byte_offset;
    int64_t contiguous = 1;
    for (int i = ndim_ - 1; i >= 0; --i) {
      shape_[i] = t.shape[i];
      stride_[i] = t.strides ? t.strides[i] : contiguous;
      contiguous *= t.shape[i];
    }
    return true;
  }

  template <typename... Ts>
  bool assign(const nb::ndarray<Ts...>& a) {
    if (a.ndim() > size_t(kMaxRank)) return false;
    ndim_ = int(a.ndim());
    dtype_ = a.dtype();
    device_ = nb::dlpack::device{a.device_type(), a.device_id()};
    data_ = const_cast<void*>(static_cast<const void*>(a.data()));
    for (int i = 0; i < ndim_; ++i) {
      shape_[i] = int64_t(a.shape(size_t(i)));
      stride_[i] = int64_t(a.stride(size_t(i)));
    }
    return true;
  }

 private:
  void* data_ = nullptr;
  int ndim_ = 0;
  int64_t shape_[kMaxRank] = {};
  int64_t stride_[kMaxRank] = {};
  nb::dlpack::dtype dtype_{};
  nb::dlpack::device device_{};
};

// The exchange API of `type`, or null. Looked up on the type (where the
// specification puts it) and remembered for the last few types seen:
// torch.Tensor and nn.Parameter are the common ones. Called with the GIL.
inline const DLPackExchangeAPI* exchange_api(PyTypeObject* type) {
  struct Entry {
    PyTypeObject* type;
    const DLPackExchangeAPI* api;
  };
  static Entry cache[4] = {};
  static int next = 0;
  for (const Entry& e : cache)
    if (e.type == type) return e.api;
  const DLPackExchangeAPI* api = nullptr;
  PyObject* capsule = PyObject_GetAttrString(reinterpret_cast<PyObject*>(type),
                                             "__dlpack_c_exchange_api__");
  if (capsule == nullptr) {
    PyErr_Clear();
  } else {
    auto* p = static_cast<const DLPackExchangeAPI*>(
        PyCapsule_GetPointer(capsule, "dlpack_exchange_api"));
    if (p == nullptr) PyErr_Clear();
    else if (p->version.major == 1 && p->dltensor_from_py_object_no_sync != nullptr) api = p;
    Py_DECREF(capsule);
  }
  // The type is kept alive by the entry (types are rarely collected; one
  // reference per cached type is the price of a pointer comparison).
  Py_INCREF(reinterpret_cast<PyObject*>(type));
  if (cache[next].type != nullptr) Py_DECREF(reinterpret_cast<PyObject*>(cache[next].type));
  cache[next] = Entry{type, api};
  next = (next + 1) % 4;
  return api;
}

}  // namespace dcn_bind

namespace nanobind::detail {

template <>
struct type_caster<dcn_bind::TensorView> {
  NB_TYPE_CASTER(dcn_bind::TensorView, const_name("Tensor"))

  bool from_python(handle src, uint8_t flags, cleanup_list* cleanup) noexcept {
    if (src.is_none()) return false;
    if (const dcn_bind::DLPackExchangeAPI* api = dcn_bind::exchange_api(Py_TYPE(src.ptr()))) {
      dlpack::dltensor t;
      if (api->dltensor_from_py_object_no_sync(src.ptr(), &t) == 0) return value.assign(t);
      PyErr_Clear();  // e.g. a tensor DLPack cannot describe: try the general path
    }
    make_caster<ndarray<>> fallback;
    if (!fallback.from_python(src, flags, cleanup)) return false;
    owner = fallback.value;  // keeps the imported capsule alive for the call
    return value.assign(owner);
  }

  ndarray<> owner;
};

}  // namespace nanobind::detail
