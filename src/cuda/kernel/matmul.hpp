// Kernel-matrix products on the GPU without storing the N x N kernel matrix (matmul.cu).
//
// K_ij = prod_f k_f(X_f[i], X_f[j]) over F factors, each with its own feature matrix X_f [n, d_f]
// (row-major, device memory, all of one dtype); bandwidths are folded into the features:
//   gaussian  k(x, y) = exp(-||x - y||_2^2)  (||x||^2 + ||y||^2 - 2 x.y, clamped at 0; 0 if i == j)
//   laplacian k(x, y) = exp(-||x - y||_1)
//   linear    k(x, y) = x . y
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "dtype.hpp"

namespace infolens::cuda::kernel {

enum class Kind : int { gaussian = 0, laplacian = 1, linear = 2 };
using cuda::Dtype;

// At most this many factors in one product (they travel as one kernel parameter).
constexpr int kMaxFactors = 16;

struct Factor {
  Kind kind;
  const void* x;  // device pointer to [n, dim] of the call's dtype
  int64_t dim;
};

// out[n, b] = K @ v, with v and out float64 [n, b] row-major in device memory. Enqueued on
// `stream` of `device` (made current for the call, the previous device restored); no host sync.
// Arguments are assumed valid (the bindings check them); workspace O(n * F) plus a few MB.
void kernel_matmul(const std::vector<Factor>& factors, int64_t n, Dtype dtype, const double* v,
                   int64_t b, double* out, cudaStream_t stream, int device);

// *out = sum_ij K_ij^2 (one float64 in device memory), same arithmetic as kernel_matmul.
void kernel_sum_squares(const std::vector<Factor>& factors, int64_t n, Dtype dtype, double* out,
                        cudaStream_t stream, int device);

}  // namespace infolens::cuda::kernel
