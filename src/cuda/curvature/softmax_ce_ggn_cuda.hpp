// The softmax cross-entropy head's GGN product on the GPU (softmax_ce_ggn.cu): the same function
// as the CPU engine, whose header (src/cpp/curvature/softmax_ce_ggn.hpp) defines it and the
// HeadProblem that describes one call; here every pointer is device memory.
#pragma once
#include <cuda_runtime.h>

#include "curvature/softmax_ce_ggn.hpp"

namespace infolens::cuda::curvature {

using infolens::curvature::Dtype;
using infolens::curvature::HeadProblem;

// Fills the requested outputs, enqueued on `stream` of `device` (made current for the call, the
// previous device restored); no host sync. Sizes and pointers are assumed checked (the bindings
// do). Workspace: two [V, Tb] slabs, a float32 [b, V, d] compensation for float32 out_dw, the
// out_dh splits (at most 64 x Tb x d float64) and a few MB; CudaOutOfMemory when it does not fit.
void softmax_ce_ggn(const HeadProblem& problem, cudaStream_t stream, int device);

}  // namespace infolens::cuda::curvature
