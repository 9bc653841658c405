// The tiled matrix product behind the head's GGN kernels (softmax_ce_ggn.cu):
//   C[M, N] = sum_q A_q[M, K_q] B_q[K_q, N]   over one or two operand pairs (q = 0, 1),
// with each operand given by a pointer and two strides, so one kernel serves every layout the
// head needs (W, dW_j, h rows; the [V, Tb] slab read along either axis), and an epilogue that
// stores C (plus a per-row offset), adds it into an accumulator (compensated), or writes a
// float64 partial of one split of the depth (grid.z). gemm() below launches it.
//
// float32: tensor cores, 3xTF32, with mma.sync (ptx.cuh). 256 threads own a 128 x 128 tile of
// C, 8 warps of 64 x 32 each (4 x 4 fragments of 16 x 8), and walk the depth 16 at a time
// through four shared-memory stages filled by cp.async (80 KB, two blocks per SM): three slices
// are in flight while one is multiplied, enough to cover a read from device memory. Every operand x is split into big = tf32(x) and
// small = tf32(x - big), and C += a_small b_big + a_big b_small + a_big b_big with float32
// accumulation: products exact, the dropped small x small term ~2^-22 |a b|, so float32-level
// accuracy (as CUTLASS's 3xTF32) at tensor-core speed. Shared rows are padded so that the
// fragments' reads hit 32 different banks: an operand contiguous along the depth is kept as
// [rows][16 + 4], one contiguous along its rows as [16][rows + 8].
// (The first version, WMMA fragments of 16 x 16 in 32 x 32 warp tiles with register-staged
// scalar loads, ran at about 16 TFLOP/s on an H100, less than cuBLAS's plain SGEMM.)
//
// float64: FMA. 64 x 64 tiles, BK = 8; each thread accumulates a 4 x 4 register block, the next
// slice staged through registers while the current one is multiplied.
//
// Accuracy. Products accumulate in float32 (float32 inputs) or float64 over at most the depth of
// one call: the caller keeps it bounded (Tb tokens, or one split of the vocabulary) and flushes
// into float64 or a compensated sum. The module is built with -fmad=false: FMAs are explicit.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "check.cuh"
#include "ptx.cuh"
#include "shared_memory.cuh"

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
  bool vec_a, vec_b;  // set by gemm(): the operands (both pairs) allow 16-byte copies
};

// One entry of C through the epilogue.
template <class T, Epilogue kEpi>
__device__ __forceinline__ void finish(const GemmArgs<T>& g, int m, int n, T value) {
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
}

// The depth slices [begin, end) of this block: all of both pairs, or one split's share.
template <class T, Epilogue kEpi>
__device__ __forceinline__ void slice_range(const GemmArgs<T>& g, int bk, int& tiles0, int& begin, int& end) {
  tiles0 = (g.k[0] + bk - 1) / bk;
  begin = 0, end = tiles0 + (g.k[1] + bk - 1) / bk;
  if constexpr (kEpi == Epilogue::partial) {
    begin = blockIdx.z * g.slice_tiles;
    end = min(end, begin + g.slice_tiles);
  }
}

// Depth slice kt (of bk) as its operand pair q and first depth k0: pair 0's slices, then pair 1's.
__device__ __forceinline__ void slice_at(int kt, int tiles0, int bk, int& q, int& k0) {
  q = kt < tiles0 ? 0 : 1;
  k0 = (kt - (q ? tiles0 : 0)) * bk;
}

// ---- float32: 3xTF32 on tensor cores -------------------------------------------------------------

struct TensorTile {
  static constexpr int BM = 128, BN = 128, BK = 16;
  static constexpr int kStages = 4;                 // slices in flight: 3 ahead of the one multiplied
  static constexpr int WM = 64, WN = 32;            // warp tile: 2 x 4 warps
  static constexpr int MI = WM / 16, NI = WN / 8;   // fragments per warp
  static constexpr int KPAD = BK + 4, XPAD = 8;      // padded shared rows (see the top)
  // floats of one operand's stage, either layout
  static constexpr int kStage = (BM * KPAD > BK * (BM + XPAD)) ? BM * KPAD : BK * (BM + XPAD);
  static constexpr size_t kSharedBytes = size_t(2) * kStages * kStage * sizeof(float);  // 80 KB
  static_assert(BM == BN, "one stage size for both operands");
  static_assert((BM / WM) * (BN / WN) * 32 == kGemmThreads, "one warp tile per warp");
};

