/* Causal grouped-query attention over one sequence's keys, one query at a time.
 *
 * The arithmetic of NumpyBackend's attention, as llama.cpp rounds it for an f16 KV cache: the query
 * and the normalized probabilities rounded to float16, the keys and values already holding
 * f16-rounded values. Each query (and head) is computed on its own, over exactly the keys its
 * position sees, so a token's result never depends on how its sequence was cut into steps, nor on
 * the thread split. Sums over head_dim run in LANES fixed lanes added by a fixed tree (vector types
 * that every variant lowers to the same per-lane operations; the library is built with
 * -ffp-contract=off), sums over keys in key order.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "realm_native.h"

#define LANES 16

typedef struct {
    const float *q, *keys, *values;  /* (n, n_head, hd); (n_slots, n_kv, hd) */
    const int64_t *slots;            /* the keys' row of position start + i, or NULL: row i */
    float *out;                      /* (n, n_head, hd) */
    int64_t n, pos, start, window;
    int n_head, n_kv, hd;
    int parts, part_heads;           /* a KV head's query heads in `parts` items of part_heads heads */
    float scale;
    float *scratch;                  /* per thread: a group's queries and scores over the longest row */
    int64_t scratch_stride;
    _Atomic int64_t next;            /* the next unclaimed (query, head) pair */
} attention_job;

static inline float round_f16(float v) { return f16_to_f32(f32_to_f16(v)); }

/* The row of position start + i in keys and values. */
static inline size_t key_row(const attention_job *j, int64_t i) { return (size_t)(j->slots ? j->slots[i] : i); }

typedef float f32x16 __attribute__((vector_size(4 * LANES)));  /* any target: the same lanes */

static inline f32x16 load_lanes(const float *p) { f32x16 v; memcpy(&v, p, sizeof v); return v; }

static inline float sum_lanes(f32x16 v) {  /* a fixed pairwise tree: (l + l+8), then +4, +2, +1 */
    float a[LANES];
    memcpy(a, &v, sizeof a);
    for (int width = LANES / 2; width > 0; width /= 2)
        for (int l = 0; l < width; l++) a[l] = a[l] + a[l + width];
    return a[0];
}

/* out[c] = sum_d a[c][d] * b[c][d] for four pairs, each in LANES lanes (independent chains, so they
 * overlap in the pipeline; a pair's result is the same whichever pairs it is computed with). */
static void dot4(const float *const a[4], const float *const b[4], int hd, float out[4]) {
    f32x16 acc[4] = {{0}};
    int d = 0;
    for (; d + LANES <= hd; d += LANES)
        for (int c = 0; c < 4; c++) acc[c] = acc[c] + load_lanes(a[c] + d) * load_lanes(b[c] + d);
    for (int l = 0; d < hd; d++, l++)  /* a head_dim that is not a multiple of LANES: its tail */
        for (int c = 0; c < 4; c++) acc[c][l] = acc[c][l] + a[c][d] * b[c][d];
    for (int c = 0; c < 4; c++) out[c] = sum_lanes(acc[c]);
}

/* out[d] += prob * v[d] (one multiply and one add per element, element by element) */
static void add_scaled(float *restrict out, const float *restrict v, float prob, int hd) {
    for (int d = 0; d < hd; d++) out[d] = out[d] + prob * v[d];
}

/* Query i's heads h0..h0+nh-1 of those of KV head g, which read the same keys and values: each key
 * and value row is loaded once for all of them. A head's result is the same whichever heads it is
 * computed with (dot4's pairs are independent, the rest is per head). */
static void attend_heads(const attention_job *j, int64_t i, int g, int h0, int nh, float *scratch) {
    const int64_t p = j->pos + i, first = j->window > 0 && p - j->window + 1 > 0 ? p - j->window + 1 : 0;
    const int64_t n_keys = p - first + 1;
    const int hd = j->hd, head0 = g * (j->n_head / j->n_kv) + h0;  /* the first head's index in q */
    const size_t row = (size_t)j->n_kv * hd;  /* floats from one position to the next */
    const float *k = j->keys + (size_t)g * hd, *v = j->values + (size_t)g * hd;  /* + key_row(...) * row */
    const int64_t k0 = first - j->start;  /* the first key's index in the slots */
    float *qh = scratch, *scores = scratch + (size_t)nh * hd;  /* (nh, hd), (nh, n_keys) */
    for (int h = 0; h < nh; h++) {
        const float *q = j->q + ((size_t)i * j->n_head + (size_t)(head0 + h)) * hd;
        for (int d = 0; d < hd; d++) qh[h * hd + d] = round_f16(q[d]);
    }
    /* scores[h][s] for every (head, key) pair, four pairs per dot4 call */
    const int64_t n_pairs = (int64_t)nh * n_keys;
    for (int64_t pair = 0; pair < n_pairs; pair += 4) {
        const float *a[4], *b[4];
        for (int c = 0; c < 4; c++) {  /* past the last pair: the last pair again, not stored */
            const int64_t e = pair + c < n_pairs ? pair + c : n_pairs - 1;
            a[c] = qh + (e % nh) * hd, b[c] = k + key_row(j, k0 + e / nh) * row;
        }
        float dots[4];
        dot4(a, b, hd, dots);
        for (int c = 0; c < 4 && pair + c < n_pairs; c++)
            scores[((pair + c) % nh) * n_keys + (pair + c) / nh] = dots[c] * j->scale;
    }
    for (int h = 0; h < nh; h++) {
        float *sc = scores + h * n_keys, max = -INFINITY, sum = 0.0f;
        for (int64_t s = 0; s < n_keys; s++) max = sc[s] > max ? sc[s] : max;
        for (int64_t s = 0; s < n_keys; s++) sum += sc[s] = expf(sc[s] - max);
        for (int64_t s = 0; s < n_keys; s++) sc[s] = round_f16(sc[s] / sum);
        float *out = j->out + ((size_t)i * j->n_head + (size_t)(head0 + h)) * hd;
        for (int d = 0; d < hd; d++) out[d] = 0.0f;
    }
    for (int64_t s = 0; s < n_keys; s++)
        for (int h = 0; h < nh; h++)
            add_scaled(j->out + ((size_t)i * j->n_head + (size_t)(head0 + h)) * hd, v + key_row(j, k0 + s) * row,
                       scores[h * n_keys + s], hd);
}

