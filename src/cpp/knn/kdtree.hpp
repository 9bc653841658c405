// kd-tree over a fixed point set: exact kNN and radius counts under any metric of metric.hpp.
//
// Build: each node splits the widest side of its tight bounding box at the median position
// (quickselect), until a node holds at most leaf_size points. Points are stored once, in tree
// order and coordinate-major, so a leaf scan is a vectorisable loop per coordinate.
//
// Exactness: a node's bounding box holds the actual min/max coordinates of its points, and its
// min/max keys to a query are folded from per-coordinate gaps with the metric's own operations.
// Rounding is monotone, so node_min <= key(q, x) <= node_max for every point x of the node,
// bitwise: pruning on node_min and counting whole nodes on node_max never change a result.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <numeric>
#include <type_traits>
#include <vector>

#include "knn/metric.hpp"
#include "common/parallel.hpp"
#include "knn/rank_sweep.hpp"
#include "knn/topk.hpp"

namespace infolens::knn {

template <class T>
class KdTree {
public:
    using value_type = T;

    static constexpr int64_t kDefaultLeafSize = 32;

    KdTree(const T* points, int64_t n, int64_t d, int64_t leaf_size)
        : n_(n), d_(d), leaf_(leaf_size > 0 ? leaf_size : kDefaultLeafSize) {
        layout(0, n_);
        lo_.resize(nodes_.size() * d_);
        hi_.resize(nodes_.size() * d_);
        perm_.resize(n_);
        std::iota(perm_.begin(), perm_.end(), int64_t{0});
        std::vector<T> rows(points, points + n_ * d_);  // row-major, reordered into tree order
#pragma omp parallel
#pragma omp single
        build(0, rows.data(), 0);
        x_.resize(n_ * d_);
        for (int64_t t = 0; t < n_; ++t)
            for (int64_t c = 0; c < d_; ++c) x_[c * n_ + t] = rows[t * d_ + c];
        // Children follow their parent in depth-first order, so a reverse sweep is bottom-up.
        min_index_.resize(nodes_.size());
        for (int64_t id = int64_t(nodes_.size()) - 1; id >= 0; --id) {
            const Node& nd = nodes_[id];
            min_index_[id] = nd.right == 0 ? *std::min_element(perm_.begin() + nd.begin, perm_.begin() + nd.end)
                                           : std::min(min_index_[id + 1], min_index_[nd.right]);
        }
    }

    // k nearest by (key, index) for nq queries (row-major), or for every point when queries is
    // null (self-join, excluding each point's own index).
    template <class M>
    void knn(const M& m, int64_t k, T* out_keys, int64_t* out_idx, const T* queries, int64_t nq,
             int threads) const {
        for_each_query(queries, nq, threads, [&](int64_t row, const T* q, int64_t self, T* leaf_keys) {
            const TopK<T> best{out_keys + row * k, out_idx + row * k, k};
            best.clear();
            search(m, q, best, self, leaf_keys);
        });
    }

    // out[i] = #{j : key(q_i, x_j) < radius[i]} (Strict) or <= radius[i]; the self-join
    // (queries == null) excludes j == i.
    template <class M, bool Strict>
    void count(const M& m, const T* radius, int64_t* out, const T* queries, int64_t nq,
               int threads) const {
        if constexpr (std::is_same_v<M, MaxNorm>) {
            if (d_ == 2 && RankSweep2d<T>::fits(n_)) {
                std::call_once(*sweep_once_, [&] { sweep_ = std::make_unique<RankSweep2d<T>>(&x_[0], &x_[n_], perm_.data(), n_); });
                // The sweep reads radii and writes counts by original index, as the self-join rows are.
                sweep_->template count<Strict>(radius, out, queries, nq, threads);
                return;
            }
        }
        for_each_query(queries, nq, threads, [&](int64_t row, const T* q, int64_t self, T* leaf_keys) {
            const T r = radius[row];
            int64_t c = count_within<M, Strict>(m, q, r, leaf_keys);
            // The point itself has key 0 exactly; it was counted iff 0 passes the predicate.
            if (self >= 0 && passes<Strict>(T(0), r)) --c;
            out[row] = c;
        });
    }

private:
    struct Node {
        int64_t begin, end;
        int64_t right;  // index of the right child; 0 for a leaf (the left child is this + 1)
    };
    struct Pending {
        int64_t node;
        T min_key;
    };
    // Nodes of at most leaf_size points stop splitting, so depth <= 64 for any int64 count.
    using Stack = std::array<Pending, 130>;

    template <bool Strict>
    static bool passes(T key, T r) {
        return Strict ? key < r : key <= r;
    }

