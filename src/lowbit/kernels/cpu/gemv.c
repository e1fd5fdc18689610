/* Small-M products with weights kept in 4-bit or 8-bit codes, fp32 activations, fp32 accumulation.
 *
 * Every weight is  w[n, k] = table[code] * s[n, g] + o[n, g]  (g = k / group): 4-bit codes go through a 16-entry
 * table (integer grids, NF4, FP4 and MXFP4 alike), 8-bit codes are signed integers or fp8 e4m3 (as their bits: the
 * caller multiplies the scales by 2^120, see fp8_bits). So, per output,
 *     y[m, n] = sum_g  s[n, g] * dot(x[m, group g], table[codes of group g])  +  o[n, g] * sum(x[m, group g]).
 * 4-bit codes run 8 rows a pass (one FMA chain each, the activations loaded once for all), from codes stored in
 * that order (see lowbit_gemv4); AVX2 looks the table up with byte shuffles of its four byte planes, AVX-512 with
 * one permute. Built twice from this one file, for AVX2+FMA and for AVX-512 (F, BW, VL); rows are split over
 * OpenMP threads.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

static void group_sums(const float *x, int m, int k, int group, float *xs) {
    int groups = k / group;
    for (int r = 0; r < m; r++)
        for (int g = 0; g < groups; g++) {
            float acc = 0.f;
            const float *p = x + (size_t)r * k + (size_t)g * group;
            for (int j = 0; j < group; j++) acc += p[j];
            xs[r * groups + g] = acc;
        }
}

/* e4m3 byte s.eeee.mmm, sign-extended to 32 bits, shifted left 20: bits 27..20 hold it and 31..28 the sign; keeping
 * bit 31 and bits 26..20 gives the fp32 whose value is the e4m3 value * 2^-120 (subnormals included) */
#define FP8_MASK 0x87F00000

/* the table of integer codes (a NULL table): each code its own value */
static const float IDENTITY[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

#ifdef __AVX512F__
typedef __m512 vec;
#define vzero _mm512_setzero_ps
#define vload _mm512_loadu_ps
#define vset1 _mm512_set1_ps
#define vfma _mm512_fmadd_ps
#define vadd _mm512_add_ps
static inline float vsum(vec v) { return _mm512_reduce_add_ps(v); }
/* 16 codes (16 bytes) → 16 values */
static inline vec lut16(__m128i codes, vec table) { return _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(codes), table); }
static inline vec int8x16(const int8_t *p, int fp8) {
    __m512i i = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p));
    if (fp8) return _mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(i, 20), _mm512_set1_epi32(FP8_MASK)));
    return _mm512_cvtepi32_ps(i);
}
#define STEP8 16
#else
typedef __m256 vec;
#define vzero _mm256_setzero_ps
#define vload _mm256_loadu_ps
#define vset1 _mm256_set1_ps
#define vfma _mm256_fmadd_ps
#define vadd _mm256_add_ps
static inline float vsum(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline vec int8x8(const int8_t *p, int fp8) {
    __m256i i = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
    if (fp8) return _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(i, 20), _mm256_set1_epi32(FP8_MASK)));
    return _mm256_cvtepi32_ps(i);
}
#define STEP8 8
#endif

#define GROWS 8  /* rows of one pass, stored 16 bytes (32 codes) of one row, then of the next */

#ifdef __AVX512F__
typedef vec lut;  /* the 16 table values in one register */
static inline lut make_lut(const float *table) { return _mm512_loadu_ps(table); }
/* 16 bytes (32 codes, low nibble first) → the 32 codes in input order, one per byte, as two halves of 16 */
static inline void codes32(const uint8_t *p, __m128i *lo, __m128i *hi) {
    __m128i b = _mm_loadu_si128((const __m128i *)p), mask = _mm_set1_epi8(0x0F);
    __m128i l = _mm_and_si128(b, mask), h = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
    *lo = _mm_unpacklo_epi8(l, h);
    *hi = _mm_unpackhi_epi8(l, h);
}
#else
/* The table's fp32 values as four byte planes (each 16 bytes, in both 128-bit lanes): a byte shuffle of the codes
 * per plane and two rounds of unpacks give 32 values in 4 vectors, inputs in the order of xperm8. Where every value
 * is a bf16 (its low 16 bits zero: integer grids, MXFP4, code books rounded by cpu_gemv4r), the two high planes do:
 * one round of unpacks gives 16-bit values, each pair of which becomes two fp32 by a shift and by a mask (four
 * shuffles and four integer operations per 32 weights against twelve shuffles), inputs in the order of xperm16 */
