/* Bitmask / CSR16 / dense Linear kernels: "load sparse, compute dense".  See kernels.h for the formats.
 *
 * Decode (few tokens) is memory-bound, so the bitmask kernels stream 1 bit per weight plus the packed
 * non-zeros and rebuild 16 dense lanes in a register (AVX-512 expand-load, or an 8-lane permutation LUT on
 * AVX2), then FMA with the dense input: the weight stream is read once and each expanded register is
 * reused for up to 8 tokens.
 */
#include "kernels.h"

#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define PS_X86 1
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#define PS_TILE 8 /* tokens sharing one expanded weight register */
/* Rows interleaved by the dense one-token kernel when asked for 4 (ps_args.dense_rows): more streams in
 * flight and one input load per 4 FMAs lift it from ~28 to ~43 GB/s out of L3.  From DRAM, one row with
 * software prefetch is as fast or faster depending on the machine's state, so the benchmark times both. */
#define PS_ROWS 4
#define PS_INLINE static inline __attribute__((always_inline))
/* Run the call `...` with K an integer constant equal to the token count T (1 .. PS_TILE; more runs 8): the
 * always-inline row kernels it calls then unroll their token loops and keep the accumulators in registers. */
#define PS_CONST_T(T, ...)                                                                                    \
    switch (T) {                                                                                              \
    case 1: { enum { K = 1 }; __VA_ARGS__; } break;                                                           \
    case 2: { enum { K = 2 }; __VA_ARGS__; } break;                                                           \
    case 3: { enum { K = 3 }; __VA_ARGS__; } break;                                                           \
    case 4: { enum { K = 4 }; __VA_ARGS__; } break;                                                           \
    case 5: { enum { K = 5 }; __VA_ARGS__; } break;                                                           \
    case 6: { enum { K = 6 }; __VA_ARGS__; } break;                                                           \
    case 7: { enum { K = 7 }; __VA_ARGS__; } break;                                                           \
    default: { enum { K = 8 }; __VA_ARGS__; } break;                                                          \
    }
/* Software prefetch distance (bytes ahead of a weight stream; the two-row kernels use twice it): far
 * enough to cover DRAM latency at ~15 GB/s per core, near enough to stay inside L2. */
#ifndef PS_PF_DIST
#define PS_PF_DIST 8192
#endif

/* ------------------------------------------------------------------ scalar helpers (any CPU) -- */

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal half: normalise, it is a normal float */
            uint32_t e = 0;
            while (!(man & 0x400u)) {
                man <<= 1;
                e++;
            }
            u = sign | ((113u - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float load_val(const void *v, int64_t i, int dt) {
    if (dt == PS_F32) return ((const float *)v)[i];
    uint16_t h = ((const uint16_t *)v)[i];
    return dt == PS_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

static inline int popcount16(unsigned k) {
#if defined(__GNUC__)
    return __builtin_popcount(k);
#else
    int c = 0;
    for (; k; k &= k - 1) c++;
    return c;
#endif
}

static inline int ctz16(unsigned k) {
#if defined(__GNUC__)
    return __builtin_ctz(k);
#else
    int j = 0;
    while (!(k & 1u)) { k >>= 1; j++; }
    return j;
#endif
}

/* Row r of y over the a->n tokens in tiles of PS_TILE: per tile, x (its first input row) and T (its size)
 * are in scope of the call `...`, which fills float res[PS_TILE] with the row's sums for the tile's tokens
 * (K = T, a constant, see PS_CONST_T); y[t][r] = res[t] * SCALE + B. */
#define PS_ROW_TILES(A, R, SCALE, B, ...)                                                                      \
    for (int64_t t0 = 0; t0 < (A)->n; t0 += PS_TILE) {                                                        \
        const int T = (A)->n - t0 < PS_TILE ? (int)((A)->n - t0) : PS_TILE;                                   \
        const float *x = (A)->x + t0 * (A)->in;                                                               \
        float res[PS_TILE];                                                                                   \
        PS_CONST_T(T, __VA_ARGS__);                                                                           \
        for (int t = 0; t < T; t++) (A)->y[(t0 + t) * (A)->out + (R)] = res[t] * (SCALE) + (B);               \
    }

/* PS_ROW_TILES for rows R and R + 1 at once: the call fills float res[2][PS_TILE]. */
#define PS_ROW2_TILES(A, R, B0, B1, ...)                                                                       \
    for (int64_t t0 = 0; t0 < (A)->n; t0 += PS_TILE) {                                                        \
        const int T = (A)->n - t0 < PS_TILE ? (int)((A)->n - t0) : PS_TILE;                                   \
        const float *x = (A)->x + t0 * (A)->in;                                                               \
        float res[2][PS_TILE];                                                                                \
        PS_CONST_T(T, __VA_ARGS__);                                                                           \
        for (int t = 0; t < T; t++) {                                                                         \
            (A)->y[(t0 + t) * (A)->out + (R)] = res[0][t] + (B0);                                             \
            (A)->y[(t0 + t) * (A)->out + (R) + 1] = res[1][t] + (B1);                                         \
        }                                                                                                     \
    }

/* ---------------------------------------------------------------------------- threading -- */

typedef void (*ps_rows_fn)(const ps_args *a, int64_t r0, int64_t r1);

#ifndef PS_BLOCK_BYTES
#define PS_BLOCK_BYTES (256 << 10)
#endif

/* Rows per block: at least 16, and about PS_BLOCK_BYTES of weight stream.  Each block starts a new stream
 * whose first PS_PF_DIST bytes the software prefetch cannot cover, so a block must be long against it:
 * 16 rows of a 1536-wide, s = 0.5 fp32 bitmask weight are 50 KB, a sixth of them demand misses. */
static int64_t block_rows(const ps_args *a, int es) {
    const int64_t out = a->out > 0 ? a->out : 1;
    int64_t row_bytes = a->in * es; /* dense */
    if (a->mask) row_bytes = a->nnz * es / out + 2 * ((a->in + 15) / 16);
    else if (a->cols) row_bytes = a->nnz * (es + 2) / out;
    const int64_t rows = PS_BLOCK_BYTES / (row_bytes > 0 ? row_bytes : 1);
    return rows < 16 ? 16 : (rows + 15) / 16 * 16;
}

/* Bytes of one packed value of a float weight (the int8 path passes 1). */
static int value_bytes(const ps_args *a) { return a->dtype == PS_F32 ? 4 : 2; }

/* Blocks of rows handed out dynamically: a core shared with another process must not stall the whole call,
 * and a block's consecutive rows keep each thread's weight stream long for the prefetchers. */
static void run_rows(ps_rows_fn fn, const ps_args *a, int nthreads, int es) {
    const int64_t out = a->out, block = block_rows(a, es), nblocks = (out + block - 1) / block;
    /* tiny layers: a parallel region costs more than the work */
    if (nthreads <= 1 || nblocks <= 1 || out * a->in * (a->n < 8 ? a->n : 8) < 65536) {
        fn(a, 0, out);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t r1 = (b + 1) * block;
        fn(a, b * block, r1 < out ? r1 : out);
    }
#else
    fn(a, 0, out);
#endif
}

typedef void (*ps_unpack_fn)(const ps_args *a, int64_t r0, int64_t r1, float *dst);

/* Rows r0..r1 unpacked into dst in static blocks of 16 rows (a panel is small and evenly dense). */
static void run_unpack(ps_unpack_fn fn, const ps_args *a, int nthreads, int64_t r0, int64_t r1, float *dst) {
    const int64_t block = 16, nblocks = (r1 - r0 + block - 1) / block;
    if (nthreads <= 1 || nblocks <= 1) {
        fn(a, r0, r1, dst);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t b = 0; b < nblocks; b++) {
        const int64_t s0 = r0 + b * block, s1 = s0 + block < r1 ? s0 + block : r1;
        fn(a, s0, s1, dst + (s0 - r0) * a->in);
    }
#else
    fn(a, r0, r1, dst);
#endif
}

/* ------------------------------------------------------------------------- scalar paths -- */

/* Value p of a weight's packed values (bitmask non-zeros, or a whole dense weight) as float: a float
 * weight's value, or (codes) an int8 code. */
static inline float bm_val(const ps_args *a, int64_t p, int codes) {
    return codes ? (float)((const int8_t *)a->values)[p] : load_val(a->values, p, a->dtype);
}

/* The scalar bitmask rows, for float values (scales NULL) or int8 codes times their row's scale. */
static void bm_rows_scalar_scaled(const ps_args *a, int64_t r0, int64_t r1, const float *scales) {
    const int64_t in = a->in, W = (in + 15) / 16, n = a->n, out = a->out;
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t *m = a->mask + r * W;
        const float s = scales ? scales[r] : 1.f, b = a->bias ? a->bias[r] : 0.f;
        for (int64_t t0 = 0; t0 < n; t0 += PS_TILE) {
            const int T = n - t0 < PS_TILE ? (int)(n - t0) : PS_TILE;
            const float *x = a->x + t0 * in;
            float acc[PS_TILE] = {0};
            int64_t p = a->rowoff[r];
            for (int64_t w = 0; w < W; w++) {
                for (unsigned k = m[w]; k; k &= k - 1) {
                    const float v = bm_val(a, p++, scales != NULL);
                    const float *xc = x + w * 16 + ctz16(k);
                    for (int t = 0; t < T; t++) acc[t] += v * xc[t * in];
                }
            }
            for (int t = 0; t < T; t++) a->y[(t0 + t) * out + r] = acc[t] * s + b;
        }
    }
}

static void bm_rows_scalar(const ps_args *a, int64_t r0, int64_t r1) { bm_rows_scalar_scaled(a, r0, r1, NULL); }

static void csr_rows_scalar(const ps_args *a, int64_t r0, int64_t r1) {
    const int64_t in = a->in, n = a->n, out = a->out;
    for (int64_t r = r0; r < r1; r++) {
        const float b = a->bias ? a->bias[r] : 0.f;
        for (int64_t t = 0; t < n; t++) {
            const float *x = a->x + t * in;
            float acc = 0.f;
            for (int64_t k = a->rowoff[r]; k < a->rowoff[r + 1]; k++)
                acc += load_val(a->values, k, a->dtype) * x[a->cols[k]];
            if (a->xt)
                a->y[r * n + t] = acc + b;
            else
                a->y[t * out + r] = acc + b;
        }
    }
}

/* The scalar dense rows, for float values (scales NULL) or int8 codes times their row's scale. */
static void dense_rows_scalar_scaled(const ps_args *a, int64_t r0, int64_t r1, const float *scales) {
    const int64_t in = a->in, n = a->n, out = a->out;
    for (int64_t r = r0; r < r1; r++) {
        const float s = scales ? scales[r] : 1.f, b = a->bias ? a->bias[r] : 0.f;
        for (int64_t t = 0; t < n; t++) {
            const float *x = a->x + t * in;
            float acc = 0.f;
            for (int64_t j = 0; j < in; j++) acc += bm_val(a, r * in + j, scales != NULL) * x[j];
            a->y[t * out + r] = acc * s + b;
        }
    }
}

static void dense_rows_scalar(const ps_args *a, int64_t r0, int64_t r1) { dense_rows_scalar_scaled(a, r0, r1, NULL); }

/* Rows r0..r1 of a bitmask weight as dense float32 rows (dst: (r1 - r0) x in), zeros included; int8 codes
 * (scales not NULL) times their row's scale. */
static void unpack_rows_scalar_scaled(const ps_args *a, int64_t r0, int64_t r1, float *dst, const float *scales) {
    const int64_t in = a->in, W = (in + 15) / 16;
    for (int64_t r = r0; r < r1; r++) {
        float *d = dst + (r - r0) * in;
        const float s = scales ? scales[r] : 1.f;
        memset(d, 0, (size_t)in * sizeof(float));
        int64_t p = a->rowoff[r];
        for (int64_t w = 0; w < W; w++)
            for (unsigned k = a->mask[r * W + w]; k; k &= k - 1) d[16 * w + ctz16(k)] = bm_val(a, p++, scales != NULL) * s;
    }
}

static void unpack_rows_scalar(const ps_args *a, int64_t r0, int64_t r1, float *dst) {
    unpack_rows_scalar_scaled(a, r0, r1, dst, NULL);
}

#ifdef PS_X86
/* ------------------------------------------------------------------------------ AVX-512 -- */

#define TGT512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,popcnt,bmi,bmi2,fma,f16c")))

/* Software prefetch of a weight stream into L2: `lines` cache lines from `from` on (see bm_row1_512). */
PS_INLINE void prefetch_l2(const void *from, int lines) {
    if (PS_PF_DIST <= 0) return; /* -DPS_PF_DIST=0: no software prefetch (the timing experiments) */
    for (int l = 0; l < lines; l++) _mm_prefetch((const char *)from + 64 * l, _MM_HINT_T1);
}

/* Lines to prefetch per 4-word step of a row of row_nnz values of es bytes spread over W mask words: the
 * step's average bytes in lines, plus one, so the window never falls behind. */
static inline int prefetch_lines(int64_t row_nnz, int es, int64_t W) {
    return (int)((row_nnz * es * 4 / (W ? W : 1) + 63) / 64) + 1;
}

/* 16 dense lanes from the c = popcount(k) packed values at off: zero where k has no bit. */
TGT512 PS_INLINE __m512 expand16(const void *vals, int64_t off, __mmask16 k, int c, int dt) {
    /* expand straight from memory: ~10 % fewer cycles per chunk than a masked load + register expand */
    if (dt == PS_F32) return _mm512_maskz_expandloadu_ps(k, (const float *)vals + off);
    /* 16-bit storage: load exactly c halves (a masked load never faults past the buffer), widen, expand */
    const __m256i h = _mm256_maskz_loadu_epi16((__mmask16)((1u << c) - 1u), (const uint16_t *)vals + off);
    const __m512 f = dt == PS_BF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                                   : _mm512_cvtph_ps(h);
    return _mm512_maskz_expand_ps(k, f);
}

/* Contiguous (not expanded) load of the values selected by km. */
TGT512 PS_INLINE __m512 load16(const void *vals, int64_t off, __mmask16 km, int dt) {
    if (dt == PS_F32) return _mm512_maskz_loadu_ps(km, (const float *)vals + off);
    const __m256i h = _mm256_maskz_loadu_epi16(km, (const uint16_t *)vals + off);
    return dt == PS_BF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                         : _mm512_cvtph_ps(h);
}

/* One row, one token.  Four 16-bit mask words come in one 64-bit load, and the four value pointers are
 * prefix popcounts of it, so the pointer updates are independent instead of a serial chain.
 *
 * Software prefetch: one core cannot keep enough DRAM requests in flight on two sequential streams whose
 * rate follows the mask (measured ~13 GB/s per core against ~20 for a dense row), so every step asks for
 * pf_lines cache lines PS_PF_DIST bytes ahead of the value pointer into L2.  pf_lines covers one step's
 * bytes plus one line (the caller derives it from the row's density), so the window never falls behind
 * and the overlap between steps stays small.  Measured on Zen 4, 2 threads, 4096 x 4096 fp32 at s = 0.5:
 * 1.5-2.0x the speed without it, paired in the same process. */
TGT512 PS_INLINE float bm_row1_512(const void *vals, int64_t p, const uint16_t *m, int64_t Wfull, int tail,
                                   const float *x, int dt, int pf_lines) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const int es = dt == PS_F32 ? 4 : 2;
    int64_t w = 0;
    for (; w + 4 <= Wfull; w += 4) {
        uint64_t mm;
        memcpy(&mm, m + w, 8);
        const int64_t p1 = p + _mm_popcnt_u64(mm & 0xffffULL);
        const int64_t p2 = p + _mm_popcnt_u64(mm & 0xffffffffULL);
        const int64_t p3 = p + _mm_popcnt_u64(mm & 0xffffffffffffULL);
        const int64_t p4 = p + _mm_popcnt_u64(mm);
        prefetch_l2((const char *)vals + p * es + PS_PF_DIST, pf_lines);
        const __m512 w0 = expand16(vals, p, (__mmask16)mm, (int)(p1 - p), dt);
        const __m512 w1 = expand16(vals, p1, (__mmask16)(mm >> 16), (int)(p2 - p1), dt);
        const __m512 w2 = expand16(vals, p2, (__mmask16)(mm >> 32), (int)(p3 - p2), dt);
        const __m512 w3 = expand16(vals, p3, (__mmask16)(mm >> 48), (int)(p4 - p3), dt);
        const float *xc = x + 16 * w;
        a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xc), a0);
        a1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xc + 16), a1);
        a2 = _mm512_fmadd_ps(w2, _mm512_loadu_ps(xc + 32), a2);
        a3 = _mm512_fmadd_ps(w3, _mm512_loadu_ps(xc + 48), a3);
        p = p4;
    }
    for (; w < Wfull; w++) {
        const unsigned k = m[w];
        const int c = popcount16(k);
        a0 = _mm512_fmadd_ps(expand16(vals, p, (__mmask16)k, c, dt), _mm512_loadu_ps(x + 16 * w), a0);
        p += c;
    }
    if (tail) { /* partial last word: its zero bits past in_features also mask the input load */
        const unsigned k = m[Wfull];
        const __m512 wv = expand16(vals, p, (__mmask16)k, popcount16(k), dt);
        a1 = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps((__mmask16)k, x + 16 * Wfull), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/* One row, T tokens: every expanded weight register feeds T FMAs. */
TGT512 PS_INLINE void bm_rowT_512(const void *vals, int64_t p, const uint16_t *m, int64_t Wfull, int tail,
                                  const float *x, int64_t in, int T, int dt, float *res) {
    __m512 acc[PS_TILE], acc2[PS_TILE];
    for (int t = 0; t < T; t++) acc[t] = acc2[t] = _mm512_setzero_ps();
    int64_t w = 0;
    for (; w + 2 <= Wfull; w += 2) {
        uint32_t mm;
        memcpy(&mm, m + w, 4);
        const int c0 = popcount16(mm & 0xffffu), c1 = popcount16(mm >> 16);
        const __m512 w0 = expand16(vals, p, (__mmask16)mm, c0, dt);
        const __m512 w1 = expand16(vals, p + c0, (__mmask16)(mm >> 16), c1, dt);
        p += c0 + c1;
        for (int t = 0; t < T; t++) {
            const float *xc = x + t * in + 16 * w;
            acc[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xc), acc[t]);
            acc2[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xc + 16), acc2[t]);
        }
    }
    if (w < Wfull) {
        const unsigned k = m[w];
        const int c = popcount16(k);
        const __m512 wv = expand16(vals, p, (__mmask16)k, c, dt);
        p += c;
        for (int t = 0; t < T; t++) acc[t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + t * in + 16 * w), acc[t]);
    }
    if (tail) {
        const unsigned k = m[Wfull];
        const __m512 wv = expand16(vals, p, (__mmask16)k, popcount16(k), dt);
        for (int t = 0; t < T; t++)
            acc2[t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps((__mmask16)k, x + t * in + 16 * Wfull), acc2[t]);
    }
    for (int t = 0; t < T; t++) res[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t], acc2[t]));
}

