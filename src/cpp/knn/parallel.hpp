// OpenMP team sizing; the engine also builds (single-threaded) without OpenMP.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

namespace infolens::knn {

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

}  // namespace infolens::knn
