// Brute force over all pairs: the engine for higher dimensions, where trees stop pruning.
//
// Keys come from a register-blocked micro-kernel: R query rows x PW point columns of SIMD
// accumulators, the points packed into panels (PW columns, coordinate-major) so each coordinate
// costs C vector loads and R broadcasts for R*C vector updates. A per-row k-th key threshold
// filters the micro-tile with a few compares; only candidates take the scalar path.
//
// The self-join computes every unordered pair once: block pair (I, J) updates the rows of both
// I and J. Blocks are scheduled in rounds of a round-robin tournament, so the tiles of one round
// touch disjoint rows and run in parallel without locks; the (key, index) order makes each
// k-best list independent of the order its candidates arrive in.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <new>
#include <vector>

#include "common/aligned.hpp"
#include "common/micro.hpp"
#include "common/parallel.hpp"
#include "common/simd.hpp"
#include "knn/metric.hpp"
#include "knn/topk.hpp"

namespace infolens::knn {

template <class T>
class Brute {
    using V = typename Simd<T>::V;
    using I = typename Simd<T>::I;
    using Lane = elem_t<I>;
    static constexpr int W = Simd<T>::W;
    static constexpr int C = 2;                          // vectors per micro-tile row
    static constexpr int PW = C * W;                     // point columns per panel
    static constexpr int R = kVectorBytes == 64 ? 8 : 4;  // query rows per micro-tile (registers)
    static constexpr int kPad = PW > R ? PW : R;         // rows and columns padded to this
    using Acc = V[R][C];

public:
    using value_type = T;

    Brute(const T* points, int64_t n, int64_t d)
        : n_(n), d_(d), npad_((n + kPad - 1) / kPad * kPad),
          rows_(npad_ * d, std::numeric_limits<T>::infinity()),
          panels_(npad_ * d, std::numeric_limits<T>::infinity()) {
        // Padding is +inf: its keys to real points are +inf, so it rarely even reaches the
        // candidate path, where indices >= n are rejected.
        std::copy(points, points + n * d, rows_.begin());
        for (int64_t j = 0; j < n; ++j)
            for (int64_t c = 0; c < d; ++c)
                panels_[(j / PW) * PW * d + c * PW + j % PW] = points[j * d + c];
    }

    template <class M>
    void knn(const M& m, int64_t k, T* out_keys, int64_t* out_idx, const T* queries, int64_t nq,
             int threads) const {
        if (queries)
            knn_queries(m, k, out_keys, out_idx, queries, nq, team_size(threads));
        else
            knn_self(m, k, out_keys, out_idx, team_size(threads));
    }

    template <class M, bool Strict>
    void count(const M& m, const T* radius, int64_t* out, const T* queries, int64_t nq,
               int threads) const {
        if (queries)
            count_queries<M, Strict>(m, radius, out, queries, nq, team_size(threads));
        else
            count_self<M, Strict>(m, radius, out, team_size(threads));
    }

private:
    // acc[r][v] lane l = key(row r, panel column v * W + l); rows: R rows of d (row-major).
    template <class M>
    static void micro(const M& m, const T* rows, const T* panel, int64_t d, Acc& acc) {
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
            for (int v = 0; v < C; ++v) acc[r][v] = V{};
        micro_tile(rows, d, panel, PW, d, acc,
                   [&m](V a, V q, V x) { return M::fold(a, m.term(V(q - x))); });
    }

    const T* panel(int64_t j0) const { return &panels_[j0 * d_]; }  // j0: a multiple of PW

    // Self-join block size: two blocks' points fit in L2, and the team gets enough blocks.
    int64_t block_rows(int nt) const {
        int64_t s = 1024;
        while (s > kPad && s * d_ * int64_t(sizeof(T)) > 128 * 1024) s /= 2;
        while (s > kPad && s * 4 * nt > npad_) s /= 2;
        return s;
    }

    // ---- kNN ---------------------------------------------------------------------------------

