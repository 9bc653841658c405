// OpenMP team sizing and the self-join tile schedule; the engines also build (single-threaded)
// without OpenMP.
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace infolens {

inline int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// Team size for one call: threads > 0 asks for exactly that many, 0 for OpenMP's default.
inline int team_size(int threads) { return threads > 0 ? threads : max_threads(); }

inline int thread_id() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// Calls tile(I, J) for every block pair I <= J of nb blocks. Diagonal tiles first, then
// rounds of the circle method: each block in at most one pair per round, so the tiles of a
// round write disjoint rows; the barrier after each round orders the rest.
template <class Tile>
void for_each_block_pair(int64_t nb, int nt, const Tile& tile) {
    const int64_t teams = nb + (nb & 1);  // an odd count gets a bye (an empty block)
#pragma omp parallel num_threads(nt)
    {
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < nb; ++b) tile(b, b);
        for (int64_t round = 0; round + 1 < teams; ++round) {
#pragma omp for schedule(dynamic, 1)
            for (int64_t m = 0; m < teams / 2; ++m) {
                int64_t a = teams - 1, b = round;
                if (m > 0) {
                    a = (round + m) % (teams - 1);
                    b = (round - m + teams - 1) % (teams - 1);
                }
                if (a < nb && b < nb) tile(std::min(a, b), std::max(a, b));
            }
        }
    }
}

}  // namespace infolens
