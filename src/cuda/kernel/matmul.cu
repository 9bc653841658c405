// Kernel-matrix products K @ V and sum_ij K_ij^2 on the GPU, never storing K (matmul.hpp).
//
// Tiling. A thread block (256 threads) owns BM = 128 query rows and walks over the points in
// tiles of BN = 64; grid.y splits that walk into a few segments when there are too few row
// blocks to fill the GPU (their float64 partials are summed in a fixed order afterwards). Per tile:
//   1. K tile [128 x 64] = product over factors. For each factor the features of the 128 rows and
//      64 points are staged through shared memory BK = 8 columns at a time (the next slice is
//      prefetched into registers while the current one is used); each thread accumulates an
//      8 x 4 register block of dot products (gaussian, linear) or L1 distances (laplacian), then
//      turns it into kernel values and multiplies them into the transposed tile sKt[point][row]
//      in shared memory (each thread touches only its own entries, so no barrier between factors).
//   2. matmul: the tile's V rows (BC = 32 columns, converted to the compute type) are staged in
//      shared memory and each thread adds a 4 x 4 register block of sKt^T @ V.
//   sum of squares: each thread squares its own 32 entries of sKt instead of step 2.
// The binding runs one launch per 32 columns of V, so any b works (K is recomputed per launch).
//
// Accuracy. Features, norms, kernel values and V are in the input dtype (float32 math for float32
// inputs: speed), with explicit FMAs. The sums over one tile (64 points) are in that type; each
// tile's sum is then added to a float64 accumulator, so long sums (N = 1e6) keep float64-level
// accuracy. Everything is summed in a fixed order (no atomics): results are identical run to run
// on one device (the segment count depends on N and the device's SM count).
#include <algorithm>
#include <string>

#include "check.cuh"
#include "kernel/matmul.hpp"
#include "shared_memory.cuh"
#include "stream_memory.cuh"

namespace infolens::cuda::kernel {
namespace {

constexpr int kThreads = 256;
constexpr int BM = 128;     // query rows per block
constexpr int BN = 64;      // points per tile
constexpr int BK = 8;       // feature columns per staging step
constexpr int BC = 32;      // columns of V per launch
constexpr int QS = BM + 4;  // row stride of sQ and sKt (padded: fewer bank conflicts, 16-byte rows)
constexpr int PS = BN + 4;  // row stride of sP
constexpr int VS = BC + 4;  // row stride of sV
constexpr int kSmemElems = BK * QS + BK * PS + BN * QS + BN * VS;
constexpr int kMaxSegments = 16;
static_assert(kThreads / BK * 4 == BM && kThreads / BK * 2 == BN, "staging covers the tile");
static_assert(16 * 4 == BN && 16 * 8 == BM, "phase-1 threads cover the tile");
static_assert(8 * 4 == BC && 32 * 4 == BM && kThreads / BC * 8 == BN, "phase-2 threads cover it");

template <class T>
struct FactorArgs {
  int count;
  int kind[kMaxFactors];
  int dim[kMaxFactors];
  const T* x[kMaxFactors];
  const T* norm[kMaxFactors];  // squared row norms of gaussian factors, else null
};

__device__ __forceinline__ float fma_t(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_t(double a, double b, double c) { return __fma_rn(a, b, c); }
__device__ __forceinline__ float exp_t(float x) { return expf(x); }
__device__ __forceinline__ double exp_t(double x) { return exp(x); }
__device__ __forceinline__ float abs_t(float x) { return fabsf(x); }
__device__ __forceinline__ double abs_t(double x) { return fabs(x); }


// One warp per row: norm[row] = sum_c x[row, c]^2 (lane-strided, then a fixed shuffle tree).
template <class T>
__global__ void row_norms(const T* __restrict__ x, int n, int d, T* __restrict__ norm) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  if (row >= n) return;  // the whole warp leaves together
  const T* xr = x + row * d;
  T s = 0;
  for (int c = lane; c < d; c += 32) s = fma_t(xr[c], xr[c], s);
  for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
  if (lane == 0) norm[row] = s;
}

// Feature slice [k0, k0 + BK) of the tile's query rows and points, in registers on the way to
// shared memory: thread t holds column k0 + t % BK of rows t / BK + 32 i (zero past n or d).
template <class T>
struct Slice {
  T q[BM / 32];
  T p[BN / 32];
};

template <class T>
__device__ __forceinline__ void load_slice(Slice<T>& s, const T* __restrict__ x, int d, int n,
                                           int row0, int p0, int k0) {
  const int k = k0 + threadIdx.x % BK, r = threadIdx.x / BK;
#pragma unroll
  for (int i = 0; i < BM / 32; ++i) {
    const int row = row0 + r + 32 * i;
    s.q[i] = (row < n && k < d) ? x[int64_t(row) * d + k] : T(0);
  }
#pragma unroll
  for (int i = 0; i < BN / 32; ++i) {
    const int row = p0 + r + 32 * i;
    s.p[i] = (row < n && k < d) ? x[int64_t(row) * d + k] : T(0);
  }
}

template <class T>
__device__ __forceinline__ void store_slice(const Slice<T>& s, T* sQ, T* sP) {
  const int kk = threadIdx.x % BK, r = threadIdx.x / BK;
#pragma unroll
  for (int i = 0; i < BM / 32; ++i) sQ[kk * QS + r + 32 * i] = s.q[i];
#pragma unroll
  for (int i = 0; i < BN / 32; ++i) sP[kk * PS + r + 32 * i] = s.p[i];
}

// acc[a][c] += <query row, point> (or L1 distance) over the staged slice. Thread (tx, ty) owns
// rows ty*4 + a and 64 + ty*4 + a (a < 4; acc rows a and 4 + a) and points tx*4 + c (c < 4).
template <bool kL1, class T>
__device__ __forceinline__ void accumulate(T (&acc)[8][4], const T* sQ, const T* sP, int tx,
                                           int ty) {
#pragma unroll
  for (int kk = 0; kk < BK; ++kk) {
    T q0[4], q1[4], p[4];
    ld4(sQ + kk * QS + ty * 4, q0);
    ld4(sQ + kk * QS + 64 + ty * 4, q1);
    ld4(sP + kk * PS + tx * 4, p);
#pragma unroll
    for (int a = 0; a < 4; ++a) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        if constexpr (kL1) {
          acc[a][c] += abs_t(q0[a] - p[c]);
          acc[4 + a][c] += abs_t(q1[a] - p[c]);
        } else {
          acc[a][c] = fma_t(q0[a], p[c], acc[a][c]);
          acc[4 + a][c] = fma_t(q1[a], p[c], acc[4 + a][c]);
        }
      }
    }
  }
}

