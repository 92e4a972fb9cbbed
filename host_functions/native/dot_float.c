/* Dot products of the float formats: F32 weights with F32 activations, F16 with F16, BF16 with BF16
 * (llama.cpp's pairing; the activation rows arrive as float32 already rounded to the weight's type).
 *
 * Products are summed in 16 float lanes (lane l takes elements l, l + 16, ...), then in a fixed
 * pairwise tree: the written-out order every variant shares. The lanes are a 16-float vector type, so
 * the same source is one zmm register per accumulator with AVX-512, two ymm with AVX2 and plain C
 * elsewhere, with the same bits: each product is added by an explicit fused multiply-add (one
 * rounding), which every variant computes exactly (the plain x86-64 build through libm's fmaf),
 * where a multiply then an add would need twice the arithmetic of an FMA unit.
 *
 * The NumPy backend runs its float32 products here too: BLAS takes a different path for one row than
 * for many, so only a kernel like this one gives bit-identical rows at every batch size while reading
 * the weights once per step.
 */
#include "realm_native.h"

#if defined(REALM_NEON)
#include <arm_neon.h>
#endif

#define FLANES 16

typedef float f32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef float f32x8v __attribute__((vector_size(32)));
typedef float f32x4v __attribute__((vector_size(16)));
typedef float f32x2v __attribute__((vector_size(8)));

static inline f32x16 load_f32(const uint8_t *p) {
    f32x16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline f32x16 load_f16(const uint8_t *p) {
#if defined(__AVX512F__)
    return (f32x16)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#elif defined(__F16C__)
    const __m256 half[2] = {_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)),
                            _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)))};
    f32x16 v;
    memcpy(&v, half, sizeof v);
    return v;
#elif defined(REALM_NEON)
    float32x4_t quarter[4];
    for (int i = 0; i < 4; i++) quarter[i] = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)(p + 8 * i))));
    f32x16 v;
    memcpy(&v, quarter, sizeof v);
    return v;
#else
    f32x16 v;
    for (int l = 0; l < FLANES; l++) {
        uint16_t h;
        memcpy(&h, p + 2 * l, 2);
        v[l] = f16_to_f32(h);
    }
    return v;
#endif
}

static inline f32x16 load_bf16(const uint8_t *p) {
    u16x16 h;
    memcpy(&h, p, sizeof h);
    return (f32x16)(__builtin_convertvector(h, u32x16) << 16);
}

/* ((l0 + l8) + (l4 + l12)) ... : halve the width, lane l adding lane l + width, down to one */
static inline float lanes_sum(f32x16 a) {
    const f32x8v b = __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7) +
                     __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
    const f32x4v c = __builtin_shufflevector(b, b, 0, 1, 2, 3) + __builtin_shufflevector(b, b, 4, 5, 6, 7);
    const f32x2v d = __builtin_shufflevector(c, c, 0, 1) + __builtin_shufflevector(c, c, 2, 3);
    return d[0] + d[1];
}

/* One element, for the elements past the last whole 16 (they keep the lanes they would have had). */
static inline float elem_f32(const uint8_t *p) {
    float f;
    memcpy(&f, p, 4);
    return f;
}
static inline float elem_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return f16_to_f32(h);
}
static inline float elem_bf16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return bf16_to_f32(h);
}

#define FLOAT_TILE(NAME, ELEM_BYTES, LOAD, ELEM)                                                      \
    static inline __attribute__((always_inline)) void body_##NAME(                                          \
        const uint8_t *w, size_t w_stride, const int nr, const uint8_t *x, size_t x_stride, const int nt,       \
        int64_t n, float *y, int64_t y_stride) {                                                             \
        f32x16 acc[TILE_ROWS][TILE_TOKENS];                                                                  \
        for (int r = 0; r < nr; r++)                                                                         \
            for (int t = 0; t < nt; t++) acc[r][t] = (f32x16){0};                                            \
        int64_t i = 0;                                                                                       \
        for (; i + FLANES <= n; i += FLANES) {                                                               \
            f32x16 xv[TILE_TOKENS];                                                                          \
            for (int t = 0; t < nt; t++) xv[t] = load_f32(x + (size_t)t * x_stride + (size_t)i * 4);         \
            for (int r = 0; r < nr; r++) {                                                                   \
                const f32x16 wv = LOAD(w + (size_t)r * w_stride + (size_t)i * ELEM_BYTES);                   \
                for (int t = 0; t < nt; t++) acc[r][t] = __builtin_elementwise_fma(wv, xv[t], acc[r][t]);      \
            }                                                                                                \
        }                                                                                                    \
        for (int l = 0; i + l < n; l++)                                                                      \
            for (int r = 0; r < nr; r++) {                                                                   \
                const float wf = ELEM(w + (size_t)r * w_stride + (size_t)(i + l) * ELEM_BYTES);                 \
                for (int t = 0; t < nt; t++) {                                                               \
                    float xf;                                                                                \
                    memcpy(&xf, x + (size_t)t * x_stride + (size_t)(i + l) * 4, 4);                          \
                    acc[r][t][l] = __builtin_fmaf(wf, xf, acc[r][t][l]);                                     \
                }                                                                                            \
            }                                                                                                \
        for (int r = 0; r < nr; r++)                                                                         \
            for (int t = 0; t < nt; t++) y[t * y_stride + r] = lanes_sum(acc[r][t]);                         \
    }                                                                                                        \
    DISPATCH_TILE(NAME)

FLOAT_TILE(f32, 4, load_f32, elem_f32)
FLOAT_TILE(f16, 2, load_f16, elem_f16)
FLOAT_TILE(bf16, 2, load_bf16, elem_bf16)
