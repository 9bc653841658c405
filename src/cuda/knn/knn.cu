// Exact brute-force kNN on the GPU (knn.hpp), fused: no N x N array is ever written to memory.
//
// Tiling. A thread block (256 threads) owns BM query rows (128 for float32, 64 for float64) and
// walks over the points in tiles of BN = 128; grid.y splits that walk into segments when there are
// too few row blocks to fill the GPU. Per tile:
//   1. Keys. Coordinates of the block's queries and the tile's points are staged through shared
//      memory BK = 8 columns at a time, double-buffered: the next slice (possibly the next tile's
//      first) is copied with cp.async while the current one is used, one barrier per slice. Thread (tx, ty) = (t % 16, t / 16)
//      keeps a register block of keys: queries ty*4 + a + 64 h (h < BM / 64) x points
//      tx*4 + c + 64 g (g < 2), accumulated coordinate by coordinate with key_step (keys.cuh), so
//      every key is bit for bit the C++ engine's: left to right, explicitly rounded, no FMA.
//      Columns past dim are staged as 0 on both sides, which changes no key: max(s, |0 - 0|) = s
//      and s + 0 * 0 = s for the non-negative (or NaN) partial keys.
//   2. Filter. Each thread compares its keys with its queries' k-th keys (sThr, shared memory).
//      A block-wide vote skips the rest of the tile when no key can enter any list, which is the
//      common case once the lists have filled (a query sees about k ln(n / k) insertions in all).
//   3. Lists. Otherwise the key tile goes to shared memory (sK) and warp w serves queries
//      w, w + 8, ...: a ballot over the query's row of sK finds the candidates (key <= k-th key,
//      index < n, and index != query row in the self-join); the query's k-best list is loaded from
//      global memory into the warp (lane l holds entries l and 32 + l), each candidate is tested
//      exactly and inserted with ballots and shuffles, and the list and its k-th key are written
//      back. The lists live in the output arrays (one segment) or in a workspace
//      [segments, m, k] that a second kernel merges per query (one warp per query).
//
// Order and ties. Lists are sorted ascending by (key, index), the order of docs/NATIVE_ABI.md;
// empty slots hold the sentinel (+inf, INT64_MAX). A candidate (key, j) enters iff
// (key, j) < (list's k-th key, k-th index) lexicographically, exactly TopK::admits of the C++
// engine, so each list is the k smallest candidates in that total order whatever order they
// arrive in: the result is unique, hence independent of tiling, segments and scheduling. The
// filter of steps 2 and 3 (key <= k-th key) only pre-selects; it admits a superset. NaN keys
// fail every comparison and never enter, as in the C++ engine.
//
// Memory. Nothing but the optional segment workspace is allocated; its size is capped by the free
// device memory, and an out-of-memory condition is retried with half the segments, down to one
// segment, which needs no workspace at all.
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

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int BN = 128;     // points per tile
constexpr int BK = 8;       // coordinates per staging step
constexpr int PS = BN + 4;  // row stride of sP (padded: 16-byte rows, fewer bank conflicts)
constexpr int KS = BN + 4;  // row stride of sK
constexpr int kMaxSegments = 64;
constexpr unsigned kFull = 0xffffffffu;
constexpr int64_t kNoIndex = INT64_MAX;

// Per dtype: query rows per block in halves of 64 (a thread keeps 4 * QH x 8 keys).
template <class T>
struct Cfg {
  static constexpr int QH = sizeof(T) == 4 ? 2 : 1;
  static constexpr int BM = 64 * QH;  // query rows per block
  static constexpr int QS = BM + 4;   // row stride of sQ
  static constexpr int TM = 4 * QH;   // query rows per thread
  static constexpr int TN = 8;        // points per thread
  // Shared memory: two staging buffers of kStage elements, each sQ [BK][QS] then sP [BK][PS];
  // sK [BM][KS]; sThrKey [BM] (T); sThrIdx [BM] (int64); sFlag [BM] (int).
  static constexpr int kStage = BK * QS + BK * PS;
  static constexpr size_t kSmemBytes = sizeof(T) * (2 * size_t(kStage) + size_t(BM) * KS + BM) +
                                       sizeof(int64_t) * BM + sizeof(int) * BM;
  static_assert(kThreads / BK * (BM / 32) == BM * kThreads / 256 && BM <= kThreads, "staging");
  static_assert(16 * 4 * QH == BM / 1 && 16 * TN == BN, "threads cover the tile");
};

