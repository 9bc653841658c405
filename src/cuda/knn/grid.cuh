// The pieces of the grid kNN / count path (grid.cu) that decide which pairs are examined, as
// __host__ __device__ functions, so a host harness can run exactly the kernels' cell assignment,
// ring order, termination and range tests against an O(n^2) reference.
//
// Geometry. Up to kAxes = 3 columns ("axes") are cut into cells at boundaries b_1 <= ... <= b_{G-1}
// that are values of the data (quantiles of a sample): cell(x) = #{ j : b_j <= x }. Every test is
// then a comparison of data values or a key term formed with the kernels' own rounded operations:
//   x in a cell >= j  <=>  x >= b_j,   x in a cell < j  <=>  x < b_j   (exact, no division),
// and for a query q with b_j <= q (or q < b_j) every point x below (above) the face has, in that
// coordinate, the key term t(q, x) >= t(q, b_j): fl(q - x) is monotone in x, |.| and t*t are
// monotone in |t|, and the key (max of the terms, or the left-to-right sum of the squares, all
// terms >= 0) is at least each of its terms. So the termination and range tests are exact
// consequences of the kernels' arithmetic; no rounding margin is needed. Points or queries with a
// non-finite axis coordinate (NaN breaks the monotonicity: fmax drops a NaN term) are not placed
// in cells: they form the outlier bucket (cell id `cells`), which every query scans and whose
// queries scan everything.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "knn/keys.cuh"

namespace infolens::cuda::knn::grid {

constexpr int kAxes = 3;         // columns cut into cells
constexpr int kMaxDim = 8;       // the grid serves dim <= kMaxDim; larger dim goes to brute force
constexpr int kMaxK = 32;        // the largest k kept in one lane's registers
constexpr int kMaxCellsPerAxis = 1024;

// The keys (keys.cuh): key_step folds one more coordinate, key_first forms the first.
using knn::key_first;
using knn::key_step;

// The key term of a face: a lower bound of the term t(q, x) of every point x beyond the face b
// on the far side from q (b <= q for a lower face, q < b for an upper one).
template <bool kMaxNorm, class T>
INFOLENS_HD T face(T q, T b) {
  return key_first<kMaxNorm, T>(q, b);
}

template <class T>
INFOLENS_HD bool finite(T x) {
  return x - x == T(0);  // false for +-inf and NaN
}
template <class T>
INFOLENS_HD T pos_inf() {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(T) == 4)
    return __int_as_float(0x7f800000);
  else
    return __longlong_as_double(0x7ff0000000000000ll);
#else
  return std::numeric_limits<T>::infinity();
#endif
}
INFOLENS_HD int imin(int a, int b) { return a < b ? a : b; }
INFOLENS_HD int imax(int a, int b) { return a > b ? a : b; }

// (ka, ia) < (kb, ib) in the (key, index) order; false whenever a key is NaN.
template <class T>
INFOLENS_HD bool less(T ka, uint32_t ia, T kb, uint32_t ib) {
  return ka < kb || (ka == kb && ia < ib);
}

// ---- geometry ----------------------------------------------------------------------------------

template <class T>
struct Geometry {
  int col[kAxes];     // the column of each axis
  int G[kAxes];       // cells along each axis (1: the axis is not cut)
  const T* b[kAxes];  // b[a][j - 1] = boundary j, 1 <= j < G[a], non-decreasing, finite
  uint32_t cells;     // G[0] * G[1] * G[2]; cell id `cells` is the outlier bucket
};