/* Two rows, T tokens: each input vector loaded feeds two FMAs.  With 8 tokens the input tile (8 x in floats)
 * lives in L2, not L1, so halving its loads is what speeds up the multi-token case. */
TGT512 PS_INLINE void bm_rows2T_512(const ps_args *a, int64_t r, const float *x, int T, int dt,
                                    float res[2][PS_TILE]) {
    const int64_t in = a->in, W = (in + 15) / 16, Wfull = in / 16;
    const void *vals = a->values;
    const uint16_t *m0 = a->mask + r * W, *m1 = m0 + W;
    int64_t p0 = a->rowoff[r], p1 = a->rowoff[r + 1];
    __m512 acc0[PS_TILE], acc1[PS_TILE];
    for (int t = 0; t < T; t++) acc0[t] = acc1[t] = _mm512_setzero_ps();
    const int es = dt == PS_F32 ? 4 : 2;
    /* sized for the denser of the two rows */
    const int64_t row_nnz = p1 - p0 > a->rowoff[r + 2] - p1 ? p1 - p0 : a->rowoff[r + 2] - p1;
    const int pf_lines = prefetch_lines(row_nnz, es, W);
    for (int64_t w = 0; w < Wfull; w++) {
        const unsigned k0 = m0[w], k1 = m1[w];
        const int c0 = popcount16(k0), c1 = popcount16(k1);
        if ((w & 3) == 0) { /* every 4 words, as the one-token kernel; two streams, twice the distance */
            prefetch_l2((const char *)vals + p0 * es + 2 * PS_PF_DIST, pf_lines);
            prefetch_l2((const char *)vals + p1 * es + 2 * PS_PF_DIST, pf_lines);
        }
        const __m512 w0 = expand16(vals, p0, (__mmask16)k0, c0, dt);
        const __m512 w1 = expand16(vals, p1, (__mmask16)k1, c1, dt);
        p0 += c0;
        p1 += c1;
        for (int t = 0; t < T; t++) {
            const __m512 xv = _mm512_loadu_ps(x + t * in + 16 * w);
            acc0[t] = _mm512_fmadd_ps(w0, xv, acc0[t]);
            acc1[t] = _mm512_fmadd_ps(w1, xv, acc1[t]);
        }
    }
    if (in % 16) { /* bits past in_features are zero in both rows: their union masks the input load */
        const unsigned k0 = m0[Wfull], k1 = m1[Wfull];
        const __m512 w0 = expand16(vals, p0, (__mmask16)k0, popcount16(k0), dt);
        const __m512 w1 = expand16(vals, p1, (__mmask16)k1, popcount16(k1), dt);
        for (int t = 0; t < T; t++) {
            const __m512 xv = _mm512_maskz_loadu_ps((__mmask16)(k0 | k1), x + t * in + 16 * Wfull);
            acc0[t] = _mm512_fmadd_ps(w0, xv, acc0[t]);
            acc1[t] = _mm512_fmadd_ps(w1, xv, acc1[t]);
        }
    }
    for (int t = 0; t < T; t++) {
        res[0][t] = _mm512_reduce_add_ps(acc0[t]);
        res[1][t] = _mm512_reduce_add_ps(acc1[t]);
    }
}