// The shared stage of one operand, contiguous along the depth (kK) or along its rows.
template <bool kK, int BX>
struct Stage {
  static constexpr int BK = TensorTile::BK, LD = kK ? TensorTile::KPAD : BX + TensorTile::XPAD;
  __device__ static int at(int i, int k) { return kK ? i * LD + k : k * LD + i; }

  // Starts the copy of X(i0 + i, k0 + k), i < BX, k < BK into s, zeros outside extent x depth.
  __device__ static void fill(float* s, const Operand<float>& x, int i0, int extent, int k0, int depth, bool vec) {
    if (vec) {  // 16-byte pieces: 4 along the contiguous axis
      constexpr int kPieces = BX * BK / 4;
#pragma unroll
      for (int e = 0; e < kPieces / kGemmThreads; ++e) {
        const int c = e * kGemmThreads + threadIdx.x;
        const int i = kK ? c / (BK / 4) : (c % (BX / 4)) * 4;
        const int k = kK ? (c % (BK / 4)) * 4 : c / (BX / 4);
        const int gi = i0 + i, gk = k0 + k;
        // elements of the piece inside the operand; none: a zero fill from the (aligned) base
        const int n = kK ? (gi < extent ? min(4, max(0, depth - gk)) : 0)
                         : (gk < depth ? min(4, max(0, extent - gi)) : 0);
        const float* src = n > 0 ? x.p + int64_t(gi) * x.s_i + int64_t(gk) * x.s_k : x.p;
        ptx::cp_async<16>(s + at(i, k), src, 4 * n);
      }
    } else {
#pragma unroll
      for (int e = 0; e < BX * BK / kGemmThreads; ++e) {
        const int c = e * kGemmThreads + threadIdx.x;  // consecutive threads along the contiguous axis
        const int i = kK ? c / BK : c % BX, k = kK ? c % BK : c / BX;
        const int gi = i0 + i, gk = k0 + k;
        const bool in = gi < extent && gk < depth;
        ptx::cp_async<4>(s + at(i, k), in ? x.p + int64_t(gi) * x.s_i + int64_t(gk) * x.s_k : x.p, in ? 4 : 0);
      }
    }
  }
};

__device__ __forceinline__ void split(float x, uint32_t& big, uint32_t& small) {
  big = ptx::to_tf32(x);
  small = ptx::to_tf32(x - __uint_as_float(big));  // x - big is exact
}

