// The few cub device-wide algorithms the grid kNN path calls, on the CPU, with cub's semantics:
// radix sorts are stable and order floating-point keys by their bits as cub does (negative
// values reversed below the positive ones, -0 before +0, NaNs by their sign bit at either end),
// over the bits [begin_bit, end_bit) only. A call with temp == nullptr only sizes the workspace.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

namespace cub {

namespace detail {

template <class K>
uint64_t radix_bits(K key) {
  using U = std::conditional_t<sizeof(K) == 4, uint32_t, uint64_t>;
  U u;
  std::memcpy(&u, &key, sizeof(K));
  if constexpr (std::is_floating_point_v<K>) {
    const U sign = U(1) << (sizeof(K) * 8 - 1);
    u = (u & sign) ? U(~u) : U(u | sign);
  } else if constexpr (std::is_signed_v<K>) {
    u ^= U(1) << (sizeof(K) * 8 - 1);
  }
  return uint64_t(u);
}

template <class K>
std::vector<int> order(const K* keys, int n, int begin_bit, int end_bit) {
  const int width = end_bit - begin_bit;
  const uint64_t mask = width >= 64 ? ~uint64_t(0) : (uint64_t(1) << width) - 1;
  std::vector<uint64_t> digits(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) digits[i] = (radix_bits(keys[i]) >> begin_bit) & mask;
  std::vector<int> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return digits[a] < digits[b]; });
  return idx;
}

}  // namespace detail

// Two buffers of keys; a sort through it leaves its result in Current() (here: the other one).
template <class K>
struct DoubleBuffer {
  K* d_buffers[2];
  int selector = 0;
  DoubleBuffer(K* current, K* alternate) : d_buffers{current, alternate} {}
  K* Current() const { return d_buffers[selector]; }
  K* Alternate() const { return d_buffers[selector ^ 1]; }
};

struct DeviceRadixSort {
  template <class K>
  static cudaError_t SortKeys(void* temp, size_t& bytes, DoubleBuffer<K>& keys, int n, int begin_bit = 0,
                              int end_bit = int(sizeof(K) * 8), cudaStream_t stream = nullptr) {
    const cudaError_t status = SortKeys(temp, bytes, keys.Current(), keys.Alternate(), n, begin_bit, end_bit, stream);
    if (temp != nullptr) keys.selector ^= 1;
    return status;
  }

  template <class K>
  static cudaError_t SortKeys(void* temp, size_t& bytes, const K* in, K* out, int n, int begin_bit = 0,
                              int end_bit = int(sizeof(K) * 8), cudaStream_t = nullptr) {
    if (temp == nullptr) {
      bytes = 16;
      return cudaSuccess;
    }
    const std::vector<int> idx = detail::order(in, n, begin_bit, end_bit);
    std::vector<K> sorted(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) sorted[i] = in[idx[i]];
    std::copy(sorted.begin(), sorted.end(), out);
    return cudaSuccess;
  }

  template <class K, class V>
  static cudaError_t SortPairs(void* temp, size_t& bytes, const K* keys_in, K* keys_out, const V* values_in,
                               V* values_out, int n, int begin_bit = 0, int end_bit = int(sizeof(K) * 8),
                               cudaStream_t = nullptr) {
    if (temp == nullptr) {
      bytes = 16;
      return cudaSuccess;
    }
    const std::vector<int> idx = detail::order(keys_in, n, begin_bit, end_bit);
    std::vector<K> k(static_cast<size_t>(n));
    std::vector<V> v(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) k[i] = keys_in[idx[i]], v[i] = values_in[idx[i]];
    std::copy(k.begin(), k.end(), keys_out);
    std::copy(v.begin(), v.end(), values_out);
    return cudaSuccess;
  }
};

struct DeviceScan {
  template <class T>
  static cudaError_t ExclusiveSum(void* temp, size_t& bytes, const T* in, T* out, int n, cudaStream_t = nullptr) {
    if (temp == nullptr) {
      bytes = 16;
      return cudaSuccess;
    }
    T sum = T(0);
    for (int i = 0; i < n; ++i) {
      const T x = in[i];  // in and out may be one array
      out[i] = sum;
      sum += x;
    }
    return cudaSuccess;
  }
};

}  // namespace cub
