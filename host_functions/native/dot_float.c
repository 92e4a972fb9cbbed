/* Dot products of the float formats: F32 weights with F32 activations, F16 with F16, BF16 with BF16
 * (llama.cpp's pairing; the activation rows arrive as float32 already rounded to the weight's type).
 *
 * Products are summed in 16 float lanes (lane l takes elements l, l + 16, ...), then in a fixed
 * pairwise tree: the written-out order every variant shares, which the compiler may vectorize because
 * it needs no reassociation.
 */
#include "lanes.h"

#define FLANES 16

static inline void widen_f32(const uint8_t *p, float *out, int n) { memcpy(out, p, (size_t)n * 4); }

static inline void widen_f16(const uint8_t *p, float *out, int n) {
#if defined(__F16C__)
    if (n == FLANES) {
        _mm256_storeu_ps(out, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)));
        _mm256_storeu_ps(out + 8, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16))));
        return;
    }
#endif
    for (int l = 0; l < n; l++) {
        uint16_t h;
        memcpy(&h, p + 2 * l, 2);
        out[l] = f16_to_f32(h);
    }
}

static inline void widen_bf16(const uint8_t *p, float *out, int n) {
    for (int l = 0; l < n; l++) {
        uint16_t h;
        memcpy(&h, p + 2 * l, 2);
        out[l] = bf16_to_f32(h);
    }
}

static inline float lanes_sum(float *a) {
    for (int width = FLANES / 2; width > 0; width /= 2)
        for (int l = 0; l < width; l++) a[l] = a[l] + a[l + width];
    return a[0];
}

#define FLOAT_TILE(NAME, ELEM_BYTES, WIDEN)                                                                 \
    static inline __attribute__((always_inline)) void body_##NAME(                                          \
        const uint8_t *w, size_t w_stride, const int nr, const uint8_t *x, size_t x_stride, const int nt,       \
        int64_t n, float *y, int64_t y_stride) {                                                             \
        float acc[TILE_ROWS][TILE_TOKENS][FLANES];                                                           \
        memset(acc, 0, sizeof acc);                                                                          \
        for (int64_t i = 0; i < n; i += FLANES) {                                                            \
            const int len = n - i < FLANES ? (int)(n - i) : FLANES;                                          \
            for (int r = 0; r < nr; r++) {                                                                   \
                float wf[FLANES];                                                                            \
                WIDEN(w + (size_t)r * w_stride + (size_t)i * ELEM_BYTES, wf, len);                           \
                for (int t = 0; t < nt; t++) {                                                               \
                    const float *xv = (const float *)(x + (size_t)t * x_stride) + i;                         \
                    if (len == FLANES)                                                                       \
                        for (int l = 0; l < FLANES; l++) acc[r][t][l] = acc[r][t][l] + wf[l] * xv[l];        \
                    else                                                                                     \
                        for (int l = 0; l < len; l++) acc[r][t][l] = acc[r][t][l] + wf[l] * xv[l];           \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (int r = 0; r < nr; r++)                                                                         \
            for (int t = 0; t < nt; t++) y[t * y_stride + r] = lanes_sum(acc[r][t]);                         \
    }                                                                                                        \
    DISPATCH_TILE(NAME)

FLOAT_TILE(f32, 4, widen_f32)
FLOAT_TILE(f16, 2, widen_f16)
FLOAT_TILE(bf16, 2, widen_bf16)
