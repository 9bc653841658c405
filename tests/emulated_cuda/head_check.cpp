// The head's CUDA engine (src/cuda/curvature/: the tiled products of gemm.cuh and the GGN
// product of softmax_ce_ggn.cu) run on the CPU through the CUDA stand-in (include/) and
// compared with float64 loops written here from the contract (src/cpp/curvature/softmax_ce_ggn.hpp).
//
//     head_check seed gemm     every layout x epilogue x dtype of the product, ragged sizes,
//                              operands that allow 16-byte copies and operands that do not
//     head_check seed engine   the GGN product: both dtypes, tangents and outputs present or
//                              absent, several token blocks, vocabulary segments and dh splits
// Each prints one line per failure and a summary "N cases, F failed"; exit 0 when all agree.
// Agreement: the largest deviation over the largest reference entry, below 2e-6 for float32
// (3xTF32 keeps float32-level accuracy; plain TF32 would be near 1e-3) and 1e-13 for float64.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "curvature/gemm.cuh"
#include "curvature/softmax_ce_ggn_cuda.hpp"

using namespace infolens::cuda::curvature;

namespace {

std::mt19937_64 rng;
int cases = 0, failed = 0;

int uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

template <class T>
std::vector<T> normal(size_t n, double scale = 1.0) {
  std::normal_distribution<double> d(0.0, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = T(d(rng));
  return v;
}

template <class T>
constexpr double tolerance() {
  return sizeof(T) == 4 ? 2e-6 : 1e-13;
}

// Records a comparison: the largest |got - want| over the largest |want|.
template <class T>
void agree(const std::string& what, const T* got, const std::vector<double>& want) {
  ++cases;
  double top = 0, worst = 0;
  bool finite = true;
  for (size_t i = 0; i < want.size(); ++i) {
    top = std::max(top, std::fabs(want[i]));
    worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
    finite = finite && std::isfinite(double(got[i]));
  }
  const double rel = worst / std::max(top, 1e-300);
  if (!finite || rel > tolerance<T>()) {
    ++failed;
    std::printf("FAIL %s: deviation %.3g of the largest entry %.3g%s\n", what.c_str(), rel, top,
                finite ? "" : " (non-finite)");
  }
}

// ---- the tiled product ------------------------------------------------------------------------

// An operand X(i, k) = p[i s_i + k s_k] over rows x depth, contiguous along the depth or along
// the rows, in a buffer aligned for 16-byte copies (leading stride a multiple of 4, no shift)
// or not (any stride, maybe one element in).
template <class T>
struct Matrix {
  std::vector<T> data;
  Operand<T> op;
  int rows, depth;

  Matrix(bool along_depth, int rows_, int depth_, bool aligned) : rows(rows_), depth(depth_) {
    const int64_t length = along_depth ? depth : rows;
    const int64_t ld = aligned ? (length + 3) / 4 * 4 + 4 * uniform(0, 2) : length + uniform(0, 3);
    const int shift = aligned ? 0 : uniform(0, 1);
    // NaN everywhere outside the matrix (padding, the shift, past the end): a read outside
    // it makes the product non-finite, even where the other operand's entry is zero there
    data.assign(size_t(shift + ld * (along_depth ? rows : depth) + 8), T(NAN));
    op = along_depth ? Operand<T>{data.data() + shift, ld, 1} : Operand<T>{data.data() + shift, 1, ld};
    const std::vector<T> values = normal<T>(size_t(rows) * depth);
    for (int i = 0; i < rows; ++i)
      for (int k = 0; k < depth; ++k) data[size_t(shift + i * op.s_i + k * op.s_k)] = values[size_t(i) * depth + k];
  }
  double at(int i, int k) const { return double(op.p[i * op.s_i + k * op.s_k]); }
};

template <class T, bool kAK, bool kBK, Epilogue kEpi>
void gemm_case() {
  using S = typename GemmTile<T>::type;
  const int m = uniform(1, 300), n = uniform(1, 200), pairs = uniform(1, 2);
  const int k0 = uniform(1, 70), k1 = pairs == 2 ? uniform(1, 40) : 0;
  const bool aligned = uniform(0, 1) == 1;  // 16-byte copies possible, or not
  std::vector<Matrix<T>> a, b;
  for (int q = 0; q < pairs; ++q) {
    const int depth = q ? k1 : k0;
    a.emplace_back(kAK, m, depth, aligned);
    b.emplace_back(kBK, n, depth, aligned);
  }
  std::vector<double> c(size_t(m) * n, 0.0);
  for (int q = 0; q < pairs; ++q)
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        double s = 0;
        for (int k = 0; k < a[q].depth; ++k) s += a[q].at(i, k) * b[q].at(j, k);
        c[size_t(i) * n + j] += s;
      }

  GemmArgs<T> g{};
  for (int q = 0; q < pairs; ++q) g.a[q] = a[q].op, g.b[q] = b[q].op, g.k[q] = a[q].depth;
  g.m = m, g.n = n;
  const int ld = n + uniform(0, 3);
  g.ld = ld;
  std::vector<T> out(size_t(m) * ld), comp(size_t(m) * ld, T(0)), offset = normal<T>(size_t(m));
  std::vector<double> want(size_t(m) * n);
  std::vector<T> got(size_t(m) * n);
  std::string what = std::string(sizeof(T) == 4 ? "float32" : "float64") + (kAK ? " A along k" : " A along m") +
                     (kBK ? ", B along k" : ", B along n") + " m=" + std::to_string(m) + " n=" + std::to_string(n) +
                     " k=" + std::to_string(k0) + "+" + std::to_string(k1) + (aligned ? " aligned" : " unaligned");
  if constexpr (kEpi == Epilogue::store) {
    const bool with_offset = uniform(0, 1) == 1;
    g.out = out.data(), g.row_offset = with_offset ? offset.data() : nullptr;
    gemm<T, kAK, kBK, kEpi>(g, 1, nullptr);
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        want[size_t(i) * n + j] = c[size_t(i) * n + j] + (with_offset ? double(offset[i]) : 0.0);
        got[size_t(i) * n + j] = out[size_t(i) * ld + j];
      }
    what += with_offset ? ", store + row offset" : ", store";
  } else if constexpr (kEpi == Epilogue::accumulate) {
    // twice into a start value: the compensated sum carries the rounding of both additions
    const bool compensated = uniform(0, 1) == 1;
    const std::vector<T> start = normal<T>(out.size());
    out = start;
    g.out = out.data(), g.comp = compensated ? comp.data() : nullptr;
    gemm<T, kAK, kBK, kEpi>(g, 1, nullptr);
    gemm<T, kAK, kBK, kEpi>(g, 1, nullptr);
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        const size_t at = size_t(i) * ld + j;
        want[size_t(i) * n + j] = double(start[at]) + 2 * c[size_t(i) * n + j];
        got[size_t(i) * n + j] = compensated ? T(out[at] - comp[at]) : out[at];
      }
    what += compensated ? ", accumulate, compensated" : ", accumulate";
  } else {
    const int tiles = (k0 + S::BK - 1) / S::BK + (k1 + S::BK - 1) / S::BK;
    g.slice_tiles = uniform(1, std::max(1, tiles / 2));
    const int splits = (tiles + g.slice_tiles - 1) / g.slice_tiles;
    g.slice_stride = int64_t(m) * ld;
    std::vector<double> acc(size_t(splits) * m * ld, 0.0);
    g.acc = acc.data();
    gemm<T, kAK, kBK, kEpi>(g, splits, nullptr);
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        double s = 0;
        for (int z = 0; z < splits; ++z) s += acc[size_t(z) * m * ld + size_t(i) * ld + j];
        want[size_t(i) * n + j] = c[size_t(i) * n + j];
        got[size_t(i) * n + j] = T(s);
      }
    what += ", partial over " + std::to_string(splits) + " splits";
  }
  agree(what, got.data(), want);
}

