/* Where the AVX2 bitmask kernel's time goes at one token (issue 17): the same loop as bm_row1_256 (4 mask
 * words per step, prefix-popcount pointers, 4 accumulators) with the 8-lane expand swapped for variants,
 * some of them wrong on purpose (timing only) to take one part out at a time.  Rows sit in L2, so this
 * measures the instructions, not memory: a kernel whose loop runs at R weights/s hot cannot stream a
 * DRAM-resident weight faster than that, whatever the prefetch does.  Hardware counters are not
 * available in every VM, which is why the profile is taken by ablation.
 *
 *   cc -O3 -o expand_ablation expand_ablation.c && ./expand_ablation [rows] [rounds]
 *
 * Prints one JSON object: G weights/s (best of interleaved rounds) per variant, and a check sum of every
 * variant against the dense row (the wrong-on-purpose ones differ). */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TGT __attribute__((target("avx2,fma,popcnt")))
#define IN 4096
#define W (IN / 16)

static int32_t perm8i[256][8] __attribute__((aligned(32)));  /* rank of each set lane, 7 for clear */
static int32_t first8[9][8] __attribute__((aligned(32)));    /* lanes 0..c-1 set: a vmaskmov mask */
static int32_t lanemask[256][8] __attribute__((aligned(32))); /* lane i set <=> bit i of k */
static uint8_t f32shuf[256][32] __attribute__((aligned(32))); /* vpshufb control, two 4-lane halves */

static void init(void) {
    for (int k = 0; k < 256; k++) {
        int c = 0;
        for (int i = 0; i < 8; i++) {
            perm8i[k][i] = (k >> i & 1) ? c++ : 7;
            lanemask[k][i] = (k >> i & 1) ? -1 : 0;
        }
        for (int h = 0; h < 2; h++) {
            int r = 0;
            for (int i = 0; i < 4; i++) {
                const int set = k >> (4 * h + i) & 1;
                for (int b = 0; b < 4; b++) f32shuf[k][16 * h + 4 * i + b] = set ? (uint8_t)(4 * r + b) : 0x80;
                r += set;
            }
        }
    }
    for (int c = 0; c <= 8; c++)
        for (int i = 0; i < 8; i++) first8[c][i] = i < c ? -1 : 0;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

TGT static float hsum(__m256 s8) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}

/* One row; EXP builds the 8 lanes of byte kk (c = popcount) whose values start at vals + off. */
#define ROW(NAME, EXP)                                                                                        \
    TGT static float NAME(const float *vals, const uint16_t *m, const float *x) {                             \
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()}; \
        int64_t p = 0;                                                                                        \
        for (int64_t w = 0; w + 4 <= W; w += 4) {                                                             \
            uint64_t mm;                                                                                      \
            memcpy(&mm, m + w, 8);                                                                            \
            const float *xc = x + 16 * w;                                                                     \
            for (int q = 0; q < 4; q++) {                                                                     \
                const unsigned k = (unsigned)(mm >> (16 * q)) & 0xffffu, klo = k & 0xffu, khi = k >> 8;      \
                const int64_t plo = p + _mm_popcnt_u64(mm & ((1ULL << (16 * q)) - 1ULL));                     \
                const int clo = _mm_popcnt_u32(klo), chi = _mm_popcnt_u32(khi);                               \
                {                                                                                             \
                    const unsigned kk = klo;                                                                  \
                    const int c = clo;                                                                        \
                    const int64_t off = plo;                                                                  \
                    acc[q] = _mm256_fmadd_ps(EXP, _mm256_loadu_ps(xc + 16 * q), acc[q]);                      \
                }                                                                                             \
                {                                                                                             \
                    const unsigned kk = khi;                                                                  \
                    const int c = chi;                                                                        \
                    const int64_t off = plo + clo;                                                            \
                    acc[q] = _mm256_fmadd_ps(EXP, _mm256_loadu_ps(xc + 16 * q + 8), acc[q]);                  \
                }                                                                                             \
            }                                                                                                 \
            p += _mm_popcnt_u64(mm);                                                                          \
        }                                                                                                     \
        return hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));             \
    }

/* shipped: two 4-value loads, one in-lane byte shuffle that also zeros the clear lanes */
ROW(vpshufb_halves, _mm256_castsi256_ps(_mm256_shuffle_epi8(
                        _mm256_loadu2_m128i((const __m128i *)(vals + off + _mm_popcnt_u32(kk & 15u)),
                                            (const __m128i *)(vals + off)),
                        _mm256_load_si256((const __m256i *)f32shuf[kk]))))
