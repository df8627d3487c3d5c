/* Sparse-weight Linear kernels on raw buffers: no PyTorch, no Python.
 *
 * Every kernel computes y = x @ W^T + bias for n input rows ("tokens"), with float32 accumulation,
 * parallel over output rows with OpenMP.  One build holds every ISA path: the AVX-512 and AVX2 kernels
 * carry per-function target attributes and the caller picks one at run time (ps_cpu_level()).
 *
 * Formats (all row-major, values packed row after row):
 *   bitmask: mask[out][ceil(in/16)] uint16 (bit j of word w <=> column 16*w + j is non-zero),
 *            values[nnz], row_offsets[out + 1] int64 (index of each row's first value).
 *   csr16:   cols[nnz] uint16 column indices, values[nnz], row_offsets[out + 1] int64.
 *   dense:   w[out][in] in dtype (the honest bandwidth reference).
 */
#ifndef PRUNESCOPE_KERNELS_H
#define PRUNESCOPE_KERNELS_H

#include <stdint.h>

enum { PS_F32 = 0, PS_BF16 = 1, PS_F16 = 2 };
enum { PS_SCALAR = 0, PS_AVX2 = 1, PS_AVX512 = 2 };

typedef struct {
    int64_t n, in, out;
    const float *x;         /* n x in float32, row-major */
    const float *xt;        /* csr16 only: in x n (x transposed); non-NULL selects the token-vector path */
    const void *values;     /* packed non-zeros (dense: the whole weight), element type = dtype */
    int64_t nnz;            /* number of elements in values: kernels never read past it */
    const uint16_t *mask;   /* bitmask only */
    const uint16_t *cols;   /* csr16 only */
    const int64_t *rowoff;  /* out + 1 entries (sparse formats) */
    const float *bias;      /* out entries or NULL */
    float *y;               /* n x out; csr16 with xt: out x n */
    int dtype;              /* PS_F32 / PS_BF16 / PS_F16 */
    int dense_rows;         /* dense, one token: rows per step, 1 (prefetched stream) or 4 (interleaved) */
} ps_args;

/* Highest PS_* level this CPU (and OS) supports. */
int ps_cpu_level(void);
/* Non-zero when built with OpenMP. */
int ps_has_openmp(void);
/* Return 0 on success, -1 for an ISA this CPU lacks, -2 for a bad argument. */
int ps_bitmask_matmul(int isa, int nthreads, const ps_args *a);
int ps_csr16_matmul(int isa, int nthreads, const ps_args *a);
int ps_dense_matmul(int isa, int nthreads, const ps_args *a);
/* Rows r0..r1 of a bitmask weight decompressed into dst ((r1 - r0) x in float32, row-major): the panel a
 * BLAS GEMM multiplies at many tokens, where the expand-and-FMA kernel is compute-bound. */
/* Flush [p, p + nbytes) out of every cache level; -1 where the CPU cannot. */
int ps_flush(const void *p, int64_t nbytes);
int ps_bitmask_unpack(int isa, int nthreads, const ps_args *a, int64_t r0, int64_t r1, float *dst);

/* Bitmask over int8 codes (issue 25): the bitmask layout above (mask words, row offsets) with int8 codes
 * as the packed values (a.values, a.nnz codes; a.dtype unused) and one float32 scale per output row:
 * y[t][r] = scales[r] * sum_j code[r][j] * x[t][j] + bias[r], the sum accumulated in float32. */
typedef struct {
    ps_args a;
    const float *scales; /* out entries */
    int variant;         /* AVX-512 only: 0 = best (VBMI2 byte expand where the CPU has it), 1 = vpshufb */
} ps_i8_args;

/* Non-zero when the AVX-512 int8 path can use the VBMI2 byte expand on this CPU. */
int ps_i8_has_vbmi2(void);
int ps_bitmask_int8_matmul(int isa, int nthreads, const ps_i8_args *q);
/* Rows r0..r1 dequantized (code * scale) into dst ((r1 - r0) x in float32, zeros included). */
int ps_bitmask_int8_unpack(int isa, int nthreads, const ps_i8_args *q, int64_t r0, int64_t r1, float *dst);
/* Dense int8, one token (the bitmask-int8 kernel's baseline): a.values holds the out x in codes row-major
 * (a.nnz = out * in), a.n must be 1; y[r] = scales[r] * sum_c code[r][c] * x[c] + bias[r]. */
int ps_dense_int8_matmul(int isa, int nthreads, const ps_i8_args *q);

#endif
