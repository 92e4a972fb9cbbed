/* The library's entry points: y = x @ W.T for a weight in any format of the quant table, and the
 * activation quantizers on their own (for tests).
 *
 * A call quantizes the activation rows to the weight's paired type once, then splits the weight rows
 * over the pool's threads in whole tiles of TILE_ROWS rows; each thread walks its row tiles and, per
 * row tile, every tile of TILE_TOKENS activation rows, so a weight tile is read from memory once and
 * reused from cache for all activation rows. From PANEL_MIN_TOKENS rows on, the formats with a panel
 * kernel regroup the activations into token panels first and run each weight row against all of them
 * (realm_native.h). Outputs never depend on the split, the path or the number of activation rows
 * (see tile_fn).
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "realm_native.h"

typedef struct {
    int type;       /* GGML type number */
    int block;      /* weights per block */
    int bytes;      /* bytes per block */
    int act;        /* activation type */
    tile_fn tile;
    panel_fn panel;  /* NULL: the tiles do every call */
} format;

static const format FORMATS[] = {
    {T_F32, 1, 4, ACT_F32, tile_f32, NULL},
    {T_F16, 1, 2, ACT_F16, tile_f16, NULL},
    {T_BF16, 1, 2, ACT_BF16, tile_bf16, NULL},
    {T_Q4_0, QK, 18, ACT_Q8_0, tile_q4_0, PANEL_FN(q4_0)},
    {T_Q4_1, QK, 20, ACT_Q8_1, tile_q4_1, PANEL_FN(q4_1)},
    {T_Q5_0, QK, 22, ACT_Q8_0, tile_q5_0, PANEL_FN(q5_0)},
    {T_Q5_1, QK, 24, ACT_Q8_1, tile_q5_1, PANEL_FN(q5_1)},
    {T_Q8_0, QK, 34, ACT_Q8_0, tile_q8_0, PANEL_FN(q8_0)},
    {T_Q8_1, QK, 36, ACT_Q8_1, tile_q8_1, PANEL_FN(q8_1)},
    {T_Q2_K, QK_K, 84, ACT_Q8_K, tile_q2_k, PANEL_FN(q2_k)},
    {T_Q3_K, QK_K, 110, ACT_Q8_K, tile_q3_k, PANEL_FN(q3_k)},
    {T_Q4_K, QK_K, 144, ACT_Q8_K, tile_q4_k, PANEL_FN(q4_k)},
    {T_Q5_K, QK_K, 176, ACT_Q8_K, tile_q5_k, PANEL_FN(q5_k)},
    {T_Q6_K, QK_K, 210, ACT_Q8_K, tile_q6_k, PANEL_FN(q6_k)},
    {T_Q8_K, QK_K, 292, ACT_Q8_K, tile_q8_k, PANEL_FN(q8_k)},
};

static const format *find_format(int type) {
    for (size_t i = 0; i < sizeof FORMATS / sizeof FORMATS[0]; i++)
        if (FORMATS[i].type == type) return &FORMATS[i];
    return NULL;
}

/* Error codes (negative); the Python wrapper checks shapes first, so these are a second line. */
enum { E_FORMAT = -1, E_SHAPE = -2, E_MEMORY = -3 };

static const format *check(int type, int64_t n_cols, int64_t n_tok) {
    const format *f = find_format(type);
    if (f == NULL || n_cols <= 0 || n_cols % f->block || n_tok < 0) return NULL;
    /* activation blocks: Q8_0/Q8_1 need 32-multiples, Q8_K 256-multiples; both hold by the block size */
    return f;
}

EXPORT int64_t realm_act_row_bytes(int type, int64_t n_cols) {
    const format *f = check(type, n_cols, 0);
    return f ? act_row_bytes(f->act, n_cols) : E_FORMAT;
}

EXPORT int realm_quantize_act(int type, const float *x, int64_t n_tok, int64_t n_cols, uint8_t *out) {
    const format *f = check(type, n_cols, n_tok);
    if (f == NULL) return E_FORMAT;
    const int64_t rb = act_row_bytes(f->act, n_cols);
    for (int64_t t = 0; t < n_tok; t++) quantize_row_act(f->act, x + t * n_cols, out + t * rb, n_cols);
    return 0;
}

#define MAX_SEGMENTS 8

