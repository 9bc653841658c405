// Exact kNN and radius counts on the GPU for low dimension (knn.hpp, knn_grid / count_grid): the
// brute-force kernels' answers bit for bit (knn.cu, count.cu), from far fewer pairs.
//
// Grid. A strided sample of at most 2^16 rows is sorted per column (cub) and copied to the host
// (the one host synchronisation: it sizes the grid). The <= 3 columns of largest spread (5%..95%
// sample range) are cut at sample quantiles into about n / 32 cells in all, equal boundaries
// merged (grid.cuh, plan_grid). Boundaries are data values, so cell(x) = #{ b_j <= x } is exact
// and every pruning test is a comparison of key terms formed with the keys' own rounded
// operations (grid.cuh explains why no rounding margin is needed). Points are sorted by cell
// (cub radix sort of (cell, index)) and gathered into a dense copy [n, dim] in that order; cells
// are then contiguous ranges (start[c], start[c + 1]), and so are runs of consecutive cells along
// the last axis. Points or queries with a non-finite axis coordinate form an outlier bucket that
// every query scans and whose queries scan everything (NaN defeats the pruning bound).
//
// Work. Queries are sorted by cell too (the points themselves in the self-join) and cut into
// items of at most 32 queries of one cell; a warp serves one item, one query per lane, so every
// lane runs the same loop over the same points: a chunk of 32 points (<= 8 coordinates each) is
// copied into the warp's shared memory once and read as broadcasts.
//   kNN: the warp scans the outliers, then rings of cells at Chebyshev distance R = 0, 1, 2, ...
//     from its cell (ring_rows / ring_row). Each lane keeps its k-best list in registers (K = 8, 16 or 32
//     slots, k <= 32: LaneList). After ring R a lane is done when its k-th key is strictly below
//     outside_bound, a lower bound of the key of every point outside the box scanned; the warp
//     stops when all its lanes are done or the box covers the grid.
//   Counts (dim >= 2; dim 1 runs count.cu's sort + interval search): each lane finds the cells
//     that can hold a passing point (count_box: binary searches over the boundaries with the
//     strict / non-strict test on the face terms); the warp scans the union of its lanes' boxes
//     and each lane counts the points of it that pass.
//
// Order and ties. Keys are formed exactly as the brute-force kernels form them (kNN: key_step
// from 0 over every coordinate; counts: key_first, then key_step), a candidate (key, j) enters
// iff it is below the list's k-th entry in the (key, index) order (TopK::admits), j == i is
// excluded by index in the self-join, NaN keys never enter or pass. The lists are the k smallest
// candidates in that total order, whatever order the cells are visited in, and the pruning only
// skips points that cannot enter (or pass): the answers equal brute force's. Empty slots hold the
// sentinel (+inf, INT64_MAX) as there.
//
// Fallbacks. Brute force (knn / count) answers when the grid cannot help or is not built for the
// case: dim > 8, k > 32, no column with any spread (e.g. all points equal), fewer than 2 cells,
// invalid arguments (brute force then raises the error), and when a workspace cannot be had
// (CudaOutOfMemory is caught, brute force needs none).
//
// Memory. The sample (2 x 2^16 x dim), the sorted copy of the points (n x dim) and O(n + m)
// 32-bit indices, cell starts and items; all stream-ordered workspaces, freed in stream order.
#include <cub/cub.cuh>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "check.cuh"
#include "knn/grid.cuh"
#include "knn/knn.hpp"
#include "stream_memory.cuh"