template <class T>
__device__ __forceinline__ T infinity_t();
template <>
__device__ __forceinline__ float infinity_t<float>() {
  return __int_as_float(0x7f800000);
}
template <>
__device__ __forceinline__ double infinity_t<double>() {
  return __longlong_as_double(0x7ff0000000000000ll);
}

// (ka, ia) < (kb, ib) in the (key, index) order; false whenever a key is NaN.
template <class T>
__device__ __forceinline__ bool key_index_less(T ka, int64_t ia, T kb, int64_t ib) {
  return ka < kb || (ka == kb && ia < ib);
}


template <class T>
struct Args {
  const T* x;  // points [n, dim], row stride ldx
  int64_t n, ldx;
  const T* q;  // queries [m, dim], row stride ldq (the points in the self-join)
  int64_t m, ldq;
  int dim;
  int k;
  bool self;  // exclude j == i
  int tiles_per_segment;
  T* keys;        // lists [segments, m, k]: the output itself when there is one segment
  int64_t* idx;
};

// ---- staging -----------------------------------------------------------------------------------

// Coordinate slice [k0, k0 + BK) of the block's queries and of the points of tile p0, copied
// asynchronously (cp.async, no registers) into one of two staging buffers, transposed to
// sQ[kk][row] and sP[kk][point]: thread t copies column k0 + t % BK of rows t / BK + 32 i. Entries
// past the matrix or past dim are zero-filled (source size 0: nothing is read).
template <class T>
__device__ __forceinline__ void stage_slice(const Args<T>& a, int64_t row0, int64_t p0, int k0,
                                            bool queries, T* sQ, T* sP) {
  const int kk = threadIdx.x % BK, r = threadIdx.x / BK, kc = k0 + kk;
  const bool col = kc < a.dim;
  if (queries) {
#pragma unroll
    for (int i = 0; i < Cfg<T>::BM / 32; ++i) {
      const int64_t row = row0 + r + 32 * i;
      const bool valid = col && row < a.m;
      ptx::cp_async<sizeof(T)>(sQ + kk * Cfg<T>::QS + r + 32 * i, valid ? a.q + row * a.ldq + kc : a.q,
                               valid ? int(sizeof(T)) : 0);
    }
  }
#pragma unroll
  for (int i = 0; i < BN / 32; ++i) {
    const int64_t j = p0 + r + 32 * i;
    const bool valid = col && j < a.n;
    ptx::cp_async<sizeof(T)>(sP + kk * PS + r + 32 * i, valid ? a.x + j * a.ldx + kc : a.x, valid ? int(sizeof(T)) : 0);
  }
  ptx::cp_async_commit();
}

// acc[4h + a][4g + c] = key_step(acc, query ty*4 + a + 64h, point tx*4 + c + 64g) over the slice.
template <bool kMaxNorm, class T>
__device__ __forceinline__ void accumulate(T (&acc)[Cfg<T>::TM][Cfg<T>::TN], const T* sQ,
                                           const T* sP, int tx, int ty) {
  constexpr int QH = Cfg<T>::QH, QS = Cfg<T>::QS;
#pragma unroll
  for (int kk = 0; kk < BK; ++kk) {
    T q[4 * QH], p[8];
#pragma unroll
    for (int h = 0; h < QH; ++h) ld4(sQ + kk * QS + 64 * h + ty * 4, q + 4 * h);
    ld4(sP + kk * PS + tx * 4, p);
    ld4(sP + kk * PS + 64 + tx * 4, p + 4);
#pragma unroll
    for (int a = 0; a < 4 * QH; ++a)
#pragma unroll
      for (int c = 0; c < 8; ++c) acc[a][c] = key_step<kMaxNorm, T>(acc[a][c], q[a], p[c]);
  }
}

// ---- warp-held k-best lists --------------------------------------------------------------------

// A sorted list of up to 32 * H entries held by a warp: lane l has entries l + 32 h. Entries at
// or past k are don't-cares (never compared, never stored).
template <class T, int H>
struct WarpList {
  T key[H];
  int64_t idx[H];
};

// v[h] for a warp-uniform runtime h, without dynamic register indexing (local memory).
template <class U, int H>
__device__ __forceinline__ U pick(const U (&v)[H], int h) {
  U r = v[0];
#pragma unroll
  for (int i = 1; i < H; ++i)
    if (h == i) r = v[i];
  return r;
}

