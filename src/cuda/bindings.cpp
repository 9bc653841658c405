// infolens._native_cuda: binds the CUDA engine. A machine without a GPU imports it and is told
// "no device" by device_count() == 0.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "check.cuh"
#include "device.hpp"
#include "kernel/matmul.hpp"

namespace py = pybind11;
using namespace infolens::cuda;

namespace {

namespace kern = infolens::cuda::kernel;

kern::Dtype parse_dtype(const std::string& dtype) {
  if (dtype == "float32") return kern::Dtype::float32;
  if (dtype == "float64") return kern::Dtype::float64;
  throw std::invalid_argument("dtype: must be \"float32\" or \"float64\", got \"" + dtype + "\"");
}

void check_pointer(std::uintptr_t ptr, std::size_t align, const std::string& name) {
  if (ptr == 0) throw std::invalid_argument(name + ": null device pointer");
  if (ptr % align != 0)
    throw std::invalid_argument(name + ": device pointer not aligned to " + std::to_string(align) +
                                " bytes");
}

// The factors of a product kernel, checked; then n, the dtype and the device.
std::vector<kern::Factor> parse_factors(const std::vector<std::string>& kinds,
                                        const std::vector<std::uintptr_t>& features,
                                        const std::vector<int64_t>& dims, int64_t n,
                                        kern::Dtype dtype) {
  constexpr int64_t kMax = int64_t(1) << 30;
  if (kinds.empty()) throw std::invalid_argument("kinds: empty factor list");
  if (kinds.size() > std::size_t(kern::kMaxFactors))
    throw std::invalid_argument("kinds: at most " + std::to_string(kern::kMaxFactors) +
                                " factors, got " + std::to_string(kinds.size()));
  if (features.size() != kinds.size())
    throw std::invalid_argument("features: " + std::to_string(features.size()) +
                                " pointers for " + std::to_string(kinds.size()) + " kinds");
  if (dims.size() != kinds.size())
    throw std::invalid_argument("dims: " + std::to_string(dims.size()) + " dims for " +
                                std::to_string(kinds.size()) + " kinds");
  if (n < 1 || n > kMax)
    throw std::invalid_argument("n: must be in [1, 2^30], got " + std::to_string(n));
  const std::size_t item = dtype == kern::Dtype::float32 ? 4 : 8;
  std::vector<kern::Factor> factors;
  for (std::size_t f = 0; f < kinds.size(); ++f) {
    kern::Kind kind;
    if (kinds[f] == "gaussian")
      kind = kern::Kind::gaussian;
    else if (kinds[f] == "laplacian")
      kind = kern::Kind::laplacian;
    else if (kinds[f] == "linear")
      kind = kern::Kind::linear;
    else
      throw std::invalid_argument("kinds: unknown kernel \"" + kinds[f] +
                                  "\" (gaussian, laplacian, linear)");
    if (dims[f] < 1 || dims[f] > kMax)
      throw std::invalid_argument("dims: must be in [1, 2^30], got " + std::to_string(dims[f]));
    check_pointer(features[f], item, "features");
    factors.push_back({kind, reinterpret_cast<const void*>(features[f]), dims[f]});
  }
  return factors;
}

void check_device(int device) {
  const int count = device_count();
  if (device < 0 || device >= count)
    throw std::invalid_argument("device: index " + std::to_string(device) + " out of range; " +
                                (count == 0 ? std::string("no CUDA device is present")
                                            : std::to_string(count) + " device(s) present"));
}

cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

}  // namespace

PYBIND11_MODULE(_native_cuda, m) {
  m.doc() = "infolens CUDA engine";
  auto& cuda_error = py::register_exception<CudaError>(m, "CudaError", PyExc_RuntimeError);
  // Out of device memory: catchable as CudaError and as MemoryError.
  py::register_exception<kern::CudaOutOfMemory>(
      m, "CudaOutOfMemory", py::make_tuple(cuda_error, py::handle(PyExc_MemoryError)));
  m.def("device_count", &device_count, "number of usable CUDA devices (0 without a GPU or driver)");
  m.def("runtime_version", &runtime_version, "CUDA runtime version this module was linked with");
  m.def(
      "device_info",
      [](int device) {
        const DeviceInfo info = device_info(device);
        py::dict d;
        d["name"] = info.name;
        d["compute_capability"] = py::make_tuple(info.major, info.minor);
        d["multiprocessors"] = info.multiprocessors;
        d["total_memory"] = info.total_memory;
        d["runtime_version"] = info.runtime_version;
        d["driver_version"] = info.driver_version;
        return d;
      },
      py::arg("device") = 0, "name, compute capability, SM count and memory of one device");

  m.def(
      "kernel_matmul",
      [](const std::vector<std::string>& kinds, const std::vector<std::uintptr_t>& features,
         const std::vector<int64_t>& dims, int64_t n, const std::string& dtype, std::uintptr_t v,
         int64_t b, std::uintptr_t out, std::uintptr_t stream, int device) {
        const kern::Dtype dt = parse_dtype(dtype);
        const std::vector<kern::Factor> factors = parse_factors(kinds, features, dims, n, dt);
        if (b < 1 || b > (int64_t(1) << 30))
          throw std::invalid_argument("b: must be in [1, 2^30], got " + std::to_string(b));
        check_pointer(v, 8, "v");
        check_pointer(out, 8, "out");
        check_device(device);
        py::gil_scoped_release release;
        kern::kernel_matmul(factors, n, dt, reinterpret_cast<const double*>(v), b,
                            reinterpret_cast<double*>(out), as_stream(stream), device);
      },
      py::arg("kinds"), py::arg("features"), py::arg("dims"), py::arg("n"), py::arg("dtype"),
      py::arg("v"), py::arg("b"), py::arg("out"), py::arg("stream"), py::arg("device"),
      "out[n, b] = K @ v for the product kernel K_ij = prod_f k_f(X_f[i], X_f[j]) (kinds "
      "gaussian, laplacian, linear; features: device pointers to X_f [n, dims[f]] of dtype; "
      "v, out: device pointers to float64 [n, b]), enqueued on `stream` of `device`");
  m.def(
      "kernel_sum_squares",
      [](const std::vector<std::string>& kinds, const std::vector<std::uintptr_t>& features,
         const std::vector<int64_t>& dims, int64_t n, const std::string& dtype, std::uintptr_t out,
         std::uintptr_t stream, int device) {
        const kern::Dtype dt = parse_dtype(dtype);
        const std::vector<kern::Factor> factors = parse_factors(kinds, features, dims, n, dt);
        check_pointer(out, 8, "out");
        check_device(device);
        py::gil_scoped_release release;
        kern::kernel_sum_squares(factors, n, dt, reinterpret_cast<double*>(out), as_stream(stream),
                                 device);
      },
      py::arg("kinds"), py::arg("features"), py::arg("dims"), py::arg("n"), py::arg("dtype"),
      py::arg("out"), py::arg("stream"), py::arg("device"),
      "*out = sum_ij K_ij^2 (out: device pointer to one float64), same kernels and arguments as "
      "kernel_matmul, enqueued on `stream` of `device`");
}