namespace infolens::cuda::knn {
namespace {

namespace gr = grid;
static_assert(gr::kMaxK == kGridMaxK && gr::kMaxDim == kGridMaxDim, "knn.hpp states the grid's limits");

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kCellPoints = 32;   // points per cell aimed at
constexpr int64_t kSample = 1 << 16;
constexpr unsigned kFull = 0xffffffffu;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int blocks_for(int64_t work) {
  return int(std::clamp<int64_t>(ceil_div(work, kThreads), 1, 1 << 16));
}

// ---- building the grid -------------------------------------------------------------------------

// out[c * S + s] = x[row(s), c] with row(s) = s * n / S (a strided sample, every row when S == n).
template <class T>
__global__ void gather_sample(const T* __restrict__ x, int64_t ld, int64_t n, int dim, int64_t S,
                              T* __restrict__ out) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < S * dim;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = e / S, s = e % S;
    out[e] = x[(s * n / S) * ld + c];
  }
}

template <class T>
__global__ void assign_cells(const gr::Geometry<T> g, const T* __restrict__ x, int64_t ld,
                             int64_t n, uint32_t* __restrict__ cell, uint32_t* __restrict__ idx) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    cell[i] = gr::cell_of(g, x + i * ld);
    idx[i] = uint32_t(i);
  }
}

// start[c] = the first sorted position whose cell is >= c, c in [0, buckets]; buckets = cells + 1
// (the outlier bucket is cell `cells`), so start[buckets] = n.
__global__ void cell_starts(const uint32_t* __restrict__ cell, int64_t n, uint32_t buckets,
                            uint32_t* __restrict__ start) {
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p <= n;
       p += int64_t(gridDim.x) * blockDim.x) {
    const uint32_t lo = p == 0 ? 0u : cell[p - 1] + 1u;
    const uint32_t hi = p == n ? buckets : cell[p];
    for (uint32_t c = lo; c <= hi; ++c) start[c] = uint32_t(p);
  }
}

template <class T>
__global__ void gather_points(const T* __restrict__ x, int64_t ld, int64_t n, int dim,
                              const uint32_t* __restrict__ idx, T* __restrict__ xs) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n * dim;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = e / dim, c = e % dim;
    xs[e] = x[int64_t(idx[p]) * ld + c];
  }
}

// items[c] = ceil(queries of bucket c / 32); items[buckets] = 0 (the scan then ends in the total).
__global__ void item_counts(const uint32_t* __restrict__ qstart, uint32_t buckets,
                            uint32_t* __restrict__ items) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c <= buckets;
       c += int64_t(gridDim.x) * blockDim.x)
    items[c] = c == buckets ? 0u : (qstart[c + 1] - qstart[c] + 31u) / 32u;
}

__global__ void make_items(const uint32_t* __restrict__ qstart, const uint32_t* __restrict__ off,
                           uint32_t buckets, uint32_t* __restrict__ item_pos,
                           uint32_t* __restrict__ item_cell) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < buckets;
       c += int64_t(gridDim.x) * blockDim.x) {
    const uint32_t first = off[c], count = off[c + 1] - first;
    for (uint32_t t = 0; t < count; ++t) {
      item_pos[first + t] = qstart[c] + 32u * t;
      item_cell[first + t] = uint32_t(c);
    }
  }
}

// ---- the search kernels ------------------------------------------------------------------------

template <class T>
struct GridArgs {
  gr::Geometry<T> g;
  const T* xs;              // points in cell order [n, dim], dense
  const uint32_t* xidx;     // their original indices
  const uint32_t* start;    // [cells + 2]: cell c is xs rows [start[c], start[c + 1])
  int64_t n;
  int dim;
  const T* q;               // queries (the points in the self-join), row stride ldq
  int64_t ldq;
  const uint32_t* qidx;     // query indices in cell order
  const uint32_t* qstart;   // [cells + 2]
  const uint32_t* item_pos;   // first query position of each item
  const uint32_t* item_cell;  // its cell
  const uint32_t* item_total; // number of items (device)
  bool self;
  int k;
  T* out_keys;
  int64_t* out_idx;
  const T* radius;
  bool strict;
  int64_t* out_count;
  unsigned long long* pairs;  // optional: (query, point) pairs examined, summed
};

