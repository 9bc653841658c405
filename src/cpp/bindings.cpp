// Python bindings of the CPU kNN engine, module infolens._native (docs/NATIVE_ABI.md).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <optional>

#include "array_checks.hpp"
#include "curvature/softmax_ce_ggn.hpp"
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


// ---- softmax_ce_ggn ------------------------------------------------------------------------------

// An optional array argument: None, or a numpy array (anything else is a TypeError).
std::optional<py::array> optional_array(const py::object& obj, const char* name) {
    if (obj.is_none()) return std::nullopt;
    if (!py::isinstance<py::array>(obj)) throw py::type_error(std::string(name) + " must be a numpy array or None");
    return py::reinterpret_borrow<py::array>(obj);
}

// Outputs must not share memory with the inputs or each other: the engine reads tangents after
// it has written outputs.
void check_no_overlap(const std::vector<std::pair<const char*, const py::array*>>& inputs,
                      const std::vector<std::pair<const char*, const py::array*>>& outputs) {
    auto range = [](const py::array* a) {
        const auto* p = static_cast<const char*>(a->data());
        return std::make_pair(p, p + a->nbytes());
    };
    for (size_t i = 0; i < outputs.size(); ++i) {
        const auto [o0, o1] = range(outputs[i].second);
        auto check = [&](const std::pair<const char*, const py::array*>& other) {
            const auto [a0, a1] = range(other.second);
            if (o0 < a1 && a0 < o1)
                throw std::invalid_argument(std::string(outputs[i].first) + " must not share memory with " +
                                            other.first);
        };
        for (const auto& in : inputs) check(in);
        for (size_t k = 0; k < i; ++k) check(outputs[k]);
    }
}

template <class T>
void softmax_ce_ggn_typed(const py::array& h, const py::array& w, const std::optional<py::array>& bias,
                          const py::array& token_weights, const std::optional<py::array> (&tangents)[3],
                          const std::optional<py::array> (&outputs)[3], int threads) {
    namespace cv = infolens::curvature;
    static const char* tangent_names[3] = {"dh", "dw", "dbias"};
    static const char* output_names[3] = {"out_dh", "out_dw", "out_dbias"};
    check_array<T>(h, "h", {-1, -1});
    const int64_t n_tokens = h.shape(0), dim = h.shape(1);
    if (n_tokens < 1) throw std::invalid_argument("h must have at least one row (T >= 1)");
    if (dim < 1) throw std::invalid_argument("h must have at least one column (d >= 1)");
    check_array<T>(w, "w", {-1, dim});
    const int64_t vocab = w.shape(0);
    if (vocab < 1) throw std::invalid_argument("w must have at least one row (V >= 1)");
    if (bias) check_array<T>(*bias, "bias", {vocab});
    check_array<T>(token_weights, "token_weights", {n_tokens});
    // The vector count b comes from the first array given; every other one must agree.
    int64_t b = -1;
    auto shape_of = [&](int which) -> std::vector<int64_t> {
        if (which == 0) return {b, n_tokens, dim};
        if (which == 1) return {b, vocab, dim};
        return {b, vocab};
    };
    auto check_vectors = [&](const py::array& a, int which, const char* name, bool writable) {
        check_array<T>(a, name, shape_of(which), writable);
        if (b < 0) {
            b = a.shape(0);
            if (b < 1) throw std::invalid_argument(std::string(name) + " must hold at least one vector (b >= 1)");
        }
    };
    for (int i = 0; i < 3; ++i)
        if (tangents[i]) check_vectors(*tangents[i], i, tangent_names[i], false);
    for (int i = 0; i < 3; ++i)
        if (outputs[i]) check_vectors(*outputs[i], i, output_names[i], true);
    if (!tangents[0] && !tangents[1] && !tangents[2])
        throw std::invalid_argument("at least one of dh, dw, dbias must be given");
    if (!outputs[0] && !outputs[1] && !outputs[2])
        throw std::invalid_argument("at least one of out_dh, out_dw, out_dbias must be given");
    std::vector<std::pair<const char*, const py::array*>> ins = {
        {"h", &h}, {"w", &w}, {"token_weights", &token_weights}};
    if (bias) ins.push_back({"bias", &*bias});
    std::vector<std::pair<const char*, const py::array*>> outs;
    for (int i = 0; i < 3; ++i) {
        if (tangents[i]) ins.push_back({tangent_names[i], &*tangents[i]});
        if (outputs[i]) outs.push_back({output_names[i], &*outputs[i]});
    }
    check_no_overlap(ins, outs);

    auto in = [](const std::optional<py::array>& a) -> const void* { return a ? a->data() : nullptr; };
    auto out = [](const std::optional<py::array>& a) -> void* {
        return a ? const_cast<py::array&>(*a).mutable_data() : nullptr;
    };
    const cv::HeadProblem problem{std::is_same_v<T, float> ? cv::Dtype::float32 : cv::Dtype::float64,
                                  n_tokens, vocab, dim, b,
                                  h.data(), w.data(), in(bias), token_weights.data(),
                                  in(tangents[0]), in(tangents[1]), in(tangents[2]),
                                  out(outputs[0]), out(outputs[1]), out(outputs[2])};
    py::gil_scoped_release release;
    cv::softmax_ce_ggn(problem, threads);
}

void softmax_ce_ggn(const py::array& h, const py::array& w, const py::object& bias, const py::array& token_weights,
                    const py::object& dh, const py::object& dw, const py::object& dbias, const py::object& out_dh,
                    const py::object& out_dw, const py::object& out_dbias, int threads) {
    check_threads(threads);
    const std::optional<py::array> bias_array = optional_array(bias, "bias");
    const std::optional<py::array> tangents[3] = {optional_array(dh, "dh"), optional_array(dw, "dw"),
                                                  optional_array(dbias, "dbias")};
    const std::optional<py::array> outputs[3] = {optional_array(out_dh, "out_dh"), optional_array(out_dw, "out_dw"),
                                                 optional_array(out_dbias, "out_dbias")};
    if (infolens::has_dtype<float>(h))
        softmax_ce_ggn_typed<float>(h, w, bias_array, token_weights, tangents, outputs, threads);
    else if (infolens::has_dtype<double>(h))
        softmax_ce_ggn_typed<double>(h, w, bias_array, token_weights, tangents, outputs, threads);
    else
        throw std::invalid_argument("h must have dtype float32 or float64, got " + std::string(py::str(h.dtype())));
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

    m.def("softmax_ce_ggn", &softmax_ce_ggn, py::arg("h").noconvert(), py::arg("w").noconvert(),
          py::arg("bias"), py::arg("token_weights").noconvert(), py::arg("dh") = py::none(),
          py::arg("dw") = py::none(), py::arg("dbias") = py::none(), py::arg("out_dh") = py::none(),
          py::arg("out_dw") = py::none(), py::arg("out_dbias") = py::none(), py::arg("threads") = 0,
          "The softmax cross-entropy head's GGN product: for logits z = h w^T + bias, p = softmax(z), "
          "tangents dz_j = dh_j w^T + h dw_j^T + dbias_j and u_j = token_weights * (p * dz_j - p (p . dz_j)), "
          "fills out_dh [b, T, d] = u_j w, out_dw [b, V, d] = u_j^T h, out_dbias [b, V] = sum_t u_j (each "
          "optional; None tangents are zero). All arrays C-contiguous of h's dtype (float32/float64).");
}
