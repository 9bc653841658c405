// A k-best list kept in place in a row of the caller's output arrays.
//
// Entries are sorted ascending by (key, index), the order of docs/NATIVE_ABI.md, so the result
// is unique and independent of the order in which candidates arrive. Unfilled slots hold the
// sentinel (+inf, INT64_MAX), which every real candidate beats, so no fill count is needed.
#pragma once

#include <cstdint>
#include <limits>

namespace infolens::knn {

inline constexpr int64_t kNoIndex = std::numeric_limits<int64_t>::max();

template <class T>
inline bool key_index_less(T ka, int64_t ia, T kb, int64_t ib) {
    return ka < kb || (ka == kb && ia < ib);
}

template <class T>
struct TopK {
    T* key;
    int64_t* idx;
    int64_t k;

    void clear() const {
        for (int64_t s = 0; s < k; ++s) {
            key[s] = std::numeric_limits<T>::infinity();
            idx[s] = kNoIndex;
        }
    }

    // The k-th key: a candidate with a larger key cannot enter; an equal one may (smaller index).
    T worst() const { return key[k - 1]; }

    bool admits(T kc, int64_t ic) const { return key_index_less(kc, ic, key[k - 1], idx[k - 1]); }

    // Inserts a candidate that admits() accepted, dropping the current k-th entry.
    void insert(T kc, int64_t ic) const {
        int64_t s = k - 1;
        for (; s > 0 && key_index_less(kc, ic, key[s - 1], idx[s - 1]); --s) {
            key[s] = key[s - 1];
            idx[s] = idx[s - 1];
        }
        key[s] = kc;
        idx[s] = ic;
    }

    void push(T kc, int64_t ic) const {
        if (admits(kc, ic)) insert(kc, ic);
    }
};

}  // namespace infolens::knn