TGT512 PS_INLINE void bm_rows_512_dt(const ps_args *a, int64_t r0, int64_t r1, int dt) {
    const int64_t in = a->in, W = (in + 15) / 16, Wfull = in / 16, n = a->n;
    const int tail = (in % 16) != 0;
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t *m = a->mask + r * W;
        const int64_t p = a->rowoff[r];
        const float b = a->bias ? a->bias[r] : 0.f;
        if (n == 1) {
            const int pf_lines = prefetch_lines(a->rowoff[r + 1] - p, dt == PS_F32 ? 4 : 2, W);
            a->y[r] = bm_row1_512(a->values, p, m, Wfull, tail, a->x, dt, pf_lines) + b;
            continue;
        }
        if (r + 1 < r1) {
            const float b1 = a->bias ? a->bias[r + 1] : 0.f;
            PS_ROW2_TILES(a, r, b, b1, bm_rows2T_512(a, r, x, K, dt, res));
            r++;
            continue;
        }
        PS_ROW_TILES(a, r, 1.f, b, bm_rowT_512(a->values, p, m, Wfull, tail, x, in, K, dt, res));
    }
}

TGT512 static void bm_rows_512_f32(const ps_args *a, int64_t r0, int64_t r1) { bm_rows_512_dt(a, r0, r1, PS_F32); }
TGT512 static void bm_rows_512_bf16(const ps_args *a, int64_t r0, int64_t r1) { bm_rows_512_dt(a, r0, r1, PS_BF16); }
TGT512 static void bm_rows_512_f16(const ps_args *a, int64_t r0, int64_t r1) { bm_rows_512_dt(a, r0, r1, PS_F16); }

/* CSR16, few tokens: gather 16 inputs by column index per 16 non-zeros. */
TGT512 PS_INLINE void csr_rowT_gather_512(const ps_args *a, int64_t k0, int64_t k1, const float *x, int T, int dt,
                                          float *res) {
    __m512 acc[PS_TILE];
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    int64_t k = k0;
    for (; k + 16 <= k1; k += 16) {
        const __m512i idx = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(a->cols + k)));
        const __m512 v = load16(a->values, k, (__mmask16)0xffff, dt);
        for (int t = 0; t < T; t++) acc[t] = _mm512_fmadd_ps(v, _mm512_i32gather_ps(idx, x + t * a->in, 4), acc[t]);
    }
    if (k < k1) {
        const __mmask16 km = (__mmask16)((1u << (k1 - k)) - 1u);
        const __m512i idx = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(km, a->cols + k));
        const __m512 v = load16(a->values, k, km, dt);
        for (int t = 0; t < T; t++) {
            const __m512 xg = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), km, idx, x + t * a->in, 4);
            acc[t] = _mm512_fmadd_ps(v, xg, acc[t]);
        }
    }
    for (int t = 0; t < T; t++) res[t] = _mm512_reduce_add_ps(acc[t]);
}

/* CSR16, many tokens: x transposed (in x n), so each non-zero is one broadcast FMA on K*16 tokens. */
TGT512 PS_INLINE void csr_rowK_tvec_512(const ps_args *a, int64_t r, int64_t t0, int K, __mmask16 last, int dt) {
    const int64_t n = a->n, k0 = a->rowoff[r], k1 = a->rowoff[r + 1];
    /* 4 non-zeros per step into 4 accumulator sets: one set would wait on the FMA latency every non-zero */
    __m512 acc[4][4];
    for (int u = 0; u < 4; u++)
        for (int j = 0; j < K; j++) acc[u][j] = _mm512_setzero_ps();
    int64_t k = k0;
    for (; k + 4 <= k1; k += 4) {
        for (int u = 0; u < 4; u++) {
            const __m512 v = _mm512_set1_ps(load_val(a->values, k + u, dt));
            const float *xr = a->xt + (int64_t)a->cols[k + u] * n + t0;
            for (int j = 0; j < K; j++) {
                const __mmask16 mj = j == K - 1 ? last : (__mmask16)0xffff;
                acc[u][j] = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(mj, xr + 16 * j), acc[u][j]);
            }
        }
    }
    for (; k < k1; k++) {
        const __m512 v = _mm512_set1_ps(load_val(a->values, k, dt));
        const float *xr = a->xt + (int64_t)a->cols[k] * n + t0;
        for (int j = 0; j < K; j++) {
            const __mmask16 mj = j == K - 1 ? last : (__mmask16)0xffff;
            acc[0][j] = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(mj, xr + 16 * j), acc[0][j]);
        }
    }
    const __m512 b = _mm512_set1_ps(a->bias ? a->bias[r] : 0.f);
    for (int j = 0; j < K; j++) {
        const __mmask16 mj = j == K - 1 ? last : (__mmask16)0xffff;
        const __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[0][j], acc[1][j]), _mm512_add_ps(acc[2][j], acc[3][j]));
        _mm512_mask_storeu_ps(a->y + r * n + t0 + 16 * j, mj, _mm512_add_ps(sum, b));
    }
}

TGT512 PS_INLINE void csr_rows_512_dt(const ps_args *a, int64_t r0, int64_t r1, int dt) {
    const int64_t n = a->n;
    for (int64_t r = r0; r < r1; r++) {
        if (a->xt) {
            for (int64_t t0 = 0; t0 < n; t0 += 64) {
                const int64_t rem = n - t0 < 64 ? n - t0 : 64;
                const int K = (int)((rem + 15) / 16);
                const int lastn = (int)(rem - 16 * (K - 1));
                const __mmask16 last = (__mmask16)((1u << lastn) - 1u);
                switch (K) {
                case 1: csr_rowK_tvec_512(a, r, t0, 1, last, dt); break;
                case 2: csr_rowK_tvec_512(a, r, t0, 2, last, dt); break;
                case 3: csr_rowK_tvec_512(a, r, t0, 3, last, dt); break;
                default: csr_rowK_tvec_512(a, r, t0, 4, last, dt); break;
                }
            }
            continue;
        }
        const float b = a->bias ? a->bias[r] : 0.f;
        PS_ROW_TILES(a, r, 1.f, b, csr_rowT_gather_512(a, a->rowoff[r], a->rowoff[r + 1], x, K, dt, res));
    }
}

TGT512 static void csr_rows_512_f32(const ps_args *a, int64_t r0, int64_t r1) { csr_rows_512_dt(a, r0, r1, PS_F32); }
TGT512 static void csr_rows_512_bf16(const ps_args *a, int64_t r0, int64_t r1) { csr_rows_512_dt(a, r0, r1, PS_BF16); }
TGT512 static void csr_rows_512_f16(const ps_args *a, int64_t r0, int64_t r1) { csr_rows_512_dt(a, r0, r1, PS_F16); }

/* Dense reference with the same structure as the bitmask kernel: a plain load instead of the expand, and the
 * same software prefetch (a step reads 256 bytes: 4 lines). */
TGT512 PS_INLINE float dense_row1_512(const float *w, const float *x, int64_t in) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t j = 0;
    for (; j + 64 <= in; j += 64) {
        prefetch_l2((const char *)(w + j) + PS_PF_DIST, 4);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j), _mm512_loadu_ps(x + j), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j + 16), _mm512_loadu_ps(x + j + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j + 32), _mm512_loadu_ps(x + j + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j + 48), _mm512_loadu_ps(x + j + 48), a3);
    }
    for (; j < in; j += 16) {
        const int64_t rem = in - j;
        const __mmask16 km = rem >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1u);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(km, w + j), _mm512_maskz_loadu_ps(km, x + j), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

TGT512 PS_INLINE void dense_rowsR1_512(const float *w, const float *x, int64_t in, int R, float *res) {
    __m512 acc[PS_ROWS], acc2[PS_ROWS];
    for (int q = 0; q < R; q++) acc[q] = acc2[q] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= in; j += 32) {
        const __m512 x0 = _mm512_loadu_ps(x + j), x1 = _mm512_loadu_ps(x + j + 16);
        for (int q = 0; q < R; q++) {
            acc[q] = _mm512_fmadd_ps(_mm512_loadu_ps(w + q * in + j), x0, acc[q]);
            acc2[q] = _mm512_fmadd_ps(_mm512_loadu_ps(w + q * in + j + 16), x1, acc2[q]);
        }
    }
    for (; j < in; j += 16) {
        const int64_t rem = in - j;
        const __mmask16 km = rem >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1u);
        const __m512 x0 = _mm512_maskz_loadu_ps(km, x + j);
        for (int q = 0; q < R; q++) acc[q] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(km, w + q * in + j), x0, acc[q]);
    }
    for (int q = 0; q < R; q++) res[q] = _mm512_reduce_add_ps(_mm512_add_ps(acc[q], acc2[q]));
}

TGT512 PS_INLINE void dense_rowT_512(const float *w, const float *x, int64_t in, int T, float *res) {
    __m512 acc[PS_TILE], acc2[PS_TILE];
    for (int t = 0; t < T; t++) acc[t] = acc2[t] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= in; j += 32) {
        const __m512 w0 = _mm512_loadu_ps(w + j), w1 = _mm512_loadu_ps(w + j + 16);
        for (int t = 0; t < T; t++) {
            acc[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + t * in + j), acc[t]);
            acc2[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + t * in + j + 16), acc2[t]);
        }
    }
    for (; j < in; j += 16) {
        const int64_t rem = in - j;
        const __mmask16 km = rem >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1u);
        const __m512 wv = _mm512_maskz_loadu_ps(km, w + j);
        for (int t = 0; t < T; t++) acc[t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(km, x + t * in + j), acc[t]);
    }
    for (int t = 0; t < T; t++) res[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t], acc2[t]));
}

/* Two rows, T tokens, as in the bitmask kernel: one input load feeds two FMAs. */
TGT512 PS_INLINE void dense_rows2T_512(const float *w, const float *x, int64_t in, int T, float res[2][PS_TILE]) {
    __m512 acc0[PS_TILE], acc1[PS_TILE];
    for (int t = 0; t < T; t++) acc0[t] = acc1[t] = _mm512_setzero_ps();
    for (int64_t j = 0; j < in; j += 16) {
        const int64_t rem = in - j;
        const __mmask16 km = rem >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1u);
        if ((j & 63) == 0) { /* the bitmask kernel's prefetch: 4 words = 256 bytes per row, 5 lines */
            prefetch_l2((const char *)(w + j) + 2 * PS_PF_DIST, 5);
            prefetch_l2((const char *)(w + in + j) + 2 * PS_PF_DIST, 5);
        }
        const __m512 w0 = _mm512_maskz_loadu_ps(km, w + j), w1 = _mm512_maskz_loadu_ps(km, w + in + j);
        for (int t = 0; t < T; t++) {
            const __m512 xv = _mm512_maskz_loadu_ps(km, x + t * in + j);
            acc0[t] = _mm512_fmadd_ps(w0, xv, acc0[t]);
            acc1[t] = _mm512_fmadd_ps(w1, xv, acc1[t]);
        }
    }
    for (int t = 0; t < T; t++) {
        res[0][t] = _mm512_reduce_add_ps(acc0[t]);
        res[1][t] = _mm512_reduce_add_ps(acc1[t]);
    }
}

