// Searching sorted arrays, shared by the engines that work on ranks (sorted1d.hpp,
// rank_sweep.hpp): galloping search on a monotone predicate, and a parallel sort.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "knn/parallel.hpp"

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

}  // namespace infolens::knn
