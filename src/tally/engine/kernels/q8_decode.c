/* A whole decode step through every layer of a Llama model with int8 projections, in one call: for steps whose
 * tokens are all decode tokens, each with its own adapter or none. One call instead of dozens per layer, so the step
 * costs its weight reads and little else. The pieces are those the engine uses one by one (q8_linear.c,
 * decode_ops.c, and the per-token adapter gather of lora_layers.py), in the same order, so the numbers are those of
 * that path.
 */
#include "q8_linear.c"
#include "decode_ops.c"

/* Each token's adapter delta added into y [n, out]: y[t] += (x[t] @ a[slot]) @ b[slot] with a [slots, in, stride]
 * and b [slots, stride, out] (scale folded into b; slot 0 is zeros). stride is the stacks' rank, padded to the
 * largest adapter this layer holds; each token's sums stop at its own adapter's rank (slot_ranks[slot]), so one
 * high-rank adapter does not slow every other. The same products as the layer-by-layer path's torch kernels: over
 * the input, then over the rank into a zeroed delta added to y. a NULL: no adapter in any slot targets this
 * projection. Tokens go to threads only when there are several (one stream: no parallel region per projection). */
static void lora_add(const float *x, float *y, const float *a, const float *b, const long *slots, long n, long in,
                     long out, long stride, const long *slot_ranks, int threads) {
    if (!a || !stride) return;
#pragma omp parallel for num_threads(threads) schedule(static) if (n > 1)
    for (long t = 0; t < n; t++) {
        const long slot = slots[t], rank = slot_ranks[slot];
        if (!slot || !rank) continue;
        const float *as = a + slot * in * stride, *bs = b + slot * stride * out, *xt = x + t * in;
        float hidden[rank], delta[out];
        for (long r = 0; r < rank; r++) hidden[r] = 0.0f;
        for (long i = 0; i < in; i++) {
            const float xi = xt[i];
            const float *ar = as + i * stride;
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

/* The step's adapters: slots [n] (NULL: no token has one), and per projection m = 7 * layer + p its stacks a[m],
 * b[m], their padded rank strides[m] and the rank of each slot's adapter slot_ranks[m * n_slots + slot]. */
typedef struct {
    const long *slots;
    const float **a, **b;
    const long *strides, *slot_ranks;
    long n_slots;
} Adapters;

static void adapt(const Adapters *ad, long m, const float *x, float *y, long n, long in, long out, int threads) {
    if (ad->slots)
        lora_add(x, y, ad->a[m], ad->b[m], ad->slots, n, in, out, ad->strides[m], ad->slot_ranks + m * ad->n_slots,
                 threads);
}

/* x [n, hidden] is updated in place. Per layer l: norms[2l] / norms[2l + 1] the input / post-attention RMSNorm
 * weights; w[7l + p] / s[7l + p] the int8 weights and scales of projection p in the order q, k, v, o, gate, up,
 * down; caches[2l] / caches[2l + 1] the key / value caches [rows, kv_heads, cap, hd]. cos / sin [n, hd], rows and
 * pos [n] as in decode_attention. work holds n * (2 hidden + 2 heads hd + 2 kv_heads hd + 2 inter) floats plus
 * n * kv_heads * longest for the attention scores. Adapters: slots [n] (NULL: none in this step); la[7l + p] /
 * lb[7l + p] / strides[7l + p] the slot stacks of projection p and their padded rank (NULL or 0: no adapter targets
 * it), slot_ranks[(7l + p) * n_slots + s] the rank of slot s's adapter there. */
void q8_decode_layers(float *x, long n, long layers, long hidden, long inter, long kv_heads, long rep, long hd,
                      long cap, float eps, float scale, const float **norms, const int8_t **w, const float **s,
                      float **caches, const float *cos_, const float *sin_, const long *rows, const long *pos,
                      float *work, long longest, const long *slots, const float **la, const float **lb,
                      const long *strides, const long *slot_ranks, long n_slots, long capture_layer, float *captured,
                      int threads) {
    const long heads = kv_heads * rep;
    float *h = work, *out = h + n * hidden, *q = out + n * hidden, *attn = q + n * heads * hd;
    float *k = attn + n * heads * hd, *v = k + n * kv_heads * hd, *g = v + n * kv_heads * hd, *u = g + n * inter;
    float *scores = u + n * inter;
    const Adapters ad = {slots, la, lb, strides, slot_ranks, n_slots};
    for (long l = 0; l < layers; l++) {
        if (captured && l == capture_layer) memcpy(captured, x, sizeof(float) * n * hidden);
        const int8_t **wl = w + 7 * l;
        const float **sl = s + 7 * l;
        rms_norm(x, norms[2 * l], h, n, hidden, eps);
        float *qkv[3] = {q, k, v};
        const long qkv_out[3] = {heads * hd, kv_heads * hd, kv_heads * hd};
        q8_linear_many(h, wl, sl, qkv, qkv_out, 3, n, hidden, threads);
        for (int p = 0; p < 3; p++) adapt(&ad, 7 * l + p, h, qkv[p], n, hidden, qkv_out[p], threads);
        decode_attention(q, k, v, cos_, sin_, caches[2 * l], caches[2 * l + 1], rows, pos, attn, n, kv_heads, rep, hd,
                         cap, scale, scores, longest, threads);
        q8_linear(attn, wl[3], sl[3], out, n, heads * hd, hidden, threads);
        adapt(&ad, 7 * l + 3, attn, out, n, heads * hd, hidden, threads);
        for (long i = 0; i < n * hidden; i++) x[i] = x[i] + out[i];
        rms_norm(x, norms[2 * l + 1], h, n, hidden, eps);
        float *gu[2] = {g, u};
        const long gu_out[2] = {inter, inter};
        q8_linear_many(h, wl + 4, sl + 4, gu, gu_out, 2, n, hidden, threads);
        for (int p = 0; p < 2; p++) adapt(&ad, 7 * l + 4 + p, h, gu[p], n, hidden, inter, threads);
        silu_mul(g, u, n * inter);
        q8_linear(g, wl[6], sl[6], out, n, inter, hidden, threads);
        adapt(&ad, 7 * l + 6, g, out, n, inter, hidden, threads);
        for (long i = 0; i < n * hidden; i++) x[i] = x[i] + out[i];
    }
}
