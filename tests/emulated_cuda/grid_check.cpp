// The CUDA kNN engine (src/cuda/knn/: the grid path of grid.cu and the brute-force kernels of
// knn.cu and count.cu, which the grid path falls back to) run on the CPU through the CUDA
// stand-in (include/cuda_runtime.h) and compared with an O(n^2) brute force written here from the
// contract (docs/NATIVE_ABI.md): the same keys formed the same way, the k smallest in (key, index)
// order, NaN keys never entering or passing, strict and non-strict counts. Every answer must be
// equal bit for bit, from the grid entry points (knn_grid / count_grid) and, up to 41 points,
// from the brute-force ones (knn / count) too, on small finite cases; the pairs counter tells which answered the first.
//
//     grid_check [seed [n]]      the sweep of cases up to n points (2500 unless given)
//     grid_check seed n dim [k]  n points in dim dimensions, every kind of data, both dtypes
// Each prints one line per failure and a summary; exit 0 when all agree.
//     grid_check pairs n dim [k] the share of brute force's pairs the grid examines (pairs_share)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "knn/knn.hpp"

namespace ref {

template <class T>
T key(const T* q, const T* x, int64_t dim, bool max_norm, bool first_alone) {
  // kNN folds every coordinate into 0; counts start from the first term (keys.cuh: the same
  // value for every non-NaN term, and the contract for a NaN one)
  T s = T(0);
  for (int64_t c = 0; c < dim; ++c) {
    const T t = q[c] - x[c];
    const T term = max_norm ? std::fabs(t) : t * t;
    if (c == 0 && first_alone)
      s = term;
    else
      s = max_norm ? std::fmax(s, term) : s + term;
  }
  return s;
}

template <class T>
void knn(const T* x, int64_t n, int64_t ldx, const T* q, int64_t m, int64_t ldq, int64_t dim, bool self,
         bool max_norm, int k, T* keys, int64_t* idx) {
  std::vector<std::pair<T, int64_t>> all;
  for (int64_t i = 0; i < m; ++i) {
    all.clear();
    const T* qi = self ? x + i * ldx : q + i * ldq;
    for (int64_t j = 0; j < n; ++j) {
      if (self && j == i) continue;
      const T kj = key(qi, x + j * ldx, dim, max_norm, false);
      if (!std::isnan(kj)) all.emplace_back(kj, j);
    }
    const size_t top = std::min(all.size(), size_t(k));
    std::partial_sort(all.begin(), all.begin() + top, all.end());
    for (int s = 0; s < k; ++s) {
      const bool have = size_t(s) < all.size();
      keys[i * k + s] = have ? all[s].first : std::numeric_limits<T>::infinity();
      idx[i * k + s] = have ? all[s].second : INT64_MAX;
    }
  }
}

template <class T>
void count(const T* x, int64_t n, int64_t ldx, const T* q, int64_t m, int64_t ldq, int64_t dim, bool self,
           bool max_norm, const T* r, bool strict, int64_t* out) {
  for (int64_t i = 0; i < m; ++i) {
    const T* qi = self ? x + i * ldx : q + i * ldq;
    int64_t c = 0;
    for (int64_t j = 0; j < n; ++j) {
      if (self && j == i) continue;
      const T kj = key(qi, x + j * ldx, dim, max_norm, true);
      c += strict ? (kj < r[i]) : (kj <= r[i]);
    }
    out[i] = c;
  }
}

}  // namespace ref

namespace {

namespace K = infolens::cuda::knn;

int failures = 0, cases = 0, through_grid = 0;

void fail(const std::string& what) {
  if (++failures <= 20) std::printf("FAIL %s\n", what.c_str());
}

// Data of a kind: 0 gaussian, 1 on a coarse lattice (ties and duplicates), 2 gaussian with a few
// non-finite coordinates, 3 one column constant (no spread there).
template <class T>
std::vector<T> data(std::mt19937_64& rng, int64_t rows, int64_t ld, int64_t dim, int kind) {
  std::normal_distribution<double> normal;
  std::vector<T> x(size_t(std::max<int64_t>(rows, 1) * ld), T(7));  // columns beyond dim: never read
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < dim; ++c) {
      double v = normal(rng);
      if (kind == 1) v = std::round(v * 2) / 2;
      if (kind == 3 && c == 0) v = 1.5;
      x[size_t(i * ld + c)] = T(v);
    }
  if (kind == 2 && rows > 4) {
    const T bad[] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                     -std::numeric_limits<T>::infinity()};
    for (int t = 0; t < 3; ++t) x[size_t((rng() % rows) * ld + rng() % dim)] = bad[t];
  }
  return x;
}