// The rows xs[begin, end) through the warp's shared buffer, 32 at a time; lane(row, index) in
// every lane, in order. Warp-uniform arguments; every lane must call it. `lane` is a functor
// holding the lane's state by value (its operator() forced inline, so the state stays in
// registers).
template <class T, class Lane>
__device__ __forceinline__ void scan_rows(const GridArgs<T>& a, T* sX, uint32_t* sI, uint32_t begin,
                                          uint32_t end, int lane_id, unsigned long long& scanned,
                                          Lane&& lane) {
  for (uint32_t base = begin; base < end; base += 32u) {
    const int cnt = int(min(32u, end - base));
    __syncwarp();  // every lane is done with the previous chunk
    const T* src = a.xs + size_t(base) * size_t(a.dim);
    for (int e = lane_id; e < cnt * a.dim; e += 32) sX[e] = src[e];
    if (lane_id < cnt) sI[lane_id] = a.xidx[base + lane_id];
    __syncwarp();
    for (int j = 0; j < cnt; ++j) lane(sX + j * a.dim, sI[j]);
    scanned += unsigned(cnt);
  }
}

// A lane's query: index, coordinates (registers) and axis coordinates.
template <class T>
struct LaneQuery {
  bool active;
  uint32_t qi;
  int dim;
  bool self;
  T v[gr::kMaxDim];
  T ax[gr::kAxes];

  __device__ __forceinline__ void load(const GridArgs<T>& a, uint32_t pos, int nq, int lane) {
    active = lane < nq;
    dim = a.dim;
    self = a.self;
    qi = active ? a.qidx[pos + uint32_t(lane)] : 0u;
    const T* row = a.q + int64_t(qi) * a.ldq;
#pragma unroll
    for (int c = 0; c < gr::kMaxDim; ++c) v[c] = (active && c < a.dim) ? row[c] : T(0);
#pragma unroll
    for (int x = 0; x < gr::kAxes; ++x) {
      T s = T(0);
#pragma unroll
      for (int c = 0; c < gr::kMaxDim; ++c)
        if (c == a.g.col[x]) s = v[c];
      ax[x] = s;
    }
  }
};

__device__ __forceinline__ void add_pairs(unsigned long long* pairs, unsigned long long scanned,
                                          int nq, int lane) {
  if (pairs != nullptr && lane == 0) atomicAdd(pairs, scanned * unsigned(nq));
}

