// The softmax cross-entropy head's GGN product (softmax_ce_ggn.hpp), fused over vocabulary tiles.
//
// Tiling. Tokens go in blocks of Tb (at most 256; fewer when V is large, so that the two slabs
// below stay near 64 MiB). For one block, all threads sweep the vocabulary in strips of 64 rows:
//   1. logits   E[v, t] = W_v . h_t + c_v into a [V, Tb] slab, and each strip's max per token;
//   2.          E = exp(E - m_t) with m_t the max over all strips, and each strip's sum per token:
//               l_t = sum_v exp(z - m_t), so lse_t = m_t + log l_t without overflow;
//   then for each vector j, reusing E:
//   3. tangent  G[v, t] = W_v . dh_jt + dW_jv . h_t + dc_jv into a second slab, and each strip's
//               sum of E * G per token: s_tj = p_t . dz_tj;
//   4. pullback G = (w_t / l_t) E (G - s_tj) = u_j, in place; out_dc_j += sum_t u_j and
//               out_dW_j += u_j^T h for the strip's rows;
//   5.          out_dh_j = u_j W for the block's tokens, as W^T u over chunks of 256 rows of the
//               vocabulary, the rows of W^T (columns of out_dh) split among the threads.
// So the logits and each tangent are formed once (the floating-point work of the eager path:
// one logits product and, per vector, two tangent products and two pullback products), and
// besides the inputs and outputs only the two slabs, a copy of W^T (for step 5) and the
// accumulators below are held: never the [b, T, V] tangent nor all of p.
// Every product is the register-blocked micro-tile of common/micro.hpp: R rows of a row-major
// operand broadcast against PW columns of a packed panel ([d, Tb] copies of h^T and dh_j^T, the
// block of h padded to PW columns, W^T padded, or the slab itself).
//
// Accuracy. Products and elementwise work are in the input dtype (float32 stays float32: speed).
// Every sum that grows with V or T leaves the input dtype after a bounded partial: strip sums of
// the softmax normaliser and of s (64 terms) and out_dh per vocabulary chunk (256 terms) go into
// float64, out_dc per token block (Tb terms) into a float64 accumulator across blocks. out_dW's
// block partials are added into the output with compensated (Kahan) summation, the rounding
// error carried in a second float32 array: as accurate as a float64 accumulator across blocks,
// at half its memory (out_dW is the largest array here). The max is exact.
//
// Determinism. Strips, chunks and token blocks have fixed sizes that depend on T, V and the dtype
// alone; per-strip partials are stored and combined in strip order; every output element is
// written by one task per step. So results are identical at any thread count.
//
// CMakeLists.txt compiles this file (with kernel/matrix.cpp) with FMA contraction: the products
// carry no exact comparisons.

#include "curvature/softmax_ce_ggn.hpp"

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common/aligned.hpp"
#include "common/micro.hpp"
#include "common/parallel.hpp"
#include "common/simd.hpp"

