// K @ V and sum K^2 over the tiles of a symmetric kernel matrix.
//
// Every unordered pair of points is formed once: tile (I, J) with I < J adds K_IJ V_J to the
// rows of I and K_IJ^T V_I to the rows of J. Blocks of kBlock rows are scheduled as the kNN
// self-join schedules them (common/parallel.hpp): the tiles of one round write disjoint rows, so
// no locks, and each row receives its partial sums in an order fixed by N alone, which makes
// the result the same at every thread count.
#include "kernel/matrix.hpp"

#include <algorithm>
#include <stdexcept>
#include <variant>

#include "common/micro.hpp"
#include "common/parallel.hpp"
#include "kernel/tiles.hpp"

namespace infolens::kernel {

Kind parse_kind(const std::string& name) {
    if (name == "gaussian") return Kind::gaussian;
    if (name == "laplacian") return Kind::laplacian;
    if (name == "linear") return Kind::linear;
    throw std::invalid_argument("factors: unknown kernel kind '" + name + "' (expected gaussian, laplacian or linear)");
}

namespace {

constexpr int64_t kBlock = 512;  // rows per scheduled block: fixed, so sums do not depend on threads

template <class T>
class Engine {
    using V = typename Simd<T>::V;
    static constexpr int W = Simd<T>::W;
    static constexpr int64_t kT = Tiles<T>::kTile;
    static constexpr int RR = 4;  // rows per accumulation micro-tile
    static constexpr int CB = 4;  // column vectors per accumulation micro-tile

public:
    Engine(const std::vector<FactorView<T>>& factors, int64_t n) : tiles_(factors, n) {}

    int64_t n() const { return tiles_.n(); }

    void matmul(const double* v, int64_t b, double* out, int nt) const {
        const int64_t n = tiles_.n(), npad = tiles_.npad(), bp = (b + W - 1) / W * W;
        aligned_vector<T> vp(npad * bp, T(0));  // v in the compute type, rows and columns padded
        for (int64_t i = 0; i < n; ++i)
            for (int64_t c = 0; c < b; ++c) vp[i * bp + c] = T(v[i * b + c]);
        std::fill(out, out + n * b, 0.0);
        std::vector<aligned_vector<T>> scratch(nt, aligned_vector<T>(3 * kT * kT));
        for_each_block_pair(blocks(), nt, [&](int64_t bi, int64_t bj) {
            T* tile = scratch[thread_id()].data();
            T* tmp = tile + kT * kT;
            T* transposed = tmp + kT * kT;
            for_each_tile(bi, bj, [&](int64_t i0, int64_t j0) {
                tiles_.tile(i0, j0, tile, tmp);
                accumulate(tile, &vp[j0 * bp], bp, out, b, i0);
                if (i0 == j0) return;  // a diagonal tile is whole: both triangles are in it
                for (int64_t r = 0; r < kT; ++r)
                    for (int64_t c = 0; c < kT; ++c) transposed[c * kT + r] = tile[r * kT + c];
                accumulate(transposed, &vp[i0 * bp], bp, out, b, j0);
            });
        });
    }

    double sum_squares(int nt) const {
        std::vector<double> block_sums(blocks(), 0.0);  // block bi is in one pair per round
        std::vector<aligned_vector<T>> scratch(nt, aligned_vector<T>(2 * kT * kT));
        for_each_block_pair(blocks(), nt, [&](int64_t bi, int64_t bj) {
            T* tile = scratch[thread_id()].data();
            for_each_tile(bi, bj, [&](int64_t i0, int64_t j0) {
                tiles_.tile(i0, j0, tile, tile + kT * kT);
                double s = 0;
                for (int64_t r = 0; r < kT; ++r) {
                    V acc{};
                    for (int64_t c = 0; c < kT; c += W) {
                        const V t = vload<V>(tile + r * kT + c);
                        acc += t * t;
                    }
                    for (int l = 0; l < W; ++l) s += double(acc[l]);
                }
                block_sums[bi] += i0 == j0 ? s : 2 * s;
            });
        });
        double total = 0;
        for (double s : block_sums) total += s;
        return total;
    }

private:
    int64_t blocks() const { return (tiles_.npad() + kBlock - 1) / kBlock; }

