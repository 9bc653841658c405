// The engine's public face: one point set, one algorithm, float32 or float64 inside.
// This is the C++ side of docs/NATIVE_ABI.md; bindings.cpp only adapts numpy arrays to it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace infolens::knn {

enum class Dtype { float32, float64 };

const char* dtype_name(Dtype dtype);

class Index {
public:
    // points: n x d row-major of the given dtype, copied. algorithm: "auto", "kdtree", "brute"
    // or "sorted" (d == 1). leaf_size: kd-tree leaf capacity, 0 for the default.
    // Throws std::invalid_argument naming the offending argument.
    Index(const void* points, Dtype dtype, int64_t n, int64_t d, const std::string& algorithm,
          int64_t leaf_size);
    ~Index();
    Index(Index&&) noexcept;
    Index& operator=(Index&&) noexcept;

    int64_t n() const { return n_; }
    int64_t dim() const { return d_; }
    Dtype dtype() const { return dtype_; }
    const std::string& algorithm() const { return algorithm_; }

    // Argument checks of knn/count that need no arrays, so callers can report them first.
    void check_knn(int64_t k, double p, bool self_join, int threads) const;
    void check_count(double p, int threads) const;

    // Fills out_keys/out_idx [m, k] with the k smallest (key, index) per query; queries is
    // m x d of the index's dtype, or null for the self-join (m == n, j == i excluded).
    void knn(int64_t k, double p, void* out_keys, int64_t* out_idx, const void* queries, int64_t m,
             int threads) const;

    // out[i] = #{j : key(q_i, x_j) < radius[i]} (strict) or <= radius[i]; radius [m] of the
    // index's dtype; queries as for knn.
    void count(const void* radius, double p, bool strict, int64_t* out, const void* queries,
               int64_t m, int threads) const;

private:
    void check_queries(const void* queries, int64_t m) const;

    struct Engine;
    int64_t n_, d_;
    Dtype dtype_;
    std::string algorithm_;
    std::unique_ptr<Engine> engine_;
};

}  // namespace infolens::knn