template <class T, bool kMaxNorm, int K>
__global__ void __launch_bounds__(kThreads) grid_knn_kernel(const __grid_constant__ GridArgs<T> a) {
  __shared__ T sXall[kWarps][32 * gr::kMaxDim];
  __shared__ uint32_t sIall[kWarps][32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const uint32_t item = blockIdx.x * kWarps + warp;
  if (item >= *a.item_total) return;  // warp-uniform; no block-wide barrier below
  T* sX = sXall[warp];
  uint32_t* sI = sIall[warp];
  const uint32_t cell = a.item_cell[item], pos = a.item_pos[item];
  const int nq = int(min(32u, a.qstart[cell + 1] - pos));
  LaneQuery<T> lq;
  lq.load(a, pos, nq, lane);
  gr::LaneList<T, K> list;
  list.init(a.k);
  T qv[gr::kMaxDim];
#pragma unroll
  for (int c = 0; c < gr::kMaxDim; ++c) qv[c] = lq.v[c];
  const int dim = a.dim;
  const bool active = lq.active, self = a.self;
  const uint32_t qi = lq.qi;
  auto visit = [&](const T* x, uint32_t j) {
    T key = T(0);
#pragma unroll
    for (int c = 0; c < gr::kMaxDim; ++c)
      if (c < dim) key = gr::key_step<kMaxNorm>(key, qv[c], x[c]);
    if (active && !(self && j == qi) && list.admits(key, j)) list.insert(key, j);
  };
  unsigned long long scanned = 0;
  const uint32_t cells = a.g.cells;
  if (cell == cells) {  // queries with a non-finite axis coordinate: everything
    scan_rows(a, sX, sI, 0u, uint32_t(a.n), lane, scanned, visit);
  } else {
    scan_rows(a, sX, sI, a.start[cells], a.start[cells + 1], lane, scanned, visit);
    int c[gr::kAxes];
    gr::decode(a.g, cell, c);
    for (int R = 0;; ++R) {
      const int rows = gr::ring_rows(a.g, c, R);
      for (int t = 0; t < rows; ++t) {
        uint32_t first[2], last[2];
        const int runs = gr::ring_row(a.g, c, R, t, first, last);
        for (int u = 0; u < runs; ++u)
          scan_rows(a, sX, sI, a.start[first[u]], a.start[last[u] + 1], lane, scanned, visit);
      }
      if (gr::covers(a.g, c, R)) break;
      const bool done = !lq.active || list.kth() < gr::outside_bound<kMaxNorm>(a.g, lq.ax, c, R);
      if (__all_sync(kFull, done)) break;
    }
  }
  add_pairs(a.pairs, scanned, nq, lane);
  if (!lq.active) return;
  T* keys = a.out_keys + int64_t(lq.qi) * a.k;
  int64_t* idx = a.out_idx + int64_t(lq.qi) * a.k;
  const int skip = K - a.k;
#pragma unroll
  for (int i = 0; i < K; ++i) {
    if (i >= skip) {
      keys[i - skip] = list.key[i];
      idx[i - skip] = list.idx[i] == 0xffffffffu ? INT64_MAX : int64_t(list.idx[i]);
    }
  }
}

__device__ __forceinline__ int warp_min(int v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = min(v, __shfl_xor_sync(kFull, v, o));
  return v;
}
__device__ __forceinline__ int warp_max(int v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = max(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

template <class T, bool kMaxNorm, bool kStrict>
__global__ void __launch_bounds__(kThreads) grid_count_kernel(const __grid_constant__ GridArgs<T> a) {
  __shared__ T sXall[kWarps][32 * gr::kMaxDim];
  __shared__ uint32_t sIall[kWarps][32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const uint32_t item = blockIdx.x * kWarps + warp;
  if (item >= *a.item_total) return;  // warp-uniform
  T* sX = sXall[warp];
  uint32_t* sI = sIall[warp];
  const uint32_t cell = a.item_cell[item], pos = a.item_pos[item];
  const int nq = int(min(32u, a.qstart[cell + 1] - pos));
  LaneQuery<T> lq;
  lq.load(a, pos, nq, lane);
  const T r = lq.active ? a.radius[lq.qi] : T(0);
  long long cnt = 0;
  bool possible;
  const uint32_t cells = a.g.cells;

  int lo[gr::kAxes], hi[gr::kAxes];
  int c[gr::kAxes] = {0, 0, 0};
  if (cell == cells) {
    possible = lq.active && (kStrict ? r > T(0) : r >= T(0));
  } else {
    gr::decode(a.g, cell, c);
    possible = lq.active && gr::count_box<kMaxNorm, kStrict>(a.g, lq.ax, c, r, lo, hi);
  }
  T qv[gr::kMaxDim];
#pragma unroll
  for (int cc = 0; cc < gr::kMaxDim; ++cc) qv[cc] = lq.v[cc];
  const int dim = a.dim;
  const bool self = a.self;
  const uint32_t qi = lq.qi;
  auto visit = [&](const T* x, uint32_t j) {
    T key = gr::key_first<kMaxNorm>(qv[0], x[0]);
#pragma unroll
    for (int cc = 1; cc < gr::kMaxDim; ++cc)
      if (cc < dim) key = gr::key_step<kMaxNorm>(key, qv[cc], x[cc]);
    const bool pass = kStrict ? key < r : key <= r;
    cnt += (possible && pass && !(self && j == qi)) ? 1 : 0;
  };
  unsigned long long scanned = 0;
  if (__any_sync(kFull, possible)) {
    if (cell == cells) {
      scan_rows(a, sX, sI, 0u, uint32_t(a.n), lane, scanned, visit);
    } else {
      scan_rows(a, sX, sI, a.start[cells], a.start[cells + 1], lane, scanned, visit);
      int ulo[gr::kAxes], uhi[gr::kAxes];
#pragma unroll
      for (int x = 0; x < gr::kAxes; ++x) {
        ulo[x] = warp_min(possible ? lo[x] : INT32_MAX);
        uhi[x] = warp_max(possible ? hi[x] : -1);
      }
      for (int i0 = ulo[0]; i0 <= uhi[0]; ++i0)
        for (int i1 = ulo[1]; i1 <= uhi[1]; ++i1) {
          const uint32_t base = (uint32_t(i0) * uint32_t(a.g.G[1]) + uint32_t(i1)) * uint32_t(a.g.G[2]);
          scan_rows(a, sX, sI, a.start[base + uint32_t(ulo[2])], a.start[base + uint32_t(uhi[2]) + 1u],
                    lane, scanned, visit);
        }
    }
  }
  add_pairs(a.pairs, scanned, nq, lane);
  if (lq.active) a.out_count[lq.qi] = cnt;
}

// ---- host side ---------------------------------------------------------------------------------

template <class T>
void sort_sample(const Matrix& points, cudaStream_t stream, std::vector<std::vector<T>>& columns) {
  const char* what = "knn grid (sample)";
  const int64_t n = points.rows, dim = points.dim, S = std::min(n, kSample);
  Workspace<T> sample(size_t(S * dim), stream, what), sorted(size_t(S * dim), stream, what);
  gather_sample<T><<<blocks_for(S * dim), kThreads, 0, stream>>>(
      static_cast<const T*>(points.data), points.ld, n, int(dim), S, sample.get());
  INFOLENS_CUDA_CHECK(cudaGetLastError());
  size_t temp_bytes = 0;
  INFOLENS_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, temp_bytes, sample.get(), sorted.get(),
                                                     int(S), 0, int(sizeof(T) * 8), stream));
  Workspace<unsigned char> temp(std::max<size_t>(temp_bytes, 1), stream, what);
  for (int64_t c = 0; c < dim; ++c)
    INFOLENS_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(temp.get(), temp_bytes, sample.get() + c * S,
                                                       sorted.get() + c * S, int(S), 0,
                                                       int(sizeof(T) * 8), stream));
  std::vector<T> host(size_t(S * dim));
  INFOLENS_CUDA_CHECK(cudaMemcpyAsync(host.data(), sorted.get(), host.size() * sizeof(T),
                                      cudaMemcpyDeviceToHost, stream));
  INFOLENS_CUDA_CHECK(cudaStreamSynchronize(stream));  // sizing the grid needs the sample
  columns.assign(size_t(dim), {});
  for (int64_t c = 0; c < dim; ++c) columns[c].assign(host.begin() + c * S, host.begin() + (c + 1) * S);
}

// Cells of rows of x (or of the queries), sorted: sorted cell ids are not kept, only the order
// (idx) and the bucket starts (start [buckets + 1]).
template <class T>
void sort_by_cell(const gr::Geometry<T>& g, const T* x, int64_t ld, int64_t rows, uint32_t* idx,
                  uint32_t* start, cudaStream_t stream, const char* what) {
  const uint32_t buckets = g.cells + 1u;
  Workspace<uint32_t> cell(size_t(rows), stream, what), cell_sorted(size_t(rows), stream, what),
      order(size_t(rows), stream, what);
  assign_cells<T><<<blocks_for(rows), kThreads, 0, stream>>>(g, x, ld, rows, cell.get(), order.get());
  INFOLENS_CUDA_CHECK(cudaGetLastError());
  int end_bit = 1;
  while (end_bit < 32 && (uint64_t(g.cells) >> end_bit) != 0) ++end_bit;
  size_t temp_bytes = 0;
  INFOLENS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, cell.get(), cell_sorted.get(),
                                                      order.get(), idx, int(rows), 0, end_bit, stream));
  Workspace<unsigned char> temp(std::max<size_t>(temp_bytes, 1), stream, what);
  INFOLENS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.get(), temp_bytes, cell.get(), cell_sorted.get(),
                                                      order.get(), idx, int(rows), 0, end_bit, stream));
  temp.free();
  cell_starts<<<blocks_for(rows + 1), kThreads, 0, stream>>>(cell_sorted.get(), rows, buckets, start);
  INFOLENS_CUDA_CHECK(cudaGetLastError());
}

