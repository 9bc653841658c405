// The softmax cross-entropy head's GGN product on the GPU (softmax_ce_ggn_cuda.hpp), the same
// steps as the CPU engine (src/cpp/curvature/softmax_ce_ggn.cpp), each a kernel on the caller's
// stream.
//
// Tiling. Tokens go in blocks of Tb (at most 256; fewer when V is large, so the two [V, Tb] slabs
// stay near 64 MiB). Per block:
//   1. logits   gemm: E = W h^T + c                          [V, Tb]
//               column kernels: m_t = max_v E, then E = exp(E - m_t) and l_t = sum_v E
//   then for each vector j:
//   3. tangent  gemm: G = W dh_j^T + dW_j h^T + dc_j (two operand pairs, one product)
//               column kernels: s_tj = sum_v E G / l_t
//   4. u        G = (w_t / l_t) E (G - s_tj) in place, one warp per vocabulary row, which also
//               adds sum_t u into out_dc_j
//               gemm: out_dW_j += u^T h (compensated, below)
//   5.          gemm: out_dh_j = u W, the vocabulary split into slices of about 512 rows (grid.z),
//               each slice's product a float64 partial, summed in slice order.
// The logits and each tangent are formed once; the [b, T, V] tangent and the full p never exist.
//
// Accuracy. Products are float32-accurate for float32 inputs (3xTF32 on tensor cores, gemm.cuh)
// and float64 FMAs for float64; each product's depth is bounded (d, Tb tokens or one slice of
// the vocabulary). Sums over the vocabulary (max, l, s, the slices of out_dh) and over tokens for
// out_dc are float64. out_dW sums at most Tb = 256 tokens in
// the input dtype per block, then adds that into the output with compensated (Kahan) summation,
// the error carried in a second float32 array: float64-like accuracy across blocks at half the
// memory of a float64 accumulator (as the CPU engine does).
//
// Determinism. No atomics: every float64 partial is written by one thread and summed in a fixed
// order; the splits (Tb, column segments, vocabulary slices) depend on T, V and the dtype alone,
// not on the device. Results are identical run to run and across devices of one architecture.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "check.cuh"
#include "curvature/gemm.cuh"
#include "curvature/softmax_ce_ggn_cuda.hpp"
#include "stream_memory.cuh"

