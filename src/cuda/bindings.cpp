// infolens._native_cuda: binds the CUDA engine. A machine without a GPU imports it and is told
// "no device" by device_count() == 0.
#include <pybind11/pybind11.h>

#include "check.cuh"
#include "device.hpp"

namespace py = pybind11;
using namespace infolens::cuda;

PYBIND11_MODULE(_native_cuda, m) {
  m.doc() = "infolens CUDA engine";
  py::register_exception<CudaError>(m, "CudaError", PyExc_RuntimeError);
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
}
