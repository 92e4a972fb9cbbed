/* RoPE with per-token angles given as their cosines and sines (computed once per step by the
 * backend): pair i of every head of token t turns by the angle of cos[t][i], sin[t][i]; the NeoX
 * layout pairs (x[i], x[i + hd/2]), the interleaved one (x[2i], x[2i+1]).
 *
 * NumpyBackend's rope op for op: a cos - b sin and a sin + b cos, every product rounded on its own
 * (-ffp-contract=off), so the results are its bits exactly, on every variant.
 */
#include "realm_native.h"

typedef struct {
    const float *x, *cos, *sin;  /* (n_tok, n_head, hd); (n_tok, hd/2) twice */
    float *out;                  /* (n_tok, n_head, hd); may be x */
    int n_head, hd, neox;
} rope_job;

/* One head: two loops rather than a stride variable, so that each vectorizes. */
static void rotate_head(const float *x, float *out, const float *c, const float *s, int half, int neox) {
    if (neox) {
        for (int i = 0; i < half; i++) {
            const float a = x[i], b = x[i + half];
            out[i] = a * c[i] - b * s[i];
            out[i + half] = a * s[i] + b * c[i];
        }
    } else {
        for (int i = 0; i < half; i++) {
            const float a = x[2 * i], b = x[2 * i + 1];
            out[2 * i] = a * c[i] - b * s[i];
            out[2 * i + 1] = a * s[i] + b * c[i];
        }
    }
}

static void rope_rows(const void *arg, int64_t first, int64_t end) {
    const rope_job *j = arg;
    const int half = j->hd / 2;
    for (int64_t t = first; t < end; t++)
        for (int h = 0; h < j->n_head; h++) {
            const int64_t at = (t * j->n_head + h) * j->hd;
            rotate_head(j->x + at, j->out + at, j->cos + t * half, j->sin + t * half, half, j->neox);
        }
}

/* out = x rotated, for n_tok tokens of n_head heads of hd (even) floats; neox selects the layout.
 * Returns 0, or -2 for a bad shape. */
EXPORT int realm_rope(const float *x, int64_t n_tok, int n_head, int hd, const float *cos, const float *sin,
                      int neox, float *out) {
    if (n_tok < 0 || n_head < 1 || hd < 2 || hd % 2) return -2;
    const rope_job job = {.x = x, .cos = cos, .sin = sin, .out = out, .n_head = n_head, .hd = hd, .neox = neox != 0};
    pool_run_rows(rope_rows, &job, n_tok, (int64_t)n_head * hd);
    return 0;
}