template <class T, int H>
__device__ __forceinline__ void list_load(WarpList<T, H>& l, const T* keys, const int64_t* idx,
                                          int k, int lane) {
#pragma unroll
  for (int h = 0; h < H; ++h) {
    const int e = 32 * h + lane;
    l.key[h] = e < k ? keys[e] : infinity_t<T>();
    l.idx[h] = e < k ? idx[e] : kNoIndex;
  }
}

template <class T, int H>
__device__ __forceinline__ void list_store(const WarpList<T, H>& l, T* keys, int64_t* idx, int k,
                                           int lane) {
#pragma unroll
  for (int h = 0; h < H; ++h) {
    const int e = 32 * h + lane;
    if (e < k) {
      keys[e] = l.key[h];
      idx[e] = l.idx[h];
    }
  }
}

// Entry e of the list, in every lane (e warp-uniform).
template <class T, int H>
__device__ __forceinline__ void list_entry(const WarpList<T, H>& l, int e, T& key, int64_t& idx) {
  key = __shfl_sync(kFull, pick(l.key, e / 32), e % 32);
  idx = __shfl_sync(kFull, pick(l.idx, e / 32), e % 32);
}

// Inserts (ck, cj), which must be lexicographically below entry k - 1, dropping that entry.
// Warp-uniform arguments; every lane of the warp must call it.
template <class T, int H>
__device__ __forceinline__ void list_insert(WarpList<T, H>& l, T ck, int64_t cj, int k, int lane) {
  // Position: the number of entries below the candidate (a prefix, the list being sorted).
  int pos = 0;
#pragma unroll
  for (int h = 0; h < H; ++h) {
    const bool below = 32 * h + lane < k && key_index_less(l.key[h], l.idx[h], ck, cj);
    pos += __popc(__ballot_sync(kFull, below));
  }
  // Entries at pos and above move up one slot; from the top half down, so that the carry out of
  // half h - 1 (its lane 31) is read before that half changes.
#pragma unroll
  for (int h = H - 1; h >= 0; --h) {
    T pk = __shfl_up_sync(kFull, l.key[h], 1);
    int64_t pi = __shfl_up_sync(kFull, l.idx[h], 1);
    if (h > 0) {
      const T ck31 = __shfl_sync(kFull, l.key[h > 0 ? h - 1 : 0], 31);
      const int64_t ci31 = __shfl_sync(kFull, l.idx[h > 0 ? h - 1 : 0], 31);
      if (lane == 0) pk = ck31, pi = ci31;
    }
    const int e = 32 * h + lane;
    if (e > pos) {
      l.key[h] = pk;
      l.idx[h] = pi;
    } else if (e == pos) {
      l.key[h] = ck;
      l.idx[h] = cj;
    }
  }
}

// ---- the fused kernel --------------------------------------------------------------------------