namespace infolens::cuda::curvature {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlock = 256;            // tokens per block, at most
constexpr int64_t kSlabBytes = int64_t(64) << 20;
constexpr int64_t kColumnRows = 256;          // vocabulary rows per column partial
constexpr int64_t kSliceRows = 512;           // vocabulary rows per split of out_dh (about)
constexpr int kMaxSlices = 64;
constexpr double kNegativeInfinity = -double(INFINITY);  // the start of a max

__device__ __forceinline__ float exp_t(float x) { return expf(x); }
__device__ __forceinline__ double exp_t(double x) { return exp(x); }

enum class Column { max, exp_sum, dot };

// partial[seg * tb + t] over the vocabulary rows of segment seg = blockIdx.y, for tokens t < nb:
//   max      max_v e[v, t]
//   exp_sum  e[v, t] = exp(e[v, t] - m[t]) in place, and its sum
//   dot      sum_v e[v, t] g[v, t]
// One thread per token, so the rows are read coalesced; float64 sums in row order.
template <class T, Column kMode>
__global__ void column_partials(T* __restrict__ e, const T* __restrict__ g, const double* __restrict__ m,
                                int64_t vocab, int64_t rows_per_segment, int tb, int nb,
                                double* __restrict__ partial) {
  const int t = blockIdx.x * kThreads + threadIdx.x;
  if (t >= nb) return;
  const int64_t v0 = int64_t(blockIdx.y) * rows_per_segment;
  const int64_t v1 = min(vocab, v0 + rows_per_segment);
  double r = kMode == Column::max ? kNegativeInfinity : 0.0;
  const T mt = kMode == Column::exp_sum ? T(m[t]) : T(0);
  for (int64_t v = v0; v < v1; ++v) {
    T* p = e + v * tb + t;
    if constexpr (kMode == Column::max) {
      r = fmax(r, double(*p));
    } else if constexpr (kMode == Column::exp_sum) {
      const T x = exp_t(*p - mt);  // <= 1: no overflow whatever the logits
      *p = x;
      r += double(x);
    } else {
      r += double(*p * g[v * tb + t]);
    }
  }
  partial[int64_t(blockIdx.y) * tb + t] = r;
}

// Per token t < nb, the segments' partials in segment order:
//   max      m[t] = max
//   exp_sum  l[t] = sum, coef[t] = token_weights[t] / l[t]
//   dot      s[t] = sum / l[t]
template <class T, Column kMode>
__global__ void column_totals(const double* __restrict__ partial, int segments, int tb, int nb,
                              const T* __restrict__ token_weights, double* __restrict__ m,
                              double* __restrict__ l, double* __restrict__ coef, double* __restrict__ s) {
  const int t = blockIdx.x * kThreads + threadIdx.x;
  if (t >= nb) return;
  double r = kMode == Column::max ? kNegativeInfinity : 0.0;
  for (int seg = 0; seg < segments; ++seg) {
    const double x = partial[int64_t(seg) * tb + t];
    r = kMode == Column::max ? fmax(r, x) : r + x;
  }
  if constexpr (kMode == Column::max) {
    m[t] = r;
  } else if constexpr (kMode == Column::exp_sum) {
    l[t] = r;
    coef[t] = double(token_weights[t]) / r;
  } else {
    s[t] = r / l[t];
  }
}

// g[v, t] = coef[t] e[v, t] (g[v, t] - s[t]) = u_j for t < nb, one warp per row v; the row's sum
// (lane-strided, then a fixed shuffle tree) is added to dc_acc[v] when dc_acc is given.
template <class T>
__global__ void form_u(const T* __restrict__ e, T* __restrict__ g, const double* __restrict__ coef,
                       const double* __restrict__ s, int64_t vocab, int tb, int nb, double* __restrict__ dc_acc) {
  const int lane = threadIdx.x % 32;
  const int64_t v = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  if (v >= vocab) return;  // the whole warp leaves together
  double sum = 0.0;
  for (int t = lane; t < nb; t += 32) {
    const int64_t at = v * tb + t;
    const T u = T(coef[t]) * e[at] * (g[at] - T(s[t]));
    g[at] = u;
    sum += double(u);
  }
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0 && dc_acc != nullptr) dc_acc[v] += sum;
}

// out[i] = sum over slices z of part[z * count + i], in slice order.
template <class T>
__global__ void sum_slices(const double* __restrict__ part, int slices, int64_t count, T* __restrict__ out) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= count) return;
  double r = 0.0;
  for (int z = 0; z < slices; ++z) r += part[z * count + i];
  out[i] = T(r);
}

// out[i] = T(acc[i]) (float64 accumulator), or out[i] -= low[i] (compensation folded in).
template <class T, class A>
__global__ void to_output(const A* __restrict__ acc, int64_t count, T* __restrict__ out) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= count) return;
  if constexpr (std::is_same_v<A, double>)
    out[i] = T(acc[i]);
  else
    out[i] -= acc[i];
}

// ---- host side ---------------------------------------------------------------------------------

unsigned grid_for(int64_t count, int64_t per_block) { return unsigned((count + per_block - 1) / per_block); }

template <class T>
class Engine {
 public:
  Engine(const HeadProblem& p, cudaStream_t stream)
      : p_(p),
        stream_(stream),
        T_(p.tokens),
        V_(p.vocab),
        d_(p.dim),
        tb_(block_tokens(p)),
        segments_(std::min<int64_t>((V_ + kColumnRows - 1) / kColumnRows, 4096)),
        rows_per_segment_((V_ + segments_ - 1) / segments_),
        h_(cast(p.h)),
        w_(cast(p.w)),
        e_(V_ * tb_, stream, kWhat),
        g_(V_ * tb_, stream, kWhat),
        partial_(segments_ * tb_, stream, kWhat),
        stats_(4 * tb_, stream, kWhat),
        dh_part_(p.out_dh ? slices() * tb_ * d_ : 0, stream, kWhat),
        dw_low_(p.out_dw && !kInPlace ? p.vectors * V_ * d_ : 0, stream, kWhat),
        own_dc_(p.out_dbias && !kInPlace ? p.vectors * V_ : 0, stream, kWhat) {
    dc_acc_ = kInPlace ? static_cast<double*>(p.out_dbias) : own_dc_.get();
  }