namespace infolens::curvature {
namespace {

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

template <class T>
class Engine {
    using V = typename Simd<T>::V;
    static constexpr int W = Simd<T>::W;
    static constexpr int R = kVectorBytes == 64 ? 8 : 4;  // rows per micro-tile
    static constexpr int C = 2;                           // vectors per micro-tile row
    static constexpr int PW = C * W;                      // columns per micro-tile
    static constexpr int64_t kStrip = 64;                 // vocabulary rows per task (multiple of R)
    static constexpr int64_t kChunk = 256;                // vocabulary rows per float64 flush of out_dh
    static constexpr int64_t kMaxBlock = 256;             // tokens per block, at most
    static constexpr int64_t kSlabBytes = int64_t(64) << 20;
    static constexpr bool kFloat64 = std::is_same_v<T, double>;  // accumulators are the outputs

public:
    Engine(const HeadProblem& p, int nt)
        : T_(p.tokens), V_(p.vocab), d_(p.dim), b_(p.vectors), nt_(nt),
          h_(cast(p.h)), w_(cast(p.w)), bias_(cast(p.bias)), tw_(cast(p.token_weights)), dh_(cast(p.dh)),
          dw_(cast(p.dw)), dbias_(cast(p.dbias)), out_dh_(static_cast<T*>(p.out_dh)),
          out_dw_(static_cast<T*>(p.out_dw)), out_dbias_(static_cast<T*>(p.out_dbias)) {
        vpad_ = round_up(V_, R);
        dpad_ = round_up(d_, std::max(PW, R));
        strips_ = (V_ + kStrip - 1) / kStrip;
        const int64_t fit = kSlabBytes / (2 * vpad_ * int64_t(sizeof(T))) / PW * PW;
        tb_ = std::min(std::clamp<int64_t>(fit, PW, kMaxBlock), round_up(T_, PW));
        e_.assign(vpad_ * tb_, T(0));
        g_.assign(vpad_ * tb_, T(0));
        ht_.assign(d_ * tb_, T(0));
        if (dh_) dht_.assign(d_ * tb_, T(0));
        if (out_dw_) hrows_.assign(tb_ * dpad_, T(0));
        if (out_dh_) {
            wt_.assign(dpad_ * vpad_, T(0));
            dh_acc_.reset(new double[dpad_ * tb_]);
        }
        strip_max_.assign(strips_ * tb_, T(0));
        strip_sum_.assign(strips_ * tb_, 0.0);
        m_.assign(tb_, T(0));
        s_.assign(tb_, T(0));
        coef_.assign(tb_, T(0));
        l_.assign(tb_, 0.0);
        scratch_.assign(nt_, aligned_vector<T>(2 * R * d_));
        if constexpr (kFloat64) {
            dc_acc_ = out_dbias_;
        } else {
            if (out_dw_) dw_low_.reset(new T[b_ * V_ * d_]);
            if (out_dbias_) own_dc_.reset(new double[b_ * V_]);
            dc_acc_ = own_dc_.get();
        }
    }

    void run() {
#pragma omp parallel num_threads(nt_)
        {
            prepare();
            for (int64_t t0 = 0; t0 < T_; t0 += tb_) block(t0);
            finish();
        }
    }

private:
    static const T* cast(const void* p) { return static_cast<const T*>(p); }

    // W^T for step 5, and zeroed accumulators.
    void prepare() {
        if (out_dh_) {
            constexpr int64_t kTile = 64;  // transposed in cache-sized squares
            const int64_t vt = (V_ + kTile - 1) / kTile, kt = (d_ + kTile - 1) / kTile;
#pragma omp for schedule(dynamic, 1)
            for (int64_t q = 0; q < vt * kt; ++q) {
                const int64_t v0 = q / kt * kTile, k0 = q % kt * kTile;
                for (int64_t v = v0; v < std::min(V_, v0 + kTile); ++v)
                    for (int64_t k = k0; k < std::min(d_, k0 + kTile); ++k) wt_[k * vpad_ + v] = w_[v * d_ + k];
            }
        }
        if (out_dw_) {
#pragma omp for schedule(static)
            for (int64_t i = 0; i < b_ * V_; ++i) {
                std::fill(out_dw_ + i * d_, out_dw_ + (i + 1) * d_, T(0));
                if (dw_low_) std::fill(&dw_low_[i * d_], &dw_low_[(i + 1) * d_], T(0));
            }
        }
        if (dc_acc_) {
#pragma omp for schedule(static)
            for (int64_t i = 0; i < b_ * V_; ++i) dc_acc_[i] = 0;
        }
    }