typedef struct { __m256i p[4]; int half; } lut;
static inline lut make_lut(const float *table) {
    lut t;
    uint8_t b[4][16];
    t.half = 1;
    for (int i = 0; i < 16; i++) {
        uint32_t u;
        __builtin_memcpy(&u, table + i, 4);
        t.half &= (u & 0xFFFF) == 0;
        for (int j = 0; j < 4; j++) b[j][i] = (uint8_t)(u >> (8 * j));
    }
    for (int j = 0; j < 4; j++) t.p[j] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)b[j]));
    return t;
}
/* the 16 bytes in both lanes (one load), the high lane shifted right by 4: low nibbles, then high ones */
static inline __m256i nibbles32(const uint8_t *p) {
    __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    return _mm256_and_si256(_mm256_srlv_epi32(b, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(0x0F));
}
static inline void lut32(const uint8_t *p, const lut *t, vec *v) {
    __m256i c = nibbles32(p);
    __m256i p0 = _mm256_shuffle_epi8(t->p[0], c), p1 = _mm256_shuffle_epi8(t->p[1], c);
    __m256i p2 = _mm256_shuffle_epi8(t->p[2], c), p3 = _mm256_shuffle_epi8(t->p[3], c);
    __m256i a = _mm256_unpacklo_epi8(p0, p1), bb = _mm256_unpackhi_epi8(p0, p1);
    __m256i cc = _mm256_unpacklo_epi8(p2, p3), d = _mm256_unpackhi_epi8(p2, p3);
    v[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(a, cc));
    v[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(a, cc));
    v[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(bb, d));
    v[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(bb, d));
}
static inline void lut32_half(const uint8_t *p, const lut *t, vec *v) {
    __m256i c = nibbles32(p), high = _mm256_set1_epi32((int)0xFFFF0000);
    __m256i p2 = _mm256_shuffle_epi8(t->p[2], c), p3 = _mm256_shuffle_epi8(t->p[3], c);
    __m256i a = _mm256_unpacklo_epi8(p2, p3), d = _mm256_unpackhi_epi8(p2, p3);
    v[0] = _mm256_castsi256_ps(_mm256_slli_epi32(a, 16));
    v[1] = _mm256_castsi256_ps(_mm256_and_si256(a, high));
    v[2] = _mm256_castsi256_ps(_mm256_slli_epi32(d, 16));
    v[3] = _mm256_castsi256_ps(_mm256_and_si256(d, high));
}
/* lut32's order: within each 8 inputs, the even ones first (the low nibbles' lane), then the odd ones */
static void xperm8(const float *x, int k, float *xp) {
    for (int j = 0; j < k; j += 8)
        for (int i = 0; i < 4; i++) xp[j + i] = x[j + 2 * i], xp[j + 4 + i] = x[j + 2 * i + 1];
}
/* lut32_half's order: per 16 inputs, those at 0, 4, 8, 12, then at 1, 5, 9, 13, then 2, 6, 10, 14, then 3, 7, 11, 15 */
static void xperm16(const float *x, int k, float *xp) {
    for (int j = 0; j < k; j += 16)
        for (int i = 0; i < 4; i++)
            for (int r = 0; r < 4; r++) xp[j + 4 * r + i] = x[j + 4 * i + r];
}
#endif

/* the pass over rows [row, row + rows) (rows is GROWS except in the last block) for one activation row xr */
static inline void gemv4_rows(const float *xr, int k, const uint8_t *block, int row, int rows, const float *s,
                              const float *o, const float *xs, int group, const lut *table, int half, float *y) {
    int groups = k / group;
    lut t = *table;  /* in registers for the pass (through the pointer, stores to y would force reloads) */
    vec total[GROWS];
    float extra[GROWS];
    for (int i = 0; i < rows; i++) total[i] = vzero(), extra[i] = 0.f;
    for (int g = 0; g < groups; g++) {
        vec acc[GROWS];
        for (int i = 0; i < rows; i++) acc[i] = vzero();
        int k0 = g * group;
        for (int j = 0; j < group; j += 32) {
            const uint8_t *c = block + (size_t)((k0 + j) / 32) * (16 * GROWS);
#ifdef __AVX512F__
            vec x0 = vload(xr + k0 + j), x1 = vload(xr + k0 + j + 16);
            for (int i = 0; i < rows; i++) {
                __m128i lo, hi;
                codes32(c + 16 * i, &lo, &hi);
                acc[i] = vfma(lut16(lo, t), x0, acc[i]);
                acc[i] = vfma(lut16(hi, t), x1, acc[i]);
            }
#else
            vec x0 = vload(xr + k0 + j), x1 = vload(xr + k0 + j + 8);
            vec x2 = vload(xr + k0 + j + 16), x3 = vload(xr + k0 + j + 24);
            for (int i = 0; i < rows; i++) {
                vec v[4];
                if (half)
                    lut32_half(c + 16 * i, &t, v);
                else
                    lut32(c + 16 * i, &t, v);
                acc[i] = vfma(v[3], x3, vfma(v[2], x2, vfma(v[1], x1, vfma(v[0], x0, acc[i]))));
            }
#endif
        }
        for (int i = 0; i < rows; i++) {
            total[i] = vfma(acc[i], vset1(s[(size_t)(row + i) * groups + g]), total[i]);
            if (o) extra[i] += o[(size_t)(row + i) * groups + g] * xs[g];
        }
    }
    for (int i = 0; i < rows; i++) y[row + i] = vsum(total[i]) + extra[i];
}

/* codes: [n padded to GROWS, k/2] bytes, low nibble first, each block of GROWS rows stored 16 bytes (32 codes) of
 * one row, then of the next; table: 16 floats, or NULL for the codes' own values 0..15; s, o: [n, k/group] (o may
 * be NULL); group: a multiple of 32; x: [m, k]; y: [m, n] */
void lowbit_gemv4(const float *x, int m, int k, const uint8_t *codes, int n, const float *table, const float *s,
                  const float *o, int group, float *y, int threads) {
    int groups = k / group, blocks = (n + GROWS - 1) / GROWS;
    float *xs = o ? malloc(sizeof(float) * (size_t)m * groups) : NULL;
    if (o) group_sums(x, m, k, group, xs);
    lut t = make_lut(table ? table : IDENTITY);  /* built once for every pass */
#ifdef __AVX512F__
    const int half = 0;
#else
    const int half = t.half;
    float *xp = malloc(sizeof(float) * (size_t)m * k);
    for (int r = 0; r < m; r++) (half ? xperm16 : xperm8)(x + (size_t)r * k, k, xp + (size_t)r * k);
    x = xp;
#endif
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int b = 0; b < blocks; b++) {
        int row = b * GROWS, rows = n - row < GROWS ? n - row : GROWS;
        const uint8_t *block = codes + (size_t)row * (k / 2);
        for (int r = 0; r < m; r++) {
            const float *xr = x + (size_t)r * k, *xsr = xs ? xs + (size_t)r * groups : NULL;
            float *yr = y + (size_t)r * n;
            /* constant row counts and lookups: each call specialized, its loops unrolled */
            if (rows == GROWS && half)
                gemv4_rows(xr, k, block, row, GROWS, s, o, xsr, group, &t, 1, yr);
            else if (rows == GROWS)
                gemv4_rows(xr, k, block, row, GROWS, s, o, xsr, group, &t, 0, yr);
            else
                gemv4_rows(xr, k, block, row, rows, s, o, xsr, group, &t, half, yr);
        }
    }
#ifndef __AVX512F__
    free(xp);
#endif
    free(xs);
}

