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

/* bitmask_matmul(isa, nthreads, dtype, n, in, out, x, values, nnz, mask, rowoff, bias, y) */
static PyObject *py_bitmask(PyObject *self, PyObject *args) {
    int isa, nt, dt;
    long long n, in, out, nnz;
    unsigned long long x, v, m, ro, b, y;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiiLLLKKLKKKK", &isa, &nt, &dt, &n, &in, &out, &x, &v, &nnz, &m, &ro, &b, &y))
        return NULL;
    ps_args a = {n, in, out, (const float *)(uintptr_t)x, NULL, (const void *)(uintptr_t)v, nnz,
                 (const uint16_t *)(uintptr_t)m, NULL, (const int64_t *)(uintptr_t)ro,
                 (const float *)(uintptr_t)b, (float *)(uintptr_t)y, dt, 0};
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = ps_bitmask_matmul(isa, nt, &a);
    Py_END_ALLOW_THREADS if (rc) return raise_rc(rc);
    Py_RETURN_NONE;
}

/* csr16_matmul(isa, nthreads, dtype, n, in, out, x, xt, values, nnz, cols, rowoff, bias, y) */
static PyObject *py_csr16(PyObject *self, PyObject *args) {
    int isa, nt, dt;
    long long n, in, out, nnz;
    unsigned long long x, xt, v, c, ro, b, y;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiiLLLKKKLKKKK", &isa, &nt, &dt, &n, &in, &out, &x, &xt, &v, &nnz, &c, &ro, &b,
                          &y))
        return NULL;
    ps_args a = {n, in, out, (const float *)(uintptr_t)x, (const float *)(uintptr_t)xt, (const void *)(uintptr_t)v,
                 nnz, NULL, (const uint16_t *)(uintptr_t)c, (const int64_t *)(uintptr_t)ro,
                 (const float *)(uintptr_t)b, (float *)(uintptr_t)y, dt, 0};
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = ps_csr16_matmul(isa, nt, &a);
    Py_END_ALLOW_THREADS if (rc) return raise_rc(rc);
    Py_RETURN_NONE;
}

/* dense_matmul(isa, nthreads, dtype, n, in, out, x, w, bias, y, rows) */
static PyObject *py_dense(PyObject *self, PyObject *args) {
    int isa, nt, dt, rows;
    long long n, in, out;
    unsigned long long x, w, b, y;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiiLLLKKKKi", &isa, &nt, &dt, &n, &in, &out, &x, &w, &b, &y, &rows)) return NULL;
    ps_args a = {n, in, out, (const float *)(uintptr_t)x, NULL, (const void *)(uintptr_t)w, out * in, NULL,
                 NULL, NULL, (const float *)(uintptr_t)b, (float *)(uintptr_t)y, dt, rows};
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = ps_dense_matmul(isa, nt, &a);
    Py_END_ALLOW_THREADS if (rc) return raise_rc(rc);
    Py_RETURN_NONE;
}

/* bitmask_unpack(isa, nthreads, dtype, in, out, values, nnz, mask, rowoff, r0, r1, dst) */
static PyObject *py_unpack(PyObject *self, PyObject *args) {
    int isa, nt, dt;
    long long in, out, nnz, r0, r1;
    unsigned long long v, m, ro, d;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiiLLKLKKLLK", &isa, &nt, &dt, &in, &out, &v, &nnz, &m, &ro, &r0, &r1, &d))
        return NULL;
    ps_args a = {1, in, out, NULL, NULL, (const void *)(uintptr_t)v, nnz, (const uint16_t *)(uintptr_t)m, NULL,
                 (const int64_t *)(uintptr_t)ro, NULL, NULL, dt, 0};
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = ps_bitmask_unpack(isa, nt, &a, r0, r1, (float *)(uintptr_t)d);
    Py_END_ALLOW_THREADS if (rc) return raise_rc(rc);
    Py_RETURN_NONE;
}

/* flush(address, nbytes) -> bool: whether the lines were flushed (False: no such instruction here) */
static PyObject *py_flush(PyObject *self, PyObject *args) {
    unsigned long long p;
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

static PyMethodDef methods[] = {
    {"bitmask_matmul", py_bitmask, METH_VARARGS, "y = x @ W^T + b for a bitmask weight (raw addresses)."},
    {"csr16_matmul", py_csr16, METH_VARARGS, "y = x @ W^T + b for a CSR weight with uint16 columns."},
    {"dense_matmul", py_dense, METH_VARARGS, "y = x @ W^T + b for a dense weight (reference)."},
    {"bitmask_unpack", py_unpack, METH_VARARGS, "rows r0..r1 of a bitmask weight as dense float32."},
    {"flush", py_flush, METH_VARARGS, "flush a buffer out of every cache level (cold-cache timing)."},
    {"cpu_level", py_cpu_level, METH_NOARGS, "0 scalar, 1 AVX2, 2 AVX-512."},
    {"has_openmp", py_has_openmp, METH_NOARGS, "Whether the kernels were built with OpenMP."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_bitmask_native", "prunescope native sparse kernels",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__bitmask_native(void) { return PyModule_Create(&moddef); }