// Lists of the block's queries over the points of segment blockIdx.y, in
// a.keys / a.idx + (blockIdx.y * m + row) * k.
template <class T, bool kMaxNorm, int H>
__global__ void __launch_bounds__(kThreads, 2) knn_kernel(const __grid_constant__ Args<T> a) {
  using C = Cfg<T>;
  constexpr int BM = C::BM, QH = C::QH;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);  // two staging buffers: sQ + b * kStage, sP + b * kStage
  T* sP = sQ + BK * C::QS;
  T* sK = sQ + 2 * C::kStage;
  T* sThrKey = sK + BM * KS;
  int64_t* sThrIdx = reinterpret_cast<int64_t*>(sThrKey + BM);  // 8-byte aligned: BM * 4 % 8 == 0
  int* sFlag = reinterpret_cast<int*>(sThrIdx + BM);  // row has a key <= its k-th key in this tile

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t row0 = int64_t(blockIdx.x) * BM;
  const int tiles = int((a.n + BN - 1) / BN);  // < 2^25 (check_args)
  const int t_begin = int(blockIdx.y) * a.tiles_per_segment;
  const int t_end = min(tiles, t_begin + a.tiles_per_segment);
  const int k = a.k;
  const int64_t list_base = int64_t(blockIdx.y) * a.m;

  // Empty lists; k-th key +inf for real rows, -inf (nothing passes the filter) past m.
  if (threadIdx.x < BM) {
    sThrKey[threadIdx.x] = row0 + threadIdx.x < a.m ? infinity_t<T>() : -infinity_t<T>();
    sThrIdx[threadIdx.x] = kNoIndex;
    sFlag[threadIdx.x] = 0;
  }
  for (int r = warp; r < BM; r += kWarps) {
    const int64_t row = row0 + r;
    if (row >= a.m) break;
    const int64_t off = (list_base + row) * k;
    for (int e = lane; e < k; e += 32) {  // the same lane later loads and stores entry e
      a.keys[off + e] = infinity_t<T>();
      a.idx[off + e] = kNoIndex;
    }
  }

  const int slices = (a.dim + BK - 1) / BK;
  int buf = 0;  // the staging buffer holding the slice in use
  stage_slice(a, row0, int64_t(t_begin) * BN, 0, true, sQ, sP);
  for (int t = t_begin; t < t_end; ++t) {
    const int64_t p0 = int64_t(t) * BN;
    T acc[C::TM][C::TN];
#pragma unroll
    for (int i = 0; i < C::TM; ++i)
#pragma unroll
      for (int j = 0; j < C::TN; ++j) acc[i][j] = T(0);

    for (int s = 0; s < slices; ++s) {
      // This thread's copies of the current slice have landed; after the barrier everyone's
      // have, and everyone is done reading the other buffer (the previous slice) and, on a new
      // tile, done with the previous tile's sK and sThr (see below).
      ptx::cp_async_wait<0>();
      __syncthreads();
      // The next slice (this tile's next, or the next tile's first) is copied into the other
      // buffer while this one is used.
      T* nQ = sQ + (buf ^ 1) * C::kStage;
      T* nP = sP + (buf ^ 1) * C::kStage;
      // With a single slice (dim <= BK) the query half of each buffer never changes after the
      // first two tiles, so only the points are copied from then on.
      if (s + 1 < slices)
        stage_slice(a, row0, p0, (s + 1) * BK, true, nQ, nP);
      else if (t + 1 < t_end)
        stage_slice(a, row0, p0 + BN, 0, slices > 1 || t + 1 - t_begin < 2, nQ, nP);
      accumulate<kMaxNorm>(acc, sQ + buf * C::kStage, sP + buf * C::kStage, tx, ty);
      buf ^= 1;
    }

    // Filter: which of this thread's rows have a key that may enter their list (key <= k-th key:
    // a superset)? Those rows are flagged (benign race: every writer stores 1). sThr and sFlag
    // were last written by the previous tile's list phase, before the barriers above.
    bool any = false;
#pragma unroll
    for (int i = 0; i < C::TM; ++i) {
      const int r = (i / 4) * 64 + ty * 4 + i % 4;
      const T thr = sThrKey[r];
      bool hit = false;
#pragma unroll
      for (int j = 0; j < C::TN; ++j) hit |= acc[i][j] <= thr;
      if (hit) sFlag[r] = 1;
      any |= hit;
    }
    if (!__syncthreads_or(any)) continue;  // block-uniform; the flags are complete after it

    // The flagged rows of the key tile to shared memory. Their previous readers (the last list
    // phase) finished before the barriers of the slice loop.
#pragma unroll
    for (int h = 0; h < QH; ++h)
#pragma unroll
      for (int a4 = 0; a4 < 4; ++a4) {
        const int r = 64 * h + ty * 4 + a4;
        if (sFlag[r] == 0) continue;
#pragma unroll
        for (int g = 0; g < 2; ++g) st4(sK + r * KS + 64 * g + tx * 4, &acc[4 * h + a4][4 * g]);
      }
    __syncthreads();

    // Lists: warp w serves the flagged rows among w + 8 i; only this warp touches their sThr,
    // sFlag entries and lists from here to the next tile's first barrier.
    for (int r = warp; r < BM; r += kWarps) {
      const int64_t row = row0 + r;
      if (row >= a.m) break;  // warp-uniform; later rows are past m too
      const int flagged = sFlag[r];
      __syncwarp();  // every lane has read the flag before lane 0 clears it
      if (flagged == 0) continue;
      if (lane == 0) sFlag[r] = 0;
      T thr_key = sThrKey[r];
      int64_t thr_idx = sThrIdx[r];
      T cand[BN / 32];
      unsigned mask[BN / 32];
      bool some = false;
#pragma unroll
      for (int c = 0; c < BN / 32; ++c) {
        const int64_t j = p0 + 32 * c + lane;
        cand[c] = sK[r * KS + 32 * c + lane];
        const bool pass = j < a.n && !(a.self && j == row) && cand[c] <= thr_key;
        mask[c] = __ballot_sync(kFull, pass);
        some |= mask[c] != 0;
      }
      if (!some) continue;

      T* lkeys = a.keys + (list_base + row) * k;
      int64_t* lidx = a.idx + (list_base + row) * k;
      WarpList<T, H> list;
      list_load(list, lkeys, lidx, k, lane);
#pragma unroll
      for (int c = 0; c < BN / 32; ++c) {
        unsigned m = mask[c];
        while (m != 0) {
          const int b = __ffs(m) - 1;
          m &= m - 1;
          const T ck = __shfl_sync(kFull, cand[c], b);
          const int64_t cj = p0 + 32 * c + b;
          if (!key_index_less(ck, cj, thr_key, thr_idx)) continue;  // exactly TopK::admits
          list_insert(list, ck, cj, k, lane);
          list_entry(list, k - 1, thr_key, thr_idx);
        }
      }
      list_store(list, lkeys, lidx, k, lane);
      __syncwarp();  // every lane has read sThr[r] (above) before lane 0 rewrites it
      if (lane == 0) {
        sThrKey[r] = thr_key;
        sThrIdx[r] = thr_idx;
      }
    }
    // No barrier needed here: the next writes to sK and sThr, and the next reads of sThr, follow
    // the next tile's first slice barrier (dim >= 1, so there is one); the staging copies in
    // flight meanwhile touch only the other staging buffer.
  }
}

