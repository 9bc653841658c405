// The CPU emulation's stand-in for src/cuda/ptx.cuh (found first on the emulation's include
// path): the same functions with the instructions' semantics, on the fibers of cuda_runtime.h.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

namespace infolens::cuda::ptx {

// The copy lands at once: a legal schedule of an asynchronous copy, and one under which a
// kernel that refills a stage some warp still reads (a missing barrier) computes wrong results.
template <int kSize>
inline void cp_async(void* dst, const void* src, int bytes) {
  static_assert(kSize == 4 || kSize == 8 || kSize == 16, "cp.async copies 4, 8 or 16 bytes");
  if (bytes < 0 || bytes > kSize) emu::fail("cp.async: src-size outside 0..cp-size");
  if (reinterpret_cast<uintptr_t>(src) % kSize != 0 || reinterpret_cast<uintptr_t>(dst) % kSize != 0)
    emu::fail("cp.async: an address not aligned to the copy's size");
  std::memcpy(dst, src, size_t(bytes));
  std::memset(static_cast<char*>(dst) + bytes, 0, size_t(kSize - bytes));
}

inline void cp_async_commit() {}

template <int kPending>
inline void cp_async_wait() {}

template <bool kStrict>
inline unsigned set_mask(double a, double b) {
  return (kStrict ? a < b : a <= b) ? 0xffffffffu : 0u;
}

// cvt.rna.tf32.f32: 10 mantissa bits, to nearest with ties away from zero (on the magnitude's
// bits, so a carry into the exponent is right too); NaN and infinity unchanged.
inline uint32_t to_tf32(float x) {
  uint32_t u = __float_as_uint(x);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  return u;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32, the fragments as in src/cuda/ptx.cuh. The
// hardware reads only the TF32 bits of each operand (the low 13 are dropped here too, so a
// missing conversion loses accuracy as it would on a GPU); the eight exact products and c are
// summed in float64 and rounded once (the tensor cores' own order of rounding is unspecified).
inline void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  uint64_t* mine = emu::slots(emu::lane);
  for (int r = 0; r < 4; ++r) mine[r] = a[r];
  for (int r = 0; r < 2; ++r) mine[4 + r] = b[r];
  emu::arrive();
  const int first = emu::warp_first(emu::lane), l = emu::warp_lane(emu::lane), g = l / 4, t = l % 4;
  auto value = [](uint64_t bits) { return double(__uint_as_float(uint32_t(bits) & 0xffffe000u)); };
  auto A = [&](int row, int k) { return value(emu::slots(first + (row % 8) * 4 + k % 4)[(row / 8) + 2 * (k / 4)]); };
  auto B = [&](int k, int col) { return value(emu::slots(first + col * 4 + k % 4)[4 + k / 4]); };
  float out[4];
  for (int q = 0; q < 4; ++q) {
    const int row = g + 8 * (q / 2), col = 2 * t + q % 2;
    double sum = d[q];
    for (int k = 0; k < 8; ++k) sum += A(row, k) * B(k, col);
    out[q] = float(sum);
  }
  emu::arrive();  // every lane has read before the slots are written again
  for (int q = 0; q < 4; ++q) d[q] = out[q];
}

}  // namespace infolens::cuda::ptx