// Builds the grid over `points` (and the queries' order) and calls launch(args, blocks) with
// everything but the outputs filled in; false (nothing launched) when the grid cannot help.
template <class T, class Launch>
bool with_grid(const Matrix& points, const Matrix& queries, cudaStream_t stream, Launch&& launch) {
  const char* what = "knn grid";
  const int64_t n = points.rows, dim = points.dim;
  const bool self = queries.data == nullptr;
  const int64_t m = self ? n : queries.rows;

  std::vector<std::vector<T>> columns;
  sort_sample<T>(points, stream, columns);
  gr::Plan<T> plan = gr::plan_grid<T>(columns, n, kCellPoints);
  if (!plan.use) return false;

  // Boundaries: axis a at offset a * kMaxCellsPerAxis.
  std::vector<T> bounds(size_t(gr::kAxes) * gr::kMaxCellsPerAxis, T(0));
  for (int a = 0; a < gr::kAxes; ++a) std::copy(plan.b[a].begin(), plan.b[a].end(), bounds.begin() + a * gr::kMaxCellsPerAxis);
  Workspace<T> dbounds(bounds.size(), stream, what);
  INFOLENS_CUDA_CHECK(cudaMemcpyAsync(dbounds.get(), bounds.data(), bounds.size() * sizeof(T),
                                      cudaMemcpyHostToDevice, stream));
  gr::Geometry<T> g{};
  for (int a = 0; a < gr::kAxes; ++a) {
    g.col[a] = plan.col[a];
    g.G[a] = plan.G[a];
    g.b[a] = dbounds.get() + a * gr::kMaxCellsPerAxis;
  }
  g.cells = plan.cells;
  const uint32_t buckets = g.cells + 1u;

  const T* x = static_cast<const T*>(points.data);
  Workspace<uint32_t> xidx(size_t(n), stream, what), start(size_t(buckets) + 1, stream, what);
  sort_by_cell<T>(g, x, points.ld, n, xidx.get(), start.get(), stream, what);
  Workspace<T> xs(size_t(n * dim), stream, what);
  gather_points<T><<<blocks_for(n * dim), kThreads, 0, stream>>>(x, points.ld, n, int(dim), xidx.get(),
                                                                  xs.get());
  INFOLENS_CUDA_CHECK(cudaGetLastError());

  Workspace<uint32_t> qidx_ws(self ? 0 : size_t(m), stream, what),
      qstart_ws(self ? 0 : size_t(buckets) + 1, stream, what);
  const uint32_t* qidx = xidx.get();
  const uint32_t* qstart = start.get();
  if (!self) {
    sort_by_cell<T>(g, static_cast<const T*>(queries.data), queries.ld, m, qidx_ws.get(), qstart_ws.get(),
                    stream, what);
    qidx = qidx_ws.get();
    qstart = qstart_ws.get();
  }

  // Items: at most 32 queries of one bucket each.
  Workspace<uint32_t> counts(size_t(buckets) + 1, stream, what), off(size_t(buckets) + 1, stream, what);
  item_counts<<<blocks_for(buckets + 1), kThreads, 0, stream>>>(qstart, buckets, counts.get());
  INFOLENS_CUDA_CHECK(cudaGetLastError());
  size_t temp_bytes = 0;
  INFOLENS_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, temp_bytes, counts.get(), off.get(),
                                                    int(buckets + 1), stream));
  {
    Workspace<unsigned char> temp(std::max<size_t>(temp_bytes, 1), stream, what);
    INFOLENS_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp.get(), temp_bytes, counts.get(), off.get(),
                                                      int(buckets + 1), stream));
  }
  const int64_t max_items = ceil_div(m, 32) + int64_t(buckets);
  Workspace<uint32_t> item_pos(size_t(max_items), stream, what), item_cell(size_t(max_items), stream, what);
  make_items<<<blocks_for(buckets), kThreads, 0, stream>>>(qstart, off.get(), buckets, item_pos.get(),
                                                           item_cell.get());
  INFOLENS_CUDA_CHECK(cudaGetLastError());

  GridArgs<T> a{};
  a.g = g;
  a.xs = xs.get();
  a.xidx = xidx.get();
  a.start = start.get();
  a.n = n;
  a.dim = int(dim);
  a.self = self;
  a.q = self ? x : static_cast<const T*>(queries.data);
  a.ldq = self ? points.ld : queries.ld;
  a.qidx = qidx;
  a.qstart = qstart;
  a.item_pos = item_pos.get();
  a.item_cell = item_cell.get();
  a.item_total = off.get() + buckets;
  const int64_t blocks = ceil_div(max_items, kWarps);
  if (blocks > INT32_MAX) throw std::invalid_argument("knn grid: too many queries");
  launch(a, unsigned(blocks));
  return true;  // the workspaces are freed in stream order, after the launch
}

