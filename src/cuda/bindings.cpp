// infolens._native_cuda: binds the CUDA engine. A machine without a GPU imports it and is told
// "no device" by device_count() == 0.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "check.cuh"
#include "curvature/softmax_ce_ggn_cuda.hpp"
#include "device.hpp"
#include "kernel/matmul.hpp"
#include "knn/knn.hpp"

namespace py = pybind11;
using namespace infolens::cuda;

namespace {

namespace kern = infolens::cuda::kernel;

Dtype parse_dtype(const std::string& dtype) {
  if (dtype == "float32") return Dtype::float32;
  if (dtype == "float64") return Dtype::float64;
  throw std::invalid_argument("dtype: must be \"float32\" or \"float64\", got \"" + dtype + "\"");
}

void check_pointer(std::uintptr_t ptr, std::size_t align, const std::string& name) {
  if (ptr == 0) throw std::invalid_argument(name + ": null device pointer");
  if (ptr % align != 0)
    throw std::invalid_argument(name + ": device pointer not aligned to " + std::to_string(align) +
                                " bytes");
}

// The factors of a product kernel, checked; then n, the dtype and the device.
std::vector<kern::Factor> parse_factors(const std::vector<std::string>& kinds,
                                        const std::vector<std::uintptr_t>& features,
                                        const std::vector<int64_t>& dims, int64_t n,
                                        Dtype dtype) {
  constexpr int64_t kMax = int64_t(1) << 30;
  if (kinds.empty()) throw std::invalid_argument("kinds: empty factor list");
  if (kinds.size() > std::size_t(kern::kMaxFactors))
    throw std::invalid_argument("kinds: at most " + std::to_string(kern::kMaxFactors) +
                                " factors, got " + std::to_string(kinds.size()));
  if (features.size() != kinds.size())
    throw std::invalid_argument("features: " + std::to_string(features.size()) +
                                " pointers for " + std::to_string(kinds.size()) + " kinds");
  if (dims.size() != kinds.size())
    throw std::invalid_argument("dims: " + std::to_string(dims.size()) + " dims for " +
                                std::to_string(kinds.size()) + " kinds");
  if (n < 1 || n > kMax)
    throw std::invalid_argument("n: must be in [1, 2^30], got " + std::to_string(n));
  const std::size_t item = dtype == Dtype::float32 ? 4 : 8;
  std::vector<kern::Factor> factors;
  for (std::size_t f = 0; f < kinds.size(); ++f) {
    kern::Kind kind;
    if (kinds[f] == "gaussian")
      kind = kern::Kind::gaussian;
    else if (kinds[f] == "laplacian")
      kind = kern::Kind::laplacian;
    else if (kinds[f] == "linear")
      kind = kern::Kind::linear;
    else
      throw std::invalid_argument("kinds: unknown kernel \"" + kinds[f] +
                                  "\" (gaussian, laplacian, linear)");
    if (dims[f] < 1 || dims[f] > kMax)
      throw std::invalid_argument("dims: must be in [1, 2^30], got " + std::to_string(dims[f]));
    check_pointer(features[f], item, "features");
    factors.push_back({kind, reinterpret_cast<const void*>(features[f]), dims[f]});
  }
  return factors;
}

void check_device(int device) {
  const int count = device_count();
  if (device < 0 || device >= count)
    throw std::invalid_argument("device: index " + std::to_string(device) + " out of range; " +
                                (count == 0 ? std::string("no CUDA device is present")
                                            : std::to_string(count) + " device(s) present"));
}

cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

// A kNN call's point and query matrices, checked: sizes, row strides, pointer alignment and the
// metric order. queries == 0 is the self-join (m = n).
struct KnnArgs {
  knn::Matrix points, queries;
  Dtype dtype;
  int64_t m;
};

KnnArgs knn_args(std::uintptr_t points, int64_t n, int64_t dim, int64_t ld, std::uintptr_t queries,
                 int64_t m, int64_t ldq, const std::string& dtype, double p) {
  constexpr int64_t kMax = int64_t(1) << 31;
  const Dtype dt = parse_dtype(dtype);
  const std::size_t item = dt == Dtype::float32 ? 4 : 8;
  auto in_range = [](int64_t x, int64_t lo, int64_t hi, const char* what) {
    if (x < lo || x > hi)
      throw std::invalid_argument(std::string(what) + ": must be in [" + std::to_string(lo) + ", " +
                                  std::to_string(hi) + "], got " + std::to_string(x));
  };
  in_range(n, 1, kMax - 1, "n");
  in_range(dim, 1, 1 << 16, "dim");
  in_range(ld, dim, int64_t(1) << 20, "ld");
  check_pointer(points, item, "points");
  if (!(p == 2.0 || std::isinf(p)) || p < 0)
    throw std::invalid_argument("p: the CUDA engine serves p = 2 and p = inf, got " + std::to_string(p));
  KnnArgs args{{reinterpret_cast<const void*>(points), n, dim, ld}, {nullptr, n, dim, dim}, dt, n};
  if (queries != 0) {
    in_range(m, 1, kMax - 1, "m");
    in_range(ldq, dim, int64_t(1) << 20, "ldq");
    check_pointer(queries, item, "queries");
    args.queries = {reinterpret_cast<const void*>(queries), m, dim, ldq};
    args.m = m;
  }
  return args;
}

// k and the output arrays of knn / knn_grid.
void check_knn_outputs(const KnnArgs& a, int k, std::uintptr_t out_keys, std::uintptr_t out_idx) {
  const int64_t n = a.points.rows;
  const int64_t most = a.queries.data == nullptr ? n - 1 : n;
  if (k < 1 || k > knn::kMaxK || k > most)
    throw std::invalid_argument("k: must be in [1, " + std::to_string(std::min<int64_t>(most, knn::kMaxK)) +
                                "], got " + std::to_string(k));
  check_pointer(out_keys, a.dtype == Dtype::float32 ? 4 : 8, "out_keys");
  check_pointer(out_idx, 8, "out_idx");
}

// The radius and output arrays of knn_count / knn_count_grid.
void check_count_outputs(const KnnArgs& a, std::uintptr_t radius, std::uintptr_t out) {
  check_pointer(radius, a.dtype == Dtype::float32 ? 4 : 8, "radius");
  check_pointer(out, 8, "out");
}

// softmax_ce_ggn's arguments, checked: sizes, pointers (None = absent), no output overlapping
// another array, at least one tangent and one output.
infolens::curvature::HeadProblem head_problem(
    std::uintptr_t h, std::uintptr_t w, std::optional<std::uintptr_t> bias, std::uintptr_t token_weights,
    const std::optional<std::uintptr_t> (&tangents)[3], const std::optional<std::uintptr_t> (&outputs)[3],
    int64_t tokens, int64_t vocab, int64_t dim, int64_t vectors, const std::string& dtype) {
  namespace cv = infolens::curvature;
  const cv::Dtype dt = parse_dtype(dtype) == Dtype::float32 ? cv::Dtype::float32 : cv::Dtype::float64;
  auto check_size = [](int64_t x, int64_t max, const char* what) {
    if (x < 1 || x > max)
      throw std::invalid_argument(std::string(what) + ": must be in [1, " + std::to_string(max) + "], got " +
                                  std::to_string(x));
  };
  check_size(tokens, int64_t(1) << 30, "T");
  check_size(vocab, int64_t(1) << 30, "V");
  check_size(dim, int64_t(1) << 22, "d");
  check_size(vectors, int64_t(1) << 30, "b");
  const std::size_t item = dt == cv::Dtype::float32 ? 4 : 8;
  struct Span {
    const char* name;
    std::uintptr_t ptr;
    int64_t elements;
  };
  std::vector<Span> ins = {{"h", h, tokens * dim}, {"w", w, vocab * dim}, {"token_weights", token_weights, tokens}};
  if (bias) ins.push_back({"bias", *bias, vocab});
  static const char* tangent_names[3] = {"dh", "dw", "dbias"};
  static const char* output_names[3] = {"out_dh", "out_dw", "out_dbias"};
  const int64_t sizes[3] = {vectors * tokens * dim, vectors * vocab * dim, vectors * vocab};
  std::vector<Span> outs;
  for (int i = 0; i < 3; ++i) {
    if (tangents[i]) ins.push_back({tangent_names[i], *tangents[i], sizes[i]});
    if (outputs[i]) outs.push_back({output_names[i], *outputs[i], sizes[i]});
  }
  if (!tangents[0] && !tangents[1] && !tangents[2])
    throw std::invalid_argument("at least one of dh, dw, dbias must be given");
  if (outs.empty()) throw std::invalid_argument("at least one of out_dh, out_dw, out_dbias must be given");
  for (const Span& s : ins) check_pointer(s.ptr, item, s.name);
  for (const Span& s : outs) check_pointer(s.ptr, item, s.name);
  auto overlap = [&](const Span& a, const Span& b) {
    return a.ptr < b.ptr + b.elements * item && b.ptr < a.ptr + a.elements * item;
  };
  for (std::size_t i = 0; i < outs.size(); ++i) {
    for (const Span& in : ins)
      if (overlap(outs[i], in))
        throw std::invalid_argument(std::string(outs[i].name) + " must not share memory with " + in.name);
    for (std::size_t k = 0; k < i; ++k)
      if (overlap(outs[i], outs[k]))
        throw std::invalid_argument(std::string(outs[i].name) + " must not share memory with " + outs[k].name);
  }
  auto in = [](const std::optional<std::uintptr_t>& p) -> const void* {
    return p ? reinterpret_cast<const void*>(*p) : nullptr;
  };
  auto out = [](const std::optional<std::uintptr_t>& p) -> void* {
    return p ? reinterpret_cast<void*>(*p) : nullptr;
  };
  return cv::HeadProblem{dt, tokens, vocab, dim, vectors,
                         reinterpret_cast<const void*>(h), reinterpret_cast<const void*>(w), in(bias),
                         reinterpret_cast<const void*>(token_weights),
                         in(tangents[0]), in(tangents[1]), in(tangents[2]),
                         out(outputs[0]), out(outputs[1]), out(outputs[2])};
}

}  // namespace

