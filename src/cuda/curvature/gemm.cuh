// The tiled matrix product behind the head's GGN kernels (softmax_ce_ggn.cu):
//   C[M, N] = sum_q A_q[M, K_q] B_q[K_q, N]   over one or two operand pairs (q = 0, 1),
// with each operand given by a pointer and two strides, so one kernel serves every layout the
// head needs (W, dW_j, h rows; the [V, Tb] slab read along either axis), and an epilogue that
// stores C (plus a per-row offset), adds it into an accumulator (compensated), or writes a
// float64 partial of one split of the depth (grid.z).
//
// Tiling. 256 threads own a BM x BN tile of C and walk the depth BK at a time through
// double-buffered shared memory: the next slice is loaded into registers while the current one is
// multiplied, then stored into the other buffer, one barrier per slice. Operands contiguous along
// the depth are read by consecutive threads along the depth, the others along their rows, so
// global loads coalesce either way. The multiply is a "core":
//   float32: tensor cores, 3xTF32. 128 x 64 tiles, BK = 16; each of the 8 warps owns 32 x 32 of C
//            as 2 x 2 WMMA accumulators (m16n16k8). Every operand x is split into big = tf32(x)
//            and small = tf32(x - big), and C += a_small b_big + a_big b_small + a_big b_big with
//            float32 accumulation: products exact, the dropped small x small term ~2^-22 |a b|,
//            so float32-level accuracy (as CUTLASS's 3xTF32) at tensor-core speed.
//   float64: FMA. 64 x 64 tiles, BK = 8; each thread accumulates a 4 x 4 register block.
//
// Accuracy. Products accumulate in float32 (float32 inputs) or float64 over at most the depth of
// one call: the caller keeps it bounded (Tb tokens, or one split of the vocabulary) and flushes
// into float64 or a compensated sum. The module is built with -fmad=false: FMAs are explicit.
#pragma once
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

namespace infolens::cuda::curvature {

constexpr int kGemmThreads = 256;

// X(i, k) = p[i * s_i + k * s_k] for i < the product's M (A) or N (B), k < the pair's depth.
template <class T>
struct Operand {
  const T* p;
  int64_t s_i, s_k;
};

enum class Epilogue {
  store,       // out[m * ld + n] = C + row_offset[m] (row_offset may be null)
  accumulate,  // out[m * ld + n] += C, Kahan-compensated in comp[m * ld + n] when comp is given
  partial,     // acc[blockIdx.z * slice_stride + m * ld + n] = C over split blockIdx.z, in float64
};

template <class T>
struct GemmArgs {
  Operand<T> a[2], b[2];
  int k[2];  // depth of each pair; k[1] = 0 for a single pair
  int m, n;
  int slice_tiles;  // Epilogue::partial: depth slices (of BK) per split
  T* out;
  T* comp;
  const T* row_offset;
  double* acc;
  int64_t ld, slice_stride;
};

// ---- cores -------------------------------------------------------------------------------------
// A core multiplies the staged slices sA[k * AS + m], sB[k * BS + n] (k < BK) into its
// accumulators and, at the end, hands every entry of C it owns to f(row, column, value).

// float32 on tensor cores, 3xTF32.
struct Tf32x3Core {
  using T = float;
  static constexpr int BM = 128, BN = 64, BK = 16;
  static constexpr int AS = BM + 8, BS = BN + 8;  // rows of 32-byte multiples, as WMMA loads need
  static constexpr int WM = 32, WN = 32;          // warp tile: 4 x 2 warps
  static constexpr int FM = WM / 16, FN = WN / 16;
  static constexpr int kScratch = 16 * 16;        // per warp, for the epilogue
  static_assert((BM / WM) * (BN / WN) * 32 == kGemmThreads, "one warp tile per warp");

  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 8, float> acc[FM][FN];

  __device__ Tf32x3Core() {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
  }

  template <class Fragment>
  __device__ static void split(Fragment& big, Fragment& small) {
#pragma unroll
    for (int e = 0; e < big.num_elements; ++e) {
      const float x = big.x[e];
      big.x[e] = nvcuda::wmma::__float_to_tf32(x);
      small.x[e] = nvcuda::wmma::__float_to_tf32(x - big.x[e]);  // x - big is exact
    }
  }