/* before: masked load of the c values (lane 7 zero), one cross-lane permutation */
ROW(maskload_vpermps, _mm256_permutevar8x32_ps(_mm256_maskload_ps(vals + off, _mm256_load_si256((const __m256i *)first8[c])),
                                               _mm256_load_si256((const __m256i *)perm8i[kk])))
/* older: plain load, permutation, and with a lane mask */
ROW(loadu_vpermps_and, _mm256_and_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(vals + off),
                                                              _mm256_load_si256((const __m256i *)perm8i[kk])),
                                     _mm256_load_ps((const float *)lanemask[kk])))
/* wrong on purpose: the permutation and its index load, no zeroing */
ROW(vpermps_only_WRONG, ((void)c, _mm256_permutevar8x32_ps(_mm256_loadu_ps(vals + off),
                                                           _mm256_load_si256((const __m256i *)perm8i[kk]))))
/* wrong on purpose: no expand at all (the loop, the pointers, the loads and the FMAs) */
ROW(no_expand_WRONG, ((void)kk, (void)c, _mm256_loadu_ps(vals + off)))

TGT static float dense_row(const float *v, const float *x) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t j = 0; j < IN; j += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j), _mm256_loadu_ps(x + j), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j + 8), _mm256_loadu_ps(x + j + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j + 16), _mm256_loadu_ps(x + j + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j + 24), _mm256_loadu_ps(x + j + 24), a3);
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

typedef float (*row_fn)(const float *, const uint16_t *, const float *);

int main(int argc, char **argv) {
    const int64_t rows = argc > 1 ? atoi(argv[1]) : 16;
    const int rounds = argc > 2 ? atoi(argv[2]) : 200;
    const double s = 0.5;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
        printf("{\"error\": \"this CPU has no AVX2 + FMA\"}\n");
        return 0;
    }
    init();
    srand(1);
    float *x = malloc(IN * 4), *dense = malloc(rows * IN * 4), *vals = malloc((rows * IN + 64) * 4);
    uint16_t *mask = malloc(rows * W * 2);
    int64_t *off = malloc((rows + 1) * 8), p = 0;
    for (int j = 0; j < IN; j++) x[j] = rand() / (float)RAND_MAX;
    off[0] = 0;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t w = 0; w < W; w++) {
            unsigned k = 0;
            for (int b = 0; b < 16; b++) {
                const float v = rand() / (float)RAND_MAX - 0.5f;
                const int keep = rand() / (double)RAND_MAX >= s;
                dense[r * IN + 16 * w + b] = keep ? v : 0.f;
                if (keep) {
                    k |= 1u << b;
                    vals[p++] = v;
                }
            }
            mask[r * W + w] = (uint16_t)k;
        }
        off[r + 1] = p;
    }
    memset(vals + p, 0, 64 * 4);
    const char *names[] = {"vpshufb_halves", "maskload_vpermps", "loadu_vpermps_and", "vpermps_only_WRONG",
                           "no_expand_WRONG", "dense_row"};
    row_fn fns[] = {vpshufb_halves, maskload_vpermps, loadu_vpermps_and, vpermps_only_WRONG, no_expand_WRONG, NULL};
    enum { NV = 6 };
    double best[NV], check[NV];
    for (int v = 0; v < NV; v++) best[v] = 1e30;
    for (int round = -5; round < rounds; round++)
        for (int v = 0; v < NV; v++) {
            const double t0 = now();
            double sum = 0;
            for (int it = 0; it < 10; it++)
                for (int64_t r = 0; r < rows; r++)
                    sum += fns[v] ? fns[v](vals + off[r], mask + r * W, x) : dense_row(dense + r * IN, x);
            const double dt = now() - t0;
            check[v] = sum / 10;
            if (round >= 0 && dt < best[v]) best[v] = dt;
        }
    printf("{\"rows\": %lld, \"in_features\": %d, \"sparsity\": %.2f, \"rounds\": %d, \"gweights_per_s\": {", (long long)rows,
           IN, s, rounds);
    for (int v = 0; v < NV; v++) printf("%s\"%s\": %.3f", v ? ", " : "", names[v], 10.0 * rows * IN / best[v] / 1e9);
    printf("}, \"check_sum\": {");
    for (int v = 0; v < NV; v++) printf("%s\"%s\": %.6g", v ? ", " : "", names[v], check[v]);
    printf("}}\n");
    return 0;
}