// acc (dot products, or L1 distances for laplacian) -> kernel values in place, for the rows and
// points of accumulate's layout; 0 where the row or the point lies past n.
template <Kind kKind, class T>
__device__ __forceinline__ void to_kernel(T (&acc)[8][4], const T* __restrict__ norm, int n,
                                          int row0, int p0, int tx, int ty) {
  T nq[8], np[4];
  if constexpr (kKind == Kind::gaussian) {
#pragma unroll
    for (int a = 0; a < 8; ++a) {
      const int row = row0 + (a / 4) * 64 + ty * 4 + a % 4;
      nq[a] = row < n ? norm[row] : T(0);
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int point = p0 + tx * 4 + c;
      np[c] = point < n ? norm[point] : T(0);
    }
  }
#pragma unroll
  for (int a = 0; a < 8; ++a) {
    const int row = row0 + (a / 4) * 64 + ty * 4 + a % 4;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int point = p0 + tx * 4 + c;
      T k;
      if constexpr (kKind == Kind::linear) {
        k = acc[a][c];
      } else if constexpr (kKind == Kind::gaussian) {
        const T d2 = (nq[a] + np[c]) - T(2) * acc[a][c];
        k = exp_t(d2 < T(0) ? T(0) : -d2);  // clamped at 0 (NaN stays NaN)
      } else {
        k = exp_t(-acc[a][c]);
      }
      if constexpr (kKind != Kind::linear) {
        if (row == point) k = T(1);  // distance exactly 0 on the diagonal
      }
      acc[a][c] = (row < n && point < n) ? k : T(0);
    }
  }
}