// out[row] = the k best of the segments' lists ws[(s * m + row) * k ...], s < segments: one warp
// per query, segment 0 loaded, the others offered entry by entry in their sorted order (an entry
// that does not enter ends its segment: the following ones are larger still).
template <class T, int H>
__global__ void __launch_bounds__(kThreads) merge_kernel(const T* __restrict__ ws_keys,
                                                         const int64_t* __restrict__ ws_idx,
                                                         int segments, int64_t m, int k,
                                                         T* __restrict__ out_keys,
                                                         int64_t* __restrict__ out_idx) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= m) return;  // the whole warp leaves together
  WarpList<T, H> list;
  list_load(list, ws_keys + row * k, ws_idx + row * k, k, lane);
  T kth_key;
  int64_t kth_idx;
  list_entry(list, k - 1, kth_key, kth_idx);
  for (int s = 1; s < segments; ++s) {
    const int64_t off = (int64_t(s) * m + row) * k;
    WarpList<T, H> other;
    list_load(other, ws_keys + off, ws_idx + off, k, lane);
    for (int e = 0; e < k; ++e) {
      T ck;
      int64_t cj;
      list_entry(other, e, ck, cj);
      if (!key_index_less(ck, cj, kth_key, kth_idx)) break;  // warp-uniform
      list_insert(list, ck, cj, k, lane);
      list_entry(list, k - 1, kth_key, kth_idx);
    }
  }
  list_store(list, out_keys + row * k, out_idx + row * k, k, lane);
}

// ---- host side ---------------------------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <class T, bool kMaxNorm, int H>
void run(const Args<T>& base, int k, T* out_keys, int64_t* out_idx, cudaStream_t stream,
         int device) {
  using C = Cfg<T>;
  const char* what = "knn";
  const size_t smem = C::kSmemBytes;
  const auto kernel = knn_kernel<T, kMaxNorm, H>;
  allow_shared(kernel, smem, device, "knn");

  int sms = 0, per_sm = 0;
  INFOLENS_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  INFOLENS_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
  const int64_t row_blocks = ceil_div(base.m, C::BM), tiles = ceil_div(base.n, BN);

  // Segments: enough blocks for two waves, none empty, and a workspace that fits in half the
  // free memory.
  const int64_t want = 2 * int64_t(std::max(sms, 1)) * std::max(per_sm, 1);
  int64_t segments = std::clamp<int64_t>(ceil_div(want, row_blocks), 1,
                                         std::min<int64_t>(kMaxSegments, tiles));
  const size_t entry = sizeof(T) + sizeof(int64_t);
  size_t free_bytes = 0, total_bytes = 0;
  INFOLENS_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  while (segments > 1 && size_t(segments) * size_t(base.m) * size_t(k) * entry > free_bytes / 2)
    segments /= 2;

  for (;;) {
    const int64_t per = ceil_div(tiles, segments);
    segments = ceil_div(tiles, per);
    Args<T> a = base;
    a.tiles_per_segment = int(per);
    try {
      if (segments == 1) {
        a.keys = out_keys;
        a.idx = out_idx;
        kernel<<<dim3(unsigned(row_blocks), 1), kThreads, smem, stream>>>(a);
        INFOLENS_CUDA_CHECK(cudaGetLastError());
        return;
      }
      const size_t count = size_t(segments) * size_t(base.m) * size_t(k);
      Workspace<T> ws_keys(count, stream, what);
      Workspace<int64_t> ws_idx(count, stream, what);
      a.keys = ws_keys.get();
      a.idx = ws_idx.get();
      kernel<<<dim3(unsigned(row_blocks), unsigned(segments)), kThreads, smem, stream>>>(a);
      INFOLENS_CUDA_CHECK(cudaGetLastError());
      merge_kernel<T, H><<<unsigned(ceil_div(base.m, kWarps)), kThreads, 0, stream>>>(
          ws_keys.get(), ws_idx.get(), int(segments), base.m, k, out_keys, out_idx);
      INFOLENS_CUDA_CHECK(cudaGetLastError());
      ws_idx.free();
      ws_keys.free();
      return;
    } catch (const CudaOutOfMemory&) {
      if (segments <= 1) throw;  // unreachable: one segment allocates nothing
      segments /= 2;             // fewer segments, a smaller workspace
    }
  }
}