/* The many-row path (prefill): rows [0, rows) of 4-bit codes stored as lowbit_gemv4 or lowbit_dot4 read them
 * (blocks of GROWS rows, 16 bytes of a row then of the next, from a block's start) → fp32 weights
 * w[rows, k] = table[code] * s + o, for a dense matmul. One lookup per byte in a table of the 256 value pairs;
 * split: byte j of a 16-byte chunk holds input j (low nibble) and j + 16 (high), else inputs 2j and 2j + 1 */
void lowbit_dequant4(const uint8_t *codes, int rows, int k, const float *table, const float *s, const float *o,
                     int group, int split, float *w, int threads) {
    const float *t = table ? table : IDENTITY;
    float pairs[256][2];
    for (int b = 0; b < 256; b++) pairs[b][0] = t[b & 15], pairs[b][1] = t[b >> 4];
    int groups = k / group, hi = split ? 16 : 1, step = split ? 1 : 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int r = 0; r < rows; r++) {
        const uint8_t *row = codes + (size_t)(r / GROWS) * GROWS * (k / 2) + (size_t)(r % GROWS) * 16;
        float *wr = w + (size_t)r * k;
        for (int c = 0; c < k / 32; c++) {
            int g = c * 32 / group;
            float sc = s[(size_t)r * groups + g], off = o ? o[(size_t)r * groups + g] : 0.f;
            const uint8_t *p = row + (size_t)c * 16 * GROWS;
            float *out = wr + c * 32;
            for (int j = 0; j < 16; j++) {
                out[j * step] = pairs[p[j]][0] * sc + off;
                out[j * step + hi] = pairs[p[j]][1] * sc + off;
            }
        }
    }
}

