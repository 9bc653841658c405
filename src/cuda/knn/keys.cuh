// The metric keys of docs/NATIVE_ABI.md on the device, one coordinate at a time, in the points'
// dtype: max-norm max_c |q_c - x_c| (exact in any order) and squared Euclidean s = s + t*t left to
// right with explicitly rounded operations, so no FMA can change a rounding whatever the flags.
#pragma once
#include <cuda_runtime.h>

namespace infolens::cuda::knn {

template <bool kMaxNorm, class T>
__device__ __forceinline__ T key_step(T acc, T q, T x);

template <>
__device__ __forceinline__ float key_step<true, float>(float acc, float q, float x) {
  return fmaxf(acc, fabsf(__fsub_rn(q, x)));
}
template <>
__device__ __forceinline__ double key_step<true, double>(double acc, double q, double x) {
  return fmax(acc, fabs(__dsub_rn(q, x)));
}
template <>
__device__ __forceinline__ float key_step<false, float>(float acc, float q, float x) {
  const float t = __fsub_rn(q, x);
  return __fadd_rn(acc, __fmul_rn(t, t));
}
template <>
__device__ __forceinline__ double key_step<false, double>(double acc, double q, double x) {
  const double t = __dsub_rn(q, x);
  return __dadd_rn(acc, __dmul_rn(t, t));
}

}  // namespace infolens::cuda::knn
