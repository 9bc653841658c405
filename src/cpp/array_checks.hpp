// Checks that a numpy array is exactly what the engine reads or writes: dtype, shape,
// C-contiguity, writeability. Nothing is ever converted; a mismatch raises ValueError
// (std::invalid_argument) naming the argument.
#pragma once

#include <pybind11/numpy.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace infolens {

namespace py = pybind11;

// The exact numeric type in native byte order; int64 matches numpy's long and long long alike.
template <class T>
bool has_dtype(const py::array& a) {
    const py::dtype dt = a.dtype();
    const char swapped = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? '>' : '<';
    return dt.kind() == py::dtype::of<T>().kind() && dt.itemsize() == ssize_t(sizeof(T)) &&
           dt.byteorder() != swapped;
}

template <class T>
const char* dtype_label() {
    if constexpr (std::is_same_v<T, float>) return "float32";
    if constexpr (std::is_same_v<T, double>) return "float64";
    return "int64";
}

inline std::string shape_string(const std::vector<int64_t>& shape) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i)
        s += (i ? ", " : "") + (shape[i] < 0 ? std::string("*") : std::to_string(shape[i]));
    return s + (shape.size() == 1 ? ",)" : ")");
}

// shape: the expected extents, -1 for any. writable: the engine writes into the array.
template <class T>
void check_array(const py::array& a, const char* name, const std::vector<int64_t>& shape,
                 bool writable = false) {
    auto fail = [&](const std::string& what) { throw std::invalid_argument(std::string(name) + " " + what); };
    if (!has_dtype<T>(a))
        fail(std::string("must have dtype ") + dtype_label<T>() + ", got " + std::string(py::str(a.dtype())));
    std::vector<int64_t> actual(a.shape(), a.shape() + a.ndim());
    bool same = actual.size() == shape.size();
    for (size_t i = 0; same && i < shape.size(); ++i) same = shape[i] < 0 || shape[i] == actual[i];
    if (!same) fail("must have shape " + shape_string(shape) + ", got " + shape_string(actual));
    if (!(a.flags() & py::array::c_style)) fail("must be C-contiguous");
    if (writable && !a.writeable()) fail("must be writeable");
}

}  // namespace infolens