TGT512 static void dense_rows_512(const ps_args *a, int64_t r0, int64_t r1) {
    const int64_t in = a->in, n = a->n;
    for (int64_t r = r0; r < r1; r++) {
        const float *w = (const float *)a->values + r * in;
        const float b = a->bias ? a->bias[r] : 0.f;
        if (n == 1 && a->dense_rows != 1) {
            float res[PS_ROWS];
            const int R = r1 - r < PS_ROWS ? (int)(r1 - r) : PS_ROWS;
            switch (R) {
            case 1: dense_rowsR1_512(w, a->x, in, 1, res); break;
            case 2: dense_rowsR1_512(w, a->x, in, 2, res); break;
            case 3: dense_rowsR1_512(w, a->x, in, 3, res); break;
            default: dense_rowsR1_512(w, a->x, in, PS_ROWS, res); break;
            }
            for (int q = 0; q < R; q++) a->y[r + q] = res[q] + (a->bias ? a->bias[r + q] : 0.f);
            r += R - 1;
            continue;
        }
        if (n == 1) {
            a->y[r] = dense_row1_512(w, a->x, in) + b;
            continue;
        }
        if (r + 1 < r1) {
            const float b1 = a->bias ? a->bias[r + 1] : 0.f;
            PS_ROW2_TILES(a, r, b, b1, dense_rows2T_512(w, x, in, K, res));
            r++;
            continue;
        }
        PS_ROW_TILES(a, r, 1.f, b, dense_rowT_512(w, x, in, K, res));
    }
}

/* --------------------------------------------------------------------------------- AVX2 -- */

#define TGT2 __attribute__((target("avx2,fma,f16c,popcnt,bmi,bmi2")))

/* perm8[k][i]: for lane i set in k, the rank of i among k's set bits (where its packed value sits). */
static uint8_t perm8[256][8];

/* perm8i[k][i]: the same ranks as 32-bit lanes, ready for vpermps without a widening shuffle, and 7 for
 * a lane whose bit is clear; first8[c]: lanes 0..c-1 all ones (a vmaskmov mask).  A masked load of the c
 * packed values leaves lanes c..7 zero, so when c < 8 lane 7 is zero and the permutation alone expands
 * (c == 8 has no clear lane).  Used where a read may not pass the last value (multi-token rows). */
static int32_t perm8i[256][8] __attribute__((aligned(32)));
static int32_t first8[9][8] __attribute__((aligned(32)));

/* bf16 expand in one byte shuffle: bfshuf[k] places packed half r (bytes 2r, 2r+1 of 16 loaded bytes) into
 * the high half of 32-bit lane i when lane i is the r-th set bit of k, zeros elsewhere (index 0x80): the
 * widening to fp32 (a 16-bit shift) and the zeroing come free with the permutation. */
static uint8_t bfshuf[256][32] __attribute__((aligned(32)));

/* fp32 expand in one in-lane byte shuffle: the low 128-bit lane holds the 4 values of lanes 0..3 (packed at
 * off), the high one the 4 of lanes 4..7 (packed at off + popcount(k & 15)); f32shuf[k] moves packed value
 * r of each half into its lane and zeros the clear lanes (index 0x80).  vpshufb is in-lane and zeros for
 * free, where vpermps crosses lanes and needs a masked load or an and to zero.  benchmarks/bench_expand.py
 * on AMD EPYC Zen 3 (one core, 4096-wide fp32 rows in L2, s = 0.5): this loop 8.4 G weights/s, the masked
 * load + vpermps 7.4, loadu + vpermps + and 7.5; with no expand at all (wrong results) 16.8, a dense row
 * 15.3.  The expand is half of this kernel's time on AVX2, and this is the cheapest one found. */
static uint8_t f32shuf[256][32] __attribute__((aligned(32)));

static void init_perm8(void) {
    for (int k = 0; k < 256; k++) {
        for (int h = 0; h < 2; h++) {
            int r = 0;
            for (int i = 0; i < 4; i++) {
                const int set = k >> (4 * h + i) & 1;
                for (int b = 0; b < 4; b++) f32shuf[k][16 * h + 4 * i + b] = set ? (uint8_t)(4 * r + b) : 0x80;
                r += set;
            }
        }
    }
    for (int k = 0; k < 256; k++) {
        int r = 0;
        for (int i = 0; i < 8; i++) {
            const int set = k >> i & 1;
            bfshuf[k][4 * i] = bfshuf[k][4 * i + 1] = 0x80;
            bfshuf[k][4 * i + 2] = set ? (uint8_t)(2 * r) : 0x80;
            bfshuf[k][4 * i + 3] = set ? (uint8_t)(2 * r + 1) : 0x80;
            r += set;
        }
    }
    for (int k = 0; k < 256; k++) {
        int c = 0;
        for (int i = 0; i < 8; i++) {
            perm8[k][i] = (k >> i & 1) ? (uint8_t)c : 0;
            perm8i[k][i] = (k >> i & 1) ? c++ : 7;
        }
    }
    for (int c = 0; c <= 8; c++)
        for (int i = 0; i < 8; i++) first8[c][i] = i < c ? -1 : 0;
}

/* 8 raw values (no expand) starting at off, converted to float32. */
TGT2 PS_INLINE __m256 raw8_256(const void *vals, int64_t off, int dt) {
    if (dt == PS_F32) return _mm256_loadu_ps((const float *)vals + off);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)vals + off));
    return dt == PS_BF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
}

/* Emulated expand: load 8 values (a copy near the end of the buffer so nothing is read past nnz),
 * permute each into its lane by the LUT, zero the lanes whose bit is clear. */
TGT2 PS_INLINE __m256 expand8(const void *vals, int64_t off, unsigned k, int c, int64_t nnz, int dt) {
    __m256 v;
    if (off + 8 <= nnz) {
        v = raw8_256(vals, off, dt);
    } else {
        float tmp[8] = {0};
        for (int i = 0; i < c; i++) tmp[i] = load_val(vals, off + i, dt);
        v = _mm256_loadu_ps(tmp);
    }
    const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)perm8[k]));
    const __m256i bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i lm = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)k), bits), bits);
    return _mm256_and_ps(_mm256_permutevar8x32_ps(v, idx), _mm256_castsi256_ps(lm));
}

/* fp32 expand of 8 lanes by the mask byte k with c = popcount(k) values at off: never reads past them. */
TGT2 PS_INLINE __m256 expand8m(const float *vals, int64_t off, unsigned k, int c) {
    const __m256 v = _mm256_maskload_ps(vals + off, _mm256_load_si256((const __m256i *)first8[c]));
    return _mm256_permutevar8x32_ps(v, _mm256_load_si256((const __m256i *)perm8i[k]));
}

/* Any dtype, for a word whose reads stay inside the buffer (the caller checks: at most 8 values past off):
 * fp32 by two 4-value loads and f32shuf; bf16 by bfshuf; fp16 by 8 raw halves, widened, lanes c..7 zeroed,
 * then the one permutation. */
TGT2 PS_INLINE __m256 expand8x(const void *vals, int64_t off, unsigned k, int c, int dt) {
    if (dt == PS_F32) {
        const float *v = (const float *)vals + off;
        const __m256i two = _mm256_loadu2_m128i((const __m128i *)(v + popcount16(k & 15u)), (const __m128i *)v);
        return _mm256_castsi256_ps(_mm256_shuffle_epi8(two, _mm256_load_si256((const __m256i *)f32shuf[k])));
    }
    if (dt == PS_BF16) {
        const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)vals + off));
        return _mm256_castsi256_ps(
            _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(h), _mm256_load_si256((const __m256i *)bfshuf[k])));
    }
    const __m256 v = _mm256_and_ps(raw8_256(vals, off, dt), _mm256_load_ps((const float *)first8[c]));
    return _mm256_permutevar8x32_ps(v, _mm256_load_si256((const __m256i *)perm8i[k]));
}

/* One row, one token, as bm_row1_512: 4 mask words per step with prefix-popcount pointers (8 independent
 * 8-lane expands) and the same software prefetch of the value stream.  Measured here with the AVX2 path
 * forced, 2 threads, fp32: without the prefetch and the 4-word steps it ran at 0.73x / 0.94x the AVX2
 * dense row at s = 0.3 / 0.5 on 4096 x 4096. */
TGT2 PS_INLINE float bm_row1_256(const ps_args *a, int64_t p, const uint16_t *m, int64_t Wfull, int dt,
                                 int pf_lines) {
    const void *vals = a->values;
    const float *x = a->x;
    const int es = dt == PS_F32 ? 4 : 2;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t w = 0;
    /* a step's expands read at most 8 values past its last pointer: stop the fast loop while that stays in
     * bounds, the last steps below check every read */
    const int64_t guard = 64 + 8;
    for (; w + 4 <= Wfull && p + guard <= a->nnz; w += 4) {
        uint64_t mm;
        memcpy(&mm, m + w, 8);
        prefetch_l2((const char *)vals + p * es + PS_PF_DIST, pf_lines);
        const float *xc = x + 16 * w;
        for (int q = 0; q < 4; q++) {
            const unsigned k = (unsigned)(mm >> (16 * q)) & 0xffffu, klo = k & 0xffu, khi = k >> 8;
            const int64_t plo = p + _mm_popcnt_u64(mm & ((1ULL << (16 * q)) - 1ULL));
            const int clo = popcount16(klo), chi = popcount16(khi);
            acc[q] = _mm256_fmadd_ps(expand8x(vals, plo, klo, clo, dt), _mm256_loadu_ps(xc + 16 * q), acc[q]);
            acc[q] = _mm256_fmadd_ps(expand8x(vals, plo + clo, khi, chi, dt), _mm256_loadu_ps(xc + 16 * q + 8),
                                     acc[q]);
        }
        p += _mm_popcnt_u64(mm);
    }
    for (; w < Wfull; w++) { /* the last steps near the end of the buffer: bounds-checked expands */
        const unsigned k = m[w], klo = k & 0xffu, khi = k >> 8;
        const int clo = popcount16(klo), chi = popcount16(khi);
        acc[0] = _mm256_fmadd_ps(expand8(vals, p, klo, clo, a->nnz, dt), _mm256_loadu_ps(x + 16 * w), acc[0]);
        acc[1] = _mm256_fmadd_ps(expand8(vals, p + clo, khi, chi, a->nnz, dt), _mm256_loadu_ps(x + 16 * w + 8),
                                 acc[1]);
        p += clo + chi;
    }
    const __m256 s8 = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    __m128 q4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    q4 = _mm_add_ps(q4, _mm_movehl_ps(q4, q4));
    q4 = _mm_add_ss(q4, _mm_movehdup_ps(q4));
    float res = _mm_cvtss_f32(q4);
    if (a->in % 16) { /* partial last word: scalar, so the input is never read past in_features */
        for (unsigned k = m[Wfull]; k; k &= k - 1) res += load_val(vals, p++, dt) * x[16 * Wfull + ctz16(k)];
    }
    return res;
}

