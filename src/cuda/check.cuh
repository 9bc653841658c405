// Every CUDA call goes through INFOLENS_CUDA_CHECK, so a failure becomes a Python exception
// that says which call failed and where, never a crash or a silent wrong number.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace infolens::cuda {

class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Thrown when the device has no room for a workspace; Python sees CudaOutOfMemory, a subclass of
// both CudaError and MemoryError.
class CudaOutOfMemory : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline void check(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess) {
    throw CudaError(std::string("CUDA error in ") + call + " at " + file + ":" + std::to_string(line) +
                    ": " + cudaGetErrorName(status) + ": " + cudaGetErrorString(status));
  }
}

}  // namespace infolens::cuda

#define INFOLENS_CUDA_CHECK(call) ::infolens::cuda::check((call), #call, __FILE__, __LINE__)