    // Steps 1-5 for the tokens t0 .. t0 + nb - 1. Called by every thread of the team.
    void block(int64_t t0) {
#pragma omp single
        {
            t0_ = t0;
            nb_ = std::min(tb_, T_ - t0);
            tn_ = round_up(nb_, PW);
            pack_columns(h_ + t0 * d_, ht_.data());
            if (out_dw_)
                for (int64_t t = 0; t < nb_; ++t)
                    std::copy(h_ + (t0 + t) * d_, h_ + (t0 + t + 1) * d_, &hrows_[t * dpad_]);
        }
        logits();
#pragma omp single
        for (int64_t c = 0; c < tn_; ++c) {
            T m = strip_max_[c];
            for (int64_t s = 1; s < strips_; ++s) m = std::max(m, strip_max_[s * tb_ + c]);
            m_[c] = m;
        }
        exponentials();
#pragma omp single
        for (int64_t c = 0; c < tn_; ++c) {
            l_[c] = strip_total(c);
            coef_[c] = c < nb_ ? T(double(tw_[t0 + c]) / l_[c]) : T(0);  // padding tokens weigh 0
        }
        for (int64_t j = 0; j < b_; ++j) {
#pragma omp single
            if (dh_) pack_columns(dh_ + (j * T_ + t0) * d_, dht_.data());
            tangent(j);
#pragma omp single
            for (int64_t c = 0; c < tn_; ++c) s_[c] = T(strip_total(c) / l_[c]);
            pullback(j);
            if (out_dh_) input_pullback(j);
        }
    }

    // dst[k * tb + t] = src[t * d + k] for the block's tokens; zero for the padding up to tn.
    void pack_columns(const T* src, T* dst) const {
        for (int64_t k = 0; k < d_; ++k) {
            for (int64_t t = 0; t < nb_; ++t) dst[k * tb_ + t] = src[t * d_ + k];
            std::fill(dst + k * tb_ + nb_, dst + k * tb_ + tn_, T(0));
        }
    }

    double strip_total(int64_t c) const {
        double total = 0;
        for (int64_t s = 0; s < strips_; ++s) total += strip_sum_[s * tb_ + c];
        return total;
    }

    // Rows r0 .. r0 + rows - 1 of a row-major [*, d] matrix as R full rows: in place when all R
    // exist, else copied into zero-padded scratch (the vocabulary's last micro-tile).
    const T* rows_of(const T* a, int64_t r0, int64_t rows, T* scratch) const {
        if (rows == R) return a + r0 * d_;
        std::fill(scratch, scratch + R * d_, T(0));
        std::copy(a + r0 * d_, a + (r0 + rows) * d_, scratch);
        return scratch;
    }

    static constexpr auto madd = [](V a, V q, V x) { return V(a + q * x); };

    // slab[(r0 + r) * tb + c0 ..] = acc[r] + offset[r0 + r] (offset may be null), valid rows only.
    void store(const V (&acc)[R][C], int64_t rows, int64_t r0, int64_t c0, T* slab, const T* offset) const {
        for (int64_t r = 0; r < rows; ++r) {
            const V add = V{} + (offset ? offset[r0 + r] : T(0));
            for (int c = 0; c < C; ++c) vstore(slab + (r0 + r) * tb_ + c0 + c * W, V(acc[r][c] + add));
        }
    }

    // dst[l] += acc[l] for l < n, in float64.
    static void flush(const V& acc, double* dst, int64_t n) {
        if (n >= W) {
            for (int l = 0; l < W; ++l) dst[l] += double(acc[l]);
        } else {
            for (int64_t l = 0; l < n; ++l) dst[l] += double(acc[l]);
        }
    }

    // hi[l] += x[l] for l < n; with low (float32) compensated: low carries minus the rounding
    // error of hi (Kahan), so hi - low is the sum to about the float64 accuracy.
    static void compensated_add(const V& x, T* hi, T* low, int64_t n) {
        if (!low) {
            if (n >= W)
                vstore(hi, V(vload<V>(hi) + x));
            else
                for (int64_t l = 0; l < n; ++l) hi[l] += x[l];
            return;
        }
        auto step = [](auto x, auto& h, auto& c) {  // no products: nothing to contract into an FMA
            const auto y = x - c, t = h + y;
            c = (t - h) - y;
            h = t;
        };
        if (n >= W) {
            V h = vload<V>(hi), c = vload<V>(low);
            step(x, h, c);
            vstore(hi, h);
            vstore(low, c);
        } else {
            for (int64_t l = 0; l < n; ++l) step(x[l], hi[l], low[l]);
        }
    }

