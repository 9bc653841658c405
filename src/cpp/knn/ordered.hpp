// Sorted values and the searches on them, shared by the engines that work on ranks
// (sorted1d.hpp, rank_sweep.hpp): galloping on a monotone predicate, a parallel sort, and one
// coordinate kept in (value, index) order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "common/parallel.hpp"

namespace infolens::knn {

// Number of leading i in [0, limit) with f(i) true, for f true on a prefix and false after:
// exponential then binary search, O(log answer) evaluations.
template <class F>
int64_t leading_true(F f, int64_t limit) {
    int64_t lo = 0, hi = limit;  // f is true on [0, lo) and false on [hi, limit)
    for (int64_t step = 1; lo < hi; step *= 2) {
        const int64_t probe = lo + step - 1;
        if (probe >= hi) break;
        if (!f(probe)) {
            hi = probe;
            break;
        }
        lo = probe + 1;
    }
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (f(mid))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

// Sorts v ascending with the OpenMP team: one run per thread, then rounds of pairwise merges.
template <class E>
void parallel_sort(std::vector<E>& v) {
    const int64_t n = int64_t(v.size());
    const int64_t runs = std::max<int64_t>(1, std::min<int64_t>(max_threads(), n / 65536));
    std::vector<int64_t> bounds(runs + 1);
    for (int64_t r = 0; r <= runs; ++r) bounds[r] = n * r / runs;
#pragma omp parallel for num_threads(int(runs)) schedule(static, 1)
    for (int64_t r = 0; r < runs; ++r) std::sort(v.begin() + bounds[r], v.begin() + bounds[r + 1]);
    std::vector<E> buffer(runs > 1 ? n : 0);
    for (int64_t width = 1; width < runs; width *= 2) {
#pragma omp parallel for num_threads(int(runs)) schedule(static, 1)
        for (int64_t r = 0; r < runs; r += 2 * width) {
            const int64_t a = bounds[r], b = bounds[std::min(r + width, runs)], c = bounds[std::min(r + 2 * width, runs)];
            std::merge(v.begin() + a, v.begin() + b, v.begin() + b, v.begin() + c, buffer.begin() + a);
        }
        v.swap(buffer);
    }
}

// One coordinate in ascending (value, index) order: v[s] is the s-th smallest value and id[s]
// the index it came with, so equal values run in ascending index.
template <class T>
struct SortedValues {
    std::vector<T> v;
    std::vector<int64_t> id;

    // values[t] carries index ids[t], or t itself when ids is null.
    SortedValues(const T* values, const int64_t* ids, int64_t n) : v(n), id(n) {
        std::vector<std::pair<T, int64_t>> sorted(n);
        for (int64_t t = 0; t < n; ++t) sorted[t] = {values[t], ids ? ids[t] : t};
        parallel_sort(sorted);
        for (int64_t s = 0; s < n; ++s) {
            v[s] = sorted[s].first;
            id[s] = sorted[s].second;
        }
    }

    int64_t size() const { return int64_t(v.size()); }

    int64_t lower_bound(T q) const { return std::lower_bound(v.begin(), v.end(), q) - v.begin(); }

    // Lengths of the runs of positions passing `pass` walking outward: left, left - 1, ..., 0
    // and right, right + 1, ..., size - 1, for `pass` true on a prefix of each walk (keys
    // growing away from a query).
    template <class Pass>
    std::pair<int64_t, int64_t> runs(int64_t left, int64_t right, const Pass& pass) const {
        return {leading_true([&](int64_t k) { return pass(left - k); }, left + 1),
                leading_true([&](int64_t k) { return pass(right + k); }, size() - right)};
    }
};

}  // namespace infolens::knn
