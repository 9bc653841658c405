// A CUDA stand-in for running kernels on the CPU (tests/test_grid_emulated.py,
// tests/test_head_emulated.py): enough of the runtime, the device qualifiers and the intrinsics
// that the grid kNN path (src/cuda/knn/grid.cu) and the head's GGN engine (src/cuda/curvature/)
// compile with g++ and run here, where no GPU is; ptx.cuh beside it stands in for the inline
// assembly. Memory is host memory, streams are synchronous, and every thread of a block is a
// fiber (ucontext). Threads run until each has reached its next wait: a warp collective
// (__syncwarp, votes, shuffles, the tensor-core product), carried out once every live lane of
// the warp is there, or the block barrier (__syncthreads, __syncthreads_or), passed once every
// live thread of the block is there; threads that have returned take no part. Blocks run
// one after another, so __shared__ arrays (static here) are the running block's. A warp whose
// live lanes do not reach the same collective (a divergent warp) aborts with a message: that is
// a bug in the kernel.
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
#define __align__(n) __attribute__((aligned(n)))

struct float4 {
  float x, y, z, w;
};
struct int4 {
  int x, y, z, w;
};
struct double2 {
  double x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }

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
inline cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  *free_bytes = size_t(256) << 20, *total_bytes = size_t(1) << 30;  // a small device
  return cudaSuccess;
}
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin, cudaDevAttrMultiProcessorCount };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrMaxSharedMemoryPerBlockOptin ? 227 * 1024 : 132;  // an H100's
  return cudaSuccess;
}
template <class Kernel>
inline cudaError_t cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int) { return cudaSuccess; }
template <class Kernel>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int, size_t) {
  *blocks = 2;
  return cudaSuccess;
}
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
inline float __uint_as_float(uint32_t v) { float f; std::memcpy(&f, &v, 4); return f; }
inline uint32_t __float_as_uint(float f) { uint32_t v; std::memcpy(&v, &f, 4); return v; }
inline int __float_as_int(float f) { int v; std::memcpy(&v, &f, 4); return v; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, 8); return d; }
template <class T>  // fibers switch only at waits: every read-modify-write is atomic
inline T atomicAdd(T* p, T v) {
  const T old = *p;
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

enum class Wait { none, warp, block };

struct Lane {
  ucontext_t context;  // for its start on its own stack
  jmp_buf resume;      // where it waits (switching by _setjmp/_longjmp: no signal-mask system calls)
  Index thread;
  bool started = false, done = false;
  Wait waiting = Wait::none;
  long arrivals = 0;  // warp collectives reached so far: all live lanes of a warp must agree
};

constexpr int kSlots = 16;  // registers a lane may publish to its warp at one collective

struct Block {
  std::vector<Lane> lanes;
  int size = 0;
  std::vector<uint64_t> slot;  // [thread][kSlots]
  std::function<void()> body;
};

inline Block* block = nullptr;
inline int lane = 0;  // the running thread's index in its block
inline jmp_buf scheduler;
inline ucontext_t starter;
inline Index block_index, block_dim, grid_dim;
inline char* dynamic_shared = nullptr;  // the launch's dynamic shared memory (extern __shared__)
inline std::vector<char> stacks;
constexpr size_t kStack = 128 * 1024;

inline void entry() {
  block->body();
  block->lanes[lane].done = true;
  _longjmp(scheduler, 1);
}

inline void wait(Wait kind) {
  Lane& me = block->lanes[lane];
  me.waiting = kind;
  if (kind == Wait::warp) ++me.arrivals;
  if (_setjmp(me.resume) == 0) _longjmp(scheduler, 1);
}

// Waits until every live lane of the warp has reached this collective.
inline void arrive() { wait(Wait::warp); }

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "emulated CUDA: %s\n", what);
  std::abort();
}

// Runs every thread of the block until each has returned. A warp is released from a collective
// once all its live lanes wait there; the block from a barrier once all its live threads do.
// Of the warps waiting at collectives, only the first is released each round, so the lowest
// warp runs ahead to the next barrier before the others move: a legal schedule, and the one
// under which a missing barrier (a stage refilled while another warp still reads it) shows.
inline void run_block(Block& b) {
  if (stacks.size() < size_t(b.size) * kStack) stacks.resize(size_t(b.size) * kStack);
  for (int l = 0; l < b.size; ++l) {
    Lane& ln = b.lanes[l];
    ln.started = ln.done = false;
    ln.waiting = Wait::none;
    ln.arrivals = 0;
    getcontext(&ln.context);
    ln.context.uc_stack.ss_sp = stacks.data() + size_t(l) * kStack;
    ln.context.uc_stack.ss_size = kStack;
    ln.context.uc_link = nullptr;
    makecontext(&ln.context, entry, 0);
  }
  block = &b;
  for (;;) {
    for (int l = 0; l < b.size; ++l) {
      Lane& ln = b.lanes[l];
      if (ln.done || ln.waiting != Wait::none) continue;
      lane = l;
      if (_setjmp(scheduler) == 0) {
        if (ln.started) _longjmp(ln.resume, 1);
        ln.started = true;
        swapcontext(&starter, &ln.context);
      }
    }
    bool live = false, released = false, all_at_barrier = true;
    for (int first = 0; first < b.size; first += 32) {
      const int last = std::min(b.size, first + 32);
      long arrivals = -1;
      bool warp_live = false, at_collective = true;
      for (int l = first; l < last; ++l) {
        const Lane& ln = b.lanes[l];
        if (ln.done) continue;
        live = warp_live = true;
        if (ln.waiting != Wait::warp) at_collective = false;
        if (ln.waiting != Wait::block) all_at_barrier = false;
        if (ln.waiting == Wait::warp) {
          if (arrivals >= 0 && ln.arrivals != arrivals) fail("lanes of a warp at different collectives (divergence)");
          arrivals = ln.arrivals;
        }
      }
      if (warp_live && at_collective && !released) {  // one warp at a time: see above
        for (int l = first; l < last; ++l) b.lanes[l].waiting = Wait::none;
        released = true;
      }
    }
    if (!live) return;
    if (released) continue;
    if (!all_at_barrier) fail("a warp with lanes both at a collective and at a block barrier (divergence)");
    for (auto& ln : b.lanes) ln.waiting = Wait::none;  // every live thread has reached the barrier
  }
}