TGT2 PS_INLINE void bm_rowT_256(const ps_args *a, int64_t p, const uint16_t *m, int64_t Wfull, const float *x,
                                int T, int dt, float *res) {
    const int64_t in = a->in;
    __m256 acc[PS_TILE], acc2[PS_TILE];
    for (int t = 0; t < T; t++) acc[t] = acc2[t] = _mm256_setzero_ps();
    for (int64_t w = 0; w < Wfull; w++) {
        const unsigned k = m[w], klo = k & 0xffu, khi = k >> 8;
        const int clo = popcount16(klo), chi = popcount16(khi);
        const __m256 w0 = dt == PS_F32 ? expand8m((const float *)a->values, p, klo, clo)
                                       : expand8(a->values, p, klo, clo, a->nnz, dt);
        const __m256 w1 = dt == PS_F32 ? expand8m((const float *)a->values, p + clo, khi, chi)
                                       : expand8(a->values, p + clo, khi, chi, a->nnz, dt);
        p += clo + chi;
        for (int t = 0; t < T; t++) {
            const float *xc = x + t * in + 16 * w;
            acc[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xc), acc[t]);
            acc2[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xc + 8), acc2[t]);
        }
    }
    for (int t = 0; t < T; t++) {
        const __m256 s = _mm256_add_ps(acc[t], acc2[t]);
        __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        q = _mm_add_ss(q, _mm_movehdup_ps(q));
        res[t] = _mm_cvtss_f32(q);
    }
    if (in % 16) { /* partial last word: scalar, so the input is never read past in_features */
        for (unsigned k = m[Wfull]; k; k &= k - 1) {
            const float v = load_val(a->values, p++, dt);
            const float *xc = x + 16 * Wfull + ctz16(k);
            for (int t = 0; t < T; t++) res[t] += v * xc[t * in];
        }
    }
}

TGT2 PS_INLINE void bm_rows_256_dt(const ps_args *a, int64_t r0, int64_t r1, int dt) {
    const int64_t in = a->in, W = (in + 15) / 16, Wfull = in / 16, n = a->n;
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t *m = a->mask + r * W;
        const float b = a->bias ? a->bias[r] : 0.f;
        if (n == 1) {
            const int64_t p = a->rowoff[r];
            const int pf_lines = prefetch_lines(a->rowoff[r + 1] - p, dt == PS_F32 ? 4 : 2, W);
            a->y[r] = bm_row1_256(a, p, m, Wfull, dt, pf_lines) + b;
            continue;
        }
        const int64_t p = a->rowoff[r];
        PS_ROW_TILES(a, r, 1.f, b, bm_rowT_256(a, p, m, Wfull, x, K, dt, res));
    }
}

TGT2 static void bm_rows_256_f32(const ps_args *a, int64_t r0, int64_t r1) { bm_rows_256_dt(a, r0, r1, PS_F32); }
TGT2 static void bm_rows_256_bf16(const ps_args *a, int64_t r0, int64_t r1) { bm_rows_256_dt(a, r0, r1, PS_BF16); }
TGT2 static void bm_rows_256_f16(const ps_args *a, int64_t r0, int64_t r1) { bm_rows_256_dt(a, r0, r1, PS_F16); }

/* CSR16 on AVX2: 8-wide gathers per token; the token-vector layout (xt) falls back to scalar code. */
TGT2 static void csr_rows_256(const ps_args *a, int64_t r0, int64_t r1) {
    const int64_t in = a->in, n = a->n, out = a->out;
    const int dt = a->dtype;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t k0 = a->rowoff[r], k1 = a->rowoff[r + 1];
        const float b = a->bias ? a->bias[r] : 0.f;
        for (int64_t t = 0; t < n; t++) {
            const float *x = a->x + t * in;
            __m256 acc = _mm256_setzero_ps();
            int64_t k = k0;
            for (; k + 8 <= k1; k += 8) {
                const __m256i idx = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(a->cols + k)));
                acc = _mm256_fmadd_ps(raw8_256(a->values, k, dt), _mm256_i32gather_ps(x, idx, 4), acc);
            }
            __m128 q = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            q = _mm_add_ps(q, _mm_movehl_ps(q, q));
            q = _mm_add_ss(q, _mm_movehdup_ps(q));
            float s = _mm_cvtss_f32(q);
            for (; k < k1; k++) s += load_val(a->values, k, dt) * x[a->cols[k]];
            if (a->xt)
                a->y[r * n + t] = s + b;
            else
                a->y[t * out + r] = s + b;
        }
    }
}

/* Dense reference on AVX2 for every storage type (bf16 -> fp32 is a 16-bit shift, fp16 an F16C convert),
 * fp32 accumulation, the same 64-byte-per-step prefetch of the weight stream as the bitmask kernel. */
TGT2 PS_INLINE void dense_rows_256_dt(const ps_args *a, int64_t r0, int64_t r1, int dt) {
    const int64_t in = a->in, n = a->n, out = a->out;
    const int es = dt == PS_F32 ? 4 : 2;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t w = r * in;
        const float b = a->bias ? a->bias[r] : 0.f;
        for (int64_t t = 0; t < n; t++) {
            const float *x = a->x + t * in;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            int64_t j = 0;
            for (; j + 32 <= in; j += 32) {
                if (n == 1) prefetch_l2((const char *)a->values + (w + j) * es + PS_PF_DIST, es == 4 ? 2 : 1);
                a0 = _mm256_fmadd_ps(raw8_256(a->values, w + j, dt), _mm256_loadu_ps(x + j), a0);
                a1 = _mm256_fmadd_ps(raw8_256(a->values, w + j + 8, dt), _mm256_loadu_ps(x + j + 8), a1);
                a2 = _mm256_fmadd_ps(raw8_256(a->values, w + j + 16, dt), _mm256_loadu_ps(x + j + 16), a2);
                a3 = _mm256_fmadd_ps(raw8_256(a->values, w + j + 24, dt), _mm256_loadu_ps(x + j + 24), a3);
            }
            for (; j + 8 <= in; j += 8) a0 = _mm256_fmadd_ps(raw8_256(a->values, w + j, dt), _mm256_loadu_ps(x + j), a0);
            const __m256 s8 = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
            __m128 q = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
            q = _mm_add_ps(q, _mm_movehl_ps(q, q));
            q = _mm_add_ss(q, _mm_movehdup_ps(q));
            float s = _mm_cvtss_f32(q);
            for (; j < in; j++) s += load_val(a->values, w + j, dt) * x[j];
            a->y[t * out + r] = s + b;
        }
    }
}

TGT2 static void dense_rows_256(const ps_args *a, int64_t r0, int64_t r1) { dense_rows_256_dt(a, r0, r1, PS_F32); }
TGT2 static void dense_rows_256_bf16(const ps_args *a, int64_t r0, int64_t r1) { dense_rows_256_dt(a, r0, r1, PS_BF16); }
TGT2 static void dense_rows_256_f16(const ps_args *a, int64_t r0, int64_t r1) { dense_rows_256_dt(a, r0, r1, PS_F16); }

/* Rows r0..r1 of a bitmask weight as dense float32 rows: the 8-lane emulated expand, stored. */
TGT2 static void unpack_rows_256(const ps_args *a, int64_t r0, int64_t r1, float *dst) {
    const int64_t in = a->in, W = (in + 15) / 16, Wfull = in / 16;
    const int dt = a->dtype;
    for (int64_t r = r0; r < r1; r++) {
        float *d = dst + (r - r0) * in;
        const uint16_t *m = a->mask + r * W;
        int64_t p = a->rowoff[r];
        for (int64_t w = 0; w < Wfull; w++) {
            const unsigned k = m[w], klo = k & 0xffu, khi = k >> 8;
            const int clo = popcount16(klo), chi = popcount16(khi);
            /* byte-shuffle expands (no masked load: with the stores in flight, vmaskmovps made this 1.4-1.7x
             * slower on Zen 3, 1536 x 4096 fp32, 2 threads); bounds-checked ones for the buffer's last words */
            if (p + 16 <= a->nnz) {
                _mm256_storeu_ps(d + 16 * w, expand8x(a->values, p, klo, clo, dt));
                _mm256_storeu_ps(d + 16 * w + 8, expand8x(a->values, p + clo, khi, chi, dt));
            } else {
                _mm256_storeu_ps(d + 16 * w, expand8(a->values, p, klo, clo, a->nnz, dt));
                _mm256_storeu_ps(d + 16 * w + 8, expand8(a->values, p + clo, khi, chi, a->nnz, dt));
            }
            p += clo + chi;
        }
        if (in % 16) {
            for (int64_t j = 16 * Wfull; j < in; j++) d[j] = 0.f;
            for (unsigned k = m[Wfull]; k; k &= k - 1) d[16 * Wfull + ctz16(k)] = load_val(a->values, p++, dt);
        }
    }
}
#endif /* PS_X86 */

/* -------------------------------------------------------------------------- cache flush -- */

/* Write back and invalidate every cache line of [p, p + nbytes) in all cache levels (clflush is baseline
 * x86-64): cold-cache timing of a working set too small to rotate copies of.  Returns 0, or -1 where the
 * CPU has no such instruction (the caller evicts by streaming a large buffer instead). */
int ps_flush(const void *p, int64_t nbytes) {
#ifdef PS_X86
    const char *c = (const char *)((uintptr_t)p & ~(uintptr_t)63), *end = (const char *)p + nbytes;
    for (; c < end; c += 64) _mm_clflush(c);
    _mm_mfence();
    return 0;
#else
    (void)p;
    (void)nbytes;
    return -1;
#endif
}

/* ---------------------------------------------------------------------------- dispatch -- */