bool knn_args_valid(const Matrix& points, const Matrix& queries, double p, int k) {
  constexpr int64_t kMaxRows = (int64_t(1) << 32) - 2;
  const bool self = queries.data == nullptr;
  if (!(p == 2.0 || (std::isinf(p) && p > 0))) return false;
  if (points.data == nullptr || points.rows < 1 || points.rows > kMaxRows) return false;
  if (points.dim < 1 || points.ld < points.dim) return false;
  if (!self && (queries.rows < 0 || queries.rows > kMaxRows || queries.dim != points.dim ||
                queries.ld < queries.dim))
    return false;
  const int64_t limit = self ? points.rows - 1 : points.rows;
  return k >= 1 && k <= limit;
}

template <class T, bool kMaxNorm, int K>
void launch_knn(const GridArgs<T>& a, unsigned blocks, cudaStream_t stream) {
  grid_knn_kernel<T, kMaxNorm, K><<<blocks, kThreads, 0, stream>>>(a);
  INFOLENS_CUDA_CHECK(cudaGetLastError());
}

template <class T, bool kMaxNorm>
void launch_knn_k(const GridArgs<T>& a, unsigned blocks, cudaStream_t stream) {
  if (a.k <= 8)
    launch_knn<T, kMaxNorm, 8>(a, blocks, stream);
  else if (a.k <= 16)
    launch_knn<T, kMaxNorm, 16>(a, blocks, stream);
  else
    launch_knn<T, kMaxNorm, 32>(a, blocks, stream);
}

