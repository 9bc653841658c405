// The metric keys of docs/NATIVE_ABI.md, one coordinate at a time, in the points' dtype: max-norm
// max_c |q_c - x_c| (exact in any order) and squared Euclidean s = s + t*t left to right with
// explicitly rounded operations, so no FMA can change a rounding whatever the flags. Host and
// device: the grid path's host harness (grid.cuh) runs the kernels' own key arithmetic.
#pragma once
#include <cuda_runtime.h>

#include <cmath>

namespace infolens::cuda::knn {

#define INFOLENS_HD __host__ __device__ __forceinline__

// The rounded operations: intrinsics on the device (never contracted into an FMA), plain
// operators on the host.
INFOLENS_HD float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
INFOLENS_HD double sub_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
INFOLENS_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
INFOLENS_HD double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
INFOLENS_HD float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
INFOLENS_HD double add_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
INFOLENS_HD float max_of(float a, float b) { return fmaxf(a, b); }
INFOLENS_HD double max_of(double a, double b) { return fmax(a, b); }
INFOLENS_HD float abs_of(float a) { return fabsf(a); }
INFOLENS_HD double abs_of(double a) { return fabs(a); }

// One more coordinate of the key: max(acc, |q - x|) or acc + (q - x)^2.
template <bool kMaxNorm, class T>
INFOLENS_HD T key_step(T acc, T q, T x) {
  const T t = sub_rn(q, x);
  if constexpr (kMaxNorm)
    return max_of(acc, abs_of(t));
  else
    return add_rn(acc, mul_rn(t, t));
}

// The key after the first coordinate. key_step(0, q, x) is max(0, |t|) or 0 + t*t; both equal the
// term itself for every non-NaN t (t*t is never -0), so the fold with 0 is skipped: bitwise the
// same key, one instruction less per pair.
template <bool kMaxNorm, class T>
INFOLENS_HD T key_first(T q, T x) {
  const T t = sub_rn(q, x);
  if constexpr (kMaxNorm)
    return abs_of(t);
  else
    return mul_rn(t, t);
}

}  // namespace infolens::cuda::knn
