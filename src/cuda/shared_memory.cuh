// Shared-memory helpers every tiled CUDA engine uses: 16-byte vector accesses of four elements
// and the opt-in to more than 48 KB of dynamic shared memory per block.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#include "check.cuh"

namespace infolens::cuda {

// 4 consecutive elements at a 16-byte aligned address, in one (or, for double, two) vector accesses.
__device__ __forceinline__ void ld4(const float* p, float* r) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w;
}
__device__ __forceinline__ void ld4(const int* p, int* r) {
  const int4 v = *reinterpret_cast<const int4*>(p);
  r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w;
}
__device__ __forceinline__ void ld4(const double* p, double* r) {
  const double2 a = *reinterpret_cast<const double2*>(p);
  const double2 b = *reinterpret_cast<const double2*>(p + 2);
  r[0] = a.x, r[1] = a.y, r[2] = b.x, r[3] = b.y;
}
__device__ __forceinline__ void st4(float* p, const float* r) {
  *reinterpret_cast<float4*>(p) = make_float4(r[0], r[1], r[2], r[3]);
}
__device__ __forceinline__ void st4(double* p, const double* r) {
  *reinterpret_cast<double2*>(p) = make_double2(r[0], r[1]);
  *reinterpret_cast<double2*>(p + 2) = make_double2(r[2], r[3]);
}

// Lets `kernel` launch with `bytes` of dynamic shared memory on `device`, or says (as `what`)
// that the device cannot.
template <class Kernel>
void allow_shared(Kernel kernel, std::size_t bytes, int device, const char* what) {
  int optin = 0;
  INFOLENS_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (std::size_t(optin) < bytes) {
    throw CudaError(std::string(what) + ": the device allows " + std::to_string(optin) +
                    " bytes of shared memory per block, the kernel needs " + std::to_string(bytes));
  }
  INFOLENS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

}  // namespace infolens::cuda