PYBIND11_MODULE(_native_cuda, m) {
  m.doc() = "infolens CUDA engine";
  auto& cuda_error = py::register_exception<CudaError>(m, "CudaError", PyExc_RuntimeError);
  // Out of device memory: catchable as CudaError and as MemoryError.
  py::register_exception<CudaOutOfMemory>(
      m, "CudaOutOfMemory", py::make_tuple(cuda_error, py::handle(PyExc_MemoryError)));
  m.def("device_count", &device_count, "number of usable CUDA devices (0 without a GPU or driver)");
  m.def("runtime_version", &runtime_version, "CUDA runtime version this module was linked with");
  m.def(
      "device_info",
      [](int device) {
        const DeviceInfo info = device_info(device);
        py::dict d;
        d["name"] = info.name;
        d["compute_capability"] = py::make_tuple(info.major, info.minor);
        d["multiprocessors"] = info.multiprocessors;
        d["total_memory"] = info.total_memory;
        d["runtime_version"] = info.runtime_version;
        d["driver_version"] = info.driver_version;
        return d;
      },
      py::arg("device") = 0, "name, compute capability, SM count and memory of one device");


  m.attr("knn_max_k") = knn::kMaxK;
  m.attr("knn_grid_max_k") = knn::kGridMaxK;
  m.attr("knn_grid_max_dim") = knn::kGridMaxDim;
  m.def(
      "knn",
      [](std::uintptr_t points, int64_t n, int64_t dim, int64_t ld, std::uintptr_t queries, int64_t m,
         int64_t ldq, const std::string& dtype, double p, int k, std::uintptr_t out_keys,
         std::uintptr_t out_idx, std::uintptr_t stream, int device) {
        const KnnArgs a = knn_args(points, n, dim, ld, queries, m, ldq, dtype, p);
        check_knn_outputs(a, k, out_keys, out_idx);
        check_device(device);
        py::gil_scoped_release release;
        knn::knn(a.points, a.queries, a.dtype, p, k, reinterpret_cast<void*>(out_keys),
                 reinterpret_cast<int64_t*>(out_idx), as_stream(stream), device);
      },
      py::arg("points"), py::arg("n"), py::arg("dim"), py::arg("ld"), py::arg("queries"), py::arg("m"),
      py::arg("ldq"), py::arg("dtype"), py::arg("p"), py::arg("k"), py::arg("out_keys"), py::arg("out_idx"),
      py::arg("stream"), py::arg("device"),
      "k nearest points of each query by (key, index): points [n, dim] with row stride ld, queries "
      "[m, dim] with row stride ldq (0: the self-join, m = n, j == i excluded), out_keys [m, k] of "
      "dtype and out_idx [m, k] int64 (dense), all device pointers; p = 2 or inf; enqueued on `stream`");
  m.def(
      "knn_count",
      [](std::uintptr_t points, int64_t n, int64_t dim, int64_t ld, std::uintptr_t queries, int64_t m,
         int64_t ldq, const std::string& dtype, double p, std::uintptr_t radius, bool strict,
         std::uintptr_t out, std::uintptr_t stream, int device) {
        const KnnArgs a = knn_args(points, n, dim, ld, queries, m, ldq, dtype, p);
        check_count_outputs(a, radius, out);
        check_device(device);
        py::gil_scoped_release release;
        knn::count(a.points, a.queries, a.dtype, p, reinterpret_cast<const void*>(radius), strict,
                   reinterpret_cast<int64_t*>(out), as_stream(stream), device);
      },
      py::arg("points"), py::arg("n"), py::arg("dim"), py::arg("ld"), py::arg("queries"), py::arg("m"),
      py::arg("ldq"), py::arg("dtype"), py::arg("p"), py::arg("radius"), py::arg("strict"), py::arg("out"),
      py::arg("stream"), py::arg("device"),
      "out[i] = #{j : key(q_i, x_j) < radius[i]} (strict) or <= (not strict), int64 [m]; radius [m] of "
      "dtype; points and queries as in knn (self-join excludes j == i); enqueued on `stream`");

  // The grid path (knn/grid.cu): the same answers as knn / knn_count from fewer pairs in low
  // dimension, brute force where the grid cannot help. pairs: optional device pointer to one
  // uint64 to which the (query, point) pairs examined are added (0: not counted).
  m.def(
      "knn_grid",
      [](std::uintptr_t points, int64_t n, int64_t dim, int64_t ld, std::uintptr_t queries, int64_t m,
         int64_t ldq, const std::string& dtype, double p, int k, std::uintptr_t out_keys,
         std::uintptr_t out_idx, std::uintptr_t stream, int device, std::uintptr_t pairs) {
        const KnnArgs a = knn_args(points, n, dim, ld, queries, m, ldq, dtype, p);
        check_knn_outputs(a, k, out_keys, out_idx);
        if (pairs != 0) check_pointer(pairs, 8, "pairs");
        check_device(device);
        py::gil_scoped_release release;
        knn::knn_grid(a.points, a.queries, a.dtype, p, k, reinterpret_cast<void*>(out_keys),
                      reinterpret_cast<int64_t*>(out_idx), as_stream(stream), device,
                      reinterpret_cast<unsigned long long*>(pairs));
      },
      py::arg("points"), py::arg("n"), py::arg("dim"), py::arg("ld"), py::arg("queries"), py::arg("m"),
      py::arg("ldq"), py::arg("dtype"), py::arg("p"), py::arg("k"), py::arg("out_keys"), py::arg("out_idx"),
      py::arg("stream"), py::arg("device"), py::arg("pairs") = 0,
      "knn through a grid of cells (dim <= 8, k <= 32; brute force otherwise): the same keys and "
      "indices; one host synchronisation sizes the grid");
  m.def(
      "knn_count_grid",
      [](std::uintptr_t points, int64_t n, int64_t dim, int64_t ld, std::uintptr_t queries, int64_t m,
         int64_t ldq, const std::string& dtype, double p, std::uintptr_t radius, bool strict,
         std::uintptr_t out, std::uintptr_t stream, int device, std::uintptr_t pairs) {
        const KnnArgs a = knn_args(points, n, dim, ld, queries, m, ldq, dtype, p);
        check_count_outputs(a, radius, out);
        if (pairs != 0) check_pointer(pairs, 8, "pairs");
        check_device(device);
        py::gil_scoped_release release;
        knn::count_grid(a.points, a.queries, a.dtype, p, reinterpret_cast<const void*>(radius), strict,
                        reinterpret_cast<int64_t*>(out), as_stream(stream), device,
                        reinterpret_cast<unsigned long long*>(pairs));
      },
      py::arg("points"), py::arg("n"), py::arg("dim"), py::arg("ld"), py::arg("queries"), py::arg("m"),
      py::arg("ldq"), py::arg("dtype"), py::arg("p"), py::arg("radius"), py::arg("strict"), py::arg("out"),
      py::arg("stream"), py::arg("device"), py::arg("pairs") = 0,
      "knn_count through a grid of cells (2 <= dim <= 8; the existing paths otherwise): the same "
      "counts; one host synchronisation sizes the grid");

  m.def(
      "kernel_matmul",
      [](const std::vector<std::string>& kinds, const std::vector<std::uintptr_t>& features,
         const std::vector<int64_t>& dims, int64_t n, const std::string& dtype, std::uintptr_t v,
         int64_t b, std::uintptr_t out, std::uintptr_t stream, int device) {
        const Dtype dt = parse_dtype(dtype);
        const std::vector<kern::Factor> factors = parse_factors(kinds, features, dims, n, dt);
        if (b < 1 || b > (int64_t(1) << 30))
          throw std::invalid_argument("b: must be in [1, 2^30], got " + std::to_string(b));
        check_pointer(v, 8, "v");
        check_pointer(out, 8, "out");
        check_device(device);
        py::gil_scoped_release release;
        kern::kernel_matmul(factors, n, dt, reinterpret_cast<const double*>(v), b,
                            reinterpret_cast<double*>(out), as_stream(stream), device);
      },
      py::arg("kinds"), py::arg("features"), py::arg("dims"), py::arg("n"), py::arg("dtype"),
      py::arg("v"), py::arg("b"), py::arg("out"), py::arg("stream"), py::arg("device"),
      "out[n, b] = K @ v for the product kernel K_ij = prod_f k_f(X_f[i], X_f[j]) (kinds "
      "gaussian, laplacian, linear; features: device pointers to X_f [n, dims[f]] of dtype; "
      "v, out: device pointers to float64 [n, b]), enqueued on `stream` of `device`");
  m.def(
      "kernel_sum_squares",
      [](const std::vector<std::string>& kinds, const std::vector<std::uintptr_t>& features,
         const std::vector<int64_t>& dims, int64_t n, const std::string& dtype, std::uintptr_t out,
         std::uintptr_t stream, int device) {
        const Dtype dt = parse_dtype(dtype);
        const std::vector<kern::Factor> factors = parse_factors(kinds, features, dims, n, dt);
        check_pointer(out, 8, "out");
        check_device(device);
        py::gil_scoped_release release;
        kern::kernel_sum_squares(factors, n, dt, reinterpret_cast<double*>(out), as_stream(stream),
                                 device);
      },
      py::arg("kinds"), py::arg("features"), py::arg("dims"), py::arg("n"), py::arg("dtype"),
      py::arg("out"), py::arg("stream"), py::arg("device"),
      "*out = sum_ij K_ij^2 (out: device pointer to one float64), same kernels and arguments as "
      "kernel_matmul, enqueued on `stream` of `device`");

  m.def(
      "softmax_ce_ggn",
      [](std::uintptr_t h, std::uintptr_t w, std::optional<std::uintptr_t> bias, std::uintptr_t token_weights,
         std::optional<std::uintptr_t> dh, std::optional<std::uintptr_t> dw, std::optional<std::uintptr_t> dbias,
         std::optional<std::uintptr_t> out_dh, std::optional<std::uintptr_t> out_dw,
         std::optional<std::uintptr_t> out_dbias, int64_t T, int64_t V, int64_t d, int64_t b,
         const std::string& dtype, std::uintptr_t stream, int device) {
        const infolens::curvature::HeadProblem problem =
            head_problem(h, w, bias, token_weights, {dh, dw, dbias}, {out_dh, out_dw, out_dbias}, T, V, d, b, dtype);
        check_device(device);
        py::gil_scoped_release release;
        infolens::cuda::curvature::softmax_ce_ggn(problem, as_stream(stream), device);
      },
      py::arg("h"), py::arg("w"), py::arg("bias").none(true), py::arg("token_weights"), py::arg("dh").none(true),
      py::arg("dw").none(true), py::arg("dbias").none(true), py::arg("out_dh").none(true),
      py::arg("out_dw").none(true), py::arg("out_dbias").none(true), py::arg("T"), py::arg("V"), py::arg("d"),
      py::arg("b"), py::arg("dtype"), py::arg("stream"), py::arg("device"),
      "The softmax cross-entropy head's GGN product (as infolens._native.softmax_ce_ggn) on device pointers: "
      "h [T, d], w [V, d], bias [V] or None, token_weights [T], tangents dh [b, T, d], dw [b, V, d], "
      "dbias [b, V] and outputs out_dh, out_dw, out_dbias of the same shapes (None: zero / not computed), "
      "all C-contiguous of dtype, enqueued on `stream` of `device`");
}
