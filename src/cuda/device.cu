#include "device.hpp"

#include "check.cuh"

namespace infolens::cuda {

int device_count() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  // No driver or no card is an answer ("no device"), not an error.
  if (status == cudaErrorNoDevice || status == cudaErrorInsufficientDriver) {
    cudaGetLastError();
    return 0;
  }
  INFOLENS_CUDA_CHECK(status);
  return count;
}

DeviceInfo device_info(int device) {
  const int count = device_count();
  if (device < 0 || device >= count) {
    throw std::invalid_argument("device: index " + std::to_string(device) + " out of range; " +
                                (count == 0 ? std::string("no CUDA device is present")
                                            : std::to_string(count) + " device(s) present"));
  }
  cudaDeviceProp prop{};
  INFOLENS_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  int runtime = 0, driver = 0;
  INFOLENS_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  INFOLENS_CUDA_CHECK(cudaDriverGetVersion(&driver));
  return DeviceInfo{prop.name,  prop.major, prop.minor, prop.multiProcessorCount,
                    prop.totalGlobalMem, runtime, driver};
}

int runtime_version() {
  int runtime = 0;
  INFOLENS_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  return runtime;
}

}  // namespace infolens::cuda
