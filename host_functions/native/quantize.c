/* Activation quantization: each weight format's dot product multiplies against activations in the
 * type llama.cpp pairs with it (its vec_dot_type), so they are rounded as llama.cpp rounds them.
 *
 * Q8_0 / Q8_1 follow ggml's x86 path (scale 127/amax, round half to even), Q8_K ggml's reference
 * (scale -127/x at the largest |x|, round half to even, clamp at 127). Float formats keep float32
 * rows that hold values already rounded to f16 or bf16, so their dot products need no conversion
 * of the activation side.
 */
#include <math.h>

#include "realm_native.h"

static float block_amax(const float *x, int n) {
    float amax = 0.0f;
    for (int j = 0; j < n; j++) amax = fmaxf(amax, fabsf(x[j]));
    return amax;
}

/* q[j] = round(x[j] * 127 / amax), returning the sum of the q (for Q8_1's s). */
static int quantize_block_8(const float *x, int8_t *q, float amax) {
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < QK; j++) {
        q[j] = (int8_t)rintf(x[j] * id);
        sum += q[j];
    }
    return sum;
}

static void quantize_row_q8_0(const float *x, block_q8_0 *y, int64_t k) {
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        const float amax = block_amax(x, QK);
        y[i].d = f32_to_f16(amax / 127.0f);
        quantize_block_8(x, y[i].qs, amax);
    }
}

static void quantize_row_q8_1(const float *x, block_q8_1 *y, int64_t k) {
    for (int64_t i = 0; i < k / QK; i++, x += QK) {
        const float amax = block_amax(x, QK), d = amax / 127.0f;
        y[i].d = f32_to_f16(d);
        y[i].s = f32_to_f16(d * (float)quantize_block_8(x, y[i].qs, amax));
    }
}

static void quantize_row_q8_k(const float *x, block_q8_K *y, int64_t k) {
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
        }
        memset(&y[i], 0, sizeof y[i]);
        if (amax == 0.0f) continue;
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++) {
            const float v = rintf(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v > 127.0f ? 127.0f : v);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += y[i].qs[16 * j + l];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1.0f / iscale;
    }
}

HIDDEN int64_t act_row_bytes(int act, int64_t k) {
    switch (act) {
    case ACT_Q8_0: return k / QK * (int64_t)sizeof(block_q8_0);
    case ACT_Q8_1: return k / QK * (int64_t)sizeof(block_q8_1);
    case ACT_Q8_K: return k / QK_K * (int64_t)sizeof(block_q8_K);
    default: return k * 4;
    }
}

HIDDEN void quantize_row_act(int act, const float *x, uint8_t *out, int64_t k) {
    float *f = (float *)out;
    switch (act) {
    case ACT_Q8_0: quantize_row_q8_0(x, (block_q8_0 *)out, k); break;
    case ACT_Q8_1: quantize_row_q8_1(x, (block_q8_1 *)out, k); break;
    case ACT_Q8_K: quantize_row_q8_k(x, (block_q8_K *)out, k); break;
    case ACT_F16: for (int64_t j = 0; j < k; j++) f[j] = f16_to_f32(f32_to_f16(x[j])); break;
    case ACT_BF16: for (int64_t j = 0; j < k; j++) f[j] = bf16_to_f32(f32_to_bf16(x[j])); break;
    default: memcpy(out, x, (size_t)k * 4); break;
    }
}
