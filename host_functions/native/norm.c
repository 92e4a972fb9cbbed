/* RMS norm times the norm weight, row by row, the way llama.cpp computes it
 * (ggml_compute_forward_rms_norm_f32, then the multiply by the weight): the squares in float32,
 * summed in double, the mean rounded to float, scale = 1 / sqrtf(mean + eps), out = (x * scale) * w.
 *
 * The double sum runs in 8 fixed lanes added by a fixed tree (vector types every variant lowers to
 * the same per-lane operations; the library is built with -ffp-contract=off), so a row's bits depend
 * on that row alone: not on the row count, the thread split or the variant.
 */
#include <math.h>

#include "realm_native.h"

typedef float f32v8 __attribute__((vector_size(32)));
typedef double f64v8 __attribute__((vector_size(64)));

typedef struct {
    const float *x, *w;  /* (n_rows, n_cols), (n_cols,) */
    float *out;          /* (n_rows, n_cols); may be x */
    int64_t n_cols;
    float eps;
} norm_job;

static float inverse_rms(const float *x, int64_t n, float eps) {
    f64v8 acc = {0};
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) {
        f32v8 v;
        memcpy(&v, x + c, sizeof v);
        acc = acc + __builtin_convertvector(v * v, f64v8);
    }
    for (int l = 0; c < n; c++, l++) acc[l] = acc[l] + (double)(x[c] * x[c]);  /* a width not a multiple of 8 */
    double a[8];
    memcpy(a, &acc, sizeof a);
    const double sum = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
    const float mean = (float)(sum / (double)n);
    return 1.0f / sqrtf(mean + eps);
}

static void norm_rows(const void *arg, int64_t first, int64_t end) {
    const norm_job *j = arg;
    for (int64_t r = first; r < end; r++) {
        const float *x = j->x + r * j->n_cols;
        float *out = j->out + r * j->n_cols;
        const float scale = inverse_rms(x, j->n_cols, j->eps);
        for (int64_t c = 0; c < j->n_cols; c++) out[c] = (x[c] * scale) * j->w[c];
    }
}

/* out = rms_norm(x) * w for n_rows rows of n_cols floats (out may be x). Returns 0, or -2 for a bad shape. */
EXPORT int realm_rms_norm(const float *x, int64_t n_rows, int64_t n_cols, const float *w, float eps, float *out) {
    if (n_rows < 0 || n_cols < 1) return -2;
    const norm_job job = {.x = x, .w = w, .out = out, .n_cols = n_cols, .eps = eps};
    pool_run_rows(norm_rows, &job, n_rows, n_cols);
    return 0;
}
