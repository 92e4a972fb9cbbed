/* One transformer block in one call: NumpyBackend._layer's ops in its order, each the library's own
 * entry point (the same calls the cpu backend's hooks make one by one from Python), so the bits are
 * the hooks'. A decode step made ~16 library calls per layer from Python, with the slicing and the
 * residual adds between them: ~2 ms of a ~15 ms token on the default model, one thread
 * (docs/decode_speed.md). LoRA steps keep the Python path (their terms sit between the ops).
 *
 * x (n, n_embd) is updated in place: x += attn_out(attention(rope(norm(qkv(norm(x)))))) [post-norm],
 * then x += down(act(gate_up(norm(x)))) [post-norm]. Each span is one sequence's rows: its new
 * keys/values go to the pool at its slots, its queries attend over its own keys.
 */
#include <stdlib.h>

#include "realm_native.h"

typedef struct {
    const realm_segment *segs;
    int64_t n_seg, n_out;
} layer_product;

/* A block's weights and shapes; the norms the architecture lacks are NULL. */
typedef struct {
    layer_product qkv, attn_out, gate_up, down;
    const float *attn_norm, *q_norm, *k_norm, *post_attn_norm, *ffn_norm, *post_ffn_norm;
    int64_t n_embd, n_ff, q_col, k_col, v_col;
    int32_t n_head, n_kv, head_dim, neox, activation, reserved;
    float eps, scale;
} layer_weights;

static int product(const layer_product *p, const float *x, int64_t n, int64_t n_cols, float *y) {
    return realm_matmul(p->segs, (int)p->n_seg, n_cols, x, n, y, p->n_out);
}

/* rows [r0, r0 + n) of columns [col, col + width) of a (rows, stride) matrix, copied contiguous */
static void columns(const float *src, int64_t stride, int64_t col, int64_t n, int64_t width, float *dst) {
    for (int64_t t = 0; t < n; t++) memcpy(dst + t * width, src + t * stride + col, sizeof(float) * (size_t)width);
}

static void add_rows(float *x, const float *a, int64_t count) {
    for (int64_t i = 0; i < count; i++) x[i] = x[i] + a[i];
}

/* The scratch floats realm_layer needs for n rows. */
EXPORT int64_t realm_layer_scratch(const layer_weights *w, int64_t n) {
    const int64_t q_dim = (int64_t)w->n_head * w->head_dim, kv_dim = (int64_t)w->n_kv * w->head_dim;
    return n * (w->n_embd + w->qkv.n_out + 3 * q_dim + 3 * kv_dim + w->gate_up.n_out + w->n_ff);
}

/* spans: n_spans rows of (first row, rows, position of the first row, offset in slots): the slots of
 * the span's positions 0..pos+rows-1 are slots[offset..]. window > 0 limits each position to its
 * window most recent keys. cos/sin: (n, head_dim / 2) for this layer's rope base. Returns 0 or the
 * first failing op's negative status (the slots are checked before anything is written). */
EXPORT int realm_layer(const layer_weights *w, float *x, int64_t n, const int64_t *spans, int n_spans,
                       const int64_t *slots, int64_t n_slot_entries, float *k_pool, float *v_pool, int64_t n_slots,
                       const float *cos, const float *sin, int64_t window, float *scratch, int64_t scratch_floats) {
    const int64_t ne = w->n_embd, hd = w->head_dim, q_dim = w->n_head * hd, kv_dim = w->n_kv * hd;
    if (n < 0 || window < 0 || scratch_floats < realm_layer_scratch(w, n)) return -2;
    for (int s = 0; s < n_spans; s++) {
        const int64_t *sp = spans + 4 * s;
        if (sp[0] < 0 || sp[1] < 0 || sp[0] + sp[1] > n || sp[2] < 0 || sp[3] < 0 || sp[3] + sp[2] + sp[1] > n_slot_entries)
            return -2;
        for (int64_t i = 0; i < sp[2] + sp[1]; i++)
            if (slots[sp[3] + i] < 0 || slots[sp[3] + i] >= n_slots) return -2;
    }
    float *h = scratch, *qkv = h + n * ne, *q = qkv + n * w->qkv.n_out, *k = q + n * q_dim, *v = k + n * kv_dim;
    float *qr = v + n * kv_dim, *kr = qr + n * q_dim, *attn = kr + n * kv_dim, *gu = attn + n * q_dim,
          *g = gu + n * w->gate_up.n_out;
    float *a = h;  /* h is free again once qkv is computed */
    int rc = realm_rms_norm(x, n, ne, w->attn_norm, w->eps, h);
    if (rc == 0) rc = product(&w->qkv, h, n, ne, qkv);
    if (rc != 0) return rc;
    columns(qkv, w->qkv.n_out, w->q_col, n, q_dim, q);
    columns(qkv, w->qkv.n_out, w->k_col, n, kv_dim, k);
    columns(qkv, w->qkv.n_out, w->v_col, n, kv_dim, v);
    if (w->q_norm) rc = realm_rms_norm(q, n * w->n_head, hd, w->q_norm, w->eps, q);
    if (rc == 0 && w->k_norm) rc = realm_rms_norm(k, n * w->n_kv, hd, w->k_norm, w->eps, k);
    if (rc == 0) rc = realm_rope(q, n, w->n_head, (int)hd, cos, sin, w->neox, qr);
    if (rc == 0) rc = realm_rope(k, n, w->n_kv, (int)hd, cos, sin, w->neox, kr);
    for (int s = 0; s < n_spans && rc == 0; s++) {
        const int64_t *sp = spans + 4 * s, r0 = sp[0], rows = sp[1], pos = sp[2];
        rc = realm_kv_store(k_pool, v_pool, n_slots, kv_dim, slots + sp[3] + pos, rows, kr + r0 * kv_dim, v + r0 * kv_dim);
    }
    for (int s = 0; s < n_spans && rc == 0; s++) {
        const int64_t *sp = spans + 4 * s, r0 = sp[0], rows = sp[1], pos = sp[2];
        const int64_t first = window && pos - window + 1 > 0 ? pos - window + 1 : 0;
        rc = realm_attention(qr + r0 * q_dim, rows, w->n_head, w->n_kv, (int)hd, k_pool, v_pool, n_slots,
                             slots + sp[3] + first, pos, first, window, w->scale, attn + r0 * q_dim);
    }
    if (rc == 0) rc = product(&w->attn_out, attn, n, q_dim, a);
    if (rc == 0 && w->post_attn_norm) rc = realm_rms_norm(a, n, ne, w->post_attn_norm, w->eps, a);
    if (rc != 0) return rc;
    add_rows(x, a, n * ne);
    rc = realm_rms_norm(x, n, ne, w->ffn_norm, w->eps, h);
    if (rc == 0) rc = product(&w->gate_up, h, n, ne, gu);
    if (rc == 0) rc = realm_gated(w->activation, gu, n, w->n_ff, g);
    if (rc == 0) rc = product(&w->down, g, n, w->n_ff, a);
    if (rc == 0 && w->post_ffn_norm) rc = realm_rms_norm(a, n, ne, w->post_ffn_norm, w->eps, a);
    if (rc == 0) add_rows(x, a, n * ne);
    return rc;
}
