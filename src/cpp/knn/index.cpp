#include "knn/index.hpp"

#include <cmath>
#include <stdexcept>
#include <variant>

#include "knn/brute.hpp"
#include "knn/kdtree.hpp"
#include "knn/metric.hpp"
#include "knn/sorted1d.hpp"

namespace infolens::knn {
namespace {

// auto: kd-tree up to this dimension, brute force above. Measured crossover on Gaussian data,
// N = 1e5..1e6, k = 3: see the comment in resolve_algorithm.
constexpr int64_t kAutoTreeMaxDim = 8;

void require(bool ok, const std::string& message) {
    if (!ok) throw std::invalid_argument(message);
}

std::string resolve_algorithm(const std::string& algorithm, int64_t d) {
    if (algorithm == "auto") {
        if (d == 1) return "sorted";
        return d <= kAutoTreeMaxDim ? "kdtree" : "brute";
    }
    require(algorithm == "kdtree" || algorithm == "brute" || algorithm == "sorted",
            "algorithm must be one of 'auto', 'kdtree', 'brute', 'sorted', got '" + algorithm + "'");
    require(algorithm != "sorted" || d == 1,
            "algorithm 'sorted' needs one-dimensional points, got d = " + std::to_string(d));
    return algorithm;
}

template <class T>
bool all_finite(const T* x, int64_t count) {
    bool ok = true;
    for (int64_t i = 0; i < count; ++i) ok &= std::isfinite(x[i]);
    return ok;
}

template <class T>
using AnyEngine = std::variant<KdTree<T>, Brute<T>, Sorted1d<T>>;

template <class T>
AnyEngine<T> make_engine(const T* points, int64_t n, int64_t d, const std::string& algorithm,
                         int64_t leaf_size) {
    if (algorithm == "kdtree") return AnyEngine<T>(std::in_place_type<KdTree<T>>, points, n, d, leaf_size);
    if (algorithm == "sorted") return AnyEngine<T>(std::in_place_type<Sorted1d<T>>, points, n);
    return AnyEngine<T>(std::in_place_type<Brute<T>>, points, n, d);
}

}  // namespace

const char* dtype_name(Dtype dtype) { return dtype == Dtype::float32 ? "float32" : "float64"; }

struct Index::Engine {
    std::variant<AnyEngine<float>, AnyEngine<double>> any;

    // Calls f(engine) with the concrete engine; f reads the element type as value_type.
    template <class F>
    void visit(F&& f) const {
        std::visit([&](const auto& typed) { std::visit(f, typed); }, any);
    }
};

Index::Index(const void* points, Dtype dtype, int64_t n, int64_t d, const std::string& algorithm,
             int64_t leaf_size)
    : n_(n), d_(d), dtype_(dtype) {
    require(n >= 1, "points must have at least one row, got " + std::to_string(n));
    require(d >= 1, "points must have at least one column, got " + std::to_string(d));
    require(leaf_size >= 0, "leaf_size must be >= 0, got " + std::to_string(leaf_size));
    algorithm_ = resolve_algorithm(algorithm, d);
    // Non-finite coordinates would make keys NaN (inf - inf), which no order can rank.
    if (dtype == Dtype::float32) {
        const auto* x = static_cast<const float*>(points);
        require(all_finite(x, n * d), "points must be finite (no NaN or inf)");
        engine_.reset(new Engine{make_engine(x, n, d, algorithm_, leaf_size)});
    } else {
        const auto* x = static_cast<const double*>(points);
        require(all_finite(x, n * d), "points must be finite (no NaN or inf)");
        engine_.reset(new Engine{make_engine(x, n, d, algorithm_, leaf_size)});
    }
}

Index::~Index() = default;
Index::Index(Index&&) noexcept = default;
Index& Index::operator=(Index&&) noexcept = default;

void Index::check_knn(int64_t k, double p, bool self_join, int threads) const {
    const int64_t k_max = self_join ? n_ - 1 : n_;
    require(k >= 1 && k <= k_max,
            "k must be in [1, " + std::to_string(k_max) + "] for " +
                (self_join ? "the self-join of " : "queries against ") + std::to_string(n_) +
                " points, got " + std::to_string(k));
    check_count(p, threads);
}

void Index::check_count(double p, int threads) const {
    require(valid_order(p), "p must be >= 1 (inf allowed), got " + std::to_string(p));
    require(threads >= 0, "threads must be >= 0, got " + std::to_string(threads));
}

void Index::check_queries(const void* queries, int64_t m) const {
    require(queries != nullptr || m == n_, "the self-join answers exactly one query per point");
    if (!queries) return;
    const bool finite = dtype_ == Dtype::float32
                            ? all_finite(static_cast<const float*>(queries), m * d_)
                            : all_finite(static_cast<const double*>(queries), m * d_);
    require(finite, "queries must be finite (no NaN or inf)");
}

void Index::knn(int64_t k, double p, void* out_keys, int64_t* out_idx, const void* queries,
                int64_t m, int threads) const {
    check_knn(k, p, queries == nullptr, threads);
    check_queries(queries, m);
    if (m == 0) return;
    engine_->visit([&](const auto& engine) {
        using T = typename std::decay_t<decltype(engine)>::value_type;
        with_metric(p, [&](const auto& metric) {
            engine.knn(metric, k, static_cast<T*>(out_keys), out_idx, static_cast<const T*>(queries), m,
                       threads);
        });
    });
}

void Index::count(const void* radius, double p, bool strict, int64_t* out, const void* queries,
                  int64_t m, int threads) const {
    check_count(p, threads);
    check_queries(queries, m);
    if (m == 0) return;
    engine_->visit([&](const auto& engine) {
        using T = typename std::decay_t<decltype(engine)>::value_type;
        const T* r = static_cast<const T*>(radius);
        const T* q = static_cast<const T*>(queries);
        with_metric(p, [&](const auto& metric) {
            using M = std::decay_t<decltype(metric)>;
            if (strict)
                engine.template count<M, true>(metric, r, out, q, m, threads);
            else
                engine.template count<M, false>(metric, r, out, q, m, threads);
        });
    });
}

}  // namespace infolens::knn