template <class T>
void one_case(std::mt19937_64& rng, int64_t n, int64_t dim, int64_t m, int k, bool self, bool max_norm, int kind) {
  const int64_t ld = dim + (rng() % 2) * 3;  // sometimes a block of columns of a wider matrix
  const std::vector<T> x = data<T>(rng, n, ld, dim, kind);
  const std::vector<T> q = self ? std::vector<T>() : data<T>(rng, m, dim, dim, kind == 3 ? 0 : kind);
  const int64_t rows = self ? n : m;
  const infolens::cuda::Dtype dtype = sizeof(T) == 4 ? infolens::cuda::Dtype::float32 : infolens::cuda::Dtype::float64;
  const double p = max_norm ? std::numeric_limits<double>::infinity() : 2.0;
  const K::Matrix points{x.data(), n, dim, ld};
  const K::Matrix queries{self ? nullptr : q.data(), self ? 0 : m, dim, dim};
  const std::string name = std::string(sizeof(T) == 4 ? "float32" : "float64") + (max_norm ? " max-norm" : " euclid") +
                           " n=" + std::to_string(n) + " dim=" + std::to_string(dim) + " m=" +
                           (self ? std::string("self") : std::to_string(m)) + " k=" + std::to_string(k) +
                           " kind=" + std::to_string(kind);

  // kNN, through the grid's entry point and (small cases) the brute force's
  std::vector<T> want_keys(size_t(rows * k));
  std::vector<int64_t> want_idx(size_t(rows * k));
  ref::knn(x.data(), n, ld, self ? nullptr : q.data(), rows, dim, dim, self, max_norm, k, want_keys.data(),
           want_idx.data());
  // the brute-force kernels too, on small cases (they are slow to emulate), and not on non-finite
  // data: x86 makes negative NaNs where a GPU makes its positive canonical one, and the float32
  // counts compare the keys' bits as integers
  const bool brute = n <= 41 && kind != 2;
  for (bool grid : {true, false}) {
    if (!grid && !brute) continue;
    std::vector<T> keys(size_t(rows * k));
    std::vector<int64_t> idx(size_t(rows * k));
    unsigned long long pairs = 0;
    if (grid)
      K::knn_grid(points, queries, dtype, p, k, keys.data(), idx.data(), nullptr, 0, &pairs);
    else
      K::knn(points, queries, dtype, p, k, keys.data(), idx.data(), nullptr, 0);
    ++cases;
    through_grid += pairs > 0;
    for (size_t e = 0; e < keys.size(); ++e)
      if (std::memcmp(&keys[e], &want_keys[e], sizeof(T)) != 0 || idx[e] != want_idx[e]) {
        fail(std::string(grid ? "knn_grid " : "knn ") + name + ": query " + std::to_string(e / k) + " slot " +
             std::to_string(e % k) + ": (" + std::to_string(double(keys[e])) + ", " + std::to_string(idx[e]) +
             ") want (" + std::to_string(double(want_keys[e])) + ", " + std::to_string(want_idx[e]) + ")");
        break;
      }
  }

  // counts at radii equal to the k-th keys (ties at the radius: strict and not differ), 0 and inf
  std::vector<T> radius(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) {
    const int pick = int(rng() % 8);
    radius[i] = pick == 0 ? T(0) : pick == 1 ? std::numeric_limits<T>::infinity() : want_keys[size_t(i * k + k - 1)];
  }
  for (bool strict : {true, false}) {
    std::vector<int64_t> want(static_cast<size_t>(rows));
    ref::count(x.data(), n, ld, self ? nullptr : q.data(), rows, dim, dim, self, max_norm, radius.data(), strict,
               want.data());
    for (bool grid : {true, false}) {
      if (!grid && !brute) continue;
      std::vector<int64_t> got(static_cast<size_t>(rows));
      unsigned long long pairs = 0;
      if (grid)
        K::count_grid(points, queries, dtype, p, radius.data(), strict, got.data(), nullptr, 0, &pairs);
      else
        K::count(points, queries, dtype, p, radius.data(), strict, got.data(), nullptr, 0);
      // where brute force answered, non-finite float32 data is left to the GPU tests (see above)
      if (kind == 2 && sizeof(T) == 4 && pairs == 0) continue;
      ++cases;
      through_grid += pairs > 0;
      for (int64_t i = 0; i < rows; ++i)
        if (got[i] != want[i]) {
          fail(std::string(grid ? "count_grid" : "count") + (strict ? "< " : "<= ") + name + ": query " +
               std::to_string(i) + ": " + std::to_string(got[i]) + " want " + std::to_string(want[i]));
          break;
        }
    }
  }
}

}  // namespace

