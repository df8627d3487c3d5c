/* Thin CPython binding of kernels.c: every buffer arrives as an integer address (tensor.data_ptr()), so the
 * extension needs neither PyTorch nor NumPy headers.  The Python side (prunescope.formats.native) checks
 * dtypes, shapes, contiguity and device before calling; the GIL is released while the kernel runs. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "kernels.h"

static PyObject *raise_rc(int rc) {
    if (rc == -1) PyErr_SetString(PyExc_RuntimeError, "kernel ISA not supported by this CPU");
    else PyErr_SetString(PyExc_ValueError, "bad kernel argument");
    return NULL;
}

/* Run a kernel call without the GIL; None, or the Python error its return code means. */
#define PS_RUN(call)                                                                                            \
    do {                                                                                                        \
        int rc;                                                                                                 \
        Py_BEGIN_ALLOW_THREADS rc = (call);                                                                     \
        Py_END_ALLOW_THREADS if (rc) return raise_rc(rc);                                                       \
        Py_RETURN_NONE;                                                                                         \
    } while (0)

typedef unsigned long long addr_t; /* a buffer as Python passes it: tensor.data_ptr(), 0 for none */

/* The kernel arguments from integer addresses (0 = NULL); see kernels.h for each field. */
static ps_args addr_args(long long n, long long in, long long out, addr_t x, addr_t xt, addr_t values,
                         long long nnz, addr_t mask, addr_t cols, addr_t rowoff, addr_t bias, addr_t y, int dtype,
                         int dense_rows) {
    ps_args a = {n, in, out, (const float *)(uintptr_t)x, (const float *)(uintptr_t)xt,
                 (const void *)(uintptr_t)values, nnz, (const uint16_t *)(uintptr_t)mask,
                 (const uint16_t *)(uintptr_t)cols, (const int64_t *)(uintptr_t)rowoff,
                 (const float *)(uintptr_t)bias, (float *)(uintptr_t)y, dtype, dense_rows};
    return a;
}

/* bitmask_matmul(isa, nthreads, dtype, n, in, out, x, values, nnz, mask, rowoff, bias, y) */
static PyObject *py_bitmask(PyObject *self, PyObject *args) {
    int isa, nt, dt;
    long long n, in, out, nnz;
    addr_t x, v, m, ro, b, y;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiiLLLKKLKKKK", &isa, &nt, &dt, &n, &in, &out, &x, &v, &nnz, &m, &ro, &b, &y))
        return NULL;
    const ps_args a = addr_args(n, in, out, x, 0, v, nnz, m, 0, ro, b, y, dt, 0);
    PS_RUN(ps_bitmask_matmul(isa, nt, &a));
}

/* csr16_matmul(isa, nthreads, dtype, n, in, out, x, xt, values, nnz, cols, rowoff, bias, y) */
static PyObject *py_csr16(PyObject *self, PyObject *args) {
    int isa, nt, dt;
    long long n, in, out, nnz;
    addr_t x, xt, v, c, ro, b, y;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiiLLLKKKLKKKK", &isa, &nt, &dt, &n, &in, &out, &x, &xt, &v, &nnz, &c, &ro, &b,
                          &y))
        return NULL;
    const ps_args a = addr_args(n, in, out, x, xt, v, nnz, 0, c, ro, b, y, dt, 0);
    PS_RUN(ps_csr16_matmul(isa, nt, &a));
}

/* dense_matmul(isa, nthreads, dtype, n, in, out, x, w, bias, y, rows) */
static PyObject *py_dense(PyObject *self, PyObject *args) {
    int isa, nt, dt, rows;
    long long n, in, out;
    addr_t x, w, b, y;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiiLLLKKKKi", &isa, &nt, &dt, &n, &in, &out, &x, &w, &b, &y, &rows)) return NULL;
    const ps_args a = addr_args(n, in, out, x, 0, w, out * in, 0, 0, 0, b, y, dt, rows);
    PS_RUN(ps_dense_matmul(isa, nt, &a));
}

/* bitmask_unpack(isa, nthreads, dtype, in, out, values, nnz, mask, rowoff, r0, r1, dst) */
static PyObject *py_unpack(PyObject *self, PyObject *args) {
    int isa, nt, dt;
    long long in, out, nnz, r0, r1;
    addr_t v, m, ro, d;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiiLLKLKKLLK", &isa, &nt, &dt, &in, &out, &v, &nnz, &m, &ro, &r0, &r1, &d))
        return NULL;
    const ps_args a = addr_args(1, in, out, 0, 0, v, nnz, m, 0, ro, 0, 0, dt, 0);
    PS_RUN(ps_bitmask_unpack(isa, nt, &a, r0, r1, (float *)(uintptr_t)d));
}