int ps_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int ps_cpu_level(void) {
    static int level = -1;
    if (level >= 0) return level;
    int lv = PS_SCALAR;
#if defined(PS_X86) && defined(__GNUC__)
    __builtin_cpu_init();
    /* __builtin_cpu_supports also checks that the OS saves the wide registers (XCR0) */
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt") &&
        __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c"))
        lv = PS_AVX2;
    if (lv == PS_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        lv = PS_AVX512;
    init_perm8();
#endif
    level = lv;
    return level;
}

static int check(int isa, const ps_args *a) {
    if (isa < PS_SCALAR || isa > PS_AVX512 || isa > ps_cpu_level()) return -1;
    if (a->n < 0 || a->in < 0 || a->out < 0 || a->dtype < PS_F32 || a->dtype > PS_F16) return -2;
    return 0;
}

/* Row kernels by [isa][dtype] (PS_SCALAR / PS_AVX2 / PS_AVX512 x PS_F32 / PS_BF16 / PS_F16).  check()
 * refuses an isa above ps_cpu_level(), so off x86 only the scalar rows are ever read. */
typedef ps_rows_fn ps_rows_table[3][3];

static const ps_rows_table bm_table = {
    {bm_rows_scalar, bm_rows_scalar, bm_rows_scalar},
#ifdef PS_X86
    {bm_rows_256_f32, bm_rows_256_bf16, bm_rows_256_f16},
    {bm_rows_512_f32, bm_rows_512_bf16, bm_rows_512_f16},
#endif
};

static const ps_rows_table csr_table = {
    {csr_rows_scalar, csr_rows_scalar, csr_rows_scalar},
#ifdef PS_X86
    {csr_rows_256, csr_rows_256, csr_rows_256},
    {csr_rows_512_f32, csr_rows_512_bf16, csr_rows_512_f16},
#endif
};

static const ps_rows_table dense_table = {
    {dense_rows_scalar, dense_rows_scalar, dense_rows_scalar},
#ifdef PS_X86
    {dense_rows_256, dense_rows_256_bf16, dense_rows_256_f16},
    /* 16-bit dense weights take the AVX2 code on AVX-512 machines too (AVX2 is a subset of them) */
    {dense_rows_512, dense_rows_256_bf16, dense_rows_256_f16},
#endif
};

/* The matmul entry points: validate, nothing to do for an empty product, the table's kernel over the rows. */
static int run_matmul(int isa, int nthreads, const ps_args *a, const ps_rows_table table) {
    const int rc = check(isa, a);
    if (rc) return rc;
    if (a->n == 0 || a->out == 0) return 0;
    run_rows(table[isa][a->dtype], a, nthreads, value_bytes(a));
    return 0;
}

int ps_bitmask_matmul(int isa, int nthreads, const ps_args *a) { return run_matmul(isa, nthreads, a, bm_table); }

int ps_csr16_matmul(int isa, int nthreads, const ps_args *a) {
    if (a->in > 65536 && check(isa, a) == 0) return -2; /* uint16 column indices */
    return run_matmul(isa, nthreads, a, csr_table);
}

int ps_dense_matmul(int isa, int nthreads, const ps_args *a) { return run_matmul(isa, nthreads, a, dense_table); }

int ps_bitmask_unpack(int isa, int nthreads, const ps_args *a, int64_t r0, int64_t r1, float *dst) {
    const int rc = check(isa, a);
    if (rc) return rc;
    if (r0 < 0 || r1 > a->out || r0 > r1) return -2;
    ps_unpack_fn fn = unpack_rows_scalar;
#ifdef PS_X86
    /* AVX-512 machines run the AVX2 unpack: it is a small share of the panel path (the GEMM dominates) */
    if (isa >= PS_AVX2) fn = unpack_rows_256;
#endif
    run_unpack(fn, a, nthreads, r0, r1, dst);
    return 0;
}

/* ======================================================= bitmask over int8 codes (issue 25, ask 4) == */
/* The bitmask layout with int8 codes as the packed values and one float32 scale per output row
 * (kernels.h: ps_i8_args).  One token streams (1 - s) bytes + 1 bit per weight against dense int8's one
 * byte, so the byte bound is 1 / ((1 - s) + 1/8), 1.6x at s = 0.5.  Each mask word's codes are expanded
 * into their lanes (AVX-512 with VBMI2: vpexpandb straight from memory, 64 lanes per 4 mask words; other
 * AVX-512 and AVX2: one vpshufb with a rank table per mask byte), widened int8 -> int32 -> float32 (the
 * VBMI2 one-token rows: vpermb into 2^23 + code + 128, see i8_quarter_ps512vb) and FMA'd with the float32
 * input; each row sum is multiplied by its scale once, at the end.  Many tokens: the
 * caller decompresses panels of rows (ps_bitmask_int8_unpack, code * scale) and runs a GEMM on them.
 *
 * Dense int8, one token (ps_dense_int8_matmul): the baseline of that byte bound.  It shares the widen +
 * FMA steps (i8_fma16_512, i8_fma16_256), the accumulator layout, the prefetch and the threading with the
 * bitmask rows, with plain loads in place of the expands, so the two differ by the format alone.  The
 * VBMI2 one-token rows depart from it in the widen and the prefetch (i8_row1_512vb): a plain load needs
 * no extracts, and a dense stream no mask. */

/* Rows r0..r1 of a dense int8 weight, one token: y[r] = ROW1(row r's codes, x, in) * scale[r] + bias[r]. */
#define PS_I8_DENSE_ROWS(NAME, TGT, ROW1)                                                                     \
    TGT static void NAME(const ps_args *a, int64_t r0, int64_t r1) {                                          \
        const float *scales = ((const ps_i8_args *)a)->scales;                                                \
        const int8_t *w = (const int8_t *)a->values;                                                          \
        for (int64_t r = r0; r < r1; r++)                                                                     \
            a->y[r] = ROW1(w + r * a->in, a->x, a->in) * scales[r] + (a->bias ? a->bias[r] : 0.f);            \
    }

/* ------------------------------------------------------------------------- int8: scalar -- */

/* The scalar bitmask paths (float values or int8 codes, see bm_rows_scalar_scaled) with the row scales. */
static void i8_rows_scalar(const ps_args *a, int64_t r0, int64_t r1) {
    bm_rows_scalar_scaled(a, r0, r1, ((const ps_i8_args *)a)->scales);
}

static void i8_unpack_scalar(const ps_args *a, int64_t r0, int64_t r1, float *dst) {
    unpack_rows_scalar_scaled(a, r0, r1, dst, ((const ps_i8_args *)a)->scales);
}

static void dense_i8_rows_scalar(const ps_args *a, int64_t r0, int64_t r1) {
    dense_rows_scalar_scaled(a, r0, r1, ((const ps_i8_args *)a)->scales);
}

#ifdef PS_X86
/* i8shuf[k]: vpshufb indices of mask byte k: byte i = rank of lane i among k's set bits, 0x80 (a zero) where
 * bit i is clear.  The high mask byte's codes follow the low byte's c: adding c <= 8 to its indices keeps the
 * clear lanes >= 0x80. */
static uint64_t i8shuf[256];

/* i8dword[k]: vpshufb indices of mask byte k that widen as they expand: the low byte of 32-bit lane i takes
 * the code of rank r (lane i the r-th set bit of k), every other byte a zero (0x80), in both 128-bit lanes
 * (the 8 codes are broadcast to both).  XOR 0x4B000080 then makes each lane the float 2^23 + (code ^ 0x80)
 * = 2^23 + 128 + code exactly (a clear lane: 2^23 + 128), so one subtraction leaves the code as a float:
 * one shuffle-port uop per 8 lanes, where the byte expand + vpmovsxbd + vcvtdq2ps took three. */
static uint8_t i8dword[256][32] __attribute__((aligned(32)));

__attribute__((constructor)) static void i8_init(void) {
    for (int k = 0; k < 256; k++) {
        uint64_t v = 0;
        int r = 0;
        for (int i = 0; i < 8; i++) {
            const int set = k >> i & 1;
            v |= (set ? (uint64_t)r : 0x80u) << (8 * i);
            for (int b = 0; b < 4; b++) i8dword[k][4 * i + b] = (set && b == 0) ? (uint8_t)r : 0x80;
            r += set;
        }
        i8shuf[k] = v;
    }
}

TGT2 PS_INLINE __m128i i8_shuffle16(__m128i raw, unsigned k) {
    const uint64_t clo = (uint64_t)popcount16(k & 0xffu);
    const __m128i ctrl = _mm_add_epi8(_mm_set_epi64x((long long)i8shuf[k >> 8], (long long)i8shuf[k & 0xffu]),
                                      _mm_set_epi64x((long long)(clo * 0x0101010101010101ULL), 0));
    return _mm_shuffle_epi8(raw, ctrl);
}

/* ------------------------------------------------------------------------ int8: AVX-512 -- */

#define TGT512VB                                                                                              \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vbmi2,popcnt,bmi,bmi2,fma,f16c")))

TGT512 PS_INLINE __m512 i8_ps512(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)); }

/* The one-token multiply of every int8 kernel: 16 codes widened to float32, times 16 inputs, accumulated. */
TGT512 PS_INLINE __m512 i8_fma16_512(__m128i codes, __m512 xv, __m512 acc) {
    return _mm512_fmadd_ps(i8_ps512(codes), xv, acc);
}

TGT512 PS_INLINE float i8_sum4_512(const __m512 acc[4]) {
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

/* 16 codes (c of them at v) in the lanes of k: VBMI2 expand-load, or a masked load (never past the c codes)
 * and the vpshufb expand. */
TGT512VB PS_INLINE __m128i i8_exp16_vb(const int8_t *v, unsigned k, int c) {
    (void)c;
    return _mm_maskz_expandloadu_epi8((__mmask16)k, v);
}
TGT512 PS_INLINE __m128i i8_exp16_sh(const int8_t *v, unsigned k, int c) {
    return i8_shuffle16(_mm_maskz_loadu_epi8((__mmask16)((1u << c) - 1u), v), k);
}

/* Widen the 64 expanded codes of b (already XOR 0x80: unsigned u = code + 128) quarter by quarter to float32
 * without vextracti32x4 + vpmovsxbd + vcvtdq2ps: vpermb puts byte 16 q + i into the low byte of dword i of
 * 0x4B000000 (2^23 as a float), giving 2^23 + u exactly, and one subtraction of 2^23 + 128 leaves the code.
 * Two ALU uops per 16 lanes and no extracts (p0/p5 bound with 512-bit ops), the same floats as the plain
 * widen; ~17 % fewer cycles per step out of L2 than the extract path on this Xeon (model 207). */
TGT512VB PS_INLINE __m512 i8_quarter_ps512vb(__m512i bu, int q) {
    const __m512i dword_index = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i idx = _mm512_add_epi32(dword_index, _mm512_set1_epi32(16 * q));
    const __m512i bits =
        _mm512_mask_permutexvar_epi8(_mm512_set1_epi32(0x4B000000), 0x1111111111111111ULL, idx, bu);
    return _mm512_sub_ps(_mm512_castsi512_ps(bits), _mm512_set1_ps(8388608.f + 128.f));
}

/* One row, one token, VBMI2: 4 mask words (64 lanes) per vpexpandb, widened by i8_quarter_ps512vb into 4
 * accumulators.  The remaining words (the last one may be partial: its bits past in_features are zero and
 * mask the input load) one at a time.
 *
 * Prefetch: a step reads at most 64 codes, so one line PS_PF_DIST ahead per step covers the code stream
 * (pf_lines, sized for 2- and 4-byte values, is not needed: its extra prefetches cost issue slots); the mask
 * stream (8 bytes a step) gets one line per 64 bytes at the same lead in time (a quarter of the distance,
 * s = 0.5), and a second, near prefetch pulls the codes from L2 into L1 before the expand-load needs them.
 * Measured on this Xeon, 2 threads, cold, 4096x4096 / 11008x4096 at s = 0.5 (run-to-run noise ~10 %): from
 * ~1.05x / ~1.03x the dense int8 kernel to ~1.18x / ~1.30x, in steps of a few % each (roughly: one-line code
 * prefetch, mask prefetch, near prefetch, widen; the noise blurs the split). */
TGT512VB PS_INLINE float i8_row1_512vb(const int8_t *v, int64_t p, const uint16_t *m, int64_t W, int64_t in,
                                       const float *x, int pf_lines) {
    (void)pf_lines;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    const int64_t W4 = in / 64 * 4;
    int64_t w = 0;
    for (; w < W4; w += 4) {
        uint64_t mm;
        memcpy(&mm, m + w, 8);
        prefetch_l2(v + p + PS_PF_DIST, 1);
        if ((w & 31) == 0) prefetch_l2((const char *)(m + w) + PS_PF_DIST / 4, 1);
        if (PS_PF_DIST > 0) _mm_prefetch((const char *)(v + p) + 512, _MM_HINT_T0); /* 1024: no faster */
        const __m512i b = _mm512_maskz_expandloadu_epi8((__mmask64)mm, v + p);
        const __m512i bu = _mm512_xor_si512(b, _mm512_set1_epi8((char)0x80));
        p += (int64_t)_mm_popcnt_u64(mm);
        const float *xc = x + 16 * w;
        for (int q = 0; q < 4; q++)
            acc[q] = _mm512_fmadd_ps(i8_quarter_ps512vb(bu, q), _mm512_loadu_ps(xc + 16 * q), acc[q]);
    }
    for (; w < W; w++) {
        const unsigned k = m[w];
        const __m128i b = _mm_maskz_expandloadu_epi8((__mmask16)k, v + p);
        p += popcount16(k);
        acc[0] = i8_fma16_512(b, _mm512_maskz_loadu_ps((__mmask16)k, x + 16 * w), acc[0]);
    }
    return i8_sum4_512(acc);
}

/* One row, one token, without VBMI2: 4 words per step, prefix-popcount pointers (independent expands). */
TGT512 PS_INLINE float i8_row1_512sh(const int8_t *v, int64_t p, const uint16_t *m, int64_t W, int64_t in,
                                     const float *x, int pf_lines) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    const int64_t W4 = in / 64 * 4;
    int64_t w = 0;
    for (; w < W4; w += 4) {
        uint64_t mm;
        memcpy(&mm, m + w, 8);
        const int64_t p1 = p + _mm_popcnt_u64(mm & 0xffffULL);
        const int64_t p2 = p + _mm_popcnt_u64(mm & 0xffffffffULL);
        const int64_t p3 = p + _mm_popcnt_u64(mm & 0xffffffffffffULL);
        const int64_t p4 = p + _mm_popcnt_u64(mm);
        prefetch_l2(v + p + PS_PF_DIST, pf_lines);
        const float *xc = x + 16 * w;
        acc[0] = i8_fma16_512(i8_exp16_sh(v + p, (unsigned)mm & 0xffffu, (int)(p1 - p)), _mm512_loadu_ps(xc),
                              acc[0]);
        acc[1] = i8_fma16_512(i8_exp16_sh(v + p1, (unsigned)(mm >> 16) & 0xffffu, (int)(p2 - p1)),
                              _mm512_loadu_ps(xc + 16), acc[1]);
        acc[2] = i8_fma16_512(i8_exp16_sh(v + p2, (unsigned)(mm >> 32) & 0xffffu, (int)(p3 - p2)),
                              _mm512_loadu_ps(xc + 32), acc[2]);
        acc[3] = i8_fma16_512(i8_exp16_sh(v + p3, (unsigned)(mm >> 48), (int)(p4 - p3)), _mm512_loadu_ps(xc + 48),
                              acc[3]);
        p = p4;
    }
    for (; w < W; w++) {
        const unsigned k = m[w];
        const int c = popcount16(k);
        acc[0] = i8_fma16_512(i8_exp16_sh(v + p, k, c), _mm512_maskz_loadu_ps((__mmask16)k, x + 16 * w), acc[0]);
        p += c;
    }
    return i8_sum4_512(acc);
}

