// Python bindings of the CPU kNN engine, module infolens._native (docs/NATIVE_ABI.md).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "array_checks.hpp"
#include "kernel/matrix.hpp"
#include "knn/index.hpp"
#include "common/parallel.hpp"

namespace py = pybind11;
using infolens::check_array;
using infolens::knn::Dtype;
using infolens::knn::Index;

namespace {

// Calls f with a null pointer of the index's element type (float or double).
template <class F>
void with_dtype(const Index& index, F&& f) {
    if (index.dtype() == Dtype::float32)
        f(static_cast<float*>(nullptr));
    else
        f(static_cast<double*>(nullptr));
}

// The query array as a pointer (null: self-join) and its row count.
template <class T>
std::pair<const void*, int64_t> query_rows(const Index& index, const py::object& queries) {
    if (queries.is_none()) return {nullptr, index.n()};
    if (!py::isinstance<py::array>(queries)) throw py::type_error("queries must be a numpy array or None");
    const auto q = py::reinterpret_borrow<py::array>(queries);
    check_array<T>(q, "queries", {-1, index.dim()});
    return {q.data(), q.shape(0)};
}

Index make_index(const py::array& points, const std::string& algorithm, int64_t leaf_size) {
    Dtype dtype;
    if (infolens::has_dtype<float>(points)) {
        dtype = Dtype::float32;
    } else if (infolens::has_dtype<double>(points)) {
        dtype = Dtype::float64;
    } else {
        throw std::invalid_argument("points must have dtype float32 or float64, got " +
                                    std::string(py::str(points.dtype())));
    }
    if (dtype == Dtype::float32)
        check_array<float>(points, "points", {-1, -1});
    else
        check_array<double>(points, "points", {-1, -1});
    const void* data = points.data();
    const int64_t n = points.shape(0), d = points.shape(1);
    py::gil_scoped_release release;
    return Index(data, dtype, n, d, algorithm, leaf_size);
}

void knn(const Index& index, int64_t k, double p, py::array out_keys, py::array out_idx,
         const py::object& queries, int threads) {
    index.check_knn(k, p, queries.is_none(), threads);
    with_dtype(index, [&](auto* type) {
        using T = std::remove_pointer_t<decltype(type)>;
        const auto [q, m] = query_rows<T>(index, queries);
        check_array<T>(out_keys, "out_keys", {m, k}, true);
        check_array<int64_t>(out_idx, "out_idx", {m, k}, true);
        void* keys = out_keys.mutable_data();
        auto* idx = static_cast<int64_t*>(out_idx.mutable_data());
        py::gil_scoped_release release;
        index.knn(k, p, keys, idx, q, m, threads);
    });
}

void count(const Index& index, const py::array& radius, double p, bool strict, py::array out,
           const py::object& queries, int threads) {
    index.check_count(p, threads);
    with_dtype(index, [&](auto* type) {
        using T = std::remove_pointer_t<decltype(type)>;
        const auto [q, m] = query_rows<T>(index, queries);
        check_array<T>(radius, "radius", {m});
        check_array<int64_t>(out, "out", {m}, true);
        const void* r = radius.data();
        auto* counts = static_cast<int64_t*>(out.mutable_data());
        py::gil_scoped_release release;
        index.count(r, p, strict, counts, q, m, threads);
    });
}

// factors: a non-empty list of (kind, points [n, d_f]) sharing n and dtype.
infolens::kernel::KernelMatrix make_kernel_matrix(const py::list& factors) {
    using infolens::kernel::Dtype;
    if (factors.empty()) throw std::invalid_argument("factors must be a non-empty list of (kind, points) pairs");
    std::vector<infolens::kernel::Factor> views;
    std::vector<py::array> arrays;
    for (const auto& item : factors) {
        if (!py::isinstance<py::tuple>(item) || py::len(item) != 2)
            throw std::invalid_argument("factors must hold (kind, points) pairs");
        const auto pair = py::reinterpret_borrow<py::tuple>(item);
        if (!py::isinstance<py::str>(pair[0])) throw std::invalid_argument("factors: kind must be a string");
        if (!py::isinstance<py::array>(pair[1])) throw py::type_error("factors: points must be numpy arrays");
        arrays.push_back(py::reinterpret_borrow<py::array>(pair[1]));
        views.push_back({pair[0].cast<std::string>(), nullptr, 0});
    }
    const py::array& first = arrays[0];
    const bool single = infolens::has_dtype<float>(first);
    if (!single && !infolens::has_dtype<double>(first))
        throw std::invalid_argument("points must have dtype float32 or float64, got " + std::string(py::str(first.dtype())));
    const int64_t n = first.ndim() == 2 ? first.shape(0) : -1;
    for (size_t f = 0; f < arrays.size(); ++f) {
        if (single)
            check_array<float>(arrays[f], "points", {n, -1});
        else
            check_array<double>(arrays[f], "points", {n, -1});
        views[f].x = arrays[f].data();
        views[f].d = arrays[f].shape(1);
    }
    py::gil_scoped_release release;
    return infolens::kernel::KernelMatrix(views, single ? Dtype::float32 : Dtype::float64, n);
}

void check_threads(int threads) {
    if (threads < 0) throw std::invalid_argument("threads must be >= 0 (0: OpenMP's default)");
}

}  // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "infolens CPU kNN engine: exact kNN and radius counts under max-norm, Euclidean and L^p keys";
    m.def("max_threads", &infolens::max_threads, "OpenMP's default team size (1 without OpenMP).");

    py::class_<Index>(m, "Index")
        .def(py::init(&make_index), py::arg("points").noconvert(), py::arg("algorithm") = "auto",
             py::arg("leaf_size") = 0,
             "Index over points [N, d] (C-contiguous float32/float64, copied).")
        .def_property_readonly("n", &Index::n)
        .def_property_readonly("dim", &Index::dim)
        .def_property_readonly("dtype", [](const Index& index) { return infolens::knn::dtype_name(index.dtype()); })
        .def_property_readonly("algorithm", &Index::algorithm)
        .def("knn", &knn, py::arg("k"), py::arg("p"), py::arg("out_keys").noconvert(),
             py::arg("out_idx").noconvert(), py::arg("queries") = py::none(), py::arg("threads") = 0,
             "Fills out_keys/out_idx [M, k] with the k smallest (key, index); queries=None is the "
             "self-join, excluding each point's own index.")
        .def("count", &count, py::arg("radius"), py::arg("p"), py::arg("strict"), py::arg("out").noconvert(),
             py::arg("queries") = py::none(), py::arg("threads") = 0,
             "Fills out [M] with #{j : key < radius} (strict) or <= radius; the self-join excludes j == i.");

    using infolens::kernel::KernelMatrix;
    py::class_<KernelMatrix>(m, "KernelMatrix")
        .def(py::init(&make_kernel_matrix), py::arg("factors"),
             "The Hadamard product of kernels over [(kind, points [n, d_f]), ...] (kinds gaussian "
             "exp(-|x-y|_2^2), laplacian exp(-|x-y|_1), linear x.y; points C-contiguous float32/float64, copied).")
        .def_property_readonly("n", &KernelMatrix::n)
        .def_property_readonly("dtype", [](const KernelMatrix& k) {
            return k.dtype() == infolens::kernel::Dtype::float32 ? "float32" : "float64";
        })
        .def(
            "matmul",
            [](const KernelMatrix& k, const py::array& v, py::array out, int threads) {
                check_threads(threads);
                check_array<double>(v, "v", {k.n(), -1});
                check_array<double>(out, "out", {k.n(), v.shape(1)}, true);
                const auto* pv = static_cast<const double*>(v.data());
                auto* po = static_cast<double*>(out.mutable_data());
                const int64_t b = v.shape(1);
                py::gil_scoped_release release;
                k.matmul(pv, b, po, threads);
            },
            py::arg("v").noconvert(), py::arg("out").noconvert(), py::arg("threads") = 0,
            "Fills out [n, b] (float64) with K @ v (v: float64 [n, b]).")
        .def(
            "sum_squares",
            [](const KernelMatrix& k, int threads) {
                check_threads(threads);
                py::gil_scoped_release release;
                return k.sum_squares(threads);
            },
            py::arg("threads") = 0, "sum_ij K_ij^2 in float64.");
}
