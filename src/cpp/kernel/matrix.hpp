// A kernel matrix that is never stored: K @ V for blocks V [n, b] and sum_ij K_ij^2, from tiles
// (kernel/tiles.hpp). docs/NATIVE_ABI.md describes the contract.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace infolens::kernel {

enum class Dtype { float32, float64 };

// One factor of the Hadamard product: its kind ("gaussian", "laplacian", "linear") and its
// row-major points [n, d] of the matrix's dtype.
struct Factor {
    std::string kind;
    const void* x;
    int64_t d;
};

class KernelMatrix {
public:
    KernelMatrix(const std::vector<Factor>& factors, Dtype dtype, int64_t n);
    ~KernelMatrix();
    KernelMatrix(KernelMatrix&&) noexcept;

    int64_t n() const;
    Dtype dtype() const;

    // out [n, b] = K @ v [n, b], both float64 and row-major. Kernel values and the products of a
    // tile are formed in the matrix's dtype; each tile's partial sums (64 terms) are added into
    // float64, so sums over a million terms keep float64 accuracy.
    void matmul(const double* v, int64_t b, double* out, int threads) const;

    // sum_ij K_ij^2 in float64.
    double sum_squares(int threads) const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace infolens::kernel