typedef struct {
    const format *f;
    const uint8_t *w;
    size_t w_stride;
    int64_t n_rows, n_tiles, column;
    const uint8_t *x;  /* activation rows in this segment's activation type */
    size_t x_stride;
    const uint8_t *panels;  /* the same as token panels, or NULL: this segment runs on tiles */
    size_t panel_stride;    /* bytes from one panel to the next */
} segment_job;

typedef struct {
    segment_job seg[MAX_SEGMENTS];
    int n_seg;
    int64_t n_tiles, n_cols, n_tok, n_panels;
    float *y;
    int64_t y_stride;
    int64_t chunk_tiles;       /* row tiles per claim */
    _Atomic int64_t next;      /* the next unclaimed chunk */
} matmul_job;

static void run_tile(const matmul_job *j, const segment_job *s, int64_t tile) {
    const int64_t r0 = tile * TILE_ROWS;
    const int nr = (int)(s->n_rows - r0 < TILE_ROWS ? s->n_rows - r0 : TILE_ROWS);
    for (int64_t t0 = 0; t0 < j->n_tok; t0 += TILE_TOKENS) {
        const int nt = (int)(j->n_tok - t0 < TILE_TOKENS ? j->n_tok - t0 : TILE_TOKENS);
        s->f->tile(s->w + (size_t)r0 * s->w_stride, s->w_stride, nr, s->x + (size_t)t0 * s->x_stride, s->x_stride,
                   nt, j->n_cols / s->f->block, j->y + t0 * j->y_stride + s->column + r0, j->y_stride);
    }
}

/* Rows of tiles [first, end) of a segment against every token panel: PANEL_ROWS rows at a time,
 * MAX_PANELS panels per pass over them, the outputs of GROUP_ROWS rows gathered token by token and
 * written to y as runs of columns. Written one float per row and token, a 128-token prefill spent 40%
 * of its time in those stores: y's rows are 2^k floats apart in these products, so every token's
 * output for one column fell into the same L1 set. Each output is computed as before (same bits). */
#define GROUP_ROWS 16
static void run_panels(const matmul_job *j, const segment_job *s, int64_t first, int64_t end) {
    _Alignas(64) float out[PANEL_ROWS * PANEL_OUT];
    _Alignas(64) float group[PANEL_OUT][GROUP_ROWS];  /* [token][row] */
    const int64_t rows_end = end * TILE_ROWS < s->n_rows ? end * TILE_ROWS : s->n_rows;
    for (int64_t g0 = first * TILE_ROWS; g0 < rows_end; g0 += GROUP_ROWS) {
        const int64_t g1 = g0 + GROUP_ROWS < rows_end ? g0 + GROUP_ROWS : rows_end;
        for (int64_t p0 = 0; p0 < j->n_panels; p0 += MAX_PANELS) {
            const int np = (int)(j->n_panels - p0 < MAX_PANELS ? j->n_panels - p0 : MAX_PANELS);
            const int64_t t0 = p0 * PANEL_TOKENS, nt = j->n_tok - t0 < np * PANEL_TOKENS ? j->n_tok - t0 : np * PANEL_TOKENS;
            for (int64_t r = g0; r < g1; r += PANEL_ROWS) {
                const int nr = (int)(g1 - r < PANEL_ROWS ? g1 - r : PANEL_ROWS);
                s->f->panel(s->w + (size_t)r * s->w_stride, s->w_stride, nr, j->n_cols / s->f->block,
                            s->panels + (size_t)p0 * s->panel_stride, s->panel_stride, np, out);
                for (int i = 0; i < nr; i++)
                    for (int64_t t = 0; t < nt; t++) group[t][r - g0 + i] = out[i * PANEL_OUT + t];
            }
            for (int64_t t = 0; t < nt; t++)
                memcpy(j->y + (t0 + t) * j->y_stride + s->column + g0, group[t], sizeof(float) * (size_t)(g1 - g0));
        }
    }
}

/* Every thread claims chunks of row tiles (numbered across all segments) until none are left. */
static void matmul_share(void *arg, int ith, int nth) {
    (void)ith, (void)nth;
    matmul_job *j = arg;
    for (;;) {
        int64_t tile = atomic_fetch_add(&j->next, 1) * j->chunk_tiles, base = 0;
        const int64_t last = tile + j->chunk_tiles < j->n_tiles ? tile + j->chunk_tiles : j->n_tiles;
        if (tile >= last) return;
        for (int s = 0; s < j->n_seg && tile < last; base += j->seg[s].n_tiles, s++) {
            const int64_t end = last < base + j->seg[s].n_tiles ? last : base + j->seg[s].n_tiles;
            if (tile < end && j->seg[s].panels) run_panels(j, &j->seg[s], tile - base, end - base), tile = end;
            for (; tile < end; tile++) run_tile(j, &j->seg[s], tile - base);
        }
    }
}

