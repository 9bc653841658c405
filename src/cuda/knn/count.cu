// Exact radius counts on the GPU (knn.hpp, docs/NATIVE_ABI.md "index.count"): the same keys and the
// same strict / non-strict comparisons as the C++ engine, so the counts agree exactly.
//
// d == 1: sort + interval search. The n values are copied (column 0, stride ld) into a workspace
//   and sorted by cub's radix sort. For a query q the set { x : key(q, x) pass r } is a contiguous
//   run of the sorted values: fl(q - x) is monotone in x and fl(q - x) == -fl(x - q), and both
//   terms (|t| and t*t) are non-decreasing in |t|. Its two ends are found by binary searches on
//   the key predicate itself (never on q - r, q + r, which round differently). One thread per
//   query. If workspaces cannot be had, the brute-force path below runs instead (it needs none).
//
// d >= 2: fused brute force; nothing n x n exists. A block (256 threads, 16 x 16) owns a row tile
//   of BM query rows and walks point tiles of BN; each thread owns a TM x TN register micro-tile
//   (float 8 x 8, double 4 x 4) of keys: rows (a/4)*64 + ty*4 + a%4 and columns (b/4)*64 + tx*4
//   + b%4, so every shared-memory read is a conflict-free 16-byte vector (or a broadcast).
//   Coordinates are staged coordinate-major in shared memory BK at a time; for each coordinate a
//   thread reads TM + TN values and does TM * TN key steps (max-norm: FADD + FMNMX with the abs as
//   a source modifier). Then each key is compared with its row's radius (set.lt/le gives 0 or ~0,
//   subtracted from a uint32 counter: two instructions) and the row counts stay in registers for
//   the whole walk; they are reduced across the 16 threads of a row once, at the end.
//   Self-join: every unordered pair once. Row tile I visits J = (I + s) mod T for s = 0 .. h(I)
//   (a round-robin tournament: each pair of tiles is visited by exactly one of its two tiles, all
//   blocks get the same work, and blocks start on different J, so their atomics spread). s = 0 is
//   the diagonal tile: all its pairs count for the rows only, j == i made NaN (fails < and <=).
//   For s > 0 the same keys are also compared with the column radii; column counts are reduced
//   over a warp by a shuffle, into per-block shared counters, then one 64-bit atomicAdd per
//   column per tile goes to global memory. Integer adds: the result is deterministic.
//   Tails: rows past m and points past n are zero-filled in shared memory and their keys set to
//   NaN before the comparisons (only in tiles that have tails).
//   grid.y splits each row's walk into segments when there are too few row tiles to fill the GPU;
//   every contribution is an atomicAdd into `out`, zeroed first, so no workspace is needed.
#include <cub/cub.cuh>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "check.cuh"
#include "knn/keys.cuh"
#include "knn/knn.hpp"
#include "ptx.cuh"
#include "shared_memory.cuh"
#include "stream_memory.cuh"