/* The multi-token rows and the panel unpack, once per expand (VBMI2 or vpshufb) so that the vpshufb path
 * is compiled without VBMI2 and runs on any AVX-512 CPU. */
#define PS_I8_512(SUF, TGT)                                                                                   \
    /* One row, T tokens: every expanded word feeds T FMAs. */                                                \
    TGT PS_INLINE void i8_rowT_512##SUF(const int8_t *v, int64_t p, const uint16_t *m, int64_t W, int64_t in, \
                                        const float *x, int T, float *res) {                                  \
        __m512 acc[PS_TILE];                                                                                  \
        for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();                                             \
        for (int64_t w = 0; w < W; w++) {                                                                     \
            const unsigned k = m[w];                                                                          \
            const int c = popcount16(k);                                                                      \
            const __m512 wv = i8_ps512(i8_exp16_##SUF(v + p, k, c));                                          \
            const __mmask16 km = 16 * w + 16 <= in ? (__mmask16)0xffff : (__mmask16)k;                        \
            p += c;                                                                                           \
            for (int t = 0; t < T; t++)                                                                       \
                acc[t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(km, x + t * in + 16 * w), acc[t]);         \
        }                                                                                                     \
        for (int t = 0; t < T; t++) res[t] = _mm512_reduce_add_ps(acc[t]);                                    \
    }                                                                                                         \
                                                                                                              \
    TGT static void i8_rows_512##SUF(const ps_args *a, int64_t r0, int64_t r1) {                              \
        const ps_i8_args *q = (const ps_i8_args *)a;                                                          \
        const int8_t *v = (const int8_t *)a->values;                                                          \
        const int64_t in = a->in, W = (in + 15) / 16, n = a->n;                                               \
        for (int64_t r = r0; r < r1; r++) {                                                                   \
            const uint16_t *m = a->mask + r * W;                                                              \
            const int64_t p = a->rowoff[r];                                                                   \
            const float s = q->scales[r], b = a->bias ? a->bias[r] : 0.f;                                     \
            if (n == 1) {                                                                                     \
                const int pf_lines = prefetch_lines(a->rowoff[r + 1] - p, 1, W);                              \
                a->y[r] = i8_row1_512##SUF(v, p, m, W, in, a->x, pf_lines) * s + b;                           \
                continue;                                                                                     \
            }                                                                                                 \
            PS_ROW_TILES(a, r, s, b, i8_rowT_512##SUF(v, p, m, W, in, x, K, res));                            \
        }                                                                                                     \
    }                                                                                                         \
                                                                                                              \
    /* Rows r0..r1 dequantized: expand, widen, times the row scale, stored (the last word masked to in). */   \
    TGT static void i8_unpack_512##SUF(const ps_args *a, int64_t r0, int64_t r1, float *dst) {                \
        const ps_i8_args *q = (const ps_i8_args *)a;                                                          \
        const int8_t *v = (const int8_t *)a->values;                                                          \
        const int64_t in = a->in, W = (in + 15) / 16;                                                         \
        for (int64_t r = r0; r < r1; r++) {                                                                   \
            float *d = dst + (r - r0) * in;                                                                   \
            const uint16_t *m = a->mask + r * W;                                                              \
            const __m512 s = _mm512_set1_ps(q->scales[r]);                                                    \
            int64_t p = a->rowoff[r];                                                                         \
            for (int64_t w = 0; w < W; w++) {                                                                 \
                const unsigned k = m[w];                                                                      \
                const int c = popcount16(k);                                                                  \
                const __m512 wv = _mm512_mul_ps(i8_ps512(i8_exp16_##SUF(v + p, k, c)), s);                    \
                p += c;                                                                                       \
                const int64_t rem = in - 16 * w;                                                              \
                const __mmask16 km = rem >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1u);           \
                _mm512_mask_storeu_ps(d + 16 * w, km, wv);                                                    \
            }                                                                                                 \
        }                                                                                                     \
    }

PS_I8_512(vb, TGT512VB)
PS_I8_512(sh, TGT512)

/* Dense int8, one row, one token: i8_row1_512vb's step (64 codes into 4 accumulators, one prefetched line)
 * on plain loads in place of the expand.  16-byte loads, not one 64-byte load and three extracts: the widen
 * then reads memory directly and leaves the shuffle port to the widen and FMA work.  The tail's masked loads
 * read no code and no input past in. */
TGT512 PS_INLINE float dense_i8_row1_512(const int8_t *w, const float *x, int64_t in) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t j = 0;
    for (; j + 64 <= in; j += 64) {
        prefetch_l2(w + j + PS_PF_DIST, 1);
        for (int u = 0; u < 4; u++)
            acc[u] = i8_fma16_512(_mm_loadu_si128((const __m128i *)(w + j + 16 * u)), _mm512_loadu_ps(x + j + 16 * u),
                                  acc[u]);
    }
    for (; j < in; j += 16) {
        const int64_t rem = in - j;
        const __mmask16 km = rem >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1u);
        acc[0] = i8_fma16_512(_mm_maskz_loadu_epi8(km, w + j), _mm512_maskz_loadu_ps(km, x + j), acc[0]);
    }
    return i8_sum4_512(acc);
}

PS_I8_DENSE_ROWS(dense_i8_rows_512, TGT512, dense_i8_row1_512)

/* --------------------------------------------------------------------------- int8: AVX2 -- */

/* 16 codes (c of them at v) in the lanes of k; `inside`: 16 bytes from v are readable (else copied). */
TGT2 PS_INLINE __m128i i8_exp16_256(const int8_t *v, unsigned k, int c, int inside) {
    __m128i raw;
    if (inside) {
        raw = _mm_loadu_si128((const __m128i *)v);
    } else {
        int8_t tmp[16] = {0};
        memcpy(tmp, v, (size_t)c);
        raw = _mm_loadu_si128((const __m128i *)tmp);
    }
    return i8_shuffle16(raw, k);
}

TGT2 PS_INLINE __m256 i8_lo_ps256(__m128i b) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)); }
TGT2 PS_INLINE __m256 i8_hi_ps256(__m128i b) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(b, b)));
}

TGT2 PS_INLINE float i8_hsum256(__m256 s8) {
    __m128 q4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    q4 = _mm_add_ps(q4, _mm_movehl_ps(q4, q4));
    q4 = _mm_add_ss(q4, _mm_movehdup_ps(q4));
    return _mm_cvtss_f32(q4);
}

/* i8_fma16_512 on AVX2: 16 codes widened to float32, times x[0..15], into two 8-lane accumulators. */
TGT2 PS_INLINE void i8_fma16_256(__m128i codes, const float *x, __m256 *lo, __m256 *hi) {
    *lo = _mm256_fmadd_ps(i8_lo_ps256(codes), _mm256_loadu_ps(x), *lo);
    *hi = _mm256_fmadd_ps(i8_hi_ps256(codes), _mm256_loadu_ps(x + 8), *hi);
}

/* The sum of the one-token rows' 8 accumulators (4 steps x 2 halves). */
TGT2 PS_INLINE float i8_sum8_256(const __m256 lo[4], const __m256 hi[4]) {
    return i8_hsum256(_mm256_add_ps(_mm256_add_ps(_mm256_add_ps(lo[0], hi[0]), _mm256_add_ps(lo[1], hi[1])),
                                    _mm256_add_ps(_mm256_add_ps(lo[2], hi[2]), _mm256_add_ps(lo[3], hi[3]))));
}

/* 8 lanes of mask byte k as float32 codes (i8dword), from the 8 bytes at v (the lane's codes first). */
TGT2 PS_INLINE __m256 i8_exp8_ps256(const int8_t *v, unsigned k) {
    /* vpbroadcastq from memory: a load, no shuffle-port uop */
    const __m256i raw = _mm256_broadcastq_epi64(_mm_loadl_epi64((const __m128i *)v));
    const __m256i b = _mm256_shuffle_epi8(raw, _mm256_load_si256((const __m256i *)i8dword[k]));
    return _mm256_sub_ps(_mm256_castsi256_ps(_mm256_xor_si256(b, _mm256_set1_epi32(0x4B000080))),
                         _mm256_set1_ps(8388608.f + 128.f));
}

/* One row, one token: 4 words per step with prefix-popcount pointers, 8 accumulators (two 8-lane FMAs per
 * word, each lane expanded and widened by one shuffle, i8_exp8_ps256), the code-stream prefetch; the
 * partial last word in scalar code (no input read past in_features).  Measured on an Intel Xeon (model
 * 207) with this path forced, 2 threads, cold, s = 0.5, four interleaved runs against the byte expand +
 * widen it replaces (i8_exp16_256), speed over the AVX2 dense int8 row on the fastest repeats: 4096 x 4096
 * 0.68-0.76x (was 0.57-0.64x), 11008 x 4096 0.74-0.87x (was 0.59-0.63x); the medians are noisier (0.51-0.81x
 * against 0.54-0.67x).  Still slower than dense: per 8 lanes it issues about twice dense's uops (index math,
 * the shuffle, the bias subtraction), and on this CPU that, not memory, bounds it.  Not measured on an
 * AVX2-only CPU (Zen 3), the machines this path is for. */