  void run() {
    const size_t dw_bytes = sizeof(T) * p_.vectors * V_ * d_;
    if (p_.out_dw) INFOLENS_CUDA_CHECK(cudaMemsetAsync(p_.out_dw, 0, dw_bytes, stream_));
    if (dw_low_.get()) INFOLENS_CUDA_CHECK(cudaMemsetAsync(dw_low_.get(), 0, dw_bytes, stream_));
    if (dc_acc_) INFOLENS_CUDA_CHECK(cudaMemsetAsync(dc_acc_, 0, sizeof(double) * p_.vectors * V_, stream_));
    for (int64_t t0 = 0; t0 < T_; t0 += tb_) block(t0, int(std::min<int64_t>(tb_, T_ - t0)));
    if constexpr (!kInPlace) {
      if (p_.out_dw) {
        const int64_t n = p_.vectors * V_ * d_;
        T* out = static_cast<T*>(p_.out_dw);
        to_output<T, T><<<grid_for(n, kThreads), kThreads, 0, stream_>>>(dw_low_.get(), n, out);
        INFOLENS_CUDA_CHECK(cudaGetLastError());
      }
      if (p_.out_dbias) {
        const int64_t n = p_.vectors * V_;
        T* out = static_cast<T*>(p_.out_dbias);
        to_output<T, double><<<grid_for(n, kThreads), kThreads, 0, stream_>>>(dc_acc_, n, out);
        INFOLENS_CUDA_CHECK(cudaGetLastError());
      }
    }
  }

 private:
  static constexpr bool kInPlace = std::is_same_v<T, double>;  // float64 outputs are the accumulators
  static constexpr const char* kWhat = "softmax_ce_ggn";

  static const T* cast(const void* p) { return static_cast<const T*>(p); }

  static int64_t block_tokens(const HeadProblem& p) {
    const int64_t fit = kSlabBytes / (2 * p.vocab * int64_t(sizeof(T))) / 32 * 32;
    return std::min(std::clamp<int64_t>(fit, 32, kMaxBlock), p.tokens);
  }

  // Splits of the vocabulary for out_dh: about kSliceRows each, at most kMaxSlices, whole BK slices.
  int64_t slice_tiles() const {
    constexpr int64_t bk = GemmTile<T>::type::BK;
    const int64_t want = std::min<int64_t>(kMaxSlices, (V_ + kSliceRows - 1) / kSliceRows);
    const int64_t rows = (V_ + want - 1) / want;
    return (rows + bk - 1) / bk;
  }
  int64_t slices() const {
    const int64_t tiles = (V_ + GemmTile<T>::type::BK - 1) / GemmTile<T>::type::BK;
    return (tiles + slice_tiles() - 1) / slice_tiles();
  }

  double* m() const { return stats_.get(); }
  double* l() const { return stats_.get() + tb_; }
  double* coef() const { return stats_.get() + 2 * tb_; }
  double* s() const { return stats_.get() + 3 * tb_; }

  template <Column kMode>
  void columns(int nb, const T* token_weights) {
    const dim3 grid(grid_for(nb, kThreads), unsigned(segments_));
    column_partials<T, kMode><<<grid, kThreads, 0, stream_>>>(e_.get(), g_.get(), m(), V_, rows_per_segment_,
                                                               int(tb_), nb, partial_.get());
    INFOLENS_CUDA_CHECK(cudaGetLastError());
    column_totals<T, kMode><<<grid_for(nb, kThreads), kThreads, 0, stream_>>>(
        partial_.get(), int(segments_), int(tb_), nb, token_weights, m(), l(), coef(), s());
    INFOLENS_CUDA_CHECK(cudaGetLastError());
  }

  void block(int64_t t0, int nb) {
    const T* hb = h_ + t0 * d_;  // the block's rows of h
    const Operand<T> w_rows{w_, d_, 1}, h_cols{hb, d_, 1};
    GemmArgs<T> z{};
    z.a[0] = w_rows, z.b[0] = h_cols, z.k[0] = int(d_);
    z.m = int(V_), z.n = nb, z.out = e_.get(), z.row_offset = cast(p_.bias), z.ld = tb_;
    gemm<T, true, true, Epilogue::store>(z, 1, stream_);
    columns<Column::max>(nb, nullptr);
    columns<Column::exp_sum>(nb, cast(p_.token_weights) + t0);
    for (int64_t j = 0; j < p_.vectors; ++j) vector(j, t0, nb);
  }