namespace infolens::cuda::knn {
namespace {

constexpr int kThreads = 256;  // 16 x 16

// Micro-tile and staging sizes per dtype. float: 64 keys per thread (64 registers), two blocks per
// SM. double: 16 keys (32 registers) per thread; the FP64 pipe, not issue, is the limit there.
template <class T>
struct Cfg;
template <>
struct Cfg<float> {
  static constexpr int TM = 8, TN = 8, BK = 8, kMinBlocks = 2;
};
template <>
struct Cfg<double> {
  static constexpr int TM = 4, TN = 4, BK = 8, kMinBlocks = 2;
};

// The comparison in the hot loop, as a threshold prepared once per radius.
// float: keys are +0 .. +inf or NaN (masked pairs), and for non-negative floats the IEEE order is
// the order of the bit patterns as integers. So key < r <=> bits(key) - thr < 0 with thr = bits(r)
// (strict) or bits(r) + 1 (not strict); no overflow (both lie in [0, 2^31)); NaN (0x7fffffff)
// fails both. The count then takes the difference's sign bit: IADD3 + LEA.HI per comparison
// instead of FSETP + SEL + add. r = -0 acts as +0 (0 <= -0 holds, 0 < -0 does not); r < 0 passes
// nothing (thr = 0).
// double: a plain comparison, 0 or 0xffffffff subtracted from the counter.
template <bool kStrict>
__device__ __forceinline__ int threshold(float r) {
  if (r < 0.0f) return 0;
  const int bits = r > 0.0f ? __float_as_int(r) : 0;
  return kStrict ? bits : bits + 1;
}
template <bool kStrict>
__device__ __forceinline__ double threshold(double r) {
  return r;
}
template <bool kStrict>
__device__ __forceinline__ void add_pass(unsigned& cnt, float key, int thr) {
  cnt += unsigned(__float_as_int(key) - thr) >> 31;
}
template <bool kStrict>
__device__ __forceinline__ void add_pass(unsigned& cnt, double key, double r) {
  cnt -= ptx::set_mask<kStrict>(key, r);
}
template <class T>
using Threshold = decltype(threshold<true>(T(0)));

template <bool kStrict, class T>
__device__ __forceinline__ bool passes(T key, T r) {
  if constexpr (kStrict)
    return key < r;
  else
    return key <= r;
}

__device__ __forceinline__ float nan_of(float) { return __int_as_float(0x7fffffff); }
__device__ __forceinline__ double nan_of(double) { return __longlong_as_double(0x7fffffffffffffffLL); }



// ---- d >= 2: fused brute force -----------------------------------------------------------------

// Tile position of micro-tile element a of thread coordinate t (ty for rows, tx for columns).
__device__ __forceinline__ int tile_pos(int a, int t) { return (a / 4) * 64 + t * 4 + a % 4; }

// out[i] += count over this block's share of the walk (see the header). Self-join (kSym): q == x,
// m == n, gridDim.x == the tile count T. tiles_per_seg: walk steps per blockIdx.y.
template <class T, bool kMaxNorm, bool kStrict, bool kSym>
__global__ void __launch_bounds__(kThreads, Cfg<T>::kMinBlocks)
    brute_count(const T* __restrict__ q, int64_t qld, int64_t m, const T* __restrict__ x,
                int64_t xld, int64_t n, int dim, const T* __restrict__ radius, int point_tiles,
                int tiles_per_seg, unsigned long long* __restrict__ out) {
  constexpr int TM = Cfg<T>::TM, TN = Cfg<T>::TN, BK = Cfg<T>::BK;
  constexpr int BM = 16 * TM, BN = 16 * TN;
  constexpr int QS = BM + 16 / int(sizeof(T)), PS = BN + 16 / int(sizeof(T));  // 16-byte pad
  static_assert(TM % 4 == 0 && TN % 4 == 0 && (!kSym || BM == BN), "tile shapes");
  __shared__ __align__(16) T sQ[BK * QS];
  __shared__ __align__(16) T sP[BK * PS];
  __shared__ __align__(16) Threshold<T> sR[BN];  // column thresholds of the current tile (self-join)
  __shared__ unsigned sCol[BN];  // column counts of the current tile (self-join)
  __shared__ __align__(16) Threshold<T> sRow[BM];  // row thresholds (registers are scarcer)

  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int I = blockIdx.x;
  const int64_t row0 = int64_t(I) * BM;

  // This block's walk: steps [s_begin, s_end) over tiles J(s).
  int s_begin = blockIdx.y * tiles_per_seg, s_end;
  if constexpr (kSym) {
    const int Tt = gridDim.x;
    const int h = (Tt % 2 == 1) ? (Tt - 1) / 2 : Tt / 2 - 1 + (I < Tt / 2 ? 1 : 0);
    s_end = min(s_begin + tiles_per_seg, h + 1);
  } else {
    s_end = min(s_begin + tiles_per_seg, point_tiles);
  }
  if (s_begin >= s_end) return;  // uniform: before any barrier

  if constexpr (kSym) {
    for (int t = threadIdx.x; t < BN; t += kThreads) sCol[t] = 0u;
    // (ordered before any atomic on sCol by the staging barriers below)
  }

  for (int t = threadIdx.x; t < BM; t += kThreads)  // read after the staging barriers
    sRow[t] = threshold<kStrict>(row0 + t < m ? radius[row0 + t] : T(0));
  unsigned rowcnt[TM];
#pragma unroll
  for (int a = 0; a < TM; ++a) rowcnt[a] = 0u;

  const bool q_once = dim <= BK;  // the row tile's coordinates stay in sQ for the whole walk
  bool q_staged = false;

  // The walk's point slices (tile J(s), coordinates k0 .. k0 + BK) go through registers: the next
  // slice's global loads are issued right after a slice is staged, so their latency hides behind
  // that slice's compute (as do the column radii, fetched with a tile's first slice).
  auto tile_of = [&](int s) {
    if constexpr (kSym) {
      const int J = I + s;
      return J >= int(gridDim.x) ? J - int(gridDim.x) : J;
    } else {
      return s;
    }
  };
  constexpr int kPre = BN * BK / kThreads;
  static_assert(kPre * kThreads == BN * BK && BN <= kThreads, "staging covers the tile");
  T pre_p[kPre];
  T pre_r = T(0);
  auto fetch = [&](int s, int k0) {
    const int64_t p0 = int64_t(tile_of(s)) * BN;
    const int width = min(BK, dim - k0);
#pragma unroll
    for (int i = 0; i < kPre; ++i) {
      const int e = threadIdx.x + i * kThreads, r = e / BK, kk = e % BK;
      const int64_t pt = p0 + r;
      pre_p[i] = (pt < n && kk < width) ? x[pt * xld + k0 + kk] : T(0);
    }
    if (kSym && k0 == 0 && threadIdx.x < BN) {
      const int64_t pt = p0 + threadIdx.x;
      pre_r = pt < n ? radius[pt] : T(0);
    }
  };
  fetch(s_begin, 0);

  for (int s = s_begin; s < s_end; ++s) {
    const bool diag = kSym && s == 0;
    const int64_t p0 = int64_t(tile_of(s)) * BN;

    T acc[TM][TN];
    for (int k0 = 0; k0 < dim; k0 += BK) {
      const int width = min(BK, dim - k0);
      const bool stage_q = !(q_once && q_staged);
      __syncthreads();  // everyone is done with the previous slice (and sR of the previous tile)
      // Element e = (row, kk), kk fastest: consecutive threads read consecutive coordinates of a
      // row (coalesced for small d) and store with stride QS words (4 kk + r: no bank conflict).
      if (stage_q) {
        for (int e = threadIdx.x; e < BM * BK; e += kThreads) {
          const int r = e / BK, kk = e % BK;
          const int64_t row = row0 + r;
          sQ[kk * QS + r] = (row < m && kk < width) ? q[row * qld + k0 + kk] : T(0);
        }
      }
#pragma unroll
      for (int i = 0; i < kPre; ++i) {
        const int e = threadIdx.x + i * kThreads;
        sP[(e % BK) * PS + e / BK] = pre_p[i];
      }
      if (kSym && k0 == 0 && !diag && threadIdx.x < BN) sR[threadIdx.x] = threshold<kStrict>(pre_r);
      q_staged = true;
      __syncthreads();
      if (k0 + BK < dim)
        fetch(s, k0 + BK);
      else if (s + 1 < s_end)
        fetch(s + 1, 0);

      int kk = 0;
      if (k0 == 0) {
        T qv[TM], xv[TN];
#pragma unroll
        for (int a = 0; a < TM; a += 4) ld4(sQ + a / 4 * 64 + ty * 4, qv + a);
#pragma unroll
        for (int b = 0; b < TN; b += 4) ld4(sP + b / 4 * 64 + tx * 4, xv + b);
#pragma unroll
        for (int a = 0; a < TM; ++a)
#pragma unroll
          for (int b = 0; b < TN; ++b) acc[a][b] = key_first<kMaxNorm, T>(qv[a], xv[b]);
        kk = 1;
      }
      for (; kk < width; ++kk) {
        T qv[TM], xv[TN];
#pragma unroll
        for (int a = 0; a < TM; a += 4) ld4(sQ + kk * QS + a / 4 * 64 + ty * 4, qv + a);
#pragma unroll
        for (int b = 0; b < TN; b += 4) ld4(sP + kk * PS + b / 4 * 64 + tx * 4, xv + b);
#pragma unroll
        for (int a = 0; a < TM; ++a)
#pragma unroll
          for (int b = 0; b < TN; ++b) acc[a][b] = key_step<kMaxNorm, T>(acc[a][b], qv[a], xv[b]);
      }
    }

    // Pairs that must not count: j == i (diagonal tile: row a meets column a of the same thread
    // coordinate), and zero-filled rows or points of a tail tile.
    if (diag && tx == ty) {
#pragma unroll
      for (int a = 0; a < TM; ++a) acc[a][a] = nan_of(T(0));
    }
    if (row0 + BM > m || p0 + BN > n) {
      const int rows_left = int(min(m - row0, int64_t(BM))), cols_left = int(min(n - p0, int64_t(BN)));
#pragma unroll
      for (int a = 0; a < TM; ++a)
#pragma unroll
        for (int b = 0; b < TN; ++b)
          if (tile_pos(a, ty) >= rows_left || tile_pos(b, tx) >= cols_left) acc[a][b] = nan_of(T(0));
    }

    if (kSym && !diag) {  // uniform across the block: the shuffles and the barrier below
      // Column by column, so only one column threshold and counter are live next to acc.
      Threshold<T> rr[TM];
#pragma unroll
      for (int a = 0; a < TM; a += 4) ld4(sRow + a / 4 * 64 + ty * 4, rr + a);
#pragma unroll
      for (int b = 0; b < TN; ++b) {
        const Threshold<T> rc = sR[tile_pos(b, tx)];
        unsigned c = 0u;
#pragma unroll
        for (int a = 0; a < TM; ++a) {
          add_pass<kStrict>(rowcnt[a], acc[a][b], rr[a]);
          add_pass<kStrict>(c, acc[a][b], rc);
        }
        // Lanes l and l + 16 hold the same columns (ty and ty + 1): one shuffle, then the lower
        // half adds into the block's counters.
        c += __shfl_xor_sync(0xffffffffu, c, 16);
        if ((threadIdx.x & 16) == 0 && c != 0u) atomicAdd(&sCol[tile_pos(b, tx)], c);
      }
      __syncthreads();  // all of this tile's column counts are in sCol
      for (int t = threadIdx.x; t < BN; t += kThreads) {
        const unsigned v = sCol[t];
        if (v != 0u) {  // only real points (< n) can have passed
          sCol[t] = 0u;
          atomicAdd(out + p0 + t, (unsigned long long)v);
        }
      }
      // The next tile's sCol atomics come after its two staging barriers.
    } else {
#pragma unroll
      for (int a = 0; a < TM; ++a) {
        const Threshold<T> r = sRow[tile_pos(a, ty)];
#pragma unroll
        for (int b = 0; b < TN; ++b) add_pass<kStrict>(rowcnt[a], acc[a][b], r);
      }
    }
  }

  // Rows: sum over the 16 threads (tx) of a row, lanes l ^ 1, 2, 4, 8 within a half-warp.
#pragma unroll
  for (int a = 0; a < TM; ++a) {
    unsigned long long v = rowcnt[a];
#pragma unroll
    for (int off = 8; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    const int64_t row = row0 + tile_pos(a, ty);
    if (tx == 0 && row < m && v != 0ull) atomicAdd(out + row, v);
  }
}

// ---- d == 1: sort + interval search ------------------------------------------------------------

// The column to sort, every NaN made the positive quiet NaN, which the radix sort (ordering
// floats by their bits) puts after +inf: the values that can pass form a prefix.
template <class T>
__global__ void gather_column(const T* __restrict__ x, int64_t ld, int64_t n, T* __restrict__ dst) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const T v = x[i * ld];
    dst[i] = v == v ? v : T(NAN);
  }
}

// The first index in [a, b) at which pred turns true (pred false ... true over the range).
template <class T, class Pred>
__device__ __forceinline__ int64_t first_true(const T* sorted, int64_t a, int64_t b, const Pred& pred) {
  while (a < b) {
    const int64_t mid = a + (b - a) / 2;
    if (pred(sorted[mid]))
      b = mid;
    else
      a = mid + 1;
  }
  return a;
}

// out[i] = number of sorted values v with key(q_i, v) passing radius[i], less the query's own
// point in the self-join (q == nullptr: query i is x[i * xld]). A NaN key never passes: NaN
// values (sorted last) are never counted, a NaN query counts nothing, and an infinite query
// meets every equal infinity (its own point among them) at key NaN and every other value at inf.
template <class T, bool kMaxNorm, bool kStrict>
__global__ void interval_count(const T* __restrict__ sorted, int64_t n, const T* __restrict__ q,
                               int64_t qld, const T* __restrict__ x, int64_t xld, int64_t m,
                               const T* __restrict__ radius, int64_t* __restrict__ out) {
  const int64_t valid = first_true(sorted, 0, n, [](T v) { return v != v; });  // values before the NaNs
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < m;
       i += int64_t(gridDim.x) * blockDim.x) {
    const T qi = q != nullptr ? q[i * qld] : x[i * xld];
    const T r = radius[i];
    if (qi != qi) {
      out[i] = 0;
      continue;
    }
    if (qi == T(INFINITY) || qi == -T(INFINITY)) {
      const int64_t lo = first_true(sorted, 0, valid, [&](T v) { return v >= qi; });
      const int64_t hi = first_true(sorted, lo, valid, [&](T v) { return v > qi; });
      out[i] = passes<kStrict>(T(INFINITY), r) ? valid - (hi - lo) : 0;
      continue;
    }
    // Keys are >= 0 and the predicate is monotone in the key: if key 0 fails, everything fails.
    // Otherwise every value equal to q passes, and the passing run is [lo, hi):
    //   lo = first index with v >= q or pass(v)   (false ... true: below q, keys shrink toward q)
    //   hi = first index with v > q and !pass(v)  (false ... true: above q, keys grow)
    if (!passes<kStrict>(T(0), r)) {
      out[i] = 0;
      continue;
    }
    const int64_t lo = first_true(sorted, 0, valid, [&](T v) {
      return v >= qi || passes<kStrict>(key_step<kMaxNorm, T>(T(0), qi, v), r);
    });
    const int64_t hi = first_true(sorted, lo, valid, [&](T v) {  // hi >= lo: below lo every v < q
      return v > qi && !passes<kStrict>(key_step<kMaxNorm, T>(T(0), qi, v), r);
    });
    // Self-join: the query's own point has key 0, which passes here.
    out[i] = (hi - lo) - (q == nullptr ? 1 : 0);
  }
}