template <class T>
bool knn_grid_impl(const Matrix& points, const Matrix& queries, double p, int k, void* out_keys,
                   int64_t* out_idx, cudaStream_t stream, unsigned long long* pairs) {
  const bool max_norm = std::isinf(p);
  return with_grid<T>(points, queries, stream, [&](GridArgs<T>& a, unsigned blocks) {
    a.k = k;
    a.out_keys = static_cast<T*>(out_keys);
    a.out_idx = out_idx;
    a.pairs = pairs;
    if (max_norm)
      launch_knn_k<T, true>(a, blocks, stream);
    else
      launch_knn_k<T, false>(a, blocks, stream);
  });
}

template <class T, bool kMaxNorm, bool kStrict>
void launch_count(const GridArgs<T>& a, unsigned blocks, cudaStream_t stream) {
  grid_count_kernel<T, kMaxNorm, kStrict><<<blocks, kThreads, 0, stream>>>(a);
  INFOLENS_CUDA_CHECK(cudaGetLastError());
}

template <class T>
bool count_grid_impl(const Matrix& points, const Matrix& queries, double p, const void* radius,
                     bool strict, int64_t* out, cudaStream_t stream, unsigned long long* pairs) {
  const bool max_norm = std::isinf(p);
  return with_grid<T>(points, queries, stream, [&](GridArgs<T>& a, unsigned blocks) {
    a.radius = static_cast<const T*>(radius);
    a.strict = strict;
    a.out_count = out;
    a.pairs = pairs;
    if (max_norm) {
      if (strict)
        launch_count<T, true, true>(a, blocks, stream);
      else
        launch_count<T, true, false>(a, blocks, stream);
    } else {
      if (strict)
        launch_count<T, false, true>(a, blocks, stream);
      else
        launch_count<T, false, false>(a, blocks, stream);
    }
  });
}

}  // namespace

