/* A whole decode step through every layer of a Llama model with int8 projections, in one call: for steps whose
 * tokens are all decode tokens of the base model (no adapter to add between the projections). One call instead of
 * a dozen per layer, so the step costs its weight reads and little else. The pieces are those the engine uses one by
 * one (q8_linear.c, decode_ops.c), in the same order, so the numbers are the same as that path's.
 */
#include "q8_linear.c"
#include "decode_ops.c"

/* x [n, hidden] is updated in place. Per layer l: norms[2l] / norms[2l + 1] the input / post-attention RMSNorm
 * weights; w[7l + p] / s[7l + p] the int8 weights and scales of projection p in the order q, k, v, o, gate, up,
 * down; caches[2l] / caches[2l + 1] the key / value caches [rows, kv_heads, cap, hd]. cos / sin [n, hd], rows and
 * pos [n] as in decode_attention. work holds n * (2 hidden + 2 heads hd + 2 kv_heads hd + 2 inter) floats plus
 * n * kv_heads * longest for the attention scores. */
void q8_decode_layers(float *x, long n, long layers, long hidden, long inter, long kv_heads, long rep, long hd,
                      long cap, float eps, float scale, const float **norms, const int8_t **w, const float **s,
                      float **caches, const float *cos_, const float *sin_, const long *rows, const long *pos,
                      float *work, long longest, int threads) {
    const long heads = kv_heads * rep;
    float *h = work, *out = h + n * hidden, *q = out + n * hidden, *attn = q + n * heads * hd;
    float *k = attn + n * heads * hd, *v = k + n * kv_heads * hd, *g = v + n * kv_heads * hd, *u = g + n * inter;
    float *scores = u + n * inter;
    for (long l = 0; l < layers; l++) {
        const int8_t **wl = w + 7 * l;
        const float **sl = s + 7 * l;
        rms_norm(x, norms[2 * l], h, n, hidden, eps);
        float *qkv[3] = {q, k, v};
        const long qkv_out[3] = {heads * hd, kv_heads * hd, kv_heads * hd};
        q8_linear_many(h, wl, sl, qkv, qkv_out, 3, n, hidden, threads);
        decode_attention(q, k, v, cos_, sin_, caches[2 * l], caches[2 * l + 1], rows, pos, attn, n, kv_heads, rep, hd,
                         cap, scale, scores, longest, threads);
        q8_linear(attn, wl[3], sl[3], out, n, heads * hd, hidden, threads);
        for (long i = 0; i < n * hidden; i++) x[i] = x[i] + out[i];
        rms_norm(x, norms[2 * l + 1], h, n, hidden, eps);
        float *gu[2] = {g, u};
        const long gu_out[2] = {inter, inter};
        q8_linear_many(h, wl + 4, sl + 4, gu, gu_out, 2, n, hidden, threads);
        silu_mul(g, u, n * inter);
        q8_linear(g, wl[6], sl[6], out, n, inter, hidden, threads);
        for (long i = 0; i < n * hidden; i++) x[i] = x[i] + out[i];
    }
}