// #{ j in [1, G) : b_j <= x } for a finite x.
template <class T>
INFOLENS_HD int axis_cell(const T* b, int G, T x) {
  int lo = 0, hi = G - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (b[mid - 1] <= x)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// The cell of a row (coordinates row[c * stride]); `cells` when an axis coordinate is not finite.
template <class T>
INFOLENS_HD uint32_t cell_of(const Geometry<T>& g, const T* row, int64_t stride = 1) {
  uint32_t c = 0;
#pragma unroll
  for (int a = 0; a < kAxes; ++a) {
    if (g.G[a] == 1) continue;
    const T x = row[g.col[a] * stride];
    if (!finite(x)) return g.cells;
    c = c * uint32_t(g.G[a]) + uint32_t(axis_cell(g.b[a], g.G[a], x));
  }
  return c;
}

template <class T>
INFOLENS_HD void decode(const Geometry<T>& g, uint32_t cell, int (&c)[kAxes]) {
#pragma unroll
  for (int a = kAxes - 1; a >= 0; --a) {
    c[a] = int(cell % uint32_t(g.G[a]));
    cell /= uint32_t(g.G[a]);
  }
}

// ---- kNN: rings --------------------------------------------------------------------------------

// The cells at Chebyshev distance exactly R from c (clamped to the grid), row by row: a row is a
// pair (i0, i1) of the box's first two axes, ring_rows of them; ring_row gives row t's cells as
// at most two runs of consecutive ids along the last axis (consecutive ids are consecutive in the
// sorted points, so each run is one contiguous range). Plain loops, no callbacks: the kernels
// keep their per-lane state in registers.
template <class T>
INFOLENS_HD int ring_rows(const Geometry<T>& g, const int (&c)[kAxes], int R) {
  const int n0 = imin(g.G[0] - 1, c[0] + R) - imax(0, c[0] - R) + 1;
  const int n1 = imin(g.G[1] - 1, c[1] + R) - imax(0, c[1] - R) + 1;
  return n0 * n1;
}
// Runs first[u] .. last[u] (cell ids, inclusive), u < the count returned (0, 1 or 2).
template <class T>
INFOLENS_HD int ring_row(const Geometry<T>& g, const int (&c)[kAxes], int R, int t, uint32_t (&first)[2],
                         uint32_t (&last)[2]) {
  const int lo0 = imax(0, c[0] - R), lo1 = imax(0, c[1] - R);
  const int n1 = imin(g.G[1] - 1, c[1] + R) - lo1 + 1;
  const int i0 = lo0 + t / n1, i1 = lo1 + t % n1;
  const int lo2 = imax(0, c[2] - R), hi2 = imin(g.G[2] - 1, c[2] + R);
  const uint32_t base = (uint32_t(i0) * uint32_t(g.G[1]) + uint32_t(i1)) * uint32_t(g.G[2]);
  if (i0 == c[0] - R || i0 == c[0] + R || i1 == c[1] - R || i1 == c[1] + R) {
    first[0] = base + uint32_t(lo2), last[0] = base + uint32_t(hi2);
    return 1;
  }
  int runs = 0;  // R > 0 here: the two end cells of the row, where they exist
  if (c[2] - R >= 0) first[runs] = last[runs] = base + uint32_t(c[2] - R), ++runs;
  if (c[2] + R < g.G[2]) first[runs] = last[runs] = base + uint32_t(c[2] + R), ++runs;
  return runs;
}

// Whether the box of half-width R around c covers the whole grid.
template <class T>
INFOLENS_HD bool covers(const Geometry<T>& g, const int (&c)[kAxes], int R) {
  bool all = true;
#pragma unroll
  for (int a = 0; a < kAxes; ++a) all = all && c[a] - R <= 0 && c[a] + R >= g.G[a] - 1;
  return all;
}

// A lower bound of the key of every point outside the box of half-width R around the query's
// cell c (q: the query's axis coordinates, finite, in cell c); +inf when the box covers the grid.
// A lane whose k-th key is strictly below it is done: no point outside can be admitted.
template <bool kMaxNorm, class T>
INFOLENS_HD T outside_bound(const Geometry<T>& g, const T (&q)[kAxes], const int (&c)[kAxes], int R) {
  T bound = pos_inf<T>();
#pragma unroll
  for (int a = 0; a < kAxes; ++a) {
    if (c[a] - R > 0) {  // points of cells < c - R: x < b_{c-R} <= q
      const T t = face<kMaxNorm>(q[a], g.b[a][c[a] - R - 1]);
      bound = t < bound ? t : bound;
    }
    if (c[a] + R < g.G[a] - 1) {  // points of cells > c + R: x >= b_{c+R+1} > q
      const T t = face<kMaxNorm>(q[a], g.b[a][c[a] + R]);
      bound = t < bound ? t : bound;
    }
  }
  return bound;
}

// ---- counts: boxes -----------------------------------------------------------------------------

// Whether a key term `t` already fails the radius test (the key is >= t).
template <bool kStrict, class T>
INFOLENS_HD bool fails(T t, T r) {
  return kStrict ? t >= r : t > r;
}

// The cells [lo[a], hi[a]] per axis holding every point that can pass key < r (strict) or
// key <= r, for a query with finite axis coordinates q in cell c. False when no point can pass
// (r NaN or negative, or r <= 0 when strict): the lane counts 0.
template <bool kMaxNorm, bool kStrict, class T>
INFOLENS_HD bool count_box(const Geometry<T>& g, const T (&q)[kAxes], const int (&c)[kAxes], T r,
                           int (&lo)[kAxes], int (&hi)[kAxes]) {
  if (kStrict ? !(r > T(0)) : !(r >= T(0))) return false;
#pragma unroll
  for (int a = 0; a < kAxes; ++a) {
    lo[a] = 0;
    hi[a] = g.G[a] - 1;
    if (g.G[a] == 1) continue;
    const T* b = g.b[a];
    // Lower: the largest j in [1, c] whose face fails (cells < j excluded); the face term falls
    // as j grows toward c, so the failing j are a prefix.
    int s = 1, e = c[a];  // search [s, e]
    while (s <= e) {
      const int mid = (s + e) / 2;
      if (fails<kStrict>(face<kMaxNorm>(q[a], b[mid - 1]), r)) {
        lo[a] = mid;
        s = mid + 1;
      } else {
        e = mid - 1;
      }
    }
    // Upper: the smallest j in [c + 1, G) whose face fails (cells >= j excluded).
    s = c[a] + 1, e = g.G[a] - 1;
    while (s <= e) {
      const int mid = (s + e) / 2;
      if (fails<kStrict>(face<kMaxNorm>(q[a], b[mid - 1]), r)) {
        hi[a] = mid - 1;
        e = mid - 1;
      } else {
        s = mid + 1;
      }
    }
  }
  return true;
}

// ---- a lane's k-best list ----------------------------------------------------------------------

// The k smallest (key, index) pairs seen, ascending, in the last k of K slots; the first K - k
// slots hold (-inf, 0), below every key, so the k-th entry is always slot K - 1 (a static index:
// the list stays in registers) and an insertion never moves them.
template <class T, int K>
struct LaneList {
  T key[K];
  uint32_t idx[K];

  INFOLENS_HD void init(int k) {
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const bool pad = i < K - k;
      key[i] = pad ? -pos_inf<T>() : pos_inf<T>();
      idx[i] = pad ? 0u : 0xffffffffu;
    }
  }
  INFOLENS_HD bool admits(T ck, uint32_t cj) const { return less(ck, cj, key[K - 1], idx[K - 1]); }
  // Inserts an admitted candidate, dropping the last entry.
  INFOLENS_HD void insert(T ck, uint32_t cj) {
#pragma unroll
    for (int i = K - 1; i > 0; --i) {
      const bool below_prev = less(ck, cj, key[i - 1], idx[i - 1]);
      const bool below_this = less(ck, cj, key[i], idx[i]);
      const T nk = below_prev ? key[i - 1] : (below_this ? ck : key[i]);
      const uint32_t ni = below_prev ? idx[i - 1] : (below_this ? cj : idx[i]);
      key[i] = nk;
      idx[i] = ni;
    }
    if (less(ck, cj, key[0], idx[0])) key[0] = ck, idx[0] = cj;
  }
  INFOLENS_HD T kth() const { return key[K - 1]; }
};