// sKt[j * QS + i] = K(row0 + i, p0 + j) for the tile, 0 where the row or the point is past n.
// Starts with a barrier, so the caller's earlier reads of sQ, sP are safe; sKt itself must be
// free (the caller's barrier) since each thread writes its own entries.
template <class T>
__device__ void kernel_tile(const FactorArgs<T>& fa, int n, int row0, int p0, T* sQ, T* sP,
                            T* sKt) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  for (int f = 0; f < fa.count; ++f) {
    const T* __restrict__ x = fa.x[f];
    const int d = fa.dim[f], kind = fa.kind[f];
    T acc[8][4];
#pragma unroll
    for (int a = 0; a < 8; ++a)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[a][c] = T(0);

    Slice<T> slice;
    load_slice(slice, x, d, n, row0, p0, 0);
    for (int k0 = 0; k0 < d; k0 += BK) {
      __syncthreads();  // everyone is done reading the previous slice
      store_slice(slice, sQ, sP);
      __syncthreads();
      if (k0 + BK < d) load_slice(slice, x, d, n, row0, p0, k0 + BK);  // in flight meanwhile
      if (kind == int(Kind::laplacian))
        accumulate<true>(acc, sQ, sP, tx, ty);
      else
        accumulate<false>(acc, sQ, sP, tx, ty);
    }

    if (kind == int(Kind::gaussian))
      to_kernel<Kind::gaussian>(acc, fa.norm[f], n, row0, p0, tx, ty);
    else if (kind == int(Kind::laplacian))
      to_kernel<Kind::laplacian>(acc, fa.norm[f], n, row0, p0, tx, ty);
    else
      to_kernel<Kind::linear>(acc, fa.norm[f], n, row0, p0, tx, ty);

    // Multiplied into this thread's entries of sKt.
#pragma unroll
    for (int c = 0; c < 4; ++c) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        T val[4] = {acc[h * 4][c], acc[h * 4 + 1][c], acc[h * 4 + 2][c], acc[h * 4 + 3][c]};
        T* dst = sKt + (tx * 4 + c) * QS + h * 64 + ty * 4;
        if (f > 0) {
          T old[4];
          ld4(dst, old);
#pragma unroll
          for (int a = 0; a < 4; ++a) val[a] *= old[a];
        }
        st4(dst, val);
      }
    }
  }
}

template <class T>
struct Shared {
  T *sQ, *sP, *sKt, *sV;
};

template <class T>
__device__ __forceinline__ Shared<T> carve(unsigned char* smem) {
  T* base = reinterpret_cast<T*>(smem);
  return {base, base + BK * QS, base + BK * QS + BK * PS, base + BK * QS + BK * PS + BN * QS};
}

// dst[blockIdx.y * seg_stride + row * dst_ld + col] = sum over this segment's points p of
// K(row, p) * v[p, c0 + col], for col < ncols (v: float64 [n, b]; columns past b read as 0).
template <class T>
__global__ void __launch_bounds__(kThreads, sizeof(T) == 4 ? 2 : 1)
    matmul_kernel(const __grid_constant__ FactorArgs<T> fa, int n, const double* __restrict__ v,
                  int b, int c0, int tiles_per_segment, double* __restrict__ dst, int64_t dst_ld,
                  int64_t seg_stride, int ncols) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Shared<T> sh = carve<T>(smem);
  const int row0 = blockIdx.x * BM;
  const int tiles = (n + BN - 1) / BN;
  const int t_begin = blockIdx.y * tiles_per_segment;
  const int t_end = min(tiles, t_begin + tiles_per_segment);
  const int ox = threadIdx.x % 8, oy = threadIdx.x / 8;    // output rows oy*4 + a, columns ox*4 + c
  const int vc = threadIdx.x % BC, vj = threadIdx.x / BC;  // V staging: column vc, points vj + 8 i
  const bool v_col = c0 + vc < b;

  double total[4][4];
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int c = 0; c < 4; ++c) total[a][c] = 0.0;

  for (int t = t_begin; t < t_end; ++t) {
    const int p0 = t * BN;
    T vreg[BN / 8];
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) {
      const int point = p0 + vj + 8 * i;
      vreg[i] = (v_col && point < n) ? T(v[int64_t(point) * b + c0 + vc]) : T(0);
    }
    __syncthreads();  // the previous tile's product is done with sKt and sV
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) sh.sV[(vj + 8 * i) * VS + vc] = vreg[i];
    kernel_tile(fa, n, row0, p0, sh.sQ, sh.sP, sh.sKt);
    __syncthreads();  // sKt and sV complete

    T acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[a][c] = T(0);
#pragma unroll 8
    for (int j = 0; j < BN; ++j) {
      T kq[4], vv[4];
      ld4(sh.sKt + j * QS + oy * 4, kq);
      ld4(sh.sV + j * VS + ox * 4, vv);
#pragma unroll
      for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[a][c] = fma_t(kq[a], vv[c], acc[a][c]);
    }
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int c = 0; c < 4; ++c) total[a][c] += double(acc[a][c]);
  }

  double* out = dst + blockIdx.y * seg_stride;
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    const int row = row0 + oy * 4 + a;
    if (row >= n) continue;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int col = ox * 4 + c;
      if (col < ncols) out[int64_t(row) * dst_ld + col] = total[a][c];
    }
  }
}

// Block sum of one double per thread in a fixed order; the result in thread 0. red: kThreads.
__device__ double block_sum(double x, double* red) {
  red[threadIdx.x] = x;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) red[threadIdx.x] += red[threadIdx.x + width];
    __syncthreads();
  }
  return red[0];
}