    // Tiles (i0, j0) of block pair (bi, bj); on a diagonal block only those with j0 >= i0.
    template <class F>
    void for_each_tile(int64_t bi, int64_t bj, const F& f) const {
        const int64_t npad = tiles_.npad();
        const int64_t i_end = std::min(npad, (bi + 1) * kBlock), j_end = std::min(npad, (bj + 1) * kBlock);
        for (int64_t i0 = bi * kBlock; i0 < i_end; i0 += kT)
            for (int64_t j0 = bj * kBlock; j0 < j_end; j0 += kT)
                if (bi != bj || j0 >= i0) f(i0, j0);
    }

    // out[row0 + r, :b] += sum_c tile[r, c] * vb[c, :] over the tile's kT columns.
    void accumulate(const T* tile, const T* vb, int64_t bp, double* out, int64_t b, int64_t row0) const {
        const int64_t rows = std::min<int64_t>(kT, tiles_.n() - row0);
        for (int64_t r0 = 0; r0 < rows; r0 += RR)
            for (int64_t col0 = 0; col0 < bp; col0 += CB * W) {
                switch (std::min<int64_t>(CB, (bp - col0) / W)) {
                    case 4: micro<4>(tile + r0 * kT, vb + col0, bp, out, b, row0 + r0, rows - r0, col0); break;
                    case 3: micro<3>(tile + r0 * kT, vb + col0, bp, out, b, row0 + r0, rows - r0, col0); break;
                    case 2: micro<2>(tile + r0 * kT, vb + col0, bp, out, b, row0 + r0, rows - r0, col0); break;
                    default: micro<1>(tile + r0 * kT, vb + col0, bp, out, b, row0 + r0, rows - r0, col0); break;
                }
            }
    }

    // RR rows x NC column vectors of the product, flushed into float64.
    template <int NC>
    static void micro(const T* tile, const T* vb, int64_t bp, double* out, int64_t b, int64_t row, int64_t rows,
                      int64_t col0) {
        V acc[RR][NC] = {};
        micro_tile(tile, kT, vb, bp, kT, acc, [](V a, V k, V x) { return V(a + k * x); });
        for (int r = 0; r < RR && r < rows; ++r)
            for (int u = 0; u < NC; ++u)
                for (int l = 0; l < W; ++l) {
                    const int64_t col = col0 + u * W + l;
                    if (col < b) out[(row + r) * b + col] += double(acc[r][u][l]);
                }
    }

    Tiles<T> tiles_;
};

template <class T>
std::vector<FactorView<T>> views(const std::vector<Factor>& factors) {
    std::vector<FactorView<T>> out;
    for (const auto& f : factors) out.push_back({parse_kind(f.kind), static_cast<const T*>(f.x), f.d});
    return out;
}

}  // namespace

struct KernelMatrix::Impl {
    Dtype dtype;
    std::variant<Engine<float>, Engine<double>> engine;
};

KernelMatrix::KernelMatrix(const std::vector<Factor>& factors, Dtype dtype, int64_t n) {
    if (factors.empty()) throw std::invalid_argument("factors must hold at least one (kind, points) pair");
    if (n < 1) throw std::invalid_argument("points must have at least one row");
    for (const auto& f : factors) {
        parse_kind(f.kind);
        if (f.d < 1) throw std::invalid_argument("points must have at least one column");
    }
    if (dtype == Dtype::float32)
        impl_.reset(new Impl{dtype, Engine<float>(views<float>(factors), n)});
    else
        impl_.reset(new Impl{dtype, Engine<double>(views<double>(factors), n)});
}

KernelMatrix::~KernelMatrix() = default;
KernelMatrix::KernelMatrix(KernelMatrix&&) noexcept = default;

int64_t KernelMatrix::n() const {
    return std::visit([](const auto& e) { return e.n(); }, impl_->engine);
}

Dtype KernelMatrix::dtype() const { return impl_->dtype; }

void KernelMatrix::matmul(const double* v, int64_t b, double* out, int threads) const {
    if (b < 1) throw std::invalid_argument("v must have at least one column");
    std::visit([&](const auto& e) { e.matmul(v, b, out, team_size(threads)); }, impl_->engine);
}

double KernelMatrix::sum_squares(int threads) const {
    return std::visit([&](const auto& e) { return e.sum_squares(team_size(threads)); }, impl_->engine);
}

}  // namespace infolens::kernel