inline uint64_t* slots(int thread) { return &block->slot[size_t(thread) * kSlots]; }
inline int warp_lane(int l) { return l % 32; }
inline int warp_first(int l) { return l - l % 32; }

template <class T>
inline T exchange(T value, int source) {
  static_assert(sizeof(T) <= 8, "a register of at most 8 bytes");
  std::memcpy(slots(lane), &value, sizeof(T));
  arrive();
  T out;
  std::memcpy(&out, slots(warp_first(lane) + source), sizeof(T));
  arrive();  // every lane has read before the slots are written again
  return out;
}

template <class Kernel, class... Args>
void launch(Kernel kernel, dim3 grid, dim3 block, size_t bytes, cudaStream_t, Args... args) {
  grid_dim = {grid.x, grid.y, grid.z};
  block_dim = {block.x, block.y, block.z};
  Block b;
  b.size = int(block.x * block.y * block.z);
  b.lanes.resize(size_t(b.size));
  b.slot.assign(size_t(b.size) * kSlots, 0);
  b.body = [&] { kernel(args...); };
  std::vector<char> shared(bytes + 16);  // 16-byte aligned, as a GPU's; poisoned per block below
  dynamic_shared = shared.data() + (16 - reinterpret_cast<uintptr_t>(shared.data()) % 16) % 16;
  for (int t = 0; t < b.size; ++t)
    b.lanes[size_t(t)].thread = {unsigned(t) % block.x, (unsigned(t) / block.x) % block.y,
                                 unsigned(t) / (block.x * block.y)};
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        block_index = {bx, by, bz};
        std::memset(dynamic_shared, 0xA5, bytes);  // a kernel reading what it did not write shows
        run_block(b);
      }
}

}  // namespace emu

#define threadIdx (::emu::block->lanes[::emu::lane].thread)
#define blockIdx (::emu::block_index)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)

inline void __syncwarp(unsigned = 0xffffffffu) { emu::arrive(); }
inline void __syncthreads() { emu::wait(emu::Wait::block); }

// The warp's live lanes whose p holds, as bits (bit l: lane l), and the live lanes.
inline unsigned ballot(bool p, unsigned& live) {
  emu::slots(emu::lane)[0] = p ? 1 : 0;
  emu::arrive();
  unsigned bits = 0;
  live = 0;
  const int first = emu::warp_first(emu::lane);
  for (int l = first; l < std::min(emu::block->size, first + 32); ++l) {
    if (emu::block->lanes[l].done) continue;
    live |= 1u << (l - first);
    if (emu::slots(l)[0]) bits |= 1u << (l - first);
  }
  emu::arrive();  // every lane has read before the slots are written again
  return bits;
}
inline unsigned __ballot_sync(unsigned, bool p) {
  unsigned live;
  return ballot(p, live);
}
inline bool __all_sync(unsigned, bool p) {
  unsigned live;
  return ballot(p, live) == live;
}
inline bool __any_sync(unsigned, bool p) {
  unsigned live;
  return ballot(p, live) != 0;
}
template <class T>
inline T __shfl_xor_sync(unsigned, T value, int mask) {
  return emu::exchange(value, emu::warp_lane(emu::lane) ^ mask);
}
template <class T>
inline T __shfl_sync(unsigned, T value, int source) {
  return emu::exchange(value, source % 32);
}
template <class T>  // lanes below delta keep their own value
inline T __shfl_up_sync(unsigned, T value, unsigned delta) {
  const int l = emu::warp_lane(emu::lane);
  return emu::exchange(value, l >= int(delta) ? l - int(delta) : l);
}
inline int __syncthreads_or(int p) {
  emu::slots(emu::lane)[1] = p != 0;
  __syncthreads();
  int any = 0;
  for (int l = 0; l < emu::block->size; ++l)
    if (!emu::block->lanes[l].done && emu::slots(l)[1]) any = 1;
  __syncthreads();  // every thread has read before the slots are written again
  return any;
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
