/* Small-M products with integer dot products, as llama.cpp does: each row of activations is rounded to int8 per
 * block of B inputs (one fp32 scale dx per block, absmax / 127), and weights stay in their 4-bit or 8-bit codes, so
 * 32 weights cost a handful of integer instructions instead of 32 fp32 multiply-adds. Per output,
 *     y[m, n] = sum_b  dx[m, b] * s[n, g(b)] * idot(codes of block b, xq[m, block b])  +  sum_g o[n, g] * xs[m, g]
 * with xs the sums of the rounded activations per weight group (o: the offsets of asymmetric formats), so the
 * result is the exact product of the rounded activations with the weights, up to fp32 summation.
 *
 * 4-bit codes come as 16 bytes per 32 inputs, byte j holding input j (low nibble) and input j + 16 (high nibble);
 * a code is its own value (integer grids, 0..15) or an index into a 16-entry int8 table (code books).
 * 8-bit codes are signed. With AVX512-VNNI (256-bit, AVX512VL) one vpdpbusd multiplies unsigned by signed bytes and
 * accumulates in int32: signed weights are offset by +128 and 128 * sum(xq) is taken back per block. Without it
 * (AVX2) vpmaddubsw + vpmaddwd do the same, signed weights through the sign trick (|w| * sign(w) x).
 * Rows are split over OpenMP threads. B is 32, 64, 128 or 256 and divides the weight group (or the group is B).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define VNNI 1
#endif

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* x [m, k] fp32 → xq [m, k] int8 (round to nearest even), dx [m, k/B] its scales, qs [m, k/B] sum(xq) per block */
static void quantize_rows(const float *x, int m, int k, int B, int8_t *xq, float *dx, int32_t *qs) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    int blocks = k / B;
    for (int r = 0; r < m; r++)
        for (int b = 0; b < blocks; b++) {
            const float *p = x + (size_t)r * k + (size_t)b * B;
            __m256 mx = _mm256_setzero_ps();
            for (int j = 0; j < B; j += 8) mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_loadu_ps(p + j)));
            __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            h = _mm_max_ss(h, _mm_movehdup_ps(h));
            float d = _mm_cvtss_f32(h) / 127.f;
            __m256 inv = _mm256_set1_ps(d > 0.f ? 1.f / d : 0.f);
            __m256i total = _mm256_setzero_si256();
            for (int j = 0; j < B; j += 32) {
                __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p + j), inv));
                __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p + j + 8), inv));
                __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p + j + 16), inv));
                __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p + j + 24), inv));
                total = _mm256_add_epi32(total, _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
                __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
                _mm256_storeu_si256((__m256i *)(xq + (size_t)r * k + (size_t)b * B + j),
                                    _mm256_permutevar8x32_epi32(packed, order));
            }
            dx[r * blocks + b] = d;
            qs[r * blocks + b] = hsum_i32(total);
        }
}

/* the sums of the rounded activations per weight group, for the offsets: the product is then exactly that of the
 * rounded activations with the weights (an offset times the exact sums would not cancel the codes' rounding error) */
static void group_sums(int m, int k, int B, int group, const float *dx, const int32_t *qs, float *xs) {
    int groups = k / group, per = group / B;
    for (int r = 0; r < m; r++)
        for (int g = 0; g < groups; g++) {
            float acc = 0.f;
            for (int b = g * per; b < (g + 1) * per; b++) acc += dx[r * (k / B) + b] * (float)qs[r * (k / B) + b];
            xs[r * groups + g] = acc;
        }
}

typedef struct {
    int8_t *xq;
    float *dx, *xs;
    int32_t *qs;
} rows_t;

/* whether every buffer of the activations was allocated */
static int rows_ready(rows_t a, int sums) { return a.xq && a.dx && a.qs && (!sums || a.xs); }