    // Fixes the tree's shape, which depends only on n and leaf_size, in depth-first order.
    int64_t layout(int64_t begin, int64_t end) {
        const int64_t id = int64_t(nodes_.size());
        nodes_.push_back({begin, end, 0});
        if (end - begin > leaf_) {
            const int64_t mid = begin + (end - begin) / 2;
            layout(begin, mid);
            const int64_t right = layout(mid, end);
            nodes_[id].right = right;
        }
        return id;
    }

    // Computes node id's bounding box, then partitions its rows at the median of the widest side.
    void build(int64_t id, T* rows, int depth) {
        const Node nd = nodes_[id];
        T* lo = &lo_[id * d_];
        T* hi = &hi_[id * d_];
        std::copy(rows + nd.begin * d_, rows + nd.begin * d_ + d_, lo);
        std::copy(lo, lo + d_, hi);
        for (int64_t t = nd.begin + 1; t < nd.end; ++t)
            for (int64_t c = 0; c < d_; ++c) {
                lo[c] = std::min(lo[c], rows[t * d_ + c]);
                hi[c] = std::max(hi[c], rows[t * d_ + c]);
            }
        if (nd.right == 0) return;
        int64_t dim = 0;
        for (int64_t c = 1; c < d_; ++c)
            if (hi[c] - lo[c] > hi[dim] - lo[dim]) dim = c;
        select(rows, nd.begin, nd.end, nd.begin + (nd.end - nd.begin) / 2, dim);
        // Subtrees are independent; tasks spread the upper levels over the team.
        if (depth < 8) {
#pragma omp task
            build(id + 1, rows, depth + 1);
            build(nd.right, rows, depth + 1);
#pragma omp taskwait
        } else {
            build(id + 1, rows, depth + 1);
            build(nd.right, rows, depth + 1);
        }
    }

    // Quickselect on rows[lo, hi) by coordinate dim, moving whole rows (and perm_) so that
    // rows before kth are <= row kth <= rows after it. Hoare partition: balanced on ties.
    void select(T* rows, int64_t lo, int64_t hi, int64_t kth, int64_t dim) {
        const int64_t d = d_;
        auto v = [&](int64_t i) { return rows[i * d + dim]; };
        auto swap_rows = [&](int64_t a, int64_t b) {
            std::swap_ranges(rows + a * d, rows + a * d + d, rows + b * d);
            std::swap(perm_[a], perm_[b]);
        };
        while (hi - lo > 2) {
            // Median of three moved to lo; with the pivot at lo, Hoare's j ends in [lo, hi - 2].
            const int64_t mid = lo + (hi - lo) / 2, last = hi - 1;
            int64_t med = last;
            if ((v(lo) <= v(mid)) == (v(mid) <= v(last)))
                med = mid;
            else if ((v(mid) <= v(lo)) == (v(lo) <= v(last)))
                med = lo;
            swap_rows(lo, med);
            const T pivot = v(lo);
            int64_t i = lo - 1, j = hi;
            for (;;) {
                do ++i;
                while (v(i) < pivot);
                do --j;
                while (pivot < v(j));
                if (i >= j) break;
                swap_rows(i, j);
            }
            if (kth <= j)
                hi = j + 1;
            else
                lo = j + 1;
        }
        if (hi - lo == 2 && v(lo + 1) < v(lo)) swap_rows(lo, lo + 1);
    }

    // Calls f(row, query, self, leaf scratch) for every query over the OpenMP team. self is the
    // query's tree position in the self-join (to be skipped), -1 for outside queries. The
    // self-join walks queries in tree order, so neighbouring queries share paths and cache lines.
    template <class F>
    void for_each_query(const T* queries, int64_t nq, int threads, const F& f) const {
        const int nt = team_size(threads);
        std::vector<T> scratch(size_t(nt) * (leaf_ + d_));
#pragma omp parallel num_threads(nt)
        {
            T* leaf_keys = scratch.data() + size_t(thread_id()) * (leaf_ + d_);
            T* q = leaf_keys + leaf_;
#pragma omp for schedule(dynamic, 128)
            for (int64_t i = 0; i < nq; ++i) {
                if (queries)
                    std::copy(queries + i * d_, queries + i * d_ + d_, q);
                else
                    for (int64_t c = 0; c < d_; ++c) q[c] = x_[c * n_ + i];
                f(queries ? i : perm_[i], q, queries ? -1 : i, leaf_keys);
            }
        }
    }

    // Smallest key from q to any point of node id's box.
    template <class M>
    T node_min(const M& m, const T* q, int64_t id) const {
        const T* lo = &lo_[id * d_];
        const T* hi = &hi_[id * d_];
        T s = 0;
        for (int64_t c = 0; c < d_; ++c) {
            const T gap = q[c] < lo[c] ? lo[c] - q[c] : (hi[c] < q[c] ? q[c] - hi[c] : T(0));
            s = M::fold(s, m.term(gap));
        }
        return s;
    }

