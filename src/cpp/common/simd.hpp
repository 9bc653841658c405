// Portable SIMD vectors (GCC/Clang vector extensions) and the few element-wise helpers the
// metrics need, overloaded so one metric definition serves scalars and vectors alike.
// The width follows the target: 512-bit with AVX-512, 256-bit with AVX, 128-bit otherwise.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace infolens {

#if defined(__AVX512F__)
inline constexpr int kVectorBytes = 64;
#elif defined(__AVX__)
inline constexpr int kVectorBytes = 32;
#else
inline constexpr int kVectorBytes = 16;
#endif

template <class T>
struct Simd;

template <>
struct Simd<float> {
    using V = float __attribute__((vector_size(kVectorBytes)));
    using I = int32_t __attribute__((vector_size(kVectorBytes)));  // lane masks: 0 or -1
    static constexpr int W = kVectorBytes / 4;
};

template <>
struct Simd<double> {
    using V = double __attribute__((vector_size(kVectorBytes)));
    using I = int64_t __attribute__((vector_size(kVectorBytes)));
    static constexpr int W = kVectorBytes / 8;
};

// Element type of a scalar or vector.
template <class V>
using elem_t = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<V>()[0])>>;

template <class V>
inline constexpr bool is_scalar_v = std::is_floating_point_v<V>;

template <class V>
inline V vabs(V t) {
    if constexpr (is_scalar_v<V>) {
        return std::abs(t);
    } else {
        using I = typename Simd<elem_t<V>>::I;
        using Int = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<I>()[0])>>;
        return (V)((I)t & (I{} + std::numeric_limits<Int>::max()));  // clear the sign bits
    }
}

// Lane masks (0 or -1) of a < b and a <= b. GCC 12 cannot compile 64-bit-lane compares for
// x86 below SSE4.1 (an internal compiler error), so that target compares lane by lane.
template <class V>
inline auto vless(V a, V b, bool or_equal) {
    using I = typename Simd<elem_t<V>>::I;
#if defined(__x86_64__) && !defined(__SSE4_1__)
    if constexpr (sizeof(elem_t<V>) == 8) {
        I m;
        for (int l = 0; l < Simd<elem_t<V>>::W; ++l) m[l] = (or_equal ? a[l] <= b[l] : a[l] < b[l]) ? -1 : 0;
        return m;
    }
#endif
    return or_equal ? I(a <= b) : I(a < b);
}

// max(s, a) as x86 max instructions compute it (no NaN reaches a key); vectors select with
// bit masks.
template <class V>
inline V vmax(V s, V a) {
    if constexpr (is_scalar_v<V>) {
        return s < a ? a : s;
    } else {
        using I = typename Simd<elem_t<V>>::I;
        const I take_a = vless(s, a, false);
        return (V)(((I)a & take_a) | ((I)s & ~take_a));
    }
}

template <class V>
inline V vpow(V a, double p) {
    if constexpr (is_scalar_v<V>) {
        return std::pow(a, V(p));
    } else {
        using T = elem_t<V>;
        for (int l = 0; l < int(sizeof(V) / sizeof(T)); ++l) a[l] = std::pow(T(a[l]), T(p));
        return a;
    }
}

// exp(x) lane-wise for x <= 0 (kernel values): Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2,
// a polynomial for e^r, and n added to the exponent bits. Rounding n by the 1.5 * 2^m magic
// number leaves n in the low mantissa bits, so no float-to-int conversion is needed (AVX2 has
// none for 64-bit lanes). Relative error about 2 ulp; arguments below the underflow bound give 0.
template <class V>
inline V vexp(V x) {
    using T = elem_t<V>;
    using I = typename Simd<T>::I;
    constexpr bool single = sizeof(T) == 4;
    constexpr int mantissa = single ? 23 : 52;
    const T magic = single ? T(12582912.0f) : T(6755399441055744.0);  // 1.5 * 2^mantissa
    const T ln2_hi = single ? T(0.693359375f) : T(6.93145751953125e-1);
    const T ln2_lo = single ? T(-2.12194440e-4f) : T(1.42860682030941723212e-6);
    const T lowest = single ? T(-87.0f) : T(-708.0);
    // Below `lowest` the result is 0 (masked at the end); clamping first keeps the exponent
    // arithmetic in range for any input, however negative.
    const I below = vless(x, V{} + lowest, false);
    x = (V)(((I)x & ~below) | ((I)(V{} + lowest) & below));
    const V m = x * T(1.4426950408889634) + magic;
    const V n = m - magic;
    const V r = (x - n * ln2_hi) - n * ln2_lo;
    V p;
    if constexpr (single) {  // Cephes expf coefficients
        p = V{} + T(1.9875691500e-4f);
        p = p * r + T(1.3981999507e-3f);
        p = p * r + T(8.3334519073e-3f);
        p = p * r + T(4.1665795894e-2f);
        p = p * r + T(1.6666665459e-1f);
        p = p * r + T(5.0000001201e-1f);
        p = p * r * r + r + T(1);
    } else {  // Taylor series to r^13: the truncation is below 1e-17 for |r| <= ln2 / 2
        p = V{} + T(1.0 / 6227020800.0);
        const double inv_fact[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
                                   1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0,
                                   1.0 / 6.0, 0.5, 1.0, 1.0};
        for (double c : inv_fact) p = p * r + T(c);
    }
    const I n_bits = (I)m - (I)(V{} + magic);
    const V result = (V)((I)p + (n_bits << mantissa));
    return (V)((I)result & ~below);
}

template <class V, class T>
inline V vload(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

template <class V, class T>
inline void vstore(T* p, V v) {
    std::memcpy(p, &v, sizeof v);
}

template <class V, class T>
inline V vbroadcast(T s) {
    return V{} + s;
}

// True when any lane of a comparison mask is set.
template <class I>
inline bool vany(I m) {
    uint64_t w[sizeof(I) / 8];
    std::memcpy(w, &m, sizeof m);
    uint64_t r = 0;
    for (uint64_t x : w) r |= x;
    return r != 0;
}

}  // namespace infolens