// ---- host side ---------------------------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int sm_count(int device) {
  int sms = 0;
  INFOLENS_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return std::max(sms, 1);
}

template <class T, bool kMaxNorm, bool kStrict>
void brute_impl(const Matrix& points, const Matrix& queries, const T* radius, int64_t* out,
                cudaStream_t stream, int device) {
  constexpr int BM = 16 * Cfg<T>::TM, BN = 16 * Cfg<T>::TN;
  const bool self = queries.data == nullptr;
  const int64_t n = points.rows, m = self ? n : queries.rows;
  const T* x = static_cast<const T*>(points.data);
  const T* q = self ? x : static_cast<const T*>(queries.data);
  const int64_t qld = self ? points.ld : queries.ld;
  auto* dst = reinterpret_cast<unsigned long long*>(out);

  INFOLENS_CUDA_CHECK(cudaMemsetAsync(out, 0, size_t(m) * sizeof(int64_t), stream));

  const int64_t row_tiles = ceil_div(m, BM), point_tiles = ceil_div(n, BN);
  if (row_tiles > INT32_MAX || point_tiles > INT32_MAX)
    throw std::invalid_argument("count: too many rows for the CUDA engine");

  auto kernel = self ? brute_count<T, kMaxNorm, kStrict, true> : brute_count<T, kMaxNorm, kStrict, false>;
  int per_sm = 0;
  INFOLENS_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
  const int64_t target = 4 * int64_t(sm_count(device)) * std::max(per_sm, 1);  // blocks wanted
  // Walk steps per row tile: 1 + h(I) <= 1 + T/2 in the self-join, point_tiles otherwise.
  const int64_t steps = self ? 1 + row_tiles / 2 : point_tiles;
  int64_t segments = std::clamp<int64_t>(ceil_div(target, row_tiles), 1, std::min<int64_t>(steps, 65535));
  const int64_t per = ceil_div(steps, segments);
  segments = ceil_div(steps, per);

  const dim3 grid{unsigned(row_tiles), unsigned(segments)};
  kernel<<<grid, kThreads, 0, stream>>>(q, qld, m, x, points.ld, n, int(points.dim), radius,
                                        int(point_tiles), int(per), dst);
  INFOLENS_CUDA_CHECK(cudaGetLastError());
}