// partial[blockIdx.y * gridDim.x + blockIdx.x] = sum of K(row, p)^2 over the block's rows and
// its segment's points.
template <class T>
__global__ void __launch_bounds__(kThreads, sizeof(T) == 4 ? 2 : 1)
    sum_squares_kernel(const __grid_constant__ FactorArgs<T> fa, int n, int tiles_per_segment,
                       double* __restrict__ partial) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Shared<T> sh = carve<T>(smem);
  const int row0 = blockIdx.x * BM;
  const int tiles = (n + BN - 1) / BN;
  const int t_begin = blockIdx.y * tiles_per_segment;
  const int t_end = min(tiles, t_begin + tiles_per_segment);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

  double total = 0.0;
  for (int t = t_begin; t < t_end; ++t) {
    // kernel_tile's first barrier orders the slices; sKt entries are this thread's own.
    kernel_tile(fa, n, row0, t * BN, sh.sQ, sh.sP, sh.sKt);
    T s = T(0);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        T k[4];
        ld4(sh.sKt + (tx * 4 + c) * QS + h * 64 + ty * 4, k);
#pragma unroll
        for (int a = 0; a < 4; ++a) s = fma_t(k[a], k[a], s);
      }
    }
    total += double(s);
  }
  __syncthreads();  // shared memory is reused below
  const double sum = block_sum(total, reinterpret_cast<double*>(smem));
  if (threadIdx.x == 0) partial[blockIdx.y * gridDim.x + blockIdx.x] = sum;
}

// *out = sum of partial[0 .. count) in a fixed order (one block).
__global__ void sum_partials(const double* __restrict__ partial, int count,
                             double* __restrict__ out) {
  __shared__ double red[kThreads];
  double s = 0.0;
  for (int i = threadIdx.x; i < count; i += kThreads) s += partial[i];
  const double sum = block_sum(s, red);
  if (threadIdx.x == 0) *out = sum;
}

// out[row * b + c0 + col] = sum over segments of ws[(seg * n + row) * BC + col], col < ncols.
__global__ void sum_segments(const double* __restrict__ ws, int segments, int n,
                             double* __restrict__ out, int b, int c0, int ncols) {
  const int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= int64_t(n) * BC) return;
  const int64_t row = e / BC;
  const int col = int(e % BC);
  if (col >= ncols) return;
  double s = 0.0;
  for (int seg = 0; seg < segments; ++seg) s += ws[int64_t(seg) * n * BC + e];
  out[row * b + c0 + col] = s;
}

// ---- host side ---------------------------------------------------------------------------------

int ceil_div(int64_t a, int64_t b) { return int((a + b - 1) / b); }

int count_gaussian(const std::vector<Factor>& factors) {
  return int(std::count_if(factors.begin(), factors.end(),
                           [](const Factor& f) { return f.kind == Kind::gaussian; }));
}

// Kernel arguments; launches the row-norm kernel for each gaussian factor into `norms`.
template <class T>
FactorArgs<T> prepare(const std::vector<Factor>& factors, int n, T* norms, cudaStream_t stream) {
  FactorArgs<T> fa{};
  fa.count = int(factors.size());
  int g = 0;
  for (int f = 0; f < fa.count; ++f) {
    fa.kind[f] = int(factors[f].kind);
    fa.dim[f] = int(factors[f].dim);
    fa.x[f] = static_cast<const T*>(factors[f].x);
    fa.norm[f] = nullptr;
    if (factors[f].kind == Kind::gaussian) {
      T* norm = norms + int64_t(g++) * n;
      row_norms<T><<<ceil_div(n, kThreads / 32), kThreads, 0, stream>>>(fa.x[f], n, fa.dim[f],
                                                                         norm);
      INFOLENS_CUDA_CHECK(cudaGetLastError());
      fa.norm[f] = norm;
    }
  }
  return fa;
}

// Segments of the point walk: enough blocks for about two per multiprocessor, none empty.
struct Split {
  int row_blocks, segments, tiles_per_segment;
};

Split split_for(int n, int device) {
  int sms = 0;
  INFOLENS_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int row_blocks = ceil_div(n, BM), tiles = ceil_div(n, BN);
  int segments = ceil_div(2 * int64_t(std::max(sms, 1)), row_blocks);
  segments = std::clamp(segments, 1, std::min(kMaxSegments, tiles));
  const int per = ceil_div(tiles, segments);
  return {row_blocks, ceil_div(tiles, per), per};
}

