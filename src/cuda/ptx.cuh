// The few PTX instructions the kernels use that CUDA C++ does not spell: asynchronous copies
// into shared memory and the TF32 tensor-core product. One place for the inline assembly, so
// that the CPU emulation of the kernels (tests/emulated_cuda/include/ptx.cuh, found first on its
// include path) can stand in for exactly these.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace infolens::cuda::ptx {

// Copies `bytes` (0 to kSize) from global src to shared dst and fills the rest of the kSize bytes
// with zeros; src must be kSize-aligned even where bytes < kSize (pass any aligned address for 0).
// Complete once cp_async_wait has covered its group.
template <int kSize>
__device__ __forceinline__ void cp_async(void* dst, const void* src, int bytes) {
  static_assert(kSize == 4 || kSize == 8 || kSize == 16, "cp.async copies 4, 8 or 16 bytes");
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  if constexpr (kSize == 16)  // .cg: L2 only, the 16-byte form
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(bytes) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(d), "l"(src), "n"(kSize), "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most kPending of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// All ones where a < b (kStrict) or a <= b, else 0; false for NaN. Subtracted from a count it
// adds 1 without a branch or a predicate-to-integer conversion.
template <bool kStrict>
__device__ __forceinline__ unsigned set_mask(double a, double b) {
  unsigned d;
  if constexpr (kStrict)
    asm("set.lt.u32.f64 %0, %1, %2;" : "=r"(d) : "d"(a), "d"(b));
  else
    asm("set.le.u32.f64 %0, %1, %2;" : "=r"(d) : "d"(a), "d"(b));
  return d;
}

// x rounded to the nearest TF32 (10 mantissa bits, ties away from zero), as a 32-bit pattern.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// d += A B for one warp: A 16 x 8 and B 8 x 8 in TF32, d 16 x 8 in float32. Lane l holds, with
// g = l / 4 and t = l % 4: a = A(g, t), A(g + 8, t), A(g, t + 4), A(g + 8, t + 4);
// b = B(t, g), B(t + 4, g); d = D(g, 2t), D(g, 2t + 1), D(g + 8, 2t), D(g + 8, 2t + 1).
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

}  // namespace infolens::cuda::ptx