static inline float fp8_bits(int8_t c) {
    union { int32_t i; float f; } u = {.i = ((int32_t)c << 20) & (int32_t)FP8_MASK};
    return u.f;
}

/* FMA chains an output runs (one chain waits on its FMA's latency): four with AVX2 (1.3-1.6x faster than two,
 * hot and streamed); two with AVX-512, where four were as fast hot and up to 2x slower streamed (Zen 4) */
#ifdef __AVX512F__
#define INT8V int8x16
#define CHAINS8 2
#else
#define INT8V int8x8
#define CHAINS8 4
#endif

/* one output */
static inline float gemv8_row(const float *xr, const int8_t *c, const float *srow, const float *orow,
                              const float *xs, int groups, int group, int fp8) {
    vec total = vzero();
    float extra = 0.f;
    for (int g = 0; g < groups; g++) {
        vec a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
        int k0 = g * group, j = 0;
        for (; j + CHAINS8 * STEP8 <= group; j += CHAINS8 * STEP8) {
            a0 = vfma(INT8V(c + k0 + j, fp8), vload(xr + k0 + j), a0);
            a1 = vfma(INT8V(c + k0 + j + STEP8, fp8), vload(xr + k0 + j + STEP8), a1);
#if CHAINS8 == 4
            a2 = vfma(INT8V(c + k0 + j + 2 * STEP8, fp8), vload(xr + k0 + j + 2 * STEP8), a2);
            a3 = vfma(INT8V(c + k0 + j + 3 * STEP8, fp8), vload(xr + k0 + j + 3 * STEP8), a3);
#endif
        }
        for (; j + STEP8 <= group; j += STEP8) a0 = vfma(INT8V(c + k0 + j, fp8), vload(xr + k0 + j), a0);
        float tail = 0.f;
        for (; j < group; j++) tail += (fp8 ? fp8_bits(c[k0 + j]) : (float)c[k0 + j]) * xr[k0 + j];
        total = vfma(vadd(vadd(a0, a1), vadd(a2, a3)), vset1(srow[g]), total);
        extra += tail * srow[g];
        if (orow) extra += orow[g] * xs[g];
    }
    return vsum(total) + extra;
}

/* The many-row path for 8-bit codes: rows [0, rows) → fp32 weights w[rows, k] = code * s + o (e4m3 codes through
 * fp8_bits); codes [rows, k], or interleaved as lowbit_dot8 reads them (blocks of GROWS rows, 32 bytes of a row then
 * of the next, from a block's start) */
void lowbit_dequant8(const int8_t *codes, int rows, int k, const float *s, const float *o, int group, int interleaved,
                     int fp8, float *w, int threads) {
    int groups = k / group;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int r = 0; r < rows; r++) {
        float *wr = w + (size_t)r * k;
        const int8_t *row = interleaved ? codes + (size_t)(r / GROWS) * GROWS * k + (size_t)(r % GROWS) * 32
                                        : codes + (size_t)r * k;
        for (int g = 0; g < groups; g++) {
            float sc = s[(size_t)r * groups + g], off = o ? o[(size_t)r * groups + g] : 0.f;
            for (int j = g * group; j < (g + 1) * group; j++) {
                int8_t c = interleaved ? row[(size_t)(j / 32) * (GROWS * 32) + j % 32] : row[j];
                wr[j] = (fp8 ? fp8_bits(c) : (float)c) * sc + off;
            }
        }
    }
}

/* codes: [n, k] int8, or e4m3 bytes when fp8; s, o: [n, k/group] (o may be NULL; group == k: one scale per row) */
void lowbit_gemv8(const float *x, int m, int k, const int8_t *codes, int n, const float *s, const float *o,
                  int group, float *y, int threads, int fp8) {
    int groups = k / group;
    float *xs = o ? malloc(sizeof(float) * (size_t)m * groups) : NULL;
    if (o) group_sums(x, m, k, group, xs);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int row = 0; row < n; row++) {
        const int8_t *c = codes + (size_t)row * k;
        const float *srow = s + (size_t)row * groups, *orow = o ? o + (size_t)row * groups : NULL;
        for (int r = 0; r < m; r++) {
            const float *xr = x + (size_t)r * k, *xsr = xs ? xs + (size_t)r * groups : NULL;
            y[(size_t)r * n + row] = fp8 ? gemv8_row(xr, c, srow, orow, xsr, groups, group, 1)  /* specialized */
                                         : gemv8_row(xr, c, srow, orow, xsr, groups, group, 0);
        }
    }
    free(xs);
}