/* the activations in both forms; NULL members where the allocation failed (the caller then returns -1) */
static rows_t prepare_rows(const float *x, int m, int k, int B, int group, int sums) {
    rows_t a = {malloc((size_t)m * k), malloc(sizeof(float) * (size_t)m * (k / B)), NULL,
                malloc(sizeof(int32_t) * (size_t)m * (k / B))};
    if (sums) a.xs = malloc(sizeof(float) * (size_t)m * (k / group));
    if (rows_ready(a, sums)) {
        quantize_rows(x, m, k, B, a.xq, a.dx, a.qs);
        if (sums) group_sums(m, k, B, group, a.dx, a.qs, a.xs);
    }
    return a;
}

/* frees the activations; 0, or -1 where they could not be allocated */
static int release_rows(rows_t a, int sums) {
    int failed = !rows_ready(a, sums);
    free(a.xq), free(a.dx), free(a.xs), free(a.qs);
    return failed ? -1 : 0;
}

/* 32 4-bit codes (16 bytes, see above) → 32 bytes in input order */
static inline __m256i unpack32(const uint8_t *p) {
    __m128i raw = _mm_loadu_si128((const __m128i *)p);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
}

/* signed bytes w times signed bytes x, summed in fours into int32 lanes, added to acc */
static inline __m256i dot_signed(__m256i acc, __m256i w, __m256i x) {
#ifdef VNNI
    return _mm256_dpbusd_epi32(acc, _mm256_xor_si256(w, _mm256_set1_epi8((char)0x80)), x);
#else
    __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#endif
}
#ifdef VNNI
#define SIGNED_SHIFT 128 /* dot_signed adds 128 * sum(x) */
#else
#define SIGNED_SHIFT 0
#endif

#define R 8 /* rows of weights per pass: eight independent accumulator chains, and each activation load used 8 times
           * (against 4: 11% faster on SmolLM2-135M int4 shapes on AVX2 and AVX-512, int8 the same or 5% faster) */

/* Codes come interleaved by R rows, so a pass reads memory in order: for each block of R rows (the row count padded
 * to a multiple of R), chunk after chunk of 32 inputs, the R rows' chunks one after another (16 bytes each at 4 bits,
 * 32 at 8). Reading R separate rows at once ran half as fast from memory (AMD EPYC). Padding rows are computed with
 * the last row's scales and not written. */
static inline int row_of(int row, int i, int n) { return row + i < n ? row + i : n - 1; }

/* one block's int32 sums into the pass's fp32 accumulators, times dx * s; ``shifted`` (128 * sum(xq) where the weights
 * were offset to unsigned, else 0) taken back through ``extra`` */
static inline void add_block(__m256 *acc, float *extra, const __m256i *ia, float d, const float *const *sr, int g,
                             int shifted) {
    for (int i = 0; i < R; i++) {
        float scale = d * sr[i][g];
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[i]), _mm256_set1_ps(scale), acc[i]);
        extra[i] -= (float)shifted * scale;
    }
}

/* the pass's rows that exist, each with its offsets times the activations' group sums (o: NULL without offsets) */
static inline void store_rows(float *y, int n, int row, const __m256 *acc, float *extra, const float *o,
                              const float *xs, int groups) {
    for (int i = 0; i < R && row + i < n; i++) {
        if (o)
            for (int g = 0; g < groups; g++) extra[i] += o[(size_t)(row + i) * groups + g] * xs[g];
        y[row + i] = hsum(acc[i]) + extra[i];
    }
}

/* codes: [n padded, k/2] (see above); table: 16 int8 values or NULL (codes are their values); s, o: [n, k/group]
 * (o may be NULL); x: [m, k]; y: [m, n]. Returns 0, or -1 where memory ran out. */