static void attention_share(void *arg, int ith, int nth) {
    (void)nth;
    attention_job *j = arg;
    float *scratch = j->scratch + (size_t)ith * j->scratch_stride;
    for (;;) {
        const int64_t item = atomic_fetch_add(&j->next, 1);
        if (item >= j->n * j->n_kv * j->parts) return;
        const int g = (int)(item / j->parts % j->n_kv), h0 = (int)(item % j->parts) * j->part_heads;
        const int group = j->n_head / j->n_kv;
        attend_heads(j, item / (j->parts * j->n_kv), g, h0, group - h0 < j->part_heads ? group - h0 : j->part_heads,
                     scratch);
    }
}

/* out (n, n_head, hd) = attention of queries q at positions pos..pos+n-1 over the keys/values of
 * positions start..pos+n-1: rows slots[0..pos+n-start) of keys/values (n_slots, n_kv, hd), the KV
 * pool itself, or with slots NULL their first pos+n-start rows. window > 0 limits position p to keys
 * p-window+1..p. Returns 0, or a negative code for inconsistent shapes, a slot outside the pool or no
 * memory. */
EXPORT int realm_attention(const float *q, int64_t n, int n_head, int n_kv, int hd, const float *keys,
                           const float *values, int64_t n_slots, const int64_t *slots, int64_t pos, int64_t start,
                           int64_t window, float scale, float *out) {
    if (n < 0 || n_head < 1 || n_kv < 1 || n_head % n_kv || hd < 1 || start < 0 || start > pos || window < 0)
        return -2;
    if (slots == NULL && n_slots < pos + n - start) return -2;
    for (int64_t i = 0; slots != NULL && i < pos + n - start; i++)
        if (slots[i] < 0 || slots[i] >= n_slots) return -2;
    if (n == 0) return 0;
    attention_job job = {.q = q, .keys = keys, .values = values, .slots = slots, .out = out, .n = n, .pos = pos,
                         .start = start, .window = window, .n_head = n_head, .n_kv = n_kv, .hd = hd, .scale = scale};
    /* Fewer (query, KV head) items than threads (a decode step of a model with one KV head): the
     * query heads of a KV head are split over the threads instead, each reading the keys itself. */
    const int group = n_head / n_kv, nth = pool_threads();
    const int64_t want = n * n_kv < nth ? (nth + n * n_kv - 1) / (n * n_kv) : 1;
    job.parts = (int)(want < group ? want : group);
    job.part_heads = (group + job.parts - 1) / job.parts;
    job.parts = (group + job.part_heads - 1) / job.part_heads;
    job.scratch_stride = (int64_t)group * (hd + (pos + n - start));
    job.scratch = malloc(sizeof(float) * (size_t)(job.scratch_stride * nth));
    if (job.scratch == NULL) return -3;
    if (n * n_kv * job.parts > 1) pool_run(attention_share, &job);
    else attention_share(&job, 0, 1);
    free(job.scratch);
    return 0;
}

/* The KV cache's writes: k_pool[slots[t]] = f16-rounded k[t] (and v alike) for n new positions of row
 * floats each, the rounding NumPy's astype(float16) does (round to nearest even). Returns 0, or -2
 * for a slot outside the pool (checked before anything is written). */
EXPORT int realm_kv_store(float *k_pool, float *v_pool, int64_t n_slots, int64_t row, const int64_t *slots, int64_t n,
                          const float *k, const float *v) {
    if (n < 0 || row < 1) return -2;
    for (int64_t t = 0; t < n; t++)
        if (slots[t] < 0 || slots[t] >= n_slots) return -2;
    for (int64_t t = 0; t < n; t++)
        for (int64_t c = 0; c < row; c++) {
            k_pool[slots[t] * row + c] = round_f16(k[t * row + c]);
            v_pool[slots[t] * row + c] = round_f16(v[t * row + c]);
        }
    return 0;
}
