// The metric keys of docs/NATIVE_ABI.md, as term/fold pairs.
//
// key(q, x) = fold(...fold(fold(0, term(q_0 - x_0)), term(q_1 - x_1))..., term(q_{d-1} - x_{d-1}))
// evaluated left to right in the input dtype. Every engine evaluates keys through these structs,
// and the same code runs on scalars and on the SIMD vectors of simd.hpp, so all paths round alike.
//
// Two properties the engines rely on, both consequences of IEEE round-to-nearest being monotone:
//   * term is symmetric (term(t) == term(-t)) and non-decreasing in |t|, fold is non-decreasing
//     in both arguments and fold(s, a) >= s for a >= 0. Hence a key computed from per-coordinate
//     gaps that bracket |q_c - x_c| brackets the key itself (exact kd-tree bounds), and a
//     partial key over the first coordinates never exceeds the full key (exact early exit).
//   * key(q, x) == key(x, q) bitwise, because fl(a - b) == -fl(b - a).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "common/simd.hpp"

namespace infolens::knn {

// p = inf: max_c |t_c|.
struct MaxNorm {
    template <class V> V term(V t) const { return vabs(t); }
    template <class V> static V fold(V s, V a) { return vmax(s, a); }
};

// p = 2: sum_c t_c * t_c, no FMA (the build uses -ffp-contract=off).
struct Euclidean {
    template <class V> V term(V t) const { return t * t; }
    template <class V> static V fold(V s, V a) { return s + a; }
};

// p = 1: sum_c |t_c|. Same value as Power{1} (pow(a, 1) == a exactly), without the pow call.
struct Manhattan {
    template <class V> V term(V t) const { return vabs(t); }
    template <class V> static V fold(V s, V a) { return s + a; }
};

// Any other p >= 1: sum_c pow(|t_c|, p), pow evaluated in the dtype (powf for float32).
struct Power {
    double p;
    template <class V> V term(V t) const { return vpow(vabs(t), p); }
    template <class V> static V fold(V s, V a) { return s + a; }
};

// Key between two rows of d coordinates: q[c], x[c * stride] (stride lets x be coordinate-major).
template <class M, class T>
inline T key(const M& m, const T* q, const T* x, int64_t d, int64_t stride = 1) {
    T s = 0;
    for (int64_t c = 0; c < d; ++c) s = M::fold(s, m.term(T(q[c] - x[c * stride])));
    return s;
}

// True when p is a valid order: p >= 1, infinity included, NaN excluded.
inline bool valid_order(double p) { return p >= 1.0; }

// Calls f with the metric struct of order p (p must be valid_order).
template <class F>
decltype(auto) with_metric(double p, F&& f) {
    if (std::isinf(p)) return f(MaxNorm{});
    if (p == 2.0) return f(Euclidean{});
    if (p == 1.0) return f(Manhattan{});
    return f(Power{p});
}

}  // namespace infolens::knn