// The work the grid saves: (query, point) pairs examined, as a share of brute force's, for a
// KSG-like call on n Gaussian points in dim dimensions (the self-join's k-th max-norm keys, then
// the counts in the first half of the columns at those radii). Brute force forms n^2 ordered
// pairs for kNN and n^2 / 2 unordered ones for counts.
int pairs_share(int64_t n, int64_t dim, int k) {
  std::mt19937_64 rng(1);
  std::normal_distribution<double> normal;
  std::vector<float> x(static_cast<size_t>(n * dim));
  for (float& v : x) v = float(normal(rng));
  std::vector<float> keys(static_cast<size_t>(n * k));
  std::vector<int64_t> idx(static_cast<size_t>(n * k)), counts(static_cast<size_t>(n));
  const double inf = std::numeric_limits<double>::infinity();
  const int64_t half = std::max<int64_t>(2, dim / 2);
  unsigned long long knn_pairs = 0, count_pairs = 0;
  K::knn_grid({x.data(), n, dim, dim}, {nullptr, 0, dim, dim}, infolens::cuda::Dtype::float32, inf, k, keys.data(),
              idx.data(), nullptr, 0, &knn_pairs);
  std::vector<float> radius(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) radius[i] = keys[size_t(i * k + k - 1)];
  K::count_grid({x.data(), n, half, dim}, {nullptr, 0, half, dim}, infolens::cuda::Dtype::float32, inf, radius.data(),
                true, counts.data(), nullptr, 0, &count_pairs);
  const double nn = double(n) * double(n);
  std::printf("n=%lld dim=%lld k=%d: kNN examines %.4f of n^2 pairs, the %lld-D counts %.4f of n^2/2\n",
              (long long)n, (long long)dim, k, double(knn_pairs) / nn, (long long)half, double(count_pairs) / (nn / 2));
  return knn_pairs > 0 && count_pairs > 0 ? 0 : 1;
}

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc > 1 && std::string(argv[1]) == "pairs")
    return pairs_share(std::stoll(argv[2]), std::stoll(argv[3]), argc > 4 ? std::stoi(argv[4]) : 4);
  std::mt19937_64 rng(argc > 1 ? std::stoull(argv[1]) : 1);
  const int64_t largest = argc > 2 ? std::stoll(argv[2]) : 2500;
  if (argc > 3) {  // grid_check seed n dim [k]: large cases, each kind of data in both dtypes
    const int64_t dim = std::stoll(argv[3]);
    const int k = argc > 4 ? std::stoi(argv[4]) : 4;
    for (int kind = 0; kind < 4; ++kind) {
      one_case<float>(rng, largest, dim, largest, k, true, true, kind);
      one_case<double>(rng, largest, dim, largest / 2, k, false, false, kind);
    }
  } else {
    std::vector<int64_t> sizes{2, 3, 41, 300};
    if (largest > 300) sizes.push_back(largest);
    for (int kind = 0; kind < 4; ++kind)
      for (int64_t dim : {1, 2, 3, 4, 6, 8})
        for (int64_t n : sizes)
          for (bool self : {true, false})
            for (bool max_norm : {true, false})
              for (int k : {1, 4, 9, 32}) {
                if (k > (self ? n - 1 : n)) continue;
                if (n > 300 && (k == 4 || k == 9)) continue;  // the large cases are slow here
                one_case<float>(rng, n, dim, self ? n : 1 + int64_t(rng() % 200), k, self, max_norm, kind);
                one_case<double>(rng, n, dim, self ? n : 1 + int64_t(rng() % 200), k, self, max_norm, kind);
              }
  }
  std::printf("%d cases, %d through the grid, %d failed\n", cases, through_grid, failures);
  return failures == 0 && through_grid > 0 ? 0 : 1;
}