int lowbit_dot4(const float *x, int m, int k, const uint8_t *codes, int n, const int8_t *table, const float *s,
                const float *o, int group, int B, float *y, int threads) {
    rows_t a = prepare_rows(x, m, k, B, group, o != NULL);
    if (!rows_ready(a, o != NULL)) return release_rows(a, o != NULL);
    int groups = k / group, blocks = k / B, per = group / B, shift = table ? SIGNED_SHIFT : 0;
    __m256i tv = table ? _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)table)) : _mm256_setzero_si256();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int row = 0; row < n; row += R) {
        const uint8_t *c = codes + (size_t)row * (k / 2);
        const float *sr[R];
        for (int i = 0; i < R; i++) sr[i] = s + (size_t)row_of(row, i, n) * groups;
        for (int r = 0; r < m; r++) {
            const int8_t *xr = a.xq + (size_t)r * k;
            __m256 acc[R];
            float extra[R];
            for (int i = 0; i < R; i++) acc[i] = _mm256_setzero_ps(), extra[i] = 0.f;
            for (int b = 0; b < blocks; b++) {
                int g = b / per;
                __m256i ia[R];
#ifndef VNNI
                __m256i pairs[R]; /* B <= 256: at most 16 products of 15 * 127 a lane */
                for (int i = 0; i < R; i++) pairs[i] = _mm256_setzero_si256();
#endif
                for (int i = 0; i < R; i++) ia[i] = _mm256_setzero_si256();
                for (int j = b * B; j < (b + 1) * B; j += 32) {
                    __m256i xv = _mm256_loadu_si256((const __m256i *)(xr + j));
                    for (int i = 0; i < R; i++) {
                        __m256i v = unpack32(c + (size_t)(j / 32) * (R * 16) + i * 16);
                        if (table) {
                            ia[i] = dot_signed(ia[i], _mm256_shuffle_epi8(tv, v), xv);
                            continue;
                        }
#ifdef VNNI
                        ia[i] = _mm256_dpbusd_epi32(ia[i], v, xv);
#else
                        pairs[i] = _mm256_add_epi16(pairs[i], _mm256_maddubs_epi16(v, xv));
#endif
                    }
                }
#ifndef VNNI
                if (!table)
                    for (int i = 0; i < R; i++) ia[i] = _mm256_madd_epi16(pairs[i], _mm256_set1_epi16(1));
#endif
                add_block(acc, extra, ia, a.dx[r * blocks + b], sr, g, shift * a.qs[r * blocks + b]);
            }
            store_rows(y + (size_t)r * n, n, row, acc, extra, o, o ? a.xs + r * groups : NULL, groups);
        }
    }
    return release_rows(a, o != NULL);
}

/* codes: [n padded, k] int8, interleaved as above; s, o: [n, k/group] (o may be NULL; group == k: one scale per row);
 * the rest as lowbit_dot4 */
int lowbit_dot8(const float *x, int m, int k, const int8_t *codes, int n, const float *s, const float *o, int group,
                int B, float *y, int threads) {
    rows_t a = prepare_rows(x, m, k, B, group, o != NULL);
    if (!rows_ready(a, o != NULL)) return release_rows(a, o != NULL);
    int groups = k / group, blocks = k / B, per = group / B;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int row = 0; row < n; row += R) {
        const int8_t *c = codes + (size_t)row * k;
        const float *sr[R];
        for (int i = 0; i < R; i++) sr[i] = s + (size_t)row_of(row, i, n) * groups;
        for (int r = 0; r < m; r++) {
            const int8_t *xr = a.xq + (size_t)r * k;
            __m256 acc[R];
            float extra[R];
            for (int i = 0; i < R; i++) acc[i] = _mm256_setzero_ps(), extra[i] = 0.f;
            for (int b = 0; b < blocks; b++) {
                int g = b / per;
                __m256i ia[R];
                for (int i = 0; i < R; i++) ia[i] = _mm256_setzero_si256();
                for (int j = b * B; j < (b + 1) * B; j += 32) {
                    __m256i xv = _mm256_loadu_si256((const __m256i *)(xr + j));
                    for (int i = 0; i < R; i++)
                        ia[i] = dot_signed(ia[i], _mm256_loadu_si256((const __m256i *)(c + (size_t)(j / 32) * (R * 32)
                                                                                           + i * 32)), xv);
                }
                add_block(acc, extra, ia, a.dx[r * blocks + b], sr, g, SIGNED_SHIFT * a.qs[r * blocks + b]);
            }
            store_rows(y + (size_t)r * n, n, row, acc, extra, o, o ? a.xs + r * groups : NULL, groups);
        }
    }
    return release_rows(a, o != NULL);
}
