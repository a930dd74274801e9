/* The small per-layer work of a CPU decode step in one call each, where torch spends more time dispatching its many
 * small ops than computing them: RMSNorm, the gated MLP's SiLU and product, and for the step's decode tokens rotary
 * embedding + key/value cache write + attention over the token's own cache row.
 *
 * Plain C (the compiler vectorises what it can), fp32 throughout, float accumulators as torch's CPU ops use for fp32.
 * Tokens (and KV heads) are split over OpenMP threads: the same libgomp torch loads, so the two share one pool.
 */
#include <math.h>
#include <string.h>

/* Eight independent partial sums (one vector register): the compiler vectorises them without reordering a single
 * float sum, which it may not do on its own. */
static inline float dot(const float *a, const float *b, long d) {
    float acc[8] = {0};
    long j = 0;
    for (; j + 8 <= d; j += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[j + l] * b[j + l];
    float total = 0.0f;
    for (; j < d; j++) total += a[j] * b[j];
    for (int l = 0; l < 8; l++) total += acc[l];
    return total;
}

/* y[i] = x[i] / sqrt(mean(x[i]^2) + eps) * w, for n rows of width d. */
void rms_norm(const float *x, const float *w, float *y, long n, long d, float eps) {
    for (long i = 0; i < n; i++) {
        const float *xi = x + i * d;
        float *yi = y + i * d;
        const float ss = dot(xi, xi, d);
        const float r = 1.0f / sqrtf(ss / (float)d + eps);
        for (long j = 0; j < d; j++) yi[j] = xi[j] * r * w[j];
    }
}

/* The gated MLP's middle, in place: g = silu(g) * u = g / (1 + exp(-g)) * u, over n values. */
void silu_mul(float *g, const float *u, long n) {
    for (long i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* Llama's rotary embedding of one head in place: with h = hd / 2, out[j] = x[j] cos[j] - x[j + h] sin[j] and
 * out[j + h] = x[j + h] cos[j + h] + x[j] sin[j + h] (the "rotate half" layout of Hugging Face's Llama). */
static void rope(float *x, const float *c, const float *s, long hd) {
    const long h = hd / 2;
    for (long j = 0; j < h; j++) {
        const float a = x[j], b = x[j + h];
        x[j] = a * c[j] - b * s[j];
        x[j + h] = b * c[j + h] + a * s[j + h];
    }
}

/* One decode token per cache row. q [n, kv_heads * rep, hd] and k [n, kv_heads, hd] are rotated in place with
 * cos / sin [n, hd]; k and v [n, kv_heads, hd] are written to the caches [rows, kv_heads, cap, hd] at (rows[i],
 * head, pos[i]); out [n, kv_heads * rep, hd] is softmax(scale q K^T) V over positions 0..pos[i] of row rows[i].
 * Query head g reads KV head g / rep (grouped-query attention). scratch holds n * kv_heads rows of scratch_len
 * (at least the longest pos + 1) floats for the scores. */
void decode_attention(float *q, float *k, const float *v, const float *cos_, const float *sin_, float *cache_k,
                      float *cache_v, const long *rows, const long *pos, float *out, long n, long kv_heads, long rep,
                      long hd, long cap, float scale, float *scratch, long scratch_len, int threads) {
    const long heads = kv_heads * rep;
    for (long i = 0; i < n; i++) {
        const float *c = cos_ + i * hd, *s = sin_ + i * hd;
        for (long g = 0; g < heads; g++) rope(q + (i * heads + g) * hd, c, s, hd);
        for (long h = 0; h < kv_heads; h++) {
            float *ki = k + (i * kv_heads + h) * hd;
            rope(ki, c, s, hd);
            const long at = ((rows[i] * kv_heads + h) * cap + pos[i]) * hd;
            memcpy(cache_k + at, ki, sizeof(float) * hd);
            memcpy(cache_v + at, v + (i * kv_heads + h) * hd, sizeof(float) * hd);
        }
    }
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (long i = 0; i < n; i++) {
        for (long h = 0; h < kv_heads; h++) {
            const long len = pos[i] + 1;
            const float *kc = cache_k + (rows[i] * kv_heads + h) * cap * hd;
            const float *vc = cache_v + (rows[i] * kv_heads + h) * cap * hd;
            float *scores = scratch + (i * kv_heads + h) * scratch_len;
            for (long r = 0; r < rep; r++) {
                const long g = h * rep + r;
                const float *qg = q + (i * heads + g) * hd;
                float *o = out + (i * heads + g) * hd;
                float top = -INFINITY;
                for (long t = 0; t < len; t++) {
                    scores[t] = dot(qg, kc + t * hd, hd) * scale;
                    if (scores[t] > top) top = scores[t];
                }
                float total = 0.0f;
                for (long t = 0; t < len; t++) {
                    scores[t] = expf(scores[t] - top);
                    total += scores[t];
                }
                memset(o, 0, sizeof(float) * hd);
                for (long t = 0; t < len; t++) {
                    const float p = scores[t] / total;
                    const float *vt = vc + t * hd;
                    for (long j = 0; j < hd; j++) o[j] += p * vt[j];
                }
            }
        }
    }
}
