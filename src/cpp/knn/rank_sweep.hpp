// Exact max-norm radius counts in two dimensions by offline dominance counting.
//
// A max-norm ball is a box, and |fl(q_c - v)| is non-increasing then non-decreasing in v around
// q_c, so the points a query counts are those whose x-rank lies in an interval [ax, bx) and whose
// y-rank lies in [ay, by), each found by galloping on the exact predicate (the key arithmetic of
// metric.hpp, so counts agree with kNN distances to the last bit). With
// D(a, b) = #{j : x-rank(j) < a, y-rank(j) < b}, the count is
// D(bx, by) - D(ax, by) - D(bx, ay) + D(ax, ay), and all 4M dominance counts are answered in one
// sweep over x-rank with a Fenwick tree over y-rank. The cost is O(N log N) whatever the radii; a
// kd-tree pays for every leaf on the box's boundary, which dominates when boxes hold thousands of
// points (KSG marginals at N = 1e6).
//
// The sweep runs on the whole team: thread t owns the x-ranks of one slab and starts from a
// Fenwick tree of the points before its slab, built in O(N).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "knn/metric.hpp"
#include "knn/ordered.hpp"
#include "common/parallel.hpp"

namespace infolens::knn {

template <class T>
class RankSweep2d {
public:
    // Point t has coordinates (x[t], y[t]) and original index id[t], a permutation of [0, n).
    RankSweep2d(const T* x, const T* y, const int64_t* id, int64_t n) : n_(n), axes_{Axis(x, id, n), Axis(y, id, n)} {
        y_rank_at_x_.resize(n);
        for (int64_t s = 0; s < n; ++s) y_rank_at_x_[s] = int32_t(axes_[1].rank[axes_[0].id[s]]);
    }

    // Whether the sweep's 32-bit ranks and counts can hold n points.
    static bool fits(int64_t n) { return n < (int64_t(1) << 31) - 1; }