  void vector(int64_t j, int64_t t0, int nb) {
    const T* hb = h_ + t0 * d_;
    // 3. G = W dh_j^T + dW_j h^T + dc_j: the pairs that exist, as one product.
    GemmArgs<T> tg{};
    int q = 0;
    if (p_.dh) tg.a[q] = {w_, d_, 1}, tg.b[q] = {cast(p_.dh) + (j * T_ + t0) * d_, d_, 1}, tg.k[q++] = int(d_);
    if (p_.dw) tg.a[q] = {cast(p_.dw) + j * V_ * d_, d_, 1}, tg.b[q] = {hb, d_, 1}, tg.k[q++] = int(d_);
    tg.m = int(V_), tg.n = nb, tg.out = g_.get(), tg.ld = tb_;
    tg.row_offset = p_.dbias ? cast(p_.dbias) + j * V_ : nullptr;
    gemm<T, true, true, Epilogue::store>(tg, 1, stream_);
    columns<Column::dot>(nb, nullptr);

    // 4. u in place, out_dc_j, out_dW_j += u^T h.
    form_u<T><<<grid_for(V_, kThreads / 32), kThreads, 0, stream_>>>(e_.get(), g_.get(), coef(), s(), V_, int(tb_),
                                                                      nb, dc_acc_ ? dc_acc_ + j * V_ : nullptr);
    INFOLENS_CUDA_CHECK(cudaGetLastError());
    if (p_.out_dw) {
      GemmArgs<T> dw{};
      dw.a[0] = {g_.get(), tb_, 1}, dw.b[0] = {hb, 1, d_}, dw.k[0] = nb;  // A(v, t) = u[v, t], B(t, k) = h[t, k]
      dw.m = int(V_), dw.n = int(d_), dw.ld = d_;
      dw.out = static_cast<T*>(p_.out_dw) + j * V_ * d_;
      dw.comp = dw_low_.get() ? dw_low_.get() + j * V_ * d_ : nullptr;
      gemm<T, true, false, Epilogue::accumulate>(dw, 1, stream_);
    }

    // 5. out_dh_j rows t0 .. t0 + nb = u^T W, split over the vocabulary.
    if (p_.out_dh) {
      GemmArgs<T> dh{};
      dh.a[0] = {g_.get(), 1, tb_}, dh.b[0] = {w_, 1, d_}, dh.k[0] = int(V_);  // A(t, v) = u[v, t], B(v, k) = W
      dh.m = nb, dh.n = int(d_), dh.acc = dh_part_.get(), dh.ld = d_, dh.slice_stride = nb * d_;
      dh.slice_tiles = int(slice_tiles());
      gemm<T, false, false, Epilogue::partial>(dh, int(slices()), stream_);
      const int64_t count = nb * d_;
      sum_slices<T><<<grid_for(count, kThreads), kThreads, 0, stream_>>>(
          dh_part_.get(), int(slices()), count, static_cast<T*>(p_.out_dh) + (j * T_ + t0) * d_);
      INFOLENS_CUDA_CHECK(cudaGetLastError());
    }
  }

  const HeadProblem p_;
  cudaStream_t stream_;
  const int64_t T_, V_, d_, tb_, segments_, rows_per_segment_;
  const T *h_, *w_;
  Workspace<T> e_, g_;        // slabs [V, tb]: exp(z - m); dz_j, then u_j
  Workspace<double> partial_;  // column partials [segments, tb]
  Workspace<double> stats_;    // m, l, coef, s [tb] each
  Workspace<double> dh_part_;  // out_dh split partials [slices, nb, d]
  Workspace<T> dw_low_;       // [b, V, d] float32 only: out_dW's Kahan compensation
  Workspace<double> own_dc_;
  double* dc_acc_ = nullptr;  // [b, V]: out_dbias itself for float64
};

}  // namespace

void softmax_ce_ggn(const HeadProblem& p, cudaStream_t stream, int device) {
  DeviceGuard guard(device);
  (void)cudaGetLastError();  // a stale error of someone else's must not be reported as ours
  if (p.dtype == Dtype::float32)
    Engine<float>(p, stream).run();
  else
    Engine<double>(p, stream).run();
}

}  // namespace infolens::cuda::curvature