template <class T>
void gemm_cases(int rounds) {
  for (int r = 0; r < rounds; ++r) {
    gemm_case<T, true, true, Epilogue::store>();
    gemm_case<T, true, false, Epilogue::store>();
    gemm_case<T, false, true, Epilogue::store>();
    gemm_case<T, false, false, Epilogue::store>();
    gemm_case<T, true, false, Epilogue::accumulate>();
    gemm_case<T, true, true, Epilogue::accumulate>();
    gemm_case<T, false, false, Epilogue::partial>();
    gemm_case<T, true, false, Epilogue::partial>();
  }
}

// ---- the GGN product ----------------------------------------------------------------------------

template <class T>
void engine_case(int64_t tokens, int64_t vocab, int64_t dim, int64_t vectors) {
  const bool bias = uniform(0, 1), with_dh = uniform(0, 3) > 0, with_dw = !with_dh || uniform(0, 1);
  const bool with_dc = uniform(0, 1), want_dh = uniform(0, 3) > 0, want_dw = !want_dh || uniform(0, 1);
  const bool want_dc = uniform(0, 1);
  const auto h = normal<T>(size_t(tokens * dim)), w = normal<T>(size_t(vocab * dim), 0.3), c = normal<T>(size_t(vocab));
  std::vector<T> weights(static_cast<size_t>(tokens));
  for (auto& x : weights) x = T(uniform(0, 4) == 0 ? 0.0 : 0.5 + 0.1 * uniform(0, 10));
  const auto dh = normal<T>(size_t(vectors * tokens * dim)), dw = normal<T>(size_t(vectors * vocab * dim)),
             dc = normal<T>(size_t(vectors * vocab));
  std::vector<T> out_dh(size_t(vectors * tokens * dim)), out_dw(size_t(vectors * vocab * dim)),
      out_dc(size_t(vectors * vocab));

  HeadProblem p{sizeof(T) == 4 ? Dtype::float32 : Dtype::float64, tokens, vocab, dim, vectors,
                h.data(), w.data(), bias ? c.data() : nullptr, weights.data(),
                with_dh ? dh.data() : nullptr, with_dw ? dw.data() : nullptr, with_dc ? dc.data() : nullptr,
                want_dh ? out_dh.data() : nullptr, want_dw ? out_dw.data() : nullptr,
                want_dc ? out_dc.data() : nullptr};
  softmax_ce_ggn(p, nullptr, 0);

  // the contract, in float64
  std::vector<double> r_dh(out_dh.size(), 0.0), r_dw(out_dw.size(), 0.0), r_dc(out_dc.size(), 0.0);
  std::vector<double> prob(static_cast<size_t>(vocab)), dz(static_cast<size_t>(vocab));
  for (int64_t t = 0; t < tokens; ++t) {
    double top = -INFINITY, l = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      double z = bias ? double(c[v]) : 0.0;
      for (int64_t k = 0; k < dim; ++k) z += double(h[t * dim + k]) * double(w[v * dim + k]);
      prob[v] = z;
      top = std::max(top, z);
    }
    for (auto& x : prob) l += (x = std::exp(x - top));
    for (auto& x : prob) x /= l;
    for (int64_t j = 0; j < vectors; ++j) {
      double pdz = 0;
      for (int64_t v = 0; v < vocab; ++v) {
        double z = with_dc ? double(dc[j * vocab + v]) : 0.0;
        for (int64_t k = 0; k < dim; ++k) {
          if (with_dh) z += double(dh[(j * tokens + t) * dim + k]) * double(w[v * dim + k]);
          if (with_dw) z += double(h[t * dim + k]) * double(dw[(j * vocab + v) * dim + k]);
        }
        dz[v] = z;
        pdz += prob[v] * z;
      }
      for (int64_t v = 0; v < vocab; ++v) {
        const double u = double(weights[t]) * prob[v] * (dz[v] - pdz);
        for (int64_t k = 0; k < dim; ++k) {
          r_dh[(j * tokens + t) * dim + k] += u * double(w[v * dim + k]);
          r_dw[(j * vocab + v) * dim + k] += u * double(h[t * dim + k]);
        }
        r_dc[j * vocab + v] += u;
      }
    }
  }
  const std::string what = std::string(sizeof(T) == 4 ? "float32" : "float64") + " T=" + std::to_string(tokens) +
                           " V=" + std::to_string(vocab) + " d=" + std::to_string(dim) + " b=" +
                           std::to_string(vectors) + (bias ? " bias" : "") + (with_dh ? " dh" : "") +
                           (with_dw ? " dW" : "") + (with_dc ? " dc" : "");
  if (want_dh) agree(what + ": out_dh", out_dh.data(), r_dh);
  if (want_dw) agree(what + ": out_dW", out_dw.data(), r_dw);
  if (want_dc) agree(what + ": out_dc", out_dc.data(), r_dc);
}

template <class T>
void engine_cases() {
  engine_case<T>(uniform(1, 40), uniform(2, 150), uniform(1, 24), 1);
  engine_case<T>(uniform(260, 300), uniform(260, 400), uniform(4, 12), 2);  // token blocks, segments
  engine_case<T>(uniform(30, 40), uniform(1030, 1100), 8, 1);             // out_dh in vocabulary splits
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: head_check seed gemm|engine [rounds]\n");
    return 2;
  }
  rng.seed(std::stoull(argv[1]));
  const std::string what = argv[2];
  const int rounds = argc > 3 ? std::stoi(argv[3]) : 2;
  for (int r = 0; r < rounds; ++r) {
    if (what == "gemm") {
      gemm_cases<float>(1);
      gemm_cases<double>(1);
    } else {
      engine_cases<float>();
      engine_cases<double>();
    }
  }
  std::printf("%d cases, %d failed\n", cases, failed);
  return failed == 0 ? 0 : 1;
}
