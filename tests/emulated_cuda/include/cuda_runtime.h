// A CUDA stand-in for running kernels on the CPU (tests/test_grid_emulated.py): enough of the
// runtime, the device qualifiers and the warp intrinsics that the grid kNN path (src/cuda/knn/
// grid.cu) compiles with g++ and runs here, where no GPU is. Memory is host memory, streams are
// synchronous, and every thread of a warp is a fiber (ucontext): the 32 lanes run until each one
// has reached the warp's next collective (__syncwarp, __all_sync, __any_sync, __shfl_xor_sync),
// which is then carried out for all of them; lanes that have returned take no part. Warps and
// blocks run one after another (the grid kernels have no block-wide barrier), so a warp's
// __shared__ rows are its own. A collective that the live lanes do not reach together (a
// divergent warp) aborts with a message: that is a bug in the kernel.
#pragma once
#include <setjmp.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __grid_constant__
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum cudaError_t { cudaSuccess = 0, cudaErrorMemoryAllocation = 2, cudaErrorInvalidValue = 1 };
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
using cudaStream_t = void*;

inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorName(cudaError_t) { return "cudaErrorEmulated"; }
inline const char* cudaGetErrorString(cudaError_t) { return "error in the CPU emulation"; }
inline cudaError_t cudaGetDevice(int* device) { *device = 0; return cudaSuccess; }
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  *p = std::malloc(bytes == 0 ? 1 : bytes);
  // poisoned, as fresh device memory may hold anything: a kernel reading what nobody wrote shows
  std::memset(*p, 0xA5, bytes);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) { std::free(p); return cudaSuccess; }
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) {
  std::memset(dst, value, bytes);
  return cudaSuccess;
}

// ---- intrinsics ----------------------------------------------------------------------------------
// Built with -ffp-contract=off: a + b, a * b are the correctly rounded operations, as the _rn ones.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, 8); return d; }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  *p += v;
  return old;
}
template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }

// ---- threads as fibers -------------------------------------------------------------------------
namespace emu {

struct Index {
  unsigned x, y, z;
};

struct Lane {
  ucontext_t context;  // for its start on its own stack
  jmp_buf resume;      // where it waits (switching by _setjmp/_longjmp: no signal-mask system calls)
  Index thread;
  bool started = false, done = false, waiting = false;
  long arrivals = 0;  // collectives reached so far: all live lanes must agree
};

struct Warp {
  Lane lanes[32];
  int size = 0;
  uint64_t slot[32];
  std::function<void()> body;
};

inline Warp* warp = nullptr;
inline int lane = 0;
inline jmp_buf scheduler;
inline ucontext_t starter;
inline Index block_index, block_dim, grid_dim;
inline std::vector<char> stacks;
constexpr size_t kStack = 128 * 1024;

inline void entry() {
  warp->body();
  warp->lanes[lane].done = true;
  _longjmp(scheduler, 1);
}

// Waits until every live lane of the warp has reached this collective.
inline void arrive() {
  Lane& me = warp->lanes[lane];
  me.waiting = true;
  ++me.arrivals;
  if (_setjmp(me.resume) == 0) _longjmp(scheduler, 1);
}

inline void run_warp(Warp& w) {
  if (stacks.empty()) stacks.resize(32 * kStack);
  for (int l = 0; l < w.size; ++l) {
    Lane& ln = w.lanes[l];
    ln.started = ln.done = ln.waiting = false;
    ln.arrivals = 0;
    getcontext(&ln.context);
    ln.context.uc_stack.ss_sp = stacks.data() + size_t(l) * kStack;
    ln.context.uc_stack.ss_size = kStack;
    ln.context.uc_link = nullptr;
    makecontext(&ln.context, entry, 0);
  }
  warp = &w;
  for (;;) {
    for (int l = 0; l < w.size; ++l) {
      if (w.lanes[l].done || w.lanes[l].waiting) continue;
      lane = l;
      Lane& ln = w.lanes[l];
      if (_setjmp(scheduler) == 0) {
        if (ln.started) _longjmp(ln.resume, 1);
        ln.started = true;
        swapcontext(&starter, &ln.context);
      }
    }
    long arrivals = -1;
    bool any = false;
    for (int l = 0; l < w.size; ++l) {
      const Lane& ln = w.lanes[l];
      if (ln.done) continue;
      any = true;
      if (arrivals >= 0 && ln.arrivals != arrivals) {
        std::fprintf(stderr, "emulated CUDA: lanes of a warp at different collectives (divergence)\n");
        std::abort();
      }
      arrivals = ln.arrivals;
    }
    if (!any) return;
    for (int l = 0; l < w.size; ++l) w.lanes[l].waiting = false;  // every live lane has arrived
  }
}

template <class T>
inline T exchange(T value, int source) {
  static_assert(sizeof(T) <= 8, "a register of at most 8 bytes");
  std::memcpy(&warp->slot[lane], &value, sizeof(T));
  arrive();
  T out;
  std::memcpy(&out, &warp->slot[source], sizeof(T));
  arrive();  // every lane has read before the slots are written again
  return out;
}

template <class Kernel, class... Args>
void launch(Kernel kernel, dim3 grid, dim3 block, size_t, cudaStream_t, Args... args) {
  grid_dim = {grid.x, grid.y, grid.z};
  block_dim = {block.x, block.y, block.z};
  const unsigned threads = block.x * block.y * block.z;
  Warp w;
  w.body = [&] { kernel(args...); };
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        block_index = {bx, by, bz};
        for (unsigned first = 0; first < threads; first += 32) {
          w.size = int(std::min(32u, threads - first));
          for (int l = 0; l < w.size; ++l) {
            const unsigned t = first + unsigned(l);
            w.lanes[l].thread = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
          }
          run_warp(w);
        }
      }
}

}  // namespace emu

#define threadIdx (::emu::warp->lanes[::emu::lane].thread)
#define blockIdx (::emu::block_index)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)

inline void __syncwarp(unsigned = 0xffffffffu) { emu::arrive(); }
inline bool __all_sync(unsigned, bool p) {
  const uint64_t bit = p ? 1 : 0;
  emu::warp->slot[emu::lane] = bit;
  emu::arrive();
  bool all = true;
  for (int l = 0; l < emu::warp->size; ++l)
    if (!emu::warp->lanes[l].done && emu::warp->slot[l] == 0) all = false;
  emu::arrive();
  return all;
}
inline bool __any_sync(unsigned, bool p) {
  emu::warp->slot[emu::lane] = p ? 1 : 0;
  emu::arrive();
  bool any = false;
  for (int l = 0; l < emu::warp->size; ++l)
    if (!emu::warp->lanes[l].done && emu::warp->slot[l] != 0) any = true;
  emu::arrive();
  return any;
}
template <class T>
inline T __shfl_xor_sync(unsigned, T value, int mask) {
  return emu::exchange(value, emu::lane ^ mask);
}
