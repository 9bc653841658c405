// Device selection and stream-ordered workspaces, shared by every CUDA engine.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#include "check.cuh"

namespace infolens::cuda {

// Makes `device` current for the call and restores the previous device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    INFOLENS_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) INFOLENS_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    if (cudaSetDevice(previous_) != cudaSuccess) (void)cudaGetLastError();
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// count elements of U on `stream`, freed in stream order when it goes out of scope (also on errors).
template <class U>
class Workspace {
 public:
  Workspace(size_t count, cudaStream_t stream, const char* what) : stream_(stream) {
    if (count == 0) return;
    const size_t bytes = count * sizeof(U);
    const cudaError_t status = cudaMallocAsync(reinterpret_cast<void**>(&ptr_), bytes, stream);
    if (status == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      ptr_ = nullptr;
      throw CudaOutOfMemory(std::string(what) + ": out of GPU memory allocating a workspace of " +
                                    std::to_string(bytes) + " bytes");
    }
    INFOLENS_CUDA_CHECK(status);
  }
  ~Workspace() {
    if (ptr_ != nullptr && cudaFreeAsync(ptr_, stream_) != cudaSuccess) (void)cudaGetLastError();
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  U* get() const { return ptr_; }
  // Hands the memory back now (stream-ordered) rather than at the end of the scope.
  void free() {
    U* p = ptr_;
    ptr_ = nullptr;
    if (p != nullptr) INFOLENS_CUDA_CHECK(cudaFreeAsync(p, stream_));
  }

 private:
  U* ptr_ = nullptr;
  cudaStream_t stream_;
};

}  // namespace infolens::cuda
