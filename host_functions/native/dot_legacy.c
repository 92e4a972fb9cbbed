/* Dot products of the 32-weight formats against Q8_0 / Q8_1 activations (llama.cpp's pairing:
 * Q4_0, Q5_0, Q8_0 with Q8_0; Q4_1, Q5_1 with Q8_1, whose s = d * sum(q) carries the min term;
 * Q8_1 weights, which ggml never multiplies, with Q8_1 too).
 *
 * Per block: the integer dot product of the unpacked quants is exact, then scaled by d_w * d_x into
 * 8 float lanes, plus m_w * s_x for the formats with a min, as ggml computes
 * sumf += d_w * d_x * sumi + m_w * s_x. Each weight block is unpacked once per tile and used for
 * every activation row of the tile.
 */
#include "lanes.h"

/* Each unpacker returns the block's 32 quants (signed, or 0..31 for the min formats) and sets d, m. */
static inline const int8_t *unpack_q4_0(const block_q4_0 *b, int8_t *q, float *d, float *m) {
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)((b->qs[j] & 0x0f) - 8);
        q[j + 16] = (int8_t)((b->qs[j] >> 4) - 8);
    }
    *d = f16_to_f32(b->d), *m = 0.0f;
    return q;
}

static inline const int8_t *unpack_q4_1(const block_q4_1 *b, int8_t *q, float *d, float *m) {
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)(b->qs[j] & 0x0f);
        q[j + 16] = (int8_t)(b->qs[j] >> 4);
    }
    *d = f16_to_f32(b->d), *m = f16_to_f32(b->m);
    return q;
}

static inline uint32_t load_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static inline const int8_t *unpack_q5_0(const block_q5_0 *b, int8_t *q, float *d, float *m) {
    const uint32_t qh = load_u32(b->qh);
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)(((b->qs[j] & 0x0f) | (((qh >> j) & 1) << 4)) - 16);
        q[j + 16] = (int8_t)(((b->qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16);
    }
    *d = f16_to_f32(b->d), *m = 0.0f;
    return q;
}

static inline const int8_t *unpack_q5_1(const block_q5_1 *b, int8_t *q, float *d, float *m) {
    const uint32_t qh = load_u32(b->qh);
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)((b->qs[j] & 0x0f) | (((qh >> j) & 1) << 4));
        q[j + 16] = (int8_t)((b->qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
    }
    *d = f16_to_f32(b->d), *m = f16_to_f32(b->m);
    return q;
}

static inline const int8_t *unpack_q8_0(const block_q8_0 *b, int8_t *q, float *d, float *m) {
    (void)q;
    *d = f16_to_f32(b->d), *m = 0.0f;
    return b->qs;
}

static inline const int8_t *unpack_q8_1(const block_q8_1 *b, int8_t *q, float *d, float *m) {
    (void)q;
    *d = f16_to_f32(b->d), *m = 0.0f;
    return b->qs;
}

#define SIGNED_DOT(q, x) dot32((q), (x))
#define UNSIGNED_DOT(q, x) udot32((const uint8_t *)(q), (x))

/* The min formats add m_w * s_x (Q8_1's s) per block; the others have no min term. */
#define ADD_MIN(sum, m, xb) ((sum) += (m) * f16_to_f32((xb)->s))
#define NO_MIN(sum, m, xb) ((void)(m))

/* One tile function per format: UNPACK decodes a weight block, XBLOCK is the activation block type,
 * DOT the signed or unsigned lane product, MIN_TERM ADD_MIN or NO_MIN. */
#define LEGACY_TILE(NAME, BLOCK, XBLOCK, UNPACK, DOT, MIN_TERM)                                             \
    static inline __attribute__((always_inline)) void body_##NAME(                                          \
        const uint8_t *w, size_t w_stride, const int nr, const uint8_t *x, size_t x_stride, const int nt,       \
        int64_t n_blocks, float *y, int64_t y_stride) {                                                      \
        f32x8 acc[TILE_ROWS][TILE_TOKENS];                                                                   \
        float mins[TILE_ROWS][TILE_TOKENS];                                                                  \
        for (int r = 0; r < nr; r++)                                                                         \
            for (int t = 0; t < nt; t++) acc[r][t] = f32x8_zero(), mins[r][t] = 0.0f;                        \
        for (int64_t ib = 0; ib < n_blocks; ib++) {                                                          \
            for (int r = 0; r < nr; r++) {                                                                   \
                _Alignas(32) int8_t buf[QK];                                                                 \
                float d, m;                                                                                  \
                const int8_t *q = UNPACK((const BLOCK *)(w + (size_t)r * w_stride) + ib, buf, &d, &m);       \
                for (int t = 0; t < nt; t++) {                                                               \
                    const XBLOCK *xb = (const XBLOCK *)(x + (size_t)t * x_stride) + ib;                      \
                    acc[r][t] = f32x8_mul_add(acc[r][t], DOT(q, xb->qs), d * f16_to_f32(xb->d));            \
                    MIN_TERM(mins[r][t], m, xb);                                                             \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (int r = 0; r < nr; r++)                                                                         \
            for (int t = 0; t < nt; t++) y[t * y_stride + r] = f32x8_sum(acc[r][t]) + mins[r][t];            \
    }                                                                                                        \
    DISPATCH_TILE(NAME)

LEGACY_TILE(q4_0, block_q4_0, block_q8_0, unpack_q4_0, SIGNED_DOT, NO_MIN)
LEGACY_TILE(q4_1, block_q4_1, block_q8_1, unpack_q4_1, UNSIGNED_DOT, ADD_MIN)
LEGACY_TILE(q5_0, block_q5_0, block_q8_0, unpack_q5_0, SIGNED_DOT, NO_MIN)
LEGACY_TILE(q5_1, block_q5_1, block_q8_1, unpack_q5_1, UNSIGNED_DOT, ADD_MIN)
LEGACY_TILE(q8_0, block_q8_0, block_q8_0, unpack_q8_0, SIGNED_DOT, NO_MIN)
LEGACY_TILE(q8_1, block_q8_1, block_q8_1, unpack_q8_1, SIGNED_DOT, NO_MIN)