template <class T, bool kMaxNorm, bool kStrict>
void sorted_impl(const Matrix& points, const Matrix& queries, const T* radius, int64_t* out,
                 cudaStream_t stream, int device) {
  const char* what = "knn count (1-D)";
  const bool self = queries.data == nullptr;
  const int64_t n = points.rows, m = self ? n : queries.rows;
  const T* x = static_cast<const T*>(points.data);
  const int blocks_cap = 8 * sm_count(device);

  Workspace<T> keys(size_t(n), stream, what), alt(size_t(n), stream, what);
  gather_column<T><<<int(std::min<int64_t>(ceil_div(n, kThreads), blocks_cap)), kThreads, 0, stream>>>(
      x, points.ld, n, keys.get());
  INFOLENS_CUDA_CHECK(cudaGetLastError());

  cub::DoubleBuffer<T> buf(keys.get(), alt.get());
  size_t temp_bytes = 0;
  INFOLENS_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, temp_bytes, buf, n, 0,
                                                     int(sizeof(T) * 8), stream));
  Workspace<unsigned char> temp(std::max<size_t>(temp_bytes, 1), stream, what);
  INFOLENS_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(temp.get(), temp_bytes, buf, n, 0,
                                                     int(sizeof(T) * 8), stream));
  temp.free();

  interval_count<T, kMaxNorm, kStrict>
      <<<int(std::min<int64_t>(ceil_div(m, kThreads), blocks_cap)), kThreads, 0, stream>>>(
          buf.Current(), n, self ? nullptr : static_cast<const T*>(queries.data),
          self ? 0 : queries.ld, x, points.ld, m, radius, out);
  INFOLENS_CUDA_CHECK(cudaGetLastError());
  // keys / alt are freed in stream order, after interval_count.
}

