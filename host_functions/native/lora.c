/* Unmerged LoRA on the cpu backend: y[r] += factor_p * B_p (A x[r]) for each part p of a fused projection.
 *
 * One call serves one run of rows that share an adapter and scale: the shrink t = A_cat x (A_cat the
 * parts' A matrices stacked, so a fused Q|K|V or gate|up is one pass over x) and each part's expand into
 * its own columns of y. The shrink is one long dot product per rank row, in 8 float lanes with a fixed
 * pairwise sum; the expand, whose dots are only rank long, runs across outputs instead (B stored
 * transposed, (rank, n_out)), each output summing its rank terms in order. Each row is computed on its
 * own, so a row's result depends on nothing but the row (batch invariance) and, being plain C built with
 * -ffp-contract=off, is the same in every variant. The work is small (rank <= 64) and runs on the
 * calling thread: a pool hand-off would cost more than it saves at decode sizes.
 */
#include "realm_native.h"

#define LORA_ROWS 8          /* rows done together, so A and B are read once per 8 rows */
#define LORA_COLS 64         /* outputs an expand accumulates at once (in registers) */
#define LORA_MAX_RANK 512    /* sum of the parts' ranks (the Python side checks it) */

typedef struct {
    const float *bt;         /* B transposed: (rank, n_out) row-major */
    int64_t out_offset;      /* the part's first column in y */
    int64_t n_out;
    int64_t rank_offset;     /* the part's first column in t */
    int64_t rank;
    double alpha_over_rank;  /* the pair's factor at scale 1 */
} realm_lora_part;

/* The 8-lane pairwise sum ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)), as lanes.h sums. */
static inline float sum_lanes(const float *acc) {
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

/* t[k] = dot(a row k, x) for KB rows of a at once (independent chains keep the adders busy); each dot
 * is 8 lanes over n then sum_lanes, the same as when it is computed alone. */
#define KB 4
static inline void shrink_rows(const float *a, int64_t n_in, int kb, const float *x, float *t) {
    float acc[KB][8] = {{0}};
    int64_t i = 0;
    if (kb == KB) {
        for (; i + 8 <= n_in; i += 8)
            for (int k = 0; k < KB; k++)
                for (int l = 0; l < 8; l++) acc[k][l] += a[k * n_in + i + l] * x[i + l];
    } else {
        for (; i + 8 <= n_in; i += 8)
            for (int k = 0; k < kb; k++)
                for (int l = 0; l < 8; l++) acc[k][l] += a[k * n_in + i + l] * x[i + l];
    }
    for (int k = 0; k < kb; k++) {
        for (int64_t j = i, l = 0; j < n_in; j++, l++) acc[k][l] += a[k * n_in + j] * x[j];
        t[k] = sum_lanes(acc[k]);
    }
}

/* y[o] += factor * sum_k bt[k][o] * t[k] for the w <= LORA_COLS outputs o from bt's column 0 */
static inline void expand_cols(const float *bt, int64_t n_out, int64_t rank, const float *t, float factor, float *y,
                               int w) {
    float acc[LORA_COLS] = {0};
    if (w == LORA_COLS) {  /* the same sums as below, with a constant width the compiler vectorizes */
        for (int64_t k = 0; k < rank; k++)
            for (int l = 0; l < LORA_COLS; l++) acc[l] += bt[k * n_out + l] * t[k];
    } else {
        for (int64_t k = 0; k < rank; k++)
            for (int l = 0; l < w; l++) acc[l] += bt[k * n_out + l] * t[k];
    }
    for (int l = 0; l < w; l++) y[l] += factor * acc[l];
}

/* Returns 0, or -1 for a rank sum beyond LORA_MAX_RANK. */
EXPORT int realm_lora(const float *x, int64_t x_stride, int64_t n_rows, int64_t n_in, const float *a,
                      int64_t total_rank, const realm_lora_part *parts, int n_parts, double scale, float *y,
                      int64_t y_stride) {
    if (total_rank < 0 || total_rank > LORA_MAX_RANK) return -1;
    float t[LORA_ROWS][LORA_MAX_RANK];
    for (int64_t r0 = 0; r0 < n_rows; r0 += LORA_ROWS) {
        const int nr = n_rows - r0 < LORA_ROWS ? (int)(n_rows - r0) : LORA_ROWS;
        for (int64_t k = 0; k < total_rank; k += KB) {
            const int kb = total_rank - k < KB ? (int)(total_rank - k) : KB;
            for (int r = 0; r < nr; r++) shrink_rows(a + k * n_in, n_in, kb, x + (r0 + r) * x_stride, t[r] + k);
        }
        for (int p = 0; p < n_parts; p++) {
            const realm_lora_part *part = &parts[p];
            const float factor = (float)(scale * part->alpha_over_rank);
            for (int64_t o = 0; o < part->n_out; o += LORA_COLS) {
                const int w = part->n_out - o < LORA_COLS ? (int)(part->n_out - o) : LORA_COLS;
                for (int r = 0; r < nr; r++)
                    expand_cols(part->bt + o, part->n_out, part->rank, t[r] + part->rank_offset, factor,
                                y + (r0 + r) * y_stride + part->out_offset + o, w);
            }
        }
    }
    return 0;
}