/* Chunks: about 8 per thread (so a slow thread's last chunk is a small delay), and at least ~16 KiB of
 * weights each so that claiming costs nothing next to the work. */
static int64_t chunk_tiles(const matmul_job *j) {
    const int64_t per_thread = j->n_tiles / (8 * (int64_t)pool_threads()) + 1;
    return per_thread < 8 ? (j->n_tiles < 8 ? 1 : 8) : per_thread;
}

/* y[t * y_stride + c] for n_tok float32 activation rows x (n_cols apart) against the rows of every
 * segment in turn, segment s filling the columns after those of segments 0..s-1. The activation rows
 * are quantized once per activation type the segments need. Returns 0 or a negative error code. */
EXPORT int realm_matmul(const realm_segment *segs, int n_seg, int64_t n_cols, const float *x, int64_t n_tok,
                        float *y, int64_t y_stride) {
    if (n_seg < 1 || n_seg > MAX_SEGMENTS || n_tok < 0) return E_SHAPE;
    matmul_job job = {.n_seg = n_seg, .n_cols = n_cols, .n_tok = n_tok, .y = y, .y_stride = y_stride,
                      .n_panels = (n_tok + PANEL_TOKENS - 1) / PANEL_TOKENS};
    uint8_t *act[ACT_Q8_K + 1] = {0}, *panels[ACT_Q8_K + 1] = {0};
    int status = 0;
    int64_t column = 0;
    for (int i = 0; i < n_seg && status == 0; i++) {
        const format *f = check(segs[i].type, n_cols, n_tok);
        if (f == NULL) { status = E_FORMAT; break; }
        if (segs[i].n_rows < 0 || segs[i].w_stride < n_cols / f->block * f->bytes) { status = E_SHAPE; break; }
        const int64_t rb = act_row_bytes(f->act, n_cols);
        if (act[f->act] == NULL && n_tok > 0) {
            act[f->act] = aligned_alloc(64, (size_t)((rb * n_tok + 63) / 64 * 64));
            if (act[f->act] == NULL) { status = E_MEMORY; break; }
            for (int64_t t = 0; t < n_tok; t++) quantize_row_act(f->act, x + t * n_cols, act[f->act] + t * rb, n_cols);
        }
        const int64_t panel_stride = panel_block_bytes(f->act) * (n_cols / f->block);
        const int use_panels = f->panel != NULL && n_tok >= PANEL_MIN_TOKENS && panel_stride > 0;
        if (use_panels && panels[f->act] == NULL) {
            panels[f->act] = aligned_alloc(64, (size_t)(panel_stride * job.n_panels));
            if (panels[f->act] == NULL) { status = E_MEMORY; break; }
            for (int64_t p = 0; p < job.n_panels; p++) {
                const int64_t t0 = p * PANEL_TOKENS;
                build_panel(f->act, act[f->act] + t0 * rb, (size_t)rb,
                            (int)(n_tok - t0 < PANEL_TOKENS ? n_tok - t0 : PANEL_TOKENS), n_cols / f->block,
                            panels[f->act] + p * panel_stride);
            }
        }
        const int64_t n_tiles = (segs[i].n_rows + TILE_ROWS - 1) / TILE_ROWS;
        job.seg[i] = (segment_job){f, segs[i].w, (size_t)segs[i].w_stride, segs[i].n_rows, n_tiles, column,
                                   act[f->act], (size_t)rb, use_panels ? panels[f->act] : NULL,
                                   (size_t)panel_stride};
        job.n_tiles += n_tiles;
        column += segs[i].n_rows;
    }
    if (status == 0 && y_stride < column) status = E_SHAPE;
    job.chunk_tiles = chunk_tiles(&job);
    if (status == 0 && n_tok > 0 && job.n_tiles > 0) pool_run(matmul_share, &job);
    for (int a = 0; a <= ACT_Q8_K; a++) free(act[a]), free(panels[a]);
    return status;
}

EXPORT int realm_native_abi(void) { return 1; }