    template <class M>
    void knn_self(const M& m, int64_t k, T* keys, int64_t* idx, int nt) const {
        // thr[i]: row i's k-th key; -inf for padding, which must never pass as a row.
        std::vector<T> thr(npad_, -std::numeric_limits<T>::infinity());
        std::fill(thr.begin(), thr.begin() + n_, std::numeric_limits<T>::infinity());
        for (int64_t i = 0; i < n_; ++i) TopK<T>{keys + i * k, idx + i * k, k}.clear();
        const int64_t s = block_rows(nt);
        for_each_block_pair((npad_ + s - 1) / s, nt, [&](int64_t bi, int64_t bj) {
            const bool diag = bi == bj;
            const int64_t i_end = std::min(npad_, bi * s + s), j_end = std::min(npad_, bj * s + s);
            for (int64_t j0 = bj * s; j0 < j_end; j0 += PW) {
                V col_thr[C];
                for (int v = 0; v < C; ++v) col_thr[v] = vload<V>(&thr[j0 + v * W]);
                for (int64_t i0 = bi * s; i0 < i_end; i0 += R) {
                    if (diag && j0 + PW - 1 <= i0) continue;  // only pairs j > i on the diagonal
                    Acc acc;
                    micro(m, &rows_[i0 * d_], panel(j0), d_, acc);
                    I hit = I{};
                    for (int r = 0; r < R; ++r) {
                        const V row_thr = vbroadcast<V>(thr[i0 + r]);
                        for (int v = 0; v < C; ++v)
                            hit |= vless(acc[r][v], row_thr, true) | vless(acc[r][v], col_thr[v], true);
                    }
                    if (!vany(hit)) continue;
                    for (int r = 0; r < R; ++r)
                        for (int c = 0; c < PW; ++c) {
                            const int64_t i = i0 + r, j = j0 + c;
                            if (i >= n_ || j >= n_ || (diag && j <= i)) continue;
                            const T key = acc[r][c / W][c % W];
                            offer(key, i, j, k, keys, idx, thr.data());
                            offer(key, j, i, k, keys, idx, thr.data());
                        }
                    for (int v = 0; v < C; ++v) col_thr[v] = vload<V>(&thr[j0 + v * W]);
                }
            }
        });
    }

    // Offers point j at `key` to row i's k-best list, keeping thr[i] its k-th key.
    static void offer(T key, int64_t i, int64_t j, int64_t k, T* keys, int64_t* idx, T* thr) {
        if (key > thr[i]) return;
        const TopK<T> best{keys + i * k, idx + i * k, k};
        if (best.admits(key, j)) {
            best.insert(key, j);
            thr[i] = best.worst();
        }
    }

    static constexpr int64_t kQueryBlock = 256;

    // Copies queries [q0, q0 + rows) into a row-major block padded with +inf to a multiple of R.
    void load_queries(const T* queries, int64_t q0, int64_t rows, T* block) const {
        const int64_t padded = (rows + R - 1) / R * R;
        std::copy(queries + q0 * d_, queries + (q0 + rows) * d_, block);
        std::fill(block + rows * d_, block + padded * d_, std::numeric_limits<T>::infinity());
    }

    template <class M>
    void knn_queries(const M& m, int64_t k, T* keys, int64_t* idx, const T* queries, int64_t nq,
                     int nt) const {
        const int64_t nblocks = (nq + kQueryBlock - 1) / kQueryBlock;
        std::vector<T> scratch(size_t(nt) * kQueryBlock * (d_ + 1));
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (int64_t b = 0; b < nblocks; ++b) {
            const int64_t q0 = b * kQueryBlock, rows = std::min(kQueryBlock, nq - q0);
            T* block = scratch.data() + size_t(thread_id()) * kQueryBlock * (d_ + 1);
            T* thr = block + kQueryBlock * d_;
            load_queries(queries, q0, rows, block);
            std::fill(thr, thr + kQueryBlock, -std::numeric_limits<T>::infinity());
            std::fill(thr, thr + rows, std::numeric_limits<T>::infinity());
            T* bkeys = keys + q0 * k;
            int64_t* bidx = idx + q0 * k;
            for (int64_t i = 0; i < rows; ++i) TopK<T>{bkeys + i * k, bidx + i * k, k}.clear();
            for (int64_t j0 = 0; j0 < npad_; j0 += PW) {
                for (int64_t i0 = 0; i0 < rows; i0 += R) {
                    Acc acc;
                    micro(m, block + i0 * d_, panel(j0), d_, acc);
                    I hit = I{};
                    for (int r = 0; r < R; ++r) {
                        const V row_thr = vbroadcast<V>(thr[i0 + r]);
                        for (int v = 0; v < C; ++v) hit |= vless(acc[r][v], row_thr, true);
                    }
                    if (!vany(hit)) continue;
                    for (int r = 0; r < R && i0 + r < rows; ++r)
                        for (int c = 0; c < PW && j0 + c < n_; ++c)
                            offer(acc[r][c / W][c % W], i0 + r, j0 + c, k, bkeys, bidx, thr);
                }
            }
        }
    }

    // ---- counts ------------------------------------------------------------------------------

    template <bool Strict>
    static I passes(V key, V r) {
        return vless(key, r, !Strict);
    }

    static Lane lane_sum(I v) {
        Lane s = 0;
        for (int l = 0; l < W; ++l) s += v[l];
        return s;
    }

    // Lanes of vector v in a micro-tile at (i0 + r, j0) holding a pair to count: a real column
    // (j < n), and on the diagonal only j > i. Rows past n are skipped by the caller. Built lane
    // by lane: only boundary tiles need it, and 64-bit lane compares have no SSE2 instruction
    // (GCC 12 fails to compile them for the baseline target).
    I pair_mask(int64_t i0, int r, int64_t j0, int v, bool diag) const {
        I ok;
        for (int l = 0; l < W; ++l) {
            const int64_t j = j0 + v * W + l;
            ok[l] = j < n_ && (!diag || j > i0 + r) ? Lane(-1) : Lane(0);
        }
        return ok;
    }