TGT2 PS_INLINE float i8_row1_256(const int8_t *v, int64_t p, int64_t nnz, const uint16_t *m, int64_t in,
                                 const float *x, int pf_lines) {
    const int64_t Wfull = in / 16;
    __m256 lo[4], hi[4];
    for (int u = 0; u < 4; u++) lo[u] = hi[u] = _mm256_setzero_ps();
    int64_t w = 0;
    /* a step reads at most 8 bytes past its last pointer, which is at most p + 56 */
    (void)pf_lines;
    for (; w + 4 <= Wfull && p + 64 <= nnz; w += 4) {
        uint64_t mm;
        memcpy(&mm, m + w, 8);
        /* i8_row1_512vb's prefetch: a line of codes far ahead, the mask stream, codes near into L1 */
        prefetch_l2(v + p + PS_PF_DIST, 1);
        if ((w & 31) == 0) prefetch_l2((const char *)(m + w) + PS_PF_DIST / 4, 1);
        if (PS_PF_DIST > 0) _mm_prefetch((const char *)(v + p) + 512, _MM_HINT_T0);
        const float *xc = x + 16 * w;
        for (int u = 0; u < 4; u++) {
            const unsigned k = (unsigned)(mm >> (16 * u)) & 0xffffu;
            const int64_t pu = p + _mm_popcnt_u64(mm & ((1ULL << (16 * u)) - 1ULL));
            lo[u] = _mm256_fmadd_ps(i8_exp8_ps256(v + pu, k & 0xffu), _mm256_loadu_ps(xc + 16 * u), lo[u]);
            hi[u] = _mm256_fmadd_ps(i8_exp8_ps256(v + pu + popcount16(k & 0xffu), k >> 8),
                                    _mm256_loadu_ps(xc + 16 * u + 8), hi[u]);
        }
        p += _mm_popcnt_u64(mm);
    }
    for (; w < Wfull; w++) {
        const unsigned k = m[w];
        const int c = popcount16(k);
        i8_fma16_256(i8_exp16_256(v + p, k, c, p + 16 <= nnz), x + 16 * w, &lo[0], &hi[0]);
        p += c;
    }
    float res = i8_sum8_256(lo, hi);
    if (in % 16)
        for (unsigned k = m[Wfull]; k; k &= k - 1) res += (float)v[p++] * x[16 * Wfull + ctz16(k)];
    return res;
}

TGT2 PS_INLINE void i8_rowT_256(const int8_t *v, int64_t p, int64_t nnz, const uint16_t *m, int64_t in,
                                const float *x, int T, float *res) {
    const int64_t Wfull = in / 16;
    __m256 lo[PS_TILE], hi[PS_TILE];
    for (int t = 0; t < T; t++) lo[t] = hi[t] = _mm256_setzero_ps();
    for (int64_t w = 0; w < Wfull; w++) {
        const unsigned k = m[w];
        const int c = popcount16(k);
        const __m128i b = i8_exp16_256(v + p, k, c, p + 16 <= nnz);
        const __m256 w0 = i8_lo_ps256(b), w1 = i8_hi_ps256(b);
        p += c;
        for (int t = 0; t < T; t++) {
            const float *xc = x + t * in + 16 * w;
            lo[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xc), lo[t]);
            hi[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xc + 8), hi[t]);
        }
    }
    for (int t = 0; t < T; t++) res[t] = i8_hsum256(_mm256_add_ps(lo[t], hi[t]));
    if (in % 16) {
        for (unsigned k = m[Wfull]; k; k &= k - 1) {
            const float c = (float)v[p++];
            const float *xc = x + 16 * Wfull + ctz16(k);
            for (int t = 0; t < T; t++) res[t] += c * xc[t * in];
        }
    }
}

TGT2 static void i8_rows_256(const ps_args *a, int64_t r0, int64_t r1) {
    const ps_i8_args *q = (const ps_i8_args *)a;
    const int8_t *v = (const int8_t *)a->values;
    const int64_t in = a->in, W = (in + 15) / 16, n = a->n;
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t *m = a->mask + r * W;
        const int64_t p = a->rowoff[r];
        const float s = q->scales[r], b = a->bias ? a->bias[r] : 0.f;
        if (n == 1) {
            const int pf_lines = prefetch_lines(a->rowoff[r + 1] - p, 1, W);
            a->y[r] = i8_row1_256(v, p, a->nnz, m, in, a->x, pf_lines) * s + b;
            continue;
        }
        PS_ROW_TILES(a, r, s, b, i8_rowT_256(v, p, a->nnz, m, in, x, K, res));
    }
}

TGT2 static void i8_unpack_256(const ps_args *a, int64_t r0, int64_t r1, float *dst) {
    const ps_i8_args *q = (const ps_i8_args *)a;
    const int8_t *v = (const int8_t *)a->values;
    const int64_t in = a->in, W = (in + 15) / 16, Wfull = in / 16;
    for (int64_t r = r0; r < r1; r++) {
        float *d = dst + (r - r0) * in;
        const uint16_t *m = a->mask + r * W;
        const float sf = q->scales[r];
        const __m256 s = _mm256_set1_ps(sf);
        int64_t p = a->rowoff[r];
        for (int64_t w = 0; w < Wfull; w++) {
            const unsigned k = m[w];
            const int c = popcount16(k);
            const __m128i b = i8_exp16_256(v + p, k, c, p + 16 <= a->nnz);
            _mm256_storeu_ps(d + 16 * w, _mm256_mul_ps(i8_lo_ps256(b), s));
            _mm256_storeu_ps(d + 16 * w + 8, _mm256_mul_ps(i8_hi_ps256(b), s));
            p += c;
        }
        if (in % 16) {
            for (int64_t j = 16 * Wfull; j < in; j++) d[j] = 0.f;
            for (unsigned k = m[Wfull]; k; k &= k - 1) d[16 * Wfull + ctz16(k)] = (float)v[p++] * sf;
        }
    }
}

/* Dense int8, one row, one token: i8_row1_256 with plain 16-byte loads in place of the expands (64 codes,
 * 8 accumulators and one prefetched line per step); the last in % 16 codes in scalar code. */
TGT2 PS_INLINE float dense_i8_row1_256(const int8_t *w, const float *x, int64_t in) {
    __m256 lo[4], hi[4];
    for (int u = 0; u < 4; u++) lo[u] = hi[u] = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 64 <= in; j += 64) {
        prefetch_l2(w + j + PS_PF_DIST, 1);
        for (int u = 0; u < 4; u++)
            i8_fma16_256(_mm_loadu_si128((const __m128i *)(w + j + 16 * u)), x + j + 16 * u, &lo[u], &hi[u]);
    }
    for (; j + 16 <= in; j += 16) i8_fma16_256(_mm_loadu_si128((const __m128i *)(w + j)), x + j, &lo[0], &hi[0]);
    float res = i8_sum8_256(lo, hi);
    for (; j < in; j++) res += (float)w[j] * x[j];
    return res;
}

PS_I8_DENSE_ROWS(dense_i8_rows_256, TGT2, dense_i8_row1_256)
#endif /* PS_X86 */

/* ------------------------------------------------------------------------- int8: dispatch -- */

int ps_i8_has_vbmi2(void) {
#if defined(PS_X86) && defined(__GNUC__)
    static int has = -1;
    if (has < 0) {
        __builtin_cpu_init();
        /* vpexpandb is VBMI2, the widen's vpermb VBMI (every VBMI2 CPU so far has both) */
        has = ps_cpu_level() >= PS_AVX512 && __builtin_cpu_supports("avx512vbmi2") &&
              __builtin_cpu_supports("avx512vbmi");
    }
    return has;
#else
    return 0;
#endif
}

/* `bitmask`: the weight is a bitmask over codes (mask and row offsets needed), else dense codes. */
static int i8_check(int isa, const ps_i8_args *q, int bitmask) {
    const ps_args *a = &q->a;
    if (isa < PS_SCALAR || isa > PS_AVX512 || isa > ps_cpu_level()) return -1;
    if (a->n < 0 || a->in < 0 || a->out < 0 || a->nnz < 0 || q->variant < 0 || q->variant > 1) return -2;
    if (a->out > 0 && (!q->scales || (bitmask && (!a->mask || !a->rowoff)))) return -2;
    return 0;
}

static ps_rows_fn i8_rows_fn(int isa, const ps_i8_args *q) {
    (void)q;
#ifdef PS_X86
    if (isa == PS_AVX512) return q->variant == 0 && ps_i8_has_vbmi2() ? i8_rows_512vb : i8_rows_512sh;
    if (isa == PS_AVX2) return i8_rows_256;
#else
    (void)isa;
#endif
    return i8_rows_scalar;
}

int ps_bitmask_int8_matmul(int isa, int nthreads, const ps_i8_args *q) {
    const int rc = i8_check(isa, q, 1);
    if (rc) return rc;
    if (q->a.n == 0 || q->a.out == 0) return 0;
    if (!q->a.x || !q->a.y) return -2;
    run_rows(i8_rows_fn(isa, q), &q->a, nthreads, 1);
    return 0;
}

int ps_bitmask_int8_unpack(int isa, int nthreads, const ps_i8_args *q, int64_t r0, int64_t r1, float *dst) {
    const int rc = i8_check(isa, q, 1);
    if (rc) return rc;
    if (r0 < 0 || r1 > q->a.out || r0 > r1 || (r1 > r0 && !dst)) return -2;
    ps_unpack_fn fn = i8_unpack_scalar;
#ifdef PS_X86
    if (isa == PS_AVX512) fn = q->variant == 0 && ps_i8_has_vbmi2() ? i8_unpack_512vb : i8_unpack_512sh;
    if (isa == PS_AVX2) fn = i8_unpack_256;
#endif
    run_unpack(fn, &q->a, nthreads, r0, r1, dst);
    return 0;
}

/* One token only: this is the memory-bound baseline of the bitmask-int8 one-token kernel, and at many tokens
 * a GEMM on dequantized panels is the comparison (ps_bitmask_int8_unpack). */
int ps_dense_int8_matmul(int isa, int nthreads, const ps_i8_args *q) {
    const int rc = i8_check(isa, q, 0);
    if (rc) return rc;
    if (q->a.n != 1 || q->a.nnz != q->a.out * q->a.in) return -2;
    if (q->a.out == 0) return 0;
    if (!q->a.y || (q->a.in > 0 && (!q->a.x || !q->a.values))) return -2; /* in == 0: empty, maybe NULL */
    ps_rows_fn fn = dense_i8_rows_scalar;
#ifdef PS_X86
    if (isa == PS_AVX512) fn = dense_i8_rows_512;
    if (isa == PS_AVX2) fn = dense_i8_rows_256;
#endif
    run_rows(fn, &q->a, nthreads, 1);
    return 0;
}
