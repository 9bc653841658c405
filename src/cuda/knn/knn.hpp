// Exact kNN and radius counts on the GPU (docs/NATIVE_ABI.md, "CUDA kNN"): the same keys, the
// same (key, index) order and the same strict / non-strict counts as the C++ engine, bit for bit.
//
// Keys (p = inf: max_c |q_c - x_c|; p = 2: s = s + t*t left to right, no FMA) are formed in the
// points' dtype. Other orders p are not served here: the Python layer runs them on the torch
// reference path on the same device.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.hpp"

namespace infolens::cuda::knn {

// A row-major matrix in device memory: row i, column c at data[i * ld + c] (ld >= dim), so a
// block of columns of a wider matrix (a KSG marginal of the joint sample) needs no copy.
struct Matrix {
  const void* data;  // nullptr: absent
  int64_t rows;
  int64_t dim;
  int64_t ld;
};

// The largest k the fused kNN kernels keep; larger k goes to the reference path.
constexpr int kMaxK = 64;

// out_keys [m, k] (points' dtype) and out_idx [m, k] (int64), row-major and dense: each query's k
// smallest keys in ascending (key, index) order. queries.data == nullptr is the self-join over
// points (m = points.rows; j == i excluded by index, a duplicate at key 0 is a neighbour).
// p is 2 or +inf; 1 <= k <= kMaxK, k <= n - 1 (self-join) or k <= n. Enqueued on `stream` of
// `device`; no host synchronisation. Throws CudaError, CudaOutOfMemory, std::invalid_argument.
void knn(const Matrix& points, const Matrix& queries, Dtype dtype, double p, int k, void* out_keys,
         int64_t* out_idx, cudaStream_t stream, int device);

// out[i] = #{ j : key(q_i, x_j) < radius[i] } (strict) or <= radius[i] (not strict), int64 [m];
// radius [m] in the points' dtype. Self-join (queries.data == nullptr) excludes j == i.
void count(const Matrix& points, const Matrix& queries, Dtype dtype, double p, const void* radius,
           bool strict, int64_t* out, cudaStream_t stream, int device);

// The grid path's limits (grid.cu): larger k or dim go to brute force.
constexpr int kGridMaxK = 32;
constexpr int kGridMaxDim = 8;

// The same functions through a grid of cells over <= 3 columns (grid.cu): the same answers bit for
// bit, from far fewer pairs when dim is small. Brute force (knn / count) answers when the grid
// cannot help: dim > 8, k > 32, data without spread, count with dim 1, no room for the grid's
// workspaces; invalid arguments raise its errors. One host synchronisation sizes the grid.
// pairs: optional device counter (nullptr: none) to which the (query, point) pairs examined are
// added (left unchanged when brute force answers).
void knn_grid(const Matrix& points, const Matrix& queries, Dtype dtype, double p, int k, void* out_keys,
              int64_t* out_idx, cudaStream_t stream, int device, unsigned long long* pairs = nullptr);
void count_grid(const Matrix& points, const Matrix& queries, Dtype dtype, double p, const void* radius,
                bool strict, int64_t* out, cudaStream_t stream, int device,
                unsigned long long* pairs = nullptr);

}  // namespace infolens::cuda::knn