    template <class M, bool Strict>
    void count_self(const M& m, const T* radius, int64_t* out, int nt) const {
        std::vector<T> rad(npad_, T(0));
        std::copy(radius, radius + n_, rad.begin());
        std::fill(out, out + n_, int64_t{0});
        const int64_t s = block_rows(nt);
        // Per thread: one lane-count vector per row of I and per W columns of J.
        std::vector<I, AlignedAllocator<I>> scratch(size_t(nt) * (s + s / W));
        for_each_block_pair((npad_ + s - 1) / s, nt, [&](int64_t bi, int64_t bj) {
            const bool diag = bi == bj;
            const int64_t i_begin = bi * s, i_end = std::min(npad_, i_begin + s);
            const int64_t j_begin = bj * s, j_end = std::min(npad_, j_begin + s);
            I* row_counts = scratch.data() + size_t(thread_id()) * (s + s / W);
            I* col_counts = row_counts + s;
            std::fill(row_counts, row_counts + s + s / W, I{});
            for (int64_t j0 = j_begin; j0 < j_end; j0 += PW) {
                V col_r[C];
                for (int v = 0; v < C; ++v) col_r[v] = vload<V>(&rad[j0 + v * W]);
                for (int64_t i0 = i_begin; i0 < i_end; i0 += R) {
                    if (diag && j0 + PW - 1 <= i0) continue;
                    Acc acc;
                    micro(m, &rows_[i0 * d_], panel(j0), d_, acc);
                    const bool masked = diag || j0 + PW > n_ || i0 + R > n_;
                    I col_sum[C] = {};
                    for (int r = 0; r < R; ++r) {
                        if (masked && i0 + r >= n_) break;
                        const V row_r = vbroadcast<V>(rad[i0 + r]);
                        I row_sum = I{};
                        for (int v = 0; v < C; ++v) {
                            I by_row = passes<Strict>(acc[r][v], row_r);
                            I by_col = passes<Strict>(acc[r][v], col_r[v]);
                            if (masked) {
                                const I ok = pair_mask(i0, r, j0, v, diag);
                                by_row &= ok;
                                by_col &= ok;
                            }
                            row_sum += by_row;
                            col_sum[v] += by_col;
                        }
                        row_counts[i0 - i_begin + r] -= row_sum;  // masks are -1 per hit
                    }
                    for (int v = 0; v < C; ++v) col_counts[(j0 - j_begin) / W + v] -= col_sum[v];
                }
            }
            for (int64_t i = i_begin; i < std::min(i_end, n_); ++i) out[i] += lane_sum(row_counts[i - i_begin]);
            for (int64_t j = j_begin; j < std::min(j_end, n_); ++j)
                out[j] += col_counts[(j - j_begin) / W][(j - j_begin) % W];
        });
    }

    template <class M, bool Strict>
    void count_queries(const M& m, const T* radius, int64_t* out, const T* queries, int64_t nq,
                       int nt) const {
        const int64_t nblocks = (nq + kQueryBlock - 1) / kQueryBlock;
        std::vector<T> scratch(size_t(nt) * kQueryBlock * d_);
        std::vector<I, AlignedAllocator<I>> counts(size_t(nt) * kQueryBlock);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (int64_t b = 0; b < nblocks; ++b) {
            const int64_t q0 = b * kQueryBlock, rows = std::min(kQueryBlock, nq - q0);
            T* block = scratch.data() + size_t(thread_id()) * kQueryBlock * d_;
            I* row_counts = counts.data() + size_t(thread_id()) * kQueryBlock;
            load_queries(queries, q0, rows, block);
            std::fill(row_counts, row_counts + kQueryBlock, I{});
            for (int64_t j0 = 0; j0 < npad_; j0 += PW) {
                const bool masked = j0 + PW > n_;
                for (int64_t i0 = 0; i0 < rows; i0 += R) {
                    Acc acc;
                    micro(m, block + i0 * d_, panel(j0), d_, acc);
                    for (int r = 0; r < R; ++r) {
                        // Padded query rows read radius 0 and are never written back.
                        const V row_r = vbroadcast<V>(i0 + r < rows ? radius[q0 + i0 + r] : T(0));
                        I row_sum = I{};
                        for (int v = 0; v < C; ++v) {
                            I hits = passes<Strict>(acc[r][v], row_r);
                            if (masked) hits &= pair_mask(i0, r, j0, v, false);
                            row_sum += hits;
                        }
                        row_counts[i0 + r] -= row_sum;
                    }
                }
            }
            for (int64_t i = 0; i < rows; ++i) out[q0 + i] = lane_sum(row_counts[i]);
        }
    }

    int64_t n_, d_, npad_;
    aligned_vector<T> rows_;    // row-major points, padded rows of +inf
    aligned_vector<T> panels_;  // panel p: coordinate c of column p * PW + l at p * PW * d + c * PW + l
};

}  // namespace infolens::knn
