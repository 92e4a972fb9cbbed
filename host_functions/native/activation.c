/* The gated FFN activations over the fused gate|up output: out = act(gate) * up, row by row, for
 * act = SiLU (x / (1 + e^-x)) or GELU with the tanh approximation, computed as
 * 0.5 x (1 + tanh u) = x / (1 + e^-2u), u = sqrt(2/pi) (x + 0.044715 x^3): the same function without
 * 1 + tanh u's cancellation for negative x.
 *
 * e^x is this file's own (Cephes' expf: range reduction by ln 2, a degree-5 polynomial, the power of
 * two put in by its bits), written in plain float operations that every variant vectorizes to the
 * same per-lane IEEE operations (the library is built with -ffp-contract=off): a libm call would not
 * vectorize, and a vector math library would give each variant its own bits.
 */
#include "realm_native.h"

enum { GATE_SILU = 0, GATE_GELU = 1 };

/* e^x within about 2 ulp; arguments are clamped to [-87.3, 88.3] (e^-87.3 is still a normal float),
 * which changes nothing in 1 + e^x that the activations below form from it. NaN stays NaN. */
static inline float exp_clamped(float x) {
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;
    const float round = 0x1.8p23f;  /* adding and subtracting it rounds to an integer, to nearest even */
    const float n = (x * 1.44269504088896341f + round) - round;
    const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  /* x - n ln 2, ln 2 in two parts */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float y = (p * (r * r) + r) + 1.0f;
    const uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;  /* 2^n, n in -126..127 */
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return y * two_n;
}

static inline float silu(float x) { return x / (1.0f + exp_clamped(-x)); }

static inline float gelu_tanh(float x) {
    const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return x / (1.0f + exp_clamped(-2.0f * u));
}

typedef struct {
    const float *gate_up;  /* (n_rows, 2 n_ff): gate then up */
    float *out;            /* (n_rows, n_ff) */
    int64_t n_ff;
    int kind;
} gated_job;

static void gated_rows(const void *arg, int64_t first, int64_t end) {
    const gated_job *j = arg;
    for (int64_t r = first; r < end; r++) {
        const float *gate = j->gate_up + r * 2 * j->n_ff, *up = gate + j->n_ff;
        float *out = j->out + r * j->n_ff;
        if (j->kind == GATE_GELU)
            for (int64_t c = 0; c < j->n_ff; c++) out[c] = gelu_tanh(gate[c]) * up[c];
        else
            for (int64_t c = 0; c < j->n_ff; c++) out[c] = silu(gate[c]) * up[c];
    }
}

/* out = act(gate_up[:, :n_ff]) * gate_up[:, n_ff:] (kind 0 SiLU, 1 GELU-tanh). Returns 0, or -2 for a
 * bad shape or kind. */
EXPORT int realm_gated(int kind, const float *gate_up, int64_t n_rows, int64_t n_ff, float *out) {
    if (n_rows < 0 || n_ff < 1 || (kind != GATE_SILU && kind != GATE_GELU)) return -2;
    const gated_job job = {.gate_up = gate_up, .out = out, .n_ff = n_ff, .kind = kind};
    pool_run_rows(gated_rows, &job, n_rows, 3 * n_ff);
    return 0;
}
