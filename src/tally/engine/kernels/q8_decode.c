/* A whole decode step through every layer of a Llama model with int8 projections, in one call: for steps whose
 * tokens are all decode tokens, each with its own adapter or none. One call instead of dozens per layer, so the step
 * costs its weight reads and little else. The pieces are those the engine uses one by one (q8_linear.c,
 * decode_ops.c, and the per-token adapter gather of lora_layers.py), in the same order, so the numbers are those of
 * that path.
 */
#include "q8_linear.c"
#include "decode_ops.c"

/* Each token's adapter delta added into y [n, out]: y[t] += (x[t] @ a[slot]) @ b[slot] with a [slots, in, rank] and
 * b [slots, rank, out] (scale folded into b; slot 0 and padded ranks are zeros). Sums run in the order of the torch
 * gather (over the input, then over the rank into a zeroed delta), which then is added to y. a NULL: this projection
 * has no adapter in any slot. */
static void lora_add(const float *x, float *y, const float *a, const float *b, const long *slots, long n, long in,
                     long out, long rank, int threads) {
    if (!a || !rank) return;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long t = 0; t < n; t++) {
        const long slot = slots[t];
        if (!slot) continue;
        const float *as = a + slot * in * rank, *bs = b + slot * rank * out, *xt = x + t * in;
        float hidden[rank], delta[out];
        for (long r = 0; r < rank; r++) hidden[r] = 0.0f;
        for (long i = 0; i < in; i++) {
            const float xi = xt[i];
            const float *ar = as + i * rank;
            for (long r = 0; r < rank; r++) hidden[r] += xi * ar[r];
        }
        for (long o = 0; o < out; o++) delta[o] = 0.0f;
        for (long r = 0; r < rank; r++) {
            const float hr = hidden[r];
            const float *br = bs + r * out;
            for (long o = 0; o < out; o++) delta[o] += hr * br[o];
        }
        float *yt = y + t * out;
        for (long o = 0; o < out; o++) yt[o] += delta[o];
    }
}

/* x [n, hidden] is updated in place. Per layer l: norms[2l] / norms[2l + 1] the input / post-attention RMSNorm
 * weights; w[7l + p] / s[7l + p] the int8 weights and scales of projection p in the order q, k, v, o, gate, up,
 * down; caches[2l] / caches[2l + 1] the key / value caches [rows, kv_heads, cap, hd]. cos / sin [n, hd], rows and
 * pos [n] as in decode_attention. work holds n * (2 hidden + 2 heads hd + 2 kv_heads hd + 2 inter) floats plus
 * n * kv_heads * longest for the attention scores. Adapters: slots [n] (NULL: none in this step); la[7l + p] /
 * lb[7l + p] / ranks[7l + p] the slot stacks of projection p (NULL or rank 0: no adapter targets it). */
void q8_decode_layers(float *x, long n, long layers, long hidden, long inter, long kv_heads, long rep, long hd,
                      long cap, float eps, float scale, const float **norms, const int8_t **w, const float **s,
                      float **caches, const float *cos_, const float *sin_, const long *rows, const long *pos,
                      float *work, long longest, const long *slots, const float **la, const float **lb,
                      const long *ranks, int threads) {
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
        if (slots)
            for (int p = 0; p < 3; p++)
                lora_add(h, qkv[p], la[7 * l + p], lb[7 * l + p], slots, n, hidden, qkv_out[p], ranks[7 * l + p],
                         threads);
        decode_attention(q, k, v, cos_, sin_, caches[2 * l], caches[2 * l + 1], rows, pos, attn, n, kv_heads, rep, hd,
                         cap, scale, scores, longest, threads);
        q8_linear(attn, wl[3], sl[3], out, n, heads * hd, hidden, threads);
        if (slots)
            lora_add(attn, out, la[7 * l + 3], lb[7 * l + 3], slots, n, heads * hd, hidden, ranks[7 * l + 3], threads);
        for (long i = 0; i < n * hidden; i++) x[i] = x[i] + out[i];
        rms_norm(x, norms[2 * l + 1], h, n, hidden, eps);
        float *gu[2] = {g, u};
        const long gu_out[2] = {inter, inter};
        q8_linear_many(h, wl + 4, sl + 4, gu, gu_out, 2, n, hidden, threads);
        if (slots)
            for (int p = 0; p < 2; p++)
                lora_add(h, gu[p], la[7 * l + 4 + p], lb[7 * l + 4 + p], slots, n, hidden, inter, ranks[7 * l + 4 + p],
                         threads);
        silu_mul(g, u, n * inter);
        q8_linear(g, wl[6], sl[6], out, n, inter, hidden, threads);
        if (slots) lora_add(g, out, la[7 * l + 6], lb[7 * l + 6], slots, n, inter, hidden, ranks[7 * l + 6], threads);
        for (long i = 0; i < n * hidden; i++) x[i] = x[i] + out[i];
    }
}
