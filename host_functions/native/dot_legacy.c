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
#define NO_MIN(sum, m, xb) ((void)(m), (void)(xb))

/* The arithmetic every variant shares: block b's 8 float lanes accumulate into acc[b % 2] (two chains
 * of additions, so consecutive blocks do not wait for each other), and the result is
 * f32x8_sum(acc[0] + acc[1]) + the min terms in block order. AVX-512 runs a block pair per 512-bit op:
 * even block in the low half, odd block in the high half, which is the same thing. */

#define STEP(ACC, IB, BLOCK, XBLOCK, UNPACK, DOT, MIN_TERM)                                                                                     \
    for (int r = 0; r < nr; r++) {                                                                           \
        _Alignas(32) int8_t buf[QK];                                                                         \
        float d, m;                                                                                          \
        const int8_t *q = UNPACK((const BLOCK *)(w + (size_t)r * w_stride) + (IB), buf, &d, &m);             \
        for (int t = 0; t < nt; t++) {                                                                       \
            const XBLOCK *xb = (const XBLOCK *)(x + (size_t)t * x_stride) + (IB);                            \
            acc[r][t][ACC] = f32x8_mul_add(acc[r][t][ACC], DOT(q, xb->qs), d * f16_to_f32(xb->d));          \
            MIN_TERM(mins[r][t], m, xb);                                                                     \
        }                                                                                                    \
    }

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)

/* Signed weights: vpdpbusd multiplies unsigned by signed bytes, so the weights are flipped to w + 128
 * (xor 0x80) and the accumulator starts at -128 * (sum of each lane's 4 activations): exact. */
#define PAIR_PREP_SIGNED(xv) _mm512_sub_epi32(_mm512_setzero_si512(),                                      \
                                              _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(-128), xv))
#define PAIR_PREP_UNSIGNED(xv) _mm512_setzero_si512()
#define PAIR_W_SIGNED(wv) _mm512_xor_si512(wv, _mm512_set1_epi8(-128))
#define PAIR_W_UNSIGNED(wv) (wv)

static inline __m512i load_pair(const int8_t *a, const int8_t *b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                              _mm256_loadu_si256((const __m256i *)b), 1);
}

/* Vector unpackers: the same 32 quants as the scalar ones above, in one register. */
static inline __m256i nibbles_v(const uint8_t *qs) {
    const __m128i b = _mm_loadu_si128((const __m128i *)qs), low4 = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), low4), _mm_and_si128(b, low4));
}
static inline __m256i fifth_bits_v(const uint8_t *qh) {  /* 16 where bit j of qh is set, in byte j */
    return _mm256_maskz_mov_epi8(load_u32(qh), _mm256_set1_epi8(16));
}
static inline __m256i vunpack_q4_0(const block_q4_0 *b, float *d, float *m) {
    *d = f16_to_f32(b->d), *m = 0.0f;
    return _mm256_sub_epi8(nibbles_v(b->qs), _mm256_set1_epi8(8));
}
static inline __m256i vunpack_q4_1(const block_q4_1 *b, float *d, float *m) {
    *d = f16_to_f32(b->d), *m = f16_to_f32(b->m);
    return nibbles_v(b->qs);
}
static inline __m256i vunpack_q5_0(const block_q5_0 *b, float *d, float *m) {
    *d = f16_to_f32(b->d), *m = 0.0f;
    return _mm256_sub_epi8(_mm256_or_si256(nibbles_v(b->qs), fifth_bits_v(b->qh)), _mm256_set1_epi8(16));
}
static inline __m256i vunpack_q5_1(const block_q5_1 *b, float *d, float *m) {
    *d = f16_to_f32(b->d), *m = f16_to_f32(b->m);
    return _mm256_or_si256(nibbles_v(b->qs), fifth_bits_v(b->qh));
}
static inline __m256i vunpack_q8_0(const block_q8_0 *b, float *d, float *m) {
    *d = f16_to_f32(b->d), *m = 0.0f;
    return _mm256_loadu_si256((const __m256i *)b->qs);
}
static inline __m256i vunpack_q8_1(const block_q8_1 *b, float *d, float *m) {
    *d = f16_to_f32(b->d), *m = 0.0f;
    return _mm256_loadu_si256((const __m256i *)b->qs);
}