    template <class F>
    void for_each_strip(const F& f) {
#pragma omp for schedule(dynamic, 1)
        for (int64_t s = 0; s < strips_; ++s)
            f(s, s * kStrip, std::min(V_, (s + 1) * kStrip), scratch_[thread_id()].data());
    }

    // Step 1: E = W h^T + c over the strip, and the strip's max per token.
    void logits() {
        for_each_strip([&](int64_t s, int64_t v0, int64_t v1, T* scratch) {
            for (int64_t r0 = v0; r0 < v1; r0 += R) {
                const T* a = rows_of(w_, r0, std::min<int64_t>(R, v1 - r0), scratch);
                for (int64_t c0 = 0; c0 < tn_; c0 += PW) {
                    V acc[R][C] = {};
                    micro_tile(a, d_, &ht_[c0], tb_, d_, acc, madd);
                    store(acc, std::min<int64_t>(R, v1 - r0), r0, c0, e_.data(), bias_);
                }
            }
            for (int64_t c = 0; c < tn_; c += W) {
                V m = vload<V>(&e_[v0 * tb_ + c]);
                for (int64_t v = v0 + 1; v < v1; ++v) m = vmax(m, vload<V>(&e_[v * tb_ + c]));
                vstore(&strip_max_[s * tb_ + c], m);
            }
        });
    }

    // Column sums over the strip's rows of f(v, c) (a vector of tokens c .. c + W - 1), in float,
    // then into strip_sum_ as float64.
    template <class F>
    void strip_sums(int64_t s, int64_t v0, int64_t v1, const F& f) {
        V sums[kMaxBlock / W] = {};
        for (int64_t v = v0; v < v1; ++v)
            for (int64_t c = 0; c < tn_; c += W) sums[c / W] += f(v, c);
        for (int64_t c = 0; c < tn_; c += W)
            for (int l = 0; l < W; ++l) strip_sum_[s * tb_ + c + l] = double(sums[c / W][l]);
    }

    // Step 2: E = exp(E - m) and the strip's sum of it per token. vexp gives 0 below its underflow
    // bound; arguments far below it (logits spread over thousands) are raised to kExpFloor first,
    // still below the bound, so its exponent arithmetic stays in range.
    void exponentials() {
        const V kExpFloor = V{} + T(std::is_same_v<T, float> ? -100.0 : -1000.0);
        for_each_strip([&](int64_t s, int64_t v0, int64_t v1, T*) {
            strip_sums(s, v0, v1, [&](int64_t v, int64_t c) {
                const V e = vexp(vmax(V(vload<V>(&e_[v * tb_ + c]) - vload<V>(&m_[c])), kExpFloor));
                vstore(&e_[v * tb_ + c], e);
                return e;
            });
        });
    }

    // Step 3: G = W dh_j^T + dW_j h^T + dc_j and the strip's sum of E * G per token.
    void tangent(int64_t j) {
        const T* dw = dw_ ? dw_ + j * V_ * d_ : nullptr;
        const T* dc = dbias_ ? dbias_ + j * V_ : nullptr;
        for_each_strip([&](int64_t s, int64_t v0, int64_t v1, T* scratch) {
            for (int64_t r0 = v0; r0 < v1; r0 += R) {
                const int64_t rows = std::min<int64_t>(R, v1 - r0);
                const T* a = dh_ ? rows_of(w_, r0, rows, scratch) : nullptr;
                const T* da = dw ? rows_of(dw, r0, rows, scratch + R * d_) : nullptr;
                for (int64_t c0 = 0; c0 < tn_; c0 += PW) {
                    V acc[R][C] = {};
                    if (a) micro_tile(a, d_, &dht_[c0], tb_, d_, acc, madd);
                    if (da) micro_tile(da, d_, &ht_[c0], tb_, d_, acc, madd);
                    store(acc, rows, r0, c0, g_.data(), dc);
                }
            }
            strip_sums(s, v0, v1, [&](int64_t v, int64_t c) {
                return V(vload<V>(&e_[v * tb_ + c]) * vload<V>(&g_[v * tb_ + c]));
            });
        });
    }