template <class T>
void knn_impl(const Matrix& points, const Matrix& queries, double p, int k, void* out_keys,
              int64_t* out_idx, cudaStream_t stream, int device) {
  Args<T> a{};
  a.x = static_cast<const T*>(points.data);
  a.n = points.rows;
  a.ldx = points.ld;
  a.self = queries.data == nullptr;
  a.q = a.self ? a.x : static_cast<const T*>(queries.data);
  a.m = a.self ? points.rows : queries.rows;
  a.ldq = a.self ? points.ld : queries.ld;
  a.dim = int(points.dim);
  a.k = k;
  T* keys = static_cast<T*>(out_keys);
  const bool max_norm = std::isinf(p);
  if (k <= 32) {
    if (max_norm)
      run<T, true, 1>(a, k, keys, out_idx, stream, device);
    else
      run<T, false, 1>(a, k, keys, out_idx, stream, device);
  } else {
    if (max_norm)
      run<T, true, 2>(a, k, keys, out_idx, stream, device);
    else
      run<T, false, 2>(a, k, keys, out_idx, stream, device);
  }
}

void check_args(const Matrix& points, const Matrix& queries, double p, int k) {
  // The bindings validate; these guard the kernels' arithmetic.
  constexpr int64_t kMaxRows = (int64_t(1) << 32) - 2;  // row blocks fit a grid, indices an int64
  constexpr int64_t kMaxDim = int64_t(1) << 30;
  const bool self = queries.data == nullptr;
  if (!(p == 2.0 || (std::isinf(p) && p > 0)))
    throw std::invalid_argument("knn: p must be 2 or inf on the GPU");
  if (points.data == nullptr || points.rows < 1 || points.rows > kMaxRows)
    throw std::invalid_argument("knn: points must have between 1 and 2^32 - 2 rows");
  if (points.dim < 1 || points.dim > kMaxDim || points.ld < points.dim)
    throw std::invalid_argument("knn: points need 1 <= dim <= 2^30 and ld >= dim");
  if (!self) {
    if (queries.rows < 0 || queries.rows > kMaxRows)
      throw std::invalid_argument("knn: too many queries");
    if (queries.dim != points.dim || queries.ld < queries.dim)
      throw std::invalid_argument("knn: queries need the points' dim and ld >= dim");
  }
  const int64_t limit = self ? points.rows - 1 : points.rows;
  if (k < 1 || k > kMaxK || k > limit)
    throw std::invalid_argument("knn: k must be in [1, " + std::to_string(kMaxK) +
                                "] and at most " + std::string(self ? "n - 1" : "n"));
}

}  // namespace

void knn(const Matrix& points, const Matrix& queries, Dtype dtype, double p, int k, void* out_keys,
         int64_t* out_idx, cudaStream_t stream, int device) {
  check_args(points, queries, p, k);
  if (queries.data != nullptr && queries.rows == 0) return;
  DeviceGuard guard(device);
  (void)cudaGetLastError();  // a stale error of someone else's must not be reported as ours
  if (dtype == Dtype::float32)
    knn_impl<float>(points, queries, p, k, out_keys, out_idx, stream, device);
  else
    knn_impl<double>(points, queries, p, k, out_keys, out_idx, stream, device);
}

}  // namespace infolens::cuda::knn