/* flush(address, nbytes) -> bool: whether the lines were flushed (False: no such instruction here) */
static PyObject *py_flush(PyObject *self, PyObject *args) {
    addr_t p;
    long long nbytes;
    (void)self;
    if (!PyArg_ParseTuple(args, "KL", &p, &nbytes)) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = ps_flush((const void *)(uintptr_t)p, nbytes);
    Py_END_ALLOW_THREADS return PyBool_FromLong(rc == 0);
}

static PyObject *py_cpu_level(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyLong_FromLong(ps_cpu_level());
}

static PyObject *py_has_openmp(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyBool_FromLong(ps_has_openmp());
}

/* bitmask_int8_matmul(isa, nthreads, variant, n, in, out, x, codes, nnz, mask, rowoff, scales, bias, y) */
static PyObject *py_i8_matmul(PyObject *self, PyObject *args) {
    int isa, nt, variant;
    long long n, in, out, nnz;
    addr_t x, v, m, ro, sc, b, y;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiiLLLKKLKKKKK", &isa, &nt, &variant, &n, &in, &out, &x, &v, &nnz, &m, &ro, &sc,
                          &b, &y))
        return NULL;
    const ps_i8_args q = {addr_args(n, in, out, x, 0, v, nnz, m, 0, ro, b, y, PS_F32, 0), (const float *)(uintptr_t)sc,
                          variant};
    PS_RUN(ps_bitmask_int8_matmul(isa, nt, &q));
}

/* bitmask_int8_unpack(isa, nthreads, variant, in, out, codes, nnz, mask, rowoff, scales, r0, r1, dst) */
static PyObject *py_i8_unpack(PyObject *self, PyObject *args) {
    int isa, nt, variant;
    long long in, out, nnz, r0, r1;
    addr_t v, m, ro, sc, d;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiiLLKLKKKLLK", &isa, &nt, &variant, &in, &out, &v, &nnz, &m, &ro, &sc, &r0, &r1,
                          &d))
        return NULL;
    const ps_i8_args q = {addr_args(1, in, out, 0, 0, v, nnz, m, 0, ro, 0, 0, PS_F32, 0), (const float *)(uintptr_t)sc,
                          variant};
    PS_RUN(ps_bitmask_int8_unpack(isa, nt, &q, r0, r1, (float *)(uintptr_t)d));
}

/* dense_int8_matmul(isa, nthreads, in, out, x, codes, scales, bias, y): one token */
static PyObject *py_i8_dense(PyObject *self, PyObject *args) {
    int isa, nt;
    long long in, out;
    addr_t x, w, sc, b, y;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiLLKKKKK", &isa, &nt, &in, &out, &x, &w, &sc, &b, &y)) return NULL;
    const ps_i8_args q = {addr_args(1, in, out, x, 0, w, out * in, 0, 0, 0, b, y, PS_F32, 0),
                          (const float *)(uintptr_t)sc, 0};
    PS_RUN(ps_dense_int8_matmul(isa, nt, &q));
}

static PyObject *py_i8_has_vbmi2(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyBool_FromLong(ps_i8_has_vbmi2());
}

static PyMethodDef methods[] = {
    {"bitmask_matmul", py_bitmask, METH_VARARGS, "y = x @ W^T + b for a bitmask weight (raw addresses)."},
    {"csr16_matmul", py_csr16, METH_VARARGS, "y = x @ W^T + b for a CSR weight with uint16 columns."},
    {"dense_matmul", py_dense, METH_VARARGS, "y = x @ W^T + b for a dense weight (reference)."},
    {"bitmask_unpack", py_unpack, METH_VARARGS, "rows r0..r1 of a bitmask weight as dense float32."},
    {"flush", py_flush, METH_VARARGS, "flush a buffer out of every cache level (cold-cache timing)."},
    {"cpu_level", py_cpu_level, METH_NOARGS, "0 scalar, 1 AVX2, 2 AVX-512."},
    {"has_openmp", py_has_openmp, METH_NOARGS, "Whether the kernels were built with OpenMP."},
    {"bitmask_int8_matmul", py_i8_matmul, METH_VARARGS, "y = x @ (scale * codes)^T + b, bitmask over int8."},
    {"bitmask_int8_unpack", py_i8_unpack, METH_VARARGS, "rows r0..r1 of a bitmask-int8 weight, dequantized."},
    {"bitmask_int8_has_vbmi2", py_i8_has_vbmi2, METH_NOARGS, "Whether the AVX-512 int8 path uses VBMI2."},
    {"dense_int8_matmul", py_i8_dense, METH_VARARGS, "y = scale * (codes @ x) + b, dense int8, one token."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_bitmask_native", "prunescope native sparse kernels",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__bitmask_native(void) { return PyModule_Create(&moddef); }