// ---- the host's plan ---------------------------------------------------------------------------

template <class T>
struct Plan {
  bool use = false;  // false: the grid cannot help (no column with spread); run brute force
  int col[kAxes] = {0, 0, 0};
  int G[kAxes] = {1, 1, 1};
  std::vector<T> b[kAxes];
  uint32_t cells = 1;
};

// The grid for n points from a sample of each column, sorted ascending (sorted[c]; non-finite
// values allowed, ignored): the (at most) kAxes columns of largest spread (5%..95% sample range),
// each cut at sample quantiles, about n / cell_points cells in all, equal values merged (so ties
// and constant columns cost no empty cells).
template <class T>
Plan<T> plan_grid(const std::vector<std::vector<T>>& sorted, int64_t n, int cell_points) {
  Plan<T> plan;
  const int dim = int(sorted.size());
  std::vector<std::vector<T>> fin(dim);
  std::vector<std::pair<double, int>> spread;
  for (int c = 0; c < dim; ++c) {
    for (T v : sorted[c])
      if (std::isfinite(v)) fin[c].push_back(v);
    const size_t s = fin[c].size();
    if (s < 2) continue;
    const double w = double(fin[c][(s - 1) * 95 / 100]) - double(fin[c][(s - 1) * 5 / 100]);
    const double full = double(fin[c][s - 1]) - double(fin[c][0]);
    if (full > 0) spread.push_back({w > 0 ? w : 0.0, c});
  }
  std::stable_sort(spread.begin(), spread.end(), [](auto& x, auto& y) { return x.first > y.first; });
  const int g = std::min<int>(kAxes, int(spread.size()));
  if (g == 0) return plan;
  double target = std::max(1.0, double(n) / double(std::max(cell_points, 1)));
  double made = 1.0;
  uint64_t cells = 1;
  for (int a = 0; a < g; ++a) {
    const std::vector<T>& v = fin[spread[a].second];
    const double want = std::pow(target / made, 1.0 / double(g - a));
    const int64_t G = std::clamp<int64_t>(int64_t(std::llround(want)), 1,
                                          std::min<int64_t>(kMaxCellsPerAxis, int64_t(v.size())));
    std::vector<T> b;
    for (int64_t j = 1; j < G; ++j) b.push_back(v[size_t(j * int64_t(v.size()) / G)]);
    b.erase(std::unique(b.begin(), b.end()), b.end());
    // A boundary at the sample minimum leaves cell 0 for the values below it: keep it (exact).
    plan.col[a] = spread[a].second;
    plan.G[a] = int(b.size()) + 1;
    plan.b[a] = std::move(b);
    made *= double(plan.G[a]);
    cells *= uint64_t(plan.G[a]);
  }
  // Unused axes: G = 1, column of the first axis (never read).
  for (int a = g; a < kAxes; ++a) plan.col[a] = plan.col[0];
  plan.cells = uint32_t(cells);
  plan.use = cells > 1;
  return plan;
}

}  // namespace infolens::cuda::knn::grid