    // Step 4: u = (w_t / l_t) E (G - s) in place; out_dc_j and out_dW_j of the strip's rows.
    void pullback(int64_t j) {
        for_each_strip([&](int64_t, int64_t v0, int64_t v1, T*) {
            for (int64_t v = v0; v < v1; ++v) {
                V sum{};
                for (int64_t c = 0; c < tn_; c += W) {
                    T* g = &g_[v * tb_ + c];
                    const V u = vload<V>(&coef_[c]) * vload<V>(&e_[v * tb_ + c]) * (vload<V>(g) - vload<V>(&s_[c]));
                    vstore(g, u);
                    sum += u;
                }
                if (dc_acc_) {
                    double total = 0;
                    for (int l = 0; l < W; ++l) total += double(sum[l]);
                    dc_acc_[j * V_ + v] += total;
                }
            }
            if (!out_dw_) return;
            for (int64_t r0 = v0; r0 < v1; r0 += R) {
                const int64_t rows = std::min<int64_t>(R, v1 - r0);  // the slab's padding rows are 0
                for (int64_t k0 = 0; k0 < d_; k0 += PW) {
                    V acc[R][C] = {};
                    micro_tile(&g_[r0 * tb_], tb_, &hrows_[k0], dpad_, nb_, acc, madd);
                    for (int64_t r = 0; r < rows; ++r)
                        for (int c = 0; c < C; ++c) {
                            const int64_t at = (j * V_ + r0 + r) * d_ + k0 + c * W;
                            compensated_add(acc[r][c], out_dw_ + at, dw_low_ ? &dw_low_[at] : nullptr, d_ - k0 - c * W);
                        }
                }
            }
        });
    }

    // Step 5: out_dh_j = u W for the block's tokens, as W^T u accumulated in float64 per chunk of
    // the vocabulary. A task owns a group of rows of W^T and sweeps the chunks, so each chunk of
    // the slab is reused from cache across the group and no barrier is needed between chunks;
    // a row's partial sums arrive in chunk order whatever the grouping, which may follow nt.
    void input_pullback(int64_t j) {
        double* acc64 = dh_acc_.get();
        const int64_t row_blocks = dpad_ / R, per_task = std::max<int64_t>(1, row_blocks / (4 * nt_));
#pragma omp for schedule(dynamic, 1)
        for (int64_t g0 = 0; g0 < row_blocks; g0 += per_task) {
            const int64_t k_begin = g0 * R, k_end = std::min(row_blocks, g0 + per_task) * R;
            for (int64_t k = k_begin; k < k_end; ++k) std::fill(acc64 + k * tb_, acc64 + k * tb_ + tn_, 0.0);
            for (int64_t v0 = 0; v0 < V_; v0 += kChunk) {
                const int64_t rows = std::min(kChunk, V_ - v0);
                for (int64_t k0 = k_begin; k0 < k_end; k0 += R)
                    for (int64_t c0 = 0; c0 < tn_; c0 += PW) {
                        V acc[R][C] = {};
                        micro_tile(&wt_[k0 * vpad_ + v0], vpad_, &g_[v0 * tb_ + c0], tb_, rows, acc, madd);
                        for (int r = 0; r < R; ++r)
                            for (int c = 0; c < C; ++c) flush(acc[r][c], acc64 + (k0 + r) * tb_ + c0 + c * W, W);
                    }
            }
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < nb_; ++t)
            for (int64_t k = 0; k < d_; ++k) out_dh_[(j * T_ + t0_ + t) * d_ + k] = T(acc64[k * tb_ + t]);
    }