    // out[i] = #{j : max_c |fl(q_ic - x_jc)| < radius[i]} (Strict) or <= radius[i]; queries
    // row-major [nq, 2], or null for the self-join over the original indices (j == i excluded).
    template <bool Strict>
    void count(const T* radius, int64_t* out, const T* queries, int64_t nq, int threads) const {
        const int nt = team_size(threads);
        // 1. Each query's rank box; an empty box where not even the query's own key 0 passes.
        // The self-join walks each axis in sorted order, so consecutive searches share cache lines.
        std::vector<Box> boxes(nq);
        for (int c = 0; c < 2; ++c) {
            const Axis& axis = axes_[c];
#pragma omp parallel for num_threads(nt) schedule(static, 4096)
            for (int64_t t = 0; t < nq; ++t) {
                const int64_t i = queries ? t : axis.id[t];
                const T r = radius[i];
                auto [a, b] = queries ? axis.template interval<Strict>(queries[2 * i + c], r)
                                      : axis.template interval<Strict>(axis.v[t], t - 1, t + 1, r);
                if (!queries && !passes<Strict>(T(0), r)) a = b = 0;
                boxes[i].lo[c] = a;
                boxes[i].hi[c] = b;
            }
        }
        // 2. The 4 corners of every box, bucketed by x-rank threshold (counting sort).
        std::vector<int64_t> start(n_ + 2, 0);
        for (const Box& b : boxes) {
            start[b.lo[0] + 1] += 2;
            start[b.hi[0] + 1] += 2;
        }
        for (int64_t a = 0; a <= n_; ++a) start[a + 1] += start[a];
        std::vector<Corner> corners(start[n_ + 1]);
        {
            std::vector<int64_t> fill(start.begin(), start.end() - 1);
            for (int64_t i = 0; i < nq; ++i) {
                const Box& b = boxes[i];
                corners[fill[b.hi[0]]++] = {int32_t(b.hi[1]), 4 * i + 0};
                corners[fill[b.lo[0]]++] = {int32_t(b.hi[1]), 4 * i + 1};
                corners[fill[b.hi[0]]++] = {int32_t(b.lo[1]), 4 * i + 2};
                corners[fill[b.lo[0]]++] = {int32_t(b.lo[1]), 4 * i + 3};
            }
        }
        // 3. The sweep: D(a, b) for every corner, a slab of x-ranks per thread.
        std::vector<int32_t> dominated(4 * size_t(nq));
        const int slabs = int(std::max<int64_t>(1, std::min<int64_t>(nt, n_ / 4096)));
#pragma omp parallel num_threads(slabs)
        {
            const int t = thread_id();
            const int64_t a0 = (n_ + 1) * t / slabs, a1 = (n_ + 1) * (t + 1) / slabs;
            std::vector<int32_t> tree(n_, 0);  // Fenwick tree over y-ranks of x-ranks < a
            for (int64_t s = 0; s < a0; ++s) tree[y_rank_at_x_[s]] = 1;
            for (int64_t i = 0; i < n_; ++i) {
                const int64_t parent = i | (i + 1);
                if (parent < n_) tree[parent] += tree[i];
            }
            for (int64_t a = a0; a < a1; ++a) {
                for (int64_t c = start[a]; c < start[a + 1]; ++c) {
                    int32_t sum = 0;
                    for (int64_t i = corners[c].b - 1; i >= 0; i = (i & (i + 1)) - 1) sum += tree[i];
                    dominated[corners[c].slot] = sum;
                }
                if (a < n_)
                    for (int64_t i = y_rank_at_x_[a]; i < n_; i |= i + 1) ++tree[i];
            }
        }
        // 4. Inclusion-exclusion; the self-join's box holds the query itself.
#pragma omp parallel for num_threads(nt) schedule(static, 4096)
        for (int64_t i = 0; i < nq; ++i) {
            const int32_t* d = &dominated[4 * size_t(i)];
            const int64_t inside = int64_t(d[0]) - d[1] - d[2] + d[3];
            out[i] = queries || boxes[i].lo[0] == boxes[i].hi[0] ? inside : inside - 1;
        }
    }

private:
    template <bool Strict>
    static bool passes(T key, T r) {
        return Strict ? key < r : key <= r;
    }

    // One coordinate in ascending (value, original index) order, and each index's position.
    struct Axis : SortedValues<T> {
        std::vector<int64_t> rank;  // sorted position of original index i

        Axis(const T* values, const int64_t* ids, int64_t n) : SortedValues<T>(values, ids, n), rank(n) {
            for (int64_t s = 0; s < n; ++s) rank[this->id[s]] = s;
        }

        // Sorted positions [a, b) whose key to qc passes: the runs outward from `left` and
        // `right`, the positions where keys start to grow on either side of qc.
        template <bool Strict>
        std::pair<int64_t, int64_t> interval(T qc, int64_t left, int64_t right, T r) const {
            const auto [left_run, right_run] = this->runs(left, right, [&](int64_t s) {
                return passes<Strict>(MaxNorm::fold(T(0), MaxNorm{}.term(T(qc - this->v[s]))), r);
            });
            return {left + 1 - left_run, right + right_run};
        }

        // The same for a point outside the set.
        template <bool Strict>
        std::pair<int64_t, int64_t> interval(T qc, T r) const {
            const int64_t right = this->lower_bound(qc);
            return interval<Strict>(qc, right - 1, right, r);
        }
    };

    struct Box {
        int64_t lo[2], hi[2];  // x-ranks [lo[0], hi[0]) and y-ranks [lo[1], hi[1])
    };
    struct Corner {
        int32_t b;     // y-rank threshold
        int64_t slot;  // 4 * query + corner
    };

    int64_t n_;
    Axis axes_[2];
    std::vector<int32_t> y_rank_at_x_;
};

}  // namespace infolens::knn