  __device__ void multiply(const float* sA, const float* sB) {
    using namespace nvcuda;
    const int warp = threadIdx.x / 32, wm = warp / (BN / WN), wn = warp % (BN / WN);
#pragma unroll
    for (int ks = 0; ks < BK; ks += 8) {
      // B's fragments for the whole warp tile, A's one at a time: fewer live registers.
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> b[FN], b_small[FN];
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        wmma::load_matrix_sync(b[j], sB + ks * BS + wn * WN + j * 16, BS);
        split(b[j], b_small[j]);
      }
#pragma unroll
      for (int i = 0; i < FM; ++i) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major> a, a_small;
        wmma::load_matrix_sync(a, sA + ks * AS + wm * WM + i * 16, AS);
        split(a, a_small);
#pragma unroll
        for (int j = 0; j < FN; ++j) {  // small terms first: they are the ones rounding would lose
          wmma::mma_sync(acc[i][j], a_small, b[j], acc[i][j]);
          wmma::mma_sync(acc[i][j], a, b_small[j], acc[i][j]);
          wmma::mma_sync(acc[i][j], a, b[j], acc[i][j]);
        }
      }
    }
  }

  // The fragment layout is opaque: each warp stores one accumulator at a time to its scratch
  // (16 x 16) and its lanes take 8 entries each, half a row of 16 per half-warp.
  template <class F>
  __device__ void for_each(float* scratch, const F& f) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = warp / (BN / WN), wn = warp % (BN / WN);
    float* mine = scratch + warp * kScratch;
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        nvcuda::wmma::store_matrix_sync(mine, acc[i][j], 16, nvcuda::wmma::mem_row_major);
        __syncwarp();
#pragma unroll
        for (int q = 0; q < kScratch / 32; ++q) {
          const int e = q * 32 + lane;
          f(wm * WM + i * 16 + e / 16, wn * WN + j * 16 + e % 16, mine[e]);
        }
        __syncwarp();
      }
  }
};

// float64 (or float32) on the FMA units: a TM x TN register block per thread.
template <class Scalar>
struct FmaCore {
  using T = Scalar;
  static constexpr int BM = 64, BN = 64, BK = 8, TM = 4, TN = 4;
  static constexpr int AS = BM + 16 / int(sizeof(T)), BS = BN + 16 / int(sizeof(T));  // 16-byte rows
  static constexpr int kScratch = 0;
  static_assert((BM / TM) * (BN / TN) == kGemmThreads, "one register block per thread");

  T acc[TM][TN];

  __device__ FmaCore() {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = T(0);
  }

  __device__ static float fma_t(float a, float b, float c) { return __fmaf_rn(a, b, c); }
  __device__ static double fma_t(double a, double b, double c) { return __fma_rn(a, b, c); }
  __device__ static void ld4(const float* p, float (&r)[4]) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w;
  }
  __device__ static void ld4(const double* p, double (&r)[4]) {
    const double2 a = reinterpret_cast<const double2*>(p)[0], b = reinterpret_cast<const double2*>(p)[1];
    r[0] = a.x, r[1] = a.y, r[2] = b.x, r[3] = b.y;
  }

  __device__ void multiply(const T* sA, const T* sB) {
    const int tx = threadIdx.x % (BN / TN), ty = threadIdx.x / (BN / TN);
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      T a[TM], b[TN];
      ld4(sA + kk * AS + ty * TM, a);
      ld4(sB + kk * BS + tx * TN, b);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fma_t(a[i], b[j], acc[i][j]);
    }
  }

  template <class F>
  __device__ void for_each(T*, const F& f) const {
    const int tx = threadIdx.x % (BN / TN), ty = threadIdx.x / (BN / TN);
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) f(ty * TM + i, tx * TN + j, acc[i][j]);
  }
};

template <class T>
struct CoreFor {
  using type = FmaCore<T>;
};
template <>
struct CoreFor<float> {
  using type = Tf32x3Core;
};

// ---- staging -----------------------------------------------------------------------------------

// Element e of this thread's share of a BX x BK slice: its row i and depth k. Depth-contiguous
// operands go along the depth (a row's BK values in one or two sectors), the others along rows.
template <bool kDepthContiguous, int BX, int BK>
__device__ __forceinline__ void slice_coords(int e, int& i, int& k) {
  constexpr int E = BX * BK / kGemmThreads;
  if constexpr (kDepthContiguous) {
    const int idx = threadIdx.x * E + e;
    i = idx / BK, k = idx % BK;
  } else {
    const int idx = e * kGemmThreads + threadIdx.x;
    i = idx % BX, k = idx / BX;
  }
}