    // The accumulators into float32 outputs: out_dW's compensation folded in, out_dc rounded.
    void finish() {
        if constexpr (!kFloat64) {
            if (out_dw_) {
#pragma omp for schedule(static)
                for (int64_t i = 0; i < b_ * V_; ++i)
                    for (int64_t k = 0; k < d_; ++k) out_dw_[i * d_ + k] -= dw_low_[i * d_ + k];
            }
            if (out_dbias_) {
#pragma omp for schedule(static)
                for (int64_t i = 0; i < b_ * V_; ++i) out_dbias_[i] = T(dc_acc_[i]);
            }
        }
    }

    const int64_t T_, V_, d_, b_;
    const int nt_;
    const T *h_, *w_, *bias_, *tw_, *dh_, *dw_, *dbias_;
    T *out_dh_, *out_dw_, *out_dbias_;
    int64_t vpad_, dpad_, strips_, tb_;
    int64_t t0_ = 0, nb_ = 0, tn_ = 0;  // the current block: first token, tokens, padded to PW

    aligned_vector<T> e_, g_;             // slabs [vpad, tb]: exp(z - m); dz_j, then u_j
    aligned_vector<T> ht_, dht_;          // h^T and dh_j^T of the block [d, tb]
    aligned_vector<T> hrows_;             // h of the block [tb, dpad]
    aligned_vector<T> wt_;                // W^T [dpad, vpad]
    aligned_vector<T> strip_max_;         // [strips, tb]
    std::vector<double> strip_sum_;       // [strips, tb]
    aligned_vector<T> m_, s_, coef_;      // per token of the block: max, s_tj, w_t / l_t
    std::vector<double> l_;               // per token: sum_v exp(z - m)
    std::vector<aligned_vector<T>> scratch_;  // per thread: 2 x R rows of d
    std::unique_ptr<double[]> dh_acc_;    // [dpad, tb]
    std::unique_ptr<T[]> dw_low_;         // [b, V, d] float32 only: out_dW's Kahan compensation
    std::unique_ptr<double[]> own_dc_;
    double* dc_acc_ = nullptr;            // [b, V]: out_dbias itself for float64
};

}  // namespace

void softmax_ce_ggn(const HeadProblem& p, int threads) {
    if (p.tokens < 1) throw std::invalid_argument("h must have at least one row (T >= 1)");
    if (p.dim < 1) throw std::invalid_argument("h must have at least one column (d >= 1)");
    if (p.vocab < 1) throw std::invalid_argument("w must have at least one row (V >= 1)");
    if (p.vectors < 1) throw std::invalid_argument("the tangents must hold at least one vector (b >= 1)");
    if (!p.h || !p.w || !p.token_weights) throw std::invalid_argument("h, w and token_weights are required");
    if (!p.dh && !p.dw && !p.dbias) throw std::invalid_argument("at least one of dh, dw, dbias must be given");
    if (!p.out_dh && !p.out_dw && !p.out_dbias)
        throw std::invalid_argument("at least one of out_dh, out_dw, out_dbias must be given");
    // No more threads than the work can keep busy: a barrier costs microseconds, and a small
    // problem would spend its time in them (results do not depend on the team size).
    const double flops = 2.0 * double(p.tokens) * double(p.vocab) * double(p.dim) * double(1 + 4 * p.vectors);
    const int nt = int(std::clamp<double>(flops / double(1 << 22), 1.0, double(team_size(threads))));
    if (p.dtype == Dtype::float32)
        Engine<float>(p, nt).run();
    else
        Engine<double>(p, nt).run();
}

}  // namespace infolens::curvature
