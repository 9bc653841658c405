// The curvature product of a softmax cross-entropy output layer, fused over vocabulary tiles
// (softmax_ce_ggn.cpp; the CUDA engine in src/cuda/curvature/ computes the same function).
//
// Tokens t with head inputs h [T, d], a linear head W [V, d] with optional bias c [V], logits
// z = h W^T + c, p = softmax(z) per token and loss sum_t w_t CE(z_t, y_t). For b tangents
// (dh_j [T, d], dW_j [V, d], dc_j [V]) the logit tangent is dz_j = dh_j W^T + h dW_j^T + dc_j,
// u_j = w_t (p * dz_j - p (p . dz_j)) per token (the logit Hessian w_t (diag p - p p^T) applied),
// and the outputs are the pullback of u_j through the head:
//   out_dh_j = u_j W [T, d],   out_dW_j = u_j^T h [V, d],   out_dc_j = sum_t u_j [V],
// together the head's block of the generalised Gauss-Newton product J^T H J v (for this loss
// also the Fisher). Labels do not enter. Agreement between engines and with the torch reference
// is to rounding (about 1e-6 of the largest output entry in float32, 1e-14 in float64).
#pragma once

#include <cstdint>

namespace infolens::curvature {

enum class Dtype { float32, float64 };

// Row-major arrays of one dtype. A null tangent is zero; a null output is not computed; at least
// one of each is given. Outputs must not overlap the inputs or each other.
struct HeadProblem {
    Dtype dtype;
    int64_t tokens, vocab, dim, vectors;  // T, V, d, b
    const void* h;                        // [T, d]
    const void* w;                        // [V, d]
    const void* bias;                     // [V] or null
    const void* token_weights;            // [T]
    const void* dh;                       // [b, T, d] or null
    const void* dw;                       // [b, V, d] or null
    const void* dbias;                    // [b, V] or null
    void* out_dh;                         // [b, T, d] or null
    void* out_dw;                         // [b, V, d] or null
    void* out_dbias;                      // [b, V] or null
};

// Fills the requested outputs with at most `threads` threads (0: OpenMP's default team; small
// problems use fewer). Results do not depend on the number of threads.
void softmax_ce_ggn(const HeadProblem& problem, int threads);

}  // namespace infolens::curvature
