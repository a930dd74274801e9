/* Weight-only int8 linear for CPU decode: y[b, o] = sum_i x[b, i] * w[o, i] * scale[o, i / 32].
 *
 * Decode reads every weight once per step for a handful of tokens, so it is bound by memory bandwidth: int8 weights
 * with one fp32 scale per block of 32 (1.125 bytes a weight instead of 4) read 3.6x fewer bytes. Each block of 32
 * weights is widened to fp32 once per group of tokens and used for every token of the group. Rows of w are split
 * over OpenMP threads (the same libgomp torch loads, so the two share one thread pool). Needs AVX2 and FMA;
 * `in_features` a multiple of 32.
 */
#include <immintrin.h>
#include <stdint.h>

#define BLOCK 32

static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

static inline __m256 widen(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* One row of w against a group of up to TOKENS tokens, with ACC accumulators per token: the FMAs of one token are
 * spread over ACC independent chains (one chain runs at the FMA's latency, a fraction of its throughput), as many as
 * the 16 vector registers allow next to the four widened weight vectors. */
#define ROW_GROUP(NAME, TOKENS, ACC)                                                                                \
    static void NAME(const float *x, long in, const int8_t *wr, const float *sr, long blocks, long nb, float *y,   \
                     long out) {                                                                                   \
        __m256 acc[TOKENS][ACC];                                                                                   \
        for (long b = 0; b < nb; b++)                                                                              \
            for (int k = 0; k < ACC; k++) acc[b][k] = _mm256_setzero_ps();                                         \
        for (long j = 0; j < blocks; j++) {                                                                        \
            const int8_t *wb = wr + j * BLOCK;                                                                     \
            __m256 s = _mm256_broadcast_ss(sr + j);                                                                \
            __m256 w[4];                                                                                           \
            for (int k = 0; k < 4; k++) w[k] = _mm256_mul_ps(widen(wb + 8 * k), s);                                \
            for (long b = 0; b < nb; b++) {                                                                        \
                const float *xb = x + b * in + j * BLOCK;                                                          \
                for (int k = 0; k < 4; k++)                                                                        \
                    acc[b][k % ACC] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(xb + 8 * k), acc[b][k % ACC]);         \
            }                                                                                                      \
        }                                                                                                          \
        for (long b = 0; b < nb; b++) {                                                                            \
            __m256 t = acc[b][0];                                                                                  \
            for (int k = 1; k < ACC; k++) t = _mm256_add_ps(t, acc[b][k]);                                         \
            y[b * out] = hsum(t);                                                                                  \
        }                                                                                                          \
    }

ROW_GROUP(row_1, 1, 4)
ROW_GROUP(row_2, 2, 4)
ROW_GROUP(row_4, 4, 2)
ROW_GROUP(row_8, 8, 1)

/* One row of w (and its scales) against every token of x, in groups of up to 8; the row stays in L1 between groups,
 * so w is read from memory once per call whatever the batch. */
static void row_all(const float *x, const int8_t *wr, const float *sr, float *y, long batch, long in, long out) {
    const long blocks = in / BLOCK;
    for (long b0 = 0; b0 < batch; b0 += 8) {
        const long nb = batch - b0 < 8 ? batch - b0 : 8;
        const float *xg = x + b0 * in;
        float *yg = y + b0 * out;
        if (nb == 1)
            row_1(xg, in, wr, sr, blocks, nb, yg, out);
        else if (nb == 2)
            row_2(xg, in, wr, sr, blocks, nb, yg, out);
        else if (nb <= 4)
            row_4(xg, in, wr, sr, blocks, nb, yg, out);
        else
            row_8(xg, in, wr, sr, blocks, nb, yg, out);
    }
}

/* x [batch, in] fp32, w [out, in] int8, scale [out, in / 32] fp32, y [batch, out] fp32. */
void q8_linear(const float *x, const int8_t *w, const float *scale, float *y, long batch, long in, long out,
               int threads) {
    const long blocks = in / BLOCK;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long o = 0; o < out; o++) row_all(x, w + o * in, scale + o * blocks, y + o, batch, in, out);
}

/* Several weights over the same x in one call (a layer's q, k, v projections; gate and up): count matrices, the
 * m-th w[m] [outs[m], in] with scale[m] into y[m] [batch, outs[m]]. One parallel loop over all their rows. */
void q8_linear_many(const float *x, const int8_t **w, const float **scale, float **y, const long *outs, int count,
                    long batch, long in, int threads) {
    const long blocks = in / BLOCK;
    long total = 0;
    for (int m = 0; m < count; m++) total += outs[m];
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < total; r++) {
        int m = 0;
        long o = r;
        while (o >= outs[m]) o -= outs[m++];
        row_all(x, w[m] + o * in, scale[m] + o * blocks, y[m] + o, batch, in, outs[m]);
    }
}