    // Keys from q to every point of leaf id, into keys[0, size).
    template <class M>
    void leaf_keys(const M& m, const T* q, const Node& nd, T* keys) const {
        const int64_t size = nd.end - nd.begin;
        std::fill(keys, keys + size, T(0));
        for (int64_t c = 0; c < d_; ++c) {
            const T* xc = &x_[c * n_ + nd.begin];
            const T qc = q[c];
            for (int64_t i = 0; i < size; ++i) keys[i] = M::fold(keys[i], m.term(T(qc - xc[i])));
        }
    }

    // Depth-first, nearer child first. A node is skipped when (its min key, its min index)
    // cannot beat the k-th (key, index): the index bound is what keeps the search short on
    // duplicated points, where every key ties at 0. self: tree position to skip.
    template <class M>
    void search(const M& m, const T* q, const TopK<T>& best, int64_t self, T* keys) const {
        auto hopeless = [&](T min_key, int64_t id) { return !best.admits(min_key, min_index_[id]); };
        Stack stack;
        int top = 0;
        stack[top++] = {0, T(0)};
        while (top > 0) {
            Pending p = stack[--top];
            if (hopeless(p.min_key, p.node)) continue;
            int64_t id = p.node;
            while (nodes_[id].right != 0) {
                int64_t near = id + 1, far = nodes_[id].right;
                T near_key = node_min(m, q, near), far_key = node_min(m, q, far);
                if (key_index_less(far_key, min_index_[far], near_key, min_index_[near])) {
                    std::swap(near, far);
                    std::swap(near_key, far_key);
                }
                if (!hopeless(far_key, far)) stack[top++] = {far, far_key};
                if (hopeless(near_key, near)) {
                    id = -1;
                    break;
                }
                id = near;
            }
            if (id < 0) continue;
            const Node& nd = nodes_[id];
            leaf_keys(m, q, nd, keys);
            T worst = best.worst();
            for (int64_t i = 0; i < nd.end - nd.begin; ++i) {
                if (keys[i] > worst || nd.begin + i == self) continue;
                const int64_t j = perm_[nd.begin + i];
                if (best.admits(keys[i], j)) {
                    best.insert(keys[i], j);
                    worst = best.worst();
                }
            }
        }
    }

    // Points with key < r (Strict) or <= r, self included. Whole nodes are added when their
    // max key passes and dropped when their min key fails; only boundary leaves are scanned.
    template <class M, bool Strict>
    int64_t count_within(const M& m, const T* q, T r, T* keys) const {
        std::array<int64_t, 130> stack;
        int top = 0;
        stack[top++] = 0;
        int64_t total = 0;
        while (top > 0) {
            const int64_t id = stack[--top];
            const Node& nd = nodes_[id];
            const T* lo = &lo_[id * d_];
            const T* hi = &hi_[id * d_];
            T near = 0, far = 0;
            for (int64_t c = 0; c < d_; ++c) {
                const T gap = q[c] < lo[c] ? lo[c] - q[c] : (hi[c] < q[c] ? q[c] - hi[c] : T(0));
                near = M::fold(near, m.term(gap));
                far = M::fold(far, m.term(std::max(T(q[c] - lo[c]), T(hi[c] - q[c]))));
            }
            if (!passes<Strict>(near, r)) continue;
            if (passes<Strict>(far, r)) {
                total += nd.end - nd.begin;
            } else if (nd.right != 0) {
                stack[top++] = nd.right;
                stack[top++] = id + 1;
            } else {
                leaf_keys(m, q, nd, keys);
                int64_t c = 0;
                for (int64_t i = 0; i < nd.end - nd.begin; ++i) c += passes<Strict>(keys[i], r);
                total += c;
            }
        }
        return total;
    }

    int64_t n_, d_, leaf_;
    std::vector<Node> nodes_;  // depth-first order
    std::vector<T> lo_, hi_;   // tight bounding box of node id: [id * d, id * d + d)
    std::vector<int64_t> perm_;  // original row of tree position t
    std::vector<int64_t> min_index_;  // smallest original row in node id
    std::vector<T> x_;         // coordinate c of tree position t at x_[c * n + t]
    // Max-norm counts in 2-D go to a rank sweep (rank_sweep.hpp), built on first use.
    mutable std::unique_ptr<std::once_flag> sweep_once_ = std::make_unique<std::once_flag>();
    mutable std::unique_ptr<RankSweep2d<T>> sweep_;
};

}  // namespace infolens::knn