template <bool kAK, bool kBK, Epilogue kEpi>
__global__ void __launch_bounds__(kGemmThreads, 2) tensor_gemm_kernel(const __grid_constant__ GemmArgs<float> g) {
  using S = TensorTile;
  using SA = Stage<kAK, S::BM>;
  using SB = Stage<kBK, S::BN>;
  extern __shared__ __align__(16) float smem[];  // [kStages][A, B][kStage]

  const int m0 = blockIdx.x * S::BM, n0 = blockIdx.y * S::BN;
  int tiles0, begin, end;
  slice_range<float, kEpi>(g, S::BK, tiles0, begin, end);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
  const int wm = warp / (S::BN / S::WN) * S::WM, wn = warp % (S::BN / S::WN) * S::WN;

  float acc[S::MI][S::NI][4];
#pragma unroll
  for (int i = 0; i < S::MI; ++i)
#pragma unroll
    for (int j = 0; j < S::NI; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;

  auto fetch = [&](int kt) {  // depth slice kt of pair 0, then of pair 1, into its stage
    if (kt >= end) return;
    float* stage = smem + ((kt - begin) % S::kStages) * 2 * S::kStage;
    int q, k0;
    slice_at(kt, tiles0, S::BK, q, k0);
    SA::fill(stage, g.a[q], m0, g.m, k0, g.k[q], g.vec_a);
    SB::fill(stage + S::kStage, g.b[q], n0, g.n, k0, g.k[q], g.vec_b);
  };

  // One barrier per slice: after it, slice kt has landed for everyone, and everyone is done with
  // the stage of slice kt - 1, which the copy of slice kt + kStages - 1 then refills.
#pragma unroll
  for (int s = 0; s < S::kStages - 1; ++s) {
    fetch(begin + s);
    ptx::cp_async_commit();  // one group per slice, empty past the end: the count stays exact
  }
  for (int kt = begin; kt < end; ++kt) {
    ptx::cp_async_wait<S::kStages - 2>();  // this thread's copies of slice kt have landed
    __syncthreads();
    fetch(kt + S::kStages - 1);
    ptx::cp_async_commit();
    const float* a = smem + ((kt - begin) % S::kStages) * 2 * S::kStage;
    const float* b = a + S::kStage;
#pragma unroll
    for (int ks = 0; ks < S::BK; ks += 8) {
      // B's fragments for the whole warp tile, A's one at a time: fewer live registers
      uint32_t bb[S::NI][2], bs[S::NI][2];
#pragma unroll
      for (int j = 0; j < S::NI; ++j) {
        const int n = wn + j * 8 + gid;
        split(b[SB::at(n, ks + tig)], bb[j][0], bs[j][0]);
        split(b[SB::at(n, ks + tig + 4)], bb[j][1], bs[j][1]);
      }
#pragma unroll
      for (int i = 0; i < S::MI; ++i) {
        const int m = wm + i * 16 + gid;
        uint32_t ab[4], as[4];
        split(a[SA::at(m, ks + tig)], ab[0], as[0]);
        split(a[SA::at(m + 8, ks + tig)], ab[1], as[1]);
        split(a[SA::at(m, ks + tig + 4)], ab[2], as[2]);
        split(a[SA::at(m + 8, ks + tig + 4)], ab[3], as[3]);
#pragma unroll
        for (int j = 0; j < S::NI; ++j) {  // small terms first: they are the ones rounding would lose
          ptx::mma_tf32(acc[i][j], as, bb[j]);
          ptx::mma_tf32(acc[i][j], ab, bs[j]);
          ptx::mma_tf32(acc[i][j], ab, bb[j]);
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < S::MI; ++i)
#pragma unroll
    for (int j = 0; j < S::NI; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q)
        finish<float, kEpi>(g, m0 + wm + i * 16 + gid + 8 * (q / 2), n0 + wn + j * 8 + 2 * tig + q % 2, acc[i][j][q]);
}

// ---- float64: FMA --------------------------------------------------------------------------------

struct FmaTile {
  static constexpr int BM = 64, BN = 64, BK = 8, TM = 4, TN = 4;
  static constexpr int AS = BM + 2, BS = BN + 2;  // 16-byte rows
  static_assert((BM / TM) * (BN / TN) == kGemmThreads, "one register block per thread");
};

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
template <bool kK, int BX, int BK>
__device__ __forceinline__ void load_slice(const Operand<double>& x, int i0, int extent, int k0, int depth,
                                           double (&r)[BX * BK / kGemmThreads]) {
#pragma unroll
  for (int e = 0; e < BX * BK / kGemmThreads; ++e) {
    int i, k;
    slice_coords<kK, BX, BK>(e, i, k);
    const int gi = i0 + i, gk = k0 + k;
    r[e] = (gi < extent && gk < depth) ? x.p[gi * x.s_i + gk * x.s_k] : 0.0;
  }
}

// Shared slice s[k * kStride + i] from the registers of load_slice.
template <bool kK, int BX, int BK, int kStride>
__device__ __forceinline__ void store_slice(const double (&r)[BX * BK / kGemmThreads], double* s) {
#pragma unroll
  for (int e = 0; e < BX * BK / kGemmThreads; ++e) {
    int i, k;
    slice_coords<kK, BX, BK>(e, i, k);
    s[k * kStride + i] = r[e];
  }
}

template <bool kAK, bool kBK, Epilogue kEpi>
__global__ void __launch_bounds__(kGemmThreads, 2) fma_gemm_kernel(const __grid_constant__ GemmArgs<double> g) {
  using S = FmaTile;
  constexpr int BM = S::BM, BN = S::BN, BK = S::BK, TM = S::TM, TN = S::TN;
  constexpr int EA = BM * BK / kGemmThreads, EB = BN * BK / kGemmThreads;
  __shared__ __align__(16) double sA[2][BK * S::AS];
  __shared__ __align__(16) double sB[2][BK * S::BS];

  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
  int tiles0, begin, end;
  slice_range<double, kEpi>(g, BK, tiles0, begin, end);

  double ra[EA], rb[EB];
  auto fetch = [&](int kt) {  // depth slice kt into registers
    int q, k0;
    slice_at(kt, tiles0, BK, q, k0);
    load_slice<kAK, BM, BK>(g.a[q], m0, g.m, k0, g.k[q], ra);
    load_slice<kBK, BN, BK>(g.b[q], n0, g.n, k0, g.k[q], rb);
  };
  auto stash = [&](int buf) {
    store_slice<kAK, BM, BK, S::AS>(ra, sA[buf]);
    store_slice<kBK, BN, BK, S::BS>(rb, sB[buf]);
  };

  double acc[TM][TN] = {};
  const int tx = threadIdx.x % (BN / TN), ty = threadIdx.x / (BN / TN);
  if (begin < end) {  // uniform over the block
    fetch(begin);
    stash(0);
    __syncthreads();
    int cur = 0;
    for (int kt = begin; kt < end; ++kt) {
      const bool more = kt + 1 < end;
      if (more) fetch(kt + 1);  // in flight while this slice is multiplied
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        const double2* pa = reinterpret_cast<const double2*>(sA[cur] + kk * S::AS + ty * TM);
        const double2* pb = reinterpret_cast<const double2*>(sB[cur] + kk * S::BS + tx * TN);
        const double2 a01 = pa[0], a23 = pa[1], b01 = pb[0], b23 = pb[1];
        const double a[TM] = {a01.x, a01.y, a23.x, a23.y}, b[TN] = {b01.x, b01.y, b23.x, b23.y};
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] = __fma_rn(a[i], b[j], acc[i][j]);
      }
      if (more) stash(cur ^ 1);  // the other buffer was last read before the previous barrier
      __syncthreads();
      cur ^= 1;
    }
  }
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) finish<double, kEpi>(g, m0 + ty * TM + i, n0 + tx * TN + j, acc[i][j]);
}

// ---- launch --------------------------------------------------------------------------------------

template <class T>
struct GemmTile {
  using type = TensorTile;
};
template <>
struct GemmTile<double> {
  using type = FmaTile;
};

// Whether X can be copied in 16-byte pieces along its contiguous axis (kK: the depth).
template <bool kK>
inline bool vectorisable(const Operand<float>& x) {
  const int64_t unit = kK ? x.s_k : x.s_i, stride = kK ? x.s_i : x.s_k;  // along and between the pieces
  return x.p == nullptr || (reinterpret_cast<uintptr_t>(x.p) % 16 == 0 && unit == 1 && stride % 4 == 0);
}

// C over `splits` splits of the depth (Epilogue::partial; else 1), on `stream`.
// kAK / kBK: A / B contiguous along the depth (else along their rows / columns).
template <class T, bool kAK, bool kBK, Epilogue kEpi>
void gemm(GemmArgs<T> args, int splits, cudaStream_t stream) {
  using S = typename GemmTile<T>::type;
  const dim3 grid(unsigned((args.m + S::BM - 1) / S::BM), unsigned((args.n + S::BN - 1) / S::BN), unsigned(splits));
  if constexpr (sizeof(T) == 4) {
    args.vec_a = vectorisable<kAK>(args.a[0]) && vectorisable<kAK>(args.a[1]);
    args.vec_b = vectorisable<kBK>(args.b[0]) && vectorisable<kBK>(args.b[1]);
    const auto kernel = tensor_gemm_kernel<kAK, kBK, kEpi>;
    static uint64_t allowed = 0;  // devices on which this kernel may use its shared memory
    int device = 0;
    INFOLENS_CUDA_CHECK(cudaGetDevice(&device));
    if (device >= 64 || !(allowed >> device & 1)) {
      allow_shared(kernel, TensorTile::kSharedBytes, device, "softmax_ce_ggn");
      if (device < 64) allowed |= uint64_t(1) << device;
    }
    kernel<<<grid, kGemmThreads, TensorTile::kSharedBytes, stream>>>(args);
  } else {
    fma_gemm_kernel<kAK, kBK, kEpi><<<grid, kGemmThreads, 0, stream>>>(args);
  }
  INFOLENS_CUDA_CHECK(cudaGetLastError());
}

}  // namespace infolens::cuda::curvature
