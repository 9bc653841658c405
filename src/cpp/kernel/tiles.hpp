// Tiles of a kernel matrix K_ij = prod_f k_f(x_f[i], x_f[j]), computed on demand and never
// stored whole. Bandwidths are folded into the features by the caller, so the factors are
//   gaussian   exp(-||x - y||_2^2)    with ||x - y||^2 = ||x||^2 + ||y||^2 - 2 x.y, clamped at 0,
//                                     and exactly 0 on the diagonal (K_ii = 1 exactly);
//   laplacian  exp(-||x - y||_1);
//   linear     x . y.
// The expansion turns the distances into a dot-product micro-kernel (one FMA per coordinate, half
// the work of differences); its rounding error, about eps * ||x||^2, moves a kernel value by
// far less than the float spacing of the result once the bandwidth is of the data's scale.
//
// A tile is kTile x kTile entries. Its dot products (or L1 sums) come from a register-blocked
// micro-kernel over R rows x PW columns, the points packed into coordinate-major panels as in
// the kNN brute force; entries whose row or column is padding are 0.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/aligned.hpp"
#include "common/micro.hpp"
#include "common/simd.hpp"

namespace infolens::kernel {

enum class Kind { gaussian, laplacian, linear };

Kind parse_kind(const std::string& name);

// One factor as the caller holds it: row-major points [n, d].
template <class T>
struct FactorView {
    Kind kind;
    const T* x;
    int64_t d;
};

template <class T>
class Tiles {
    using V = typename Simd<T>::V;
    static constexpr int W = Simd<T>::W;
    static constexpr int C = 2;                          // vectors per micro-tile row
    static constexpr int PW = C * W;                     // columns per panel
    static constexpr int R = kVectorBytes == 64 ? 8 : 4;  // rows per micro-tile

public:
    static constexpr int64_t kTile = 64;  // a multiple of R and PW on every target

    Tiles(const std::vector<FactorView<T>>& factors, int64_t n) : n_(n), npad_((n + kTile - 1) / kTile * kTile) {
        for (const auto& f : factors) {
            Packed p{f.kind, f.d, aligned_vector<T>(npad_ * f.d, T(0)), aligned_vector<T>(npad_ * f.d, T(0)), {}};
            for (int64_t i = 0; i < n; ++i)
                for (int64_t c = 0; c < f.d; ++c) {
                    const T v = f.x[i * f.d + c];
                    p.rows[i * f.d + c] = v;
                    p.panels[(i / PW) * PW * f.d + c * PW + i % PW] = v;
                }
            if (f.kind == Kind::gaussian) {
                p.norms.assign(npad_, T(0));
                for (int64_t i = 0; i < n; ++i) {
                    T s = 0;
                    for (int64_t c = 0; c < f.d; ++c) s += p.rows[i * f.d + c] * p.rows[i * f.d + c];
                    p.norms[i] = s;
                }
            }
            packed_.push_back(std::move(p));
        }
    }

    int64_t n() const { return n_; }
    int64_t npad() const { return npad_; }

    // out[r * kTile + c] = K(i0 + r, j0 + c); i0, j0 multiples of kTile. scratch: kTile^2 values.
    void tile(int64_t i0, int64_t j0, T* out, T* scratch) const {
        factor_tile(packed_[0], i0, j0, out);
        for (size_t f = 1; f < packed_.size(); ++f) {  // the Hadamard product, one factor at a time
            factor_tile(packed_[f], i0, j0, scratch);
            for (int64_t e = 0; e < kTile * kTile; e += W) vstore(out + e, V(vload<V>(out + e) * vload<V>(scratch + e)));
        }
        mask_padding(i0, j0, out);
    }

private:
    struct Packed {
        Kind kind;
        int64_t d;
        aligned_vector<T> rows;    // [npad, d], zero padded
        aligned_vector<T> panels;  // panel p: coordinate c of column p * PW + l at p * PW * d + c * PW + l
        aligned_vector<T> norms;   // gaussian only: ||x_i||^2
    };

    // One factor's kernel values over the tile.
    void factor_tile(const Packed& p, int64_t i0, int64_t j0, T* out) const {
        const bool l1 = p.kind == Kind::laplacian;
        for (int64_t r0 = 0; r0 < kTile; r0 += R)
            for (int64_t c0 = 0; c0 < kTile; c0 += PW) {
                V acc[R][C] = {};
                const T* rows = &p.rows[(i0 + r0) * p.d];
                const T* panel = &p.panels[(j0 + c0) * p.d];
                if (l1)
                    micro_tile(rows, p.d, panel, PW, p.d, acc, [](V a, V q, V x) { return V(a + vabs(V(q - x))); });
                else
                    micro_tile(rows, p.d, panel, PW, p.d, acc, [](V a, V q, V x) { return V(a + q * x); });
                for (int r = 0; r < R; ++r)
                    for (int v = 0; v < C; ++v) vstore(out + (r0 + r) * kTile + c0 + v * W, acc[r][v]);
            }
        if (p.kind == Kind::linear) return;
        if (p.kind == Kind::laplacian) {
            for (int64_t e = 0; e < kTile * kTile; e += W) vstore(out + e, vexp(V(-vload<V>(out + e))));
            return;
        }
        for (int64_t r = 0; r < kTile; ++r) {
            const V nr = V{} + p.norms[i0 + r];
            T* row = out + r * kTile;
            for (int64_t c = 0; c < kTile; c += W) {
                const V d2 = nr + vload<V>(&p.norms[j0 + c]) - T(2) * vload<V>(row + c);
                vstore(row + c, vexp(V(-vmax(V{}, d2))));
            }
            if (i0 == j0) row[r] = T(1);  // the diagonal: distance exactly 0
        }
    }

    void mask_padding(int64_t i0, int64_t j0, T* out) const {
        if (i0 + kTile <= n_ && j0 + kTile <= n_) return;
        for (int64_t r = 0; r < kTile; ++r)
            for (int64_t c = 0; c < kTile; ++c)
                if (i0 + r >= n_ || j0 + c >= n_) out[r * kTile + c] = T(0);
    }

    int64_t n_, npad_;
    std::vector<Packed> packed_;
};

}  // namespace infolens::kernel