void knn_grid(const Matrix& points, const Matrix& queries, Dtype dtype, double p, int k, void* out_keys,
              int64_t* out_idx, cudaStream_t stream, int device, unsigned long long* pairs) {
  const bool self = queries.data == nullptr;
  if (!knn_args_valid(points, queries, p, k) || points.dim > gr::kMaxDim || k > gr::kMaxK ||
      points.rows < 2) {
    knn(points, queries, dtype, p, k, out_keys, out_idx, stream, device);  // or its error
    return;
  }
  if (!self && queries.rows == 0) return;
  DeviceGuard guard(device);
  (void)cudaGetLastError();  // a stale error of someone else's must not be reported as ours
  bool done = false;
  try {
    done = dtype == Dtype::float32
               ? knn_grid_impl<float>(points, queries, p, k, out_keys, out_idx, stream, pairs)
               : knn_grid_impl<double>(points, queries, p, k, out_keys, out_idx, stream, pairs);
  } catch (const CudaOutOfMemory&) {
    (void)cudaGetLastError();  // no room for the grid: brute force needs no workspace
  }
  if (!done) knn(points, queries, dtype, p, k, out_keys, out_idx, stream, device);
}

void count_grid(const Matrix& points, const Matrix& queries, Dtype dtype, double p, const void* radius,
                bool strict, int64_t* out, cudaStream_t stream, int device, unsigned long long* pairs) {
  const bool self = queries.data == nullptr;
  const bool valid = (p == 2.0 || (std::isinf(p) && p > 0)) && points.data != nullptr &&
                     points.rows >= 2 && points.rows < (int64_t(1) << 32) - 1 && points.ld >= points.dim &&
                     (self || (queries.dim == points.dim && queries.ld >= queries.dim &&
                               queries.rows >= 0 && queries.rows < (int64_t(1) << 32) - 1));
  // dim 1: count.cu's sort + interval search is already O(n log n).
  if (!valid || points.dim < 2 || points.dim > gr::kMaxDim) {
    count(points, queries, dtype, p, radius, strict, out, stream, device);  // or its error
    return;
  }
  if (!self && queries.rows == 0) return;
  DeviceGuard guard(device);
  (void)cudaGetLastError();
  bool done = false;
  try {
    done = dtype == Dtype::float32
               ? count_grid_impl<float>(points, queries, p, radius, strict, out, stream, pairs)
               : count_grid_impl<double>(points, queries, p, radius, strict, out, stream, pairs);
  } catch (const CudaOutOfMemory&) {
    (void)cudaGetLastError();
  }
  if (!done) count(points, queries, dtype, p, radius, strict, out, stream, device);
}

}  // namespace infolens::cuda::knn
