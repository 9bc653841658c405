// One-dimensional points sorted by (value, index): exact kNN and radius counts by searching
// outward from a query's position.
//
// For a query q, key(q, v) = fold(0, term(q - v)) and fl(q - v) is monotone in v, so keys
// are non-decreasing walking away from q's position on either side. A radius count is
// therefore two contiguous runs, found by galloping on the predicate evaluated exactly as the
// key (never as v < q + r, which rounds differently), and the k nearest are a merge of the two
// sides. Queries run in sorted order, so consecutive searches touch the same memory.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

#include "knn/metric.hpp"
#include "knn/ordered.hpp"
#include "common/parallel.hpp"

namespace infolens::knn {

template <class T>
class Sorted1d {
public:
    using value_type = T;

    Sorted1d(const T* x, int64_t n) : sorted_(x, nullptr, n) {}

    template <class M>
    void knn(const M& m, int64_t k, T* out_keys, int64_t* out_idx, const T* queries, int64_t nq,
             int threads) const {
        const std::vector<int64_t> order = query_order(queries, nq);
        const int nt = team_size(threads);
#pragma omp parallel num_threads(nt)
        {
            std::vector<std::pair<T, int64_t>> below;
            std::vector<int64_t> tied;
#pragma omp for schedule(dynamic, 512)
            for (int64_t t = 0; t < nq; ++t) {
                const Start s = start(t, queries, order);
                nearest(m, s.q, s.left, s.right, k, out_keys + s.row * k, out_idx + s.row * k, below, tied);
            }
        }
    }

    template <class M, bool Strict>
    void count(const M& m, const T* radius, int64_t* out, const T* queries, int64_t nq,
               int threads) const {
        const std::vector<int64_t> order = query_order(queries, nq);
        const int nt = team_size(threads);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 2048)
        for (int64_t t = 0; t < nq; ++t) {
            const Start s = start(t, queries, order);
            const T r = radius[s.row];
            auto within = [&](int64_t j) {
                const T key = key1(m, s.q, j);
                return Strict ? key < r : key <= r;
            };
            const auto [left_run, right_run] = sorted_.runs(s.left, s.right, within);
            out[s.row] = left_run + right_run;
        }
    }

private:
    template <class M>
    T key1(const M& m, T q, int64_t j) const {
        return M::fold(T(0), m.term(T(q - sorted_.v[j])));
    }

    // The t-th query in processing order: its output row, its value, and the sorted positions
    // where its left and right sides begin. The self-join's query t is sorted position t, which
    // both sides skip; an outside query's sides meet at the first value >= q.
    struct Start {
        int64_t row;
        T q;
        int64_t left, right;
    };

    Start start(int64_t t, const T* queries, const std::vector<int64_t>& order) const {
        if (!queries) return {sorted_.id[t], sorted_.v[t], t - 1, t + 1};
        const int64_t row = order[t];
        const int64_t right = sorted_.lower_bound(queries[row]);
        return {row, queries[row], right - 1, right};
    }

    // Queries by ascending value (empty for the self-join, which runs in sorted order).
    static std::vector<int64_t> query_order(const T* queries, int64_t nq) {
        std::vector<int64_t> order;
        if (!queries) return order;
        order.resize(nq);
        std::iota(order.begin(), order.end(), int64_t{0});
        std::sort(order.begin(), order.end(),
                  [&](int64_t a, int64_t b) { return queries[a] < queries[b]; });
        return order;
    }

    // The k smallest (key, index) among positions left, left - 1, ..., 0 and right, ..., n - 1.
    template <class M>
    void nearest(const M& m, T q, int64_t left, int64_t right, int64_t k, T* keys, int64_t* idx,
                 std::vector<std::pair<T, int64_t>>& below, std::vector<int64_t>& tied) const {
        // 1. The k-th smallest key K: merge the two sides, each non-decreasing in key.
        int64_t l = left, r = right;
        T kth = 0;
        for (int64_t taken = 0; taken < k; ++taken) {
            const bool take_left = r >= sorted_.size() || (l >= 0 && key1(m, q, l) <= key1(m, q, r));
            kth = take_left ? key1(m, q, l--) : key1(m, q, r++);
        }
        // 2. Keys below K were all read, as a prefix of each side; they enter in (key, index)
        // order. Both heads were >= K when the merge stopped, so nothing unread is below K.
        below.clear();
        int64_t nl = 0, nr = 0;
        for (; left - nl > l && key1(m, q, left - nl) < kth; ++nl)
            below.push_back({key1(m, q, left - nl), sorted_.id[left - nl]});
        for (; right + nr < r && key1(m, q, right + nr) < kth; ++nr)
            below.push_back({key1(m, q, right + nr), sorted_.id[right + nr]});
        std::sort(below.begin(), below.end());
        for (size_t s = 0; s < below.size(); ++s) {
            keys[s] = below[s].first;
            idx[s] = below[s].second;
        }
        // 3. The remaining slots take the smallest indices among keys equal to K: a run on each
        // side (possibly long, e.g. duplicated values), made of blocks of equal values whose
        // indices ascend, so each block offers at most `need` candidates.
        const int64_t need = k - int64_t(below.size());
        const int64_t l_end = left - nl, r_begin = right + nr;
        const auto [l_run, r_run] = sorted_.runs(l_end, r_begin, [&](int64_t j) { return key1(m, q, j) == kth; });
        tied.clear();
        add_block_heads(l_end - l_run + 1, l_end + 1, need, tied);
        add_block_heads(r_begin, r_begin + r_run, need, tied);
        std::partial_sort(tied.begin(), tied.begin() + need, tied.end());
        for (int64_t s = 0; s < need; ++s) {
            keys[below.size() + s] = kth;
            idx[below.size() + s] = tied[s];
        }
    }

    // Appends the first `need` indices of every block of equal values in positions [a, b).
    void add_block_heads(int64_t a, int64_t b, int64_t need, std::vector<int64_t>& out) const {
        while (a < b) {
            const T value = sorted_.v[a];
            const int64_t len = leading_true([&](int64_t i) { return sorted_.v[a + i] == value; }, b - a);
            out.insert(out.end(), sorted_.id.begin() + a, sorted_.id.begin() + a + std::min(len, need));
            a += len;
        }
    }

    SortedValues<T> sorted_;
};

}  // namespace infolens::knn