template <class T>
void matmul_impl(const std::vector<Factor>& factors, int n, const double* v, int b, double* out,
                 cudaStream_t stream, int device) {
  const char* what = "kernel_matmul";
  Workspace<T> norms(size_t(count_gaussian(factors)) * n, stream, what);
  const FactorArgs<T> fa = prepare<T>(factors, n, norms.get(), stream);
  const Split split = split_for(n, device);
  Workspace<double> partial(split.segments > 1 ? size_t(split.segments) * n * BC : 0, stream, what);
  const size_t smem = kSmemElems * sizeof(T);
  allow_shared(matmul_kernel<T>, smem, device, "kernel_matmul");
  const dim3 grid(split.row_blocks, split.segments);
  for (int c0 = 0; c0 < b; c0 += BC) {
    const int ncols = std::min(BC, b - c0);
    if (split.segments == 1) {
      matmul_kernel<T><<<grid, kThreads, smem, stream>>>(fa, n, v, b, c0, split.tiles_per_segment,
                                                         out + c0, b, 0, ncols);
      INFOLENS_CUDA_CHECK(cudaGetLastError());
    } else {
      matmul_kernel<T><<<grid, kThreads, smem, stream>>>(fa, n, v, b, c0, split.tiles_per_segment,
                                                         partial.get(), BC,
                                                         int64_t(n) * BC, BC);
      INFOLENS_CUDA_CHECK(cudaGetLastError());
      sum_segments<<<ceil_div(int64_t(n) * BC, kThreads), kThreads, 0, stream>>>(
          partial.get(), split.segments, n, out, b, c0, ncols);
      INFOLENS_CUDA_CHECK(cudaGetLastError());
    }
  }
  partial.free();
  norms.free();
}

template <class T>
void sum_squares_impl(const std::vector<Factor>& factors, int n, double* out, cudaStream_t stream,
                      int device) {
  const char* what = "kernel_sum_squares";
  Workspace<T> norms(size_t(count_gaussian(factors)) * n, stream, what);
  const FactorArgs<T> fa = prepare<T>(factors, n, norms.get(), stream);
  const Split split = split_for(n, device);
  const int blocks = split.row_blocks * split.segments;
  Workspace<double> partial(blocks, stream, what);
  const size_t smem = kSmemElems * sizeof(T);
  allow_shared(sum_squares_kernel<T>, smem, device, "kernel_sum_squares");
  sum_squares_kernel<T><<<dim3(split.row_blocks, split.segments), kThreads, smem, stream>>>(
      fa, n, split.tiles_per_segment, partial.get());
  INFOLENS_CUDA_CHECK(cudaGetLastError());
  sum_partials<<<1, kThreads, 0, stream>>>(partial.get(), blocks, out);
  INFOLENS_CUDA_CHECK(cudaGetLastError());
  partial.free();
  norms.free();
}

void check_sizes(const std::vector<Factor>& factors, int64_t n, int64_t b) {
  // The bindings validate; these guard the int arithmetic of the kernels.
  constexpr int64_t kMaxN = int64_t(1) << 30;
  if (factors.empty() || factors.size() > size_t(kMaxFactors))
    throw std::invalid_argument("kinds: between 1 and " + std::to_string(kMaxFactors) + " factors");
  if (n < 1 || n > kMaxN) throw std::invalid_argument("n: must be in [1, 2^30]");
  if (b < 1 || b > kMaxN) throw std::invalid_argument("b: must be in [1, 2^30]");
  for (const Factor& f : factors)
    if (f.dim < 1 || f.dim > kMaxN) throw std::invalid_argument("dims: must be in [1, 2^30]");
}

}  // namespace

void kernel_matmul(const std::vector<Factor>& factors, int64_t n, Dtype dtype, const double* v,
                   int64_t b, double* out, cudaStream_t stream, int device) {
  check_sizes(factors, n, b);
  DeviceGuard guard(device);
  (void)cudaGetLastError();  // a stale error of someone else's must not be reported as ours
  if (dtype == Dtype::float32)
    matmul_impl<float>(factors, int(n), v, int(b), out, stream, device);
  else
    matmul_impl<double>(factors, int(n), v, int(b), out, stream, device);
}

void kernel_sum_squares(const std::vector<Factor>& factors, int64_t n, Dtype dtype, double* out,
                        cudaStream_t stream, int device) {
  check_sizes(factors, n, 1);
  DeviceGuard guard(device);
  (void)cudaGetLastError();
  if (dtype == Dtype::float32)
    sum_squares_impl<float>(factors, int(n), out, stream, device);
  else
    sum_squares_impl<double>(factors, int(n), out, stream, device);
}

}  // namespace infolens::cuda::kernel