// Registers r = X(i0 + i, k0 + k) over this thread's share, 0 outside extent x depth.
template <class T, bool kDepthContiguous, int BX, int BK>
__device__ __forceinline__ void load_slice(const Operand<T>& x, int i0, int extent, int k0, int depth,
                                           T (&r)[BX * BK / kGemmThreads]) {
#pragma unroll
  for (int e = 0; e < BX * BK / kGemmThreads; ++e) {
    int i, k;
    slice_coords<kDepthContiguous, BX, BK>(e, i, k);
    const int gi = i0 + i, gk = k0 + k;
    r[e] = (gi < extent && gk < depth) ? x.p[gi * x.s_i + gk * x.s_k] : T(0);
  }
}

// Shared slice s[k * stride + i] from the registers of load_slice.
template <class T, bool kDepthContiguous, int BX, int BK, int kStride>
__device__ __forceinline__ void store_slice(const T (&r)[BX * BK / kGemmThreads], T* s) {
#pragma unroll
  for (int e = 0; e < BX * BK / kGemmThreads; ++e) {
    int i, k;
    slice_coords<kDepthContiguous, BX, BK>(e, i, k);
    s[k * kStride + i] = r[e];
  }
}

// ---- the kernel --------------------------------------------------------------------------------

// kAK / kBK: A / B contiguous along the depth (else along their rows / columns).
template <class T, bool kAK, bool kBK, Epilogue kEpi>
__global__ void __launch_bounds__(kGemmThreads, 2) gemm_kernel(const __grid_constant__ GemmArgs<T> g) {
  using Core = typename CoreFor<T>::type;
  constexpr int BM = Core::BM, BN = Core::BN, BK = Core::BK, AS = Core::AS, BS = Core::BS;
  constexpr int EA = BM * BK / kGemmThreads, EB = BN * BK / kGemmThreads;
  __shared__ __align__(32) T sA[2][BK * AS];
  __shared__ __align__(32) T sB[2][BK * BS];
  __shared__ __align__(32) T scratch[Core::kScratch > 0 ? Core::kScratch * (kGemmThreads / 32) : 1];

  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
  const int tiles0 = (g.k[0] + BK - 1) / BK, tiles1 = (g.k[1] + BK - 1) / BK;
  int kt_begin = 0, kt_end = tiles0 + tiles1;
  if constexpr (kEpi == Epilogue::partial) {
    kt_begin = blockIdx.z * g.slice_tiles;
    kt_end = min(kt_end, kt_begin + g.slice_tiles);
  }

  T ra[EA], rb[EB];
  auto fetch = [&](int kt) {  // depth slice kt of pair 0, then of pair 1
    const int q = kt < tiles0 ? 0 : 1;
    const int k0 = (kt - (q ? tiles0 : 0)) * BK;
    load_slice<T, kAK, BM, BK>(g.a[q], m0, g.m, k0, g.k[q], ra);
    load_slice<T, kBK, BN, BK>(g.b[q], n0, g.n, k0, g.k[q], rb);
  };
  auto stash = [&](int buf) {
    store_slice<T, kAK, BM, BK, AS>(ra, sA[buf]);
    store_slice<T, kBK, BN, BK, BS>(rb, sB[buf]);
  };

  Core core;
  if (kt_begin < kt_end) {  // uniform over the block
    fetch(kt_begin);
    stash(0);
    __syncthreads();
    int cur = 0;
    for (int kt = kt_begin; kt < kt_end; ++kt) {
      const bool more = kt + 1 < kt_end;
      if (more) fetch(kt + 1);  // in flight while this slice is multiplied
      core.multiply(sA[cur], sB[cur]);
      if (more) stash(cur ^ 1);  // the other buffer was last read before the previous barrier
      __syncthreads();
      cur ^= 1;
    }
  }

  core.for_each(scratch, [&](int r, int c, T value) {
    const int m = m0 + r, n = n0 + c;
    if (m >= g.m || n >= g.n) return;
    const int64_t at = int64_t(m) * g.ld + n;
    if constexpr (kEpi == Epilogue::store) {
      g.out[at] = value + (g.row_offset != nullptr ? g.row_offset[m] : T(0));
    } else if constexpr (kEpi == Epilogue::accumulate) {
      if (g.comp == nullptr) {
        g.out[at] += value;
      } else {  // comp holds minus the rounding error of out: out - comp is the sum
        const T y = value - g.comp[at], t = g.out[at] + y;
        g.comp[at] = (t - g.out[at]) - y;
        g.out[at] = t;
      }
    } else {
      g.acc[blockIdx.z * g.slice_stride + at] = double(value);
    }
  });
}

// The tile sizes of a dtype's core, for the launch grid.
template <class T>
struct GemmTile {
  static constexpr int BM = CoreFor<T>::type::BM, BN = CoreFor<T>::type::BN, BK = CoreFor<T>::type::BK;
};

}  // namespace infolens::cuda::curvature
