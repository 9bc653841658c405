// The element types the CUDA engines take, named as the bindings receive them.
#pragma once

namespace infolens::cuda {

enum class Dtype : int { float32 = 0, float64 = 1 };

}  // namespace infolens::cuda
