// The register-blocked inner loop every tiled engine here is built on: R rows x C vectors of
// accumulators, fed by one broadcast per row and C vector loads per step of the shared depth.
#pragma once

#include <cstdint>

#include "common/simd.hpp"

namespace infolens {

// acc[r][v] = update(acc[r][v], broadcast(a[r * a_stride + c]), b[c * b_stride + v * W .. + W])
// for c = 0 .. depth - 1, in that order.
template <int R, int C, class V, class T, class Update>
inline void micro_tile(const T* a, int64_t a_stride, const T* b, int64_t b_stride, int64_t depth,
                       V (&acc)[R][C], const Update& update) {
    constexpr int W = int(sizeof(V) / sizeof(T));
    for (int64_t c = 0; c < depth; ++c) {
        V x[C];
#pragma GCC unroll 4
        for (int v = 0; v < C; ++v) x[v] = vload<V>(b + c * b_stride + v * W);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            const V q = vbroadcast<V>(a[r * a_stride + c]);
#pragma GCC unroll 4
            for (int v = 0; v < C; ++v) acc[r][v] = update(acc[r][v], q, x[v]);
        }
    }
}

}  // namespace infolens