template <class T, bool kMaxNorm, bool kStrict>
void count_impl(const Matrix& points, const Matrix& queries, const void* radius, int64_t* out,
                cudaStream_t stream, int device) {
  const T* r = static_cast<const T*>(radius);
  if (points.dim == 1) {
    try {
      sorted_impl<T, kMaxNorm, kStrict>(points, queries, r, out, stream, device);
      return;
    } catch (const CudaOutOfMemory&) {
      // No room to sort: the brute-force kernel needs no workspace and is exact as well.
      (void)cudaGetLastError();
    }
  }
  brute_impl<T, kMaxNorm, kStrict>(points, queries, r, out, stream, device);
}

template <class T>
void dispatch(const Matrix& points, const Matrix& queries, bool max_norm, bool strict,
              const void* radius, int64_t* out, cudaStream_t stream, int device) {
  if (max_norm) {
    if (strict)
      count_impl<T, true, true>(points, queries, radius, out, stream, device);
    else
      count_impl<T, true, false>(points, queries, radius, out, stream, device);
  } else {
    if (strict)
      count_impl<T, false, true>(points, queries, radius, out, stream, device);
    else
      count_impl<T, false, false>(points, queries, radius, out, stream, device);
  }
}

}  // namespace

void count(const Matrix& points, const Matrix& queries, Dtype dtype, double p, const void* radius,
           bool strict, int64_t* out, cudaStream_t stream, int device) {
  // The bindings validate; these guard the kernels' index arithmetic.
  const bool max_norm = std::isinf(p) && p > 0;
  if (!max_norm && p != 2.0) throw std::invalid_argument("count: p must be 2 or inf");
  if (points.data == nullptr || points.rows < 1) throw std::invalid_argument("count: no points");
  if (points.dim < 1 || points.dim > INT32_MAX || points.ld < points.dim)
    throw std::invalid_argument("count: points must have dim >= 1 and ld >= dim");
  const bool self = queries.data == nullptr;
  if (!self && (queries.dim != points.dim || queries.ld < queries.dim || queries.rows < 0))
    throw std::invalid_argument("count: queries must have the points' dim and ld >= dim");
  if (points.rows >= (int64_t(1) << 32) || (!self && queries.rows >= (int64_t(1) << 32)))
    throw std::invalid_argument("count: at most 2^32 - 1 rows");
  const int64_t m = self ? points.rows : queries.rows;

  DeviceGuard guard(device);
  (void)cudaGetLastError();  // a stale error of someone else's must not be reported as ours
  if (m == 0) return;
  if (dtype == Dtype::float32)
    dispatch<float>(points, queries, max_norm, strict, radius, out, stream, device);
  else
    dispatch<double>(points, queries, max_norm, strict, radius, out, stream, device);
}

}  // namespace infolens::cuda::knn