#define LEGACY_BODY(NAME, BLOCK, XBLOCK, UNPACK, DOT, MIN_TERM, KIND)                                       \
    static inline __attribute__((always_inline)) void body_##NAME(                                          \
        const uint8_t *w, size_t w_stride, const int nr, const uint8_t *x, size_t x_stride, const int nt,       \
        int64_t n_blocks, float *y, int64_t y_stride) {                                                      \
        const __m512i halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);           \
        __m512 acc[TILE_ROWS][TILE_TOKENS];                                                                  \
        float mins[TILE_ROWS][TILE_TOKENS];                                                                  \
        for (int r = 0; r < nr; r++)                                                                         \
            for (int t = 0; t < nt; t++) acc[r][t] = _mm512_setzero_ps(), mins[r][t] = 0.0f;                 \
        int64_t ib = 0;                                                                                      \
        for (; ib + 1 < n_blocks; ib += 2) {                                                                 \
            __m512i xv[TILE_TOKENS], init[TILE_TOKENS];                                                      \
            __m128 dx[TILE_TOKENS];                                                                          \
            for (int t = 0; t < nt; t++) {                                                                   \
                const XBLOCK *xb = (const XBLOCK *)(x + (size_t)t * x_stride) + ib;                          \
                xv[t] = load_pair(xb[0].qs, xb[1].qs);                                                       \
                init[t] = PAIR_PREP_##KIND(xv[t]);                                                           \
                dx[t] = _mm_setr_ps(f16_to_f32(xb[0].d), f16_to_f32(xb[1].d), 0.0f, 0.0f);                   \
            }                                                                                                \
            for (int r = 0; r < nr; r++) {                                                                   \
                float d0, m0, d1, m1;                                                                        \
                const BLOCK *b = (const BLOCK *)(w + (size_t)r * w_stride) + ib;                             \
                const __m256i q0 = v##UNPACK(b, &d0, &m0), q1 = v##UNPACK(b + 1, &d1, &m1);                  \
                const __m512i wv = PAIR_W_##KIND(_mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1));    \
                const __m128 dw = _mm_setr_ps(d0, d1, 0.0f, 0.0f);                                           \
                for (int t = 0; t < nt; t++) {                                                               \
                    const XBLOCK *xb = (const XBLOCK *)(x + (size_t)t * x_stride) + ib;                      \
                    const __m512 scale = _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(_mm_mul_ps(dw, dx[t]))); \
                    const __m512 lanes = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(init[t], wv, xv[t]));        \
                    acc[r][t] = _mm512_add_ps(acc[r][t], _mm512_mul_ps(lanes, scale));                       \
                    MIN_TERM(mins[r][t], m0, xb);                                                            \
                    MIN_TERM(mins[r][t], m1, xb + 1);                                                        \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (; ib < n_blocks; ib++) /* a last, even block: low half only */                                  \
            for (int r = 0; r < nr; r++) {                                                                   \
                _Alignas(32) int8_t buf[QK];                                                                 \
                float d, m;                                                                                  \
                const int8_t *q = UNPACK((const BLOCK *)(w + (size_t)r * w_stride) + ib, buf, &d, &m);       \
                for (int t = 0; t < nt; t++) {                                                               \
                    const XBLOCK *xb = (const XBLOCK *)(x + (size_t)t * x_stride) + ib;                      \
                    const __m512 prod = _mm512_castps256_ps512(                                              \
                        _mm256_mul_ps(_mm256_cvtepi32_ps(DOT(q, xb->qs)), _mm256_set1_ps(d * f16_to_f32(xb->d)))); \
                    acc[r][t] = _mm512_mask_add_ps(acc[r][t], 0x00ff, acc[r][t], prod);                      \
                    MIN_TERM(mins[r][t], m, xb);                                                             \
                }                                                                                            \
            }                                                                                                \
        for (int r = 0; r < nr; r++)                                                                         \
            for (int t = 0; t < nt; t++)                                                                     \
                y[t * y_stride + r] = f32x8_sum(_mm256_add_ps(_mm512_castps512_ps256(acc[r][t]),             \
                                                              _mm512_extractf32x8_ps(acc[r][t], 1))) + mins[r][t]; \
    }

#else

#define LEGACY_BODY(NAME, BLOCK, XBLOCK, UNPACK, DOT, MIN_TERM, KIND)                                       \
    static inline __attribute__((always_inline)) void body_##NAME(                                          \
        const uint8_t *w, size_t w_stride, const int nr, const uint8_t *x, size_t x_stride, const int nt,       \
        int64_t n_blocks, float *y, int64_t y_stride) {                                                      \
        f32x8 acc[TILE_ROWS][TILE_TOKENS][2];                                                                \
        float mins[TILE_ROWS][TILE_TOKENS];                                                                  \
        for (int r = 0; r < nr; r++)                                                                         \
            for (int t = 0; t < nt; t++) acc[r][t][0] = acc[r][t][1] = f32x8_zero(), mins[r][t] = 0.0f;      \
        int64_t ib = 0;                                                                                      \
        for (; ib + 1 < n_blocks; ib += 2) {                                                                 \
            STEP(0, ib, BLOCK, XBLOCK, UNPACK, DOT, MIN_TERM)                                               \
            STEP(1, ib + 1, BLOCK, XBLOCK, UNPACK, DOT, MIN_TERM)                                           \
        }                                                                                                    \
        if (ib < n_blocks) STEP(0, ib, BLOCK, XBLOCK, UNPACK, DOT, MIN_TERM)                                \
        for (int r = 0; r < nr; r++)                                                                         \
            for (int t = 0; t < nt; t++) y[t * y_stride + r] = f32x8_sum(f32x8_add(acc[r][t][0], acc[r][t][1])) + mins[r][t]; \
    }

#endif

/* One tile function per format: UNPACK decodes a weight block, XBLOCK is the activation block type,
 * DOT the signed or unsigned lane product (KIND names which), MIN_TERM ADD_MIN or NO_MIN. */
#define LEGACY_TILE(NAME, BLOCK, XBLOCK, UNPACK, DOT, MIN_TERM, KIND)                                       \
    LEGACY_BODY(NAME, BLOCK, XBLOCK, UNPACK, DOT, MIN_TERM, KIND)                                           \
    DISPATCH_TILE(NAME)

LEGACY_TILE(q4_0, block_q4_0, block_q8_0, unpack_q4_0, SIGNED_DOT, NO_MIN, SIGNED)
LEGACY_TILE(q4_1, block_q4_1, block_q8_1, unpack_q4_1, UNSIGNED_DOT, ADD_MIN, UNSIGNED)
LEGACY_TILE(q5_0, block_q5_0, block_q8_0, unpack_q5_0, SIGNED_DOT, NO_MIN, SIGNED)
LEGACY_TILE(q5_1, block_q5_1, block_q8_1, unpack_q5_1, UNSIGNED_DOT, ADD_MIN, UNSIGNED)
LEGACY_TILE(q8_0, block_q8_0, block_q8_0, unpack_q8_0, SIGNED_DOT, NO_MIN, SIGNED)
LEGACY_TILE(q8_1, block_q8_1, block_q8_1, unpack_q8_1, SIGNED_DOT, NO_MIN, SIGNED)
