/* Small-M products with weights kept in 4-bit or 8-bit codes, fp32 activations, fp32 accumulation.
 *
 * Every weight is  w[n, k] = table[code] * s[n, g] + o[n, g]  (g = k / group): 4-bit codes go through a 16-entry
 * table (integer grids, NF4, FP4 and MXFP4 alike), 8-bit codes are signed integers or fp8 e4m3 (as their bits: the
 * caller multiplies the scales by 2^120, see fp8_bits). So, per output,
 *     y[m, n] = sum_g  s[n, g] * dot(x[m, group g], table[codes of group g])  +  o[n, g] * sum(x[m, group g]).
 * Built twice from this one file, for AVX2+FMA and for AVX-512 (F, BW, VL); rows are split over OpenMP threads.
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

#ifdef __AVX512F__
typedef __m512 vec;
#define VW 16
#define vzero _mm512_setzero_ps
#define vload _mm512_loadu_ps
#define vset1 _mm512_set1_ps
#define vfma _mm512_fmadd_ps
#define vadd _mm512_add_ps
static inline float vsum(vec v) { return _mm512_reduce_add_ps(v); }
/* 16 codes (16 bytes) → 16 values */
static inline vec lut16(__m128i codes, vec table) { return _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(codes), table); }
/* e4m3 byte s.eeee.mmm, sign-extended to 32 bits, shifted left 20: bits 27..20 hold it and 31..28 the sign; keeping
 * bit 31 and bits 26..20 gives the fp32 whose value is the e4m3 value * 2^-120 (subnormals included) */
#define FP8_MASK 0x87F00000
static inline vec int8x16(const int8_t *p, int fp8) {
    __m512i i = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p));
    if (fp8) return _mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(i, 20), _mm512_set1_epi32(FP8_MASK)));
    return _mm512_cvtepi32_ps(i);
}
#define STEP8 16
#else
typedef __m256 vec;
#define VW 8
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
static inline vec lut8(__m256i idx, __m256 lo, __m256 hi) {
    __m256 a = _mm256_permutevar8x32_ps(lo, idx), b = _mm256_permutevar8x32_ps(hi, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}
#define FP8_MASK 0x87F00000
static inline vec int8x8(const int8_t *p, int fp8) {
    __m256i i = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
    if (fp8) return _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(i, 20), _mm256_set1_epi32(FP8_MASK)));
    return _mm256_cvtepi32_ps(i);
}
#define STEP8 8
#endif

/* 8 packed bytes (16 codes, low nibble first) → the 16 codes in order, one per byte */
static inline __m128i nibbles(const uint8_t *p) {
    __m128i b = _mm_loadl_epi64((const __m128i *)p), mask = _mm_set1_epi8(0x0F);
    return _mm_unpacklo_epi8(_mm_and_si128(b, mask), _mm_and_si128(_mm_srli_epi16(b, 4), mask));
}

/* codes: [n, k/2] bytes; table: 16 floats, or NULL for the codes' own values 0..15; s, o: [n, k/group] (o may be NULL); x: [m, k]; y: [m, n] */
void lowbit_gemv4(const float *x, int m, int k, const uint8_t *codes, int n, const float *table, const float *s,
                  const float *o, int group, float *y, int threads) {
    int groups = k / group, affine = table == NULL;
    float *xs = o ? malloc(sizeof(float) * (size_t)m * groups) : NULL;
    if (o) group_sums(x, m, k, group, xs);
    static const float identity[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    if (affine) table = identity;
#ifdef __AVX512F__
    vec t16 = _mm512_loadu_ps(table);
#else
    __m256 tlo = _mm256_loadu_ps(table), thi = _mm256_loadu_ps(table + 8);
#endif
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int row = 0; row < n; row++) {
        const uint8_t *c = codes + (size_t)row * (k / 2);
        const float *srow = s + (size_t)row * groups, *orow = o ? o + (size_t)row * groups : NULL;
        for (int r = 0; r < m; r++) {
            const float *xr = x + (size_t)r * k;
            vec total = vzero();
            float extra = 0.f;
            for (int g = 0; g < groups; g++) {
                vec acc0 = vzero(), acc1 = vzero();
                int k0 = g * group;
                for (int j = 0; j < group; j += 16) {
                    __m128i q = nibbles(c + (k0 + j) / 2);
#ifdef __AVX512F__
                    vec v = affine ? _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q)) : lut16(q, t16);
                    acc0 = vfma(v, vload(xr + k0 + j), acc0);
#else
                    __m256i i0 = _mm256_cvtepu8_epi32(q), i1 = _mm256_cvtepu8_epi32(_mm_srli_si128(q, 8));
                    vec v0 = affine ? _mm256_cvtepi32_ps(i0) : lut8(i0, tlo, thi);
                    vec v1 = affine ? _mm256_cvtepi32_ps(i1) : lut8(i1, tlo, thi);
                    acc0 = vfma(v0, vload(xr + k0 + j), acc0);
                    acc1 = vfma(v1, vload(xr + k0 + j + 8), acc1);
#endif
                }
                total = vfma(vadd(acc0, acc1), vset1(srow[g]), total);
                if (orow) extra += orow[g] * xs[r * groups + g];
            }
            y[(size_t)r * n + row] = vsum(total) + extra;
        }
    }
    free(xs);
}

static inline float fp8_bits(int8_t c) {
    union { int32_t i; float f; } u = {.i = ((int32_t)c << 20) & (int32_t)FP8_MASK};
    return u.f;
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
            const float *xr = x + (size_t)r * k;
            vec total = vzero();
            float extra = 0.f;
            for (int g = 0; g < groups; g++) {
                vec acc0 = vzero(), acc1 = vzero();
                int k0 = g * group, j = 0;
                for (; j + 2 * STEP8 <= group; j += 2 * STEP8) {
#ifdef __AVX512F__
                    acc0 = vfma(int8x16(c + k0 + j, fp8), vload(xr + k0 + j), acc0);
                    acc1 = vfma(int8x16(c + k0 + j + 16, fp8), vload(xr + k0 + j + 16), acc1);
#else
                    acc0 = vfma(int8x8(c + k0 + j, fp8), vload(xr + k0 + j), acc0);
                    acc1 = vfma(int8x8(c + k0 + j + 8, fp8), vload(xr + k0 + j + 8), acc1);
#endif
                }
                float tail = 0.f;
                for (; j < group; j++) tail += (fp8 ? fp8_bits(c[k0 + j]) : (float)c[k0 + j]) * xr[k0 + j];
                total = vfma(vadd(acc0, acc1), vset1(srow[g]), total);
                extra += tail * srow[g];
                if (orow) extra += orow[g] * xs[r * groups + g];
            }
            y[(size_t)r * n + row] = vsum(total) + extra;
        }
    }
    free(xs);
}
