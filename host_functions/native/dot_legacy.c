/* Dot products of the 32-weight formats against Q8_0 / Q8_1 activations (llama.cpp's pairing:
 * Q4_0, Q5_0, Q8_0 with Q8_0; Q4_1, Q5_1 with Q8_1, whose s = d * sum(q) carries the min term;
 * Q8_1 weights, which ggml never multiplies, with Q8_1 too).
 *
 * Per block: the integer dot product of the unpacked quants (exact), then, as ggml's reference sums,
 * sumf += (d_w * d_x) * sumi and sumf += m_w * s_x for the formats with a min. A tile unpacks each
 * weight block once for its activation rows; from PANEL_MIN_TOKENS rows on, the panels (AVX2 and up)
 * compute the same per-block steps with one token per lane (realm_native.h).
 */
#include "lanes.h"

/* The AVX2, AVX-512 and NEON variants unpack with the vector unpackers below instead. */
#define UNUSED_ON_VECTOR_VARIANTS __attribute__((unused))

/* Each unpacker returns the block's 32 quants (signed, or 0..31 for the min formats) and sets d, m. */
static inline UNUSED_ON_VECTOR_VARIANTS const int8_t *unpack_q4_0(const block_q4_0 *b, int8_t *q, float *d, float *m) {
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)((b->qs[j] & 0x0f) - 8);
        q[j + 16] = (int8_t)((b->qs[j] >> 4) - 8);
    }
    *d = f16_to_f32(b->d), *m = 0.0f;
    return q;
}

static inline UNUSED_ON_VECTOR_VARIANTS const int8_t *unpack_q4_1(const block_q4_1 *b, int8_t *q, float *d, float *m) {
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)(b->qs[j] & 0x0f);
        q[j + 16] = (int8_t)(b->qs[j] >> 4);
    }
    *d = f16_to_f32(b->d), *m = f16_to_f32(b->m);
    return q;
}

static inline UNUSED_ON_VECTOR_VARIANTS const int8_t *unpack_q5_0(const block_q5_0 *b, int8_t *q, float *d, float *m) {
    const uint32_t qh = load_u32(b->qh);
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)(((b->qs[j] & 0x0f) | (((qh >> j) & 1) << 4)) - 16);
        q[j + 16] = (int8_t)(((b->qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16);
    }
    *d = f16_to_f32(b->d), *m = 0.0f;
    return q;
}

static inline UNUSED_ON_VECTOR_VARIANTS const int8_t *unpack_q5_1(const block_q5_1 *b, int8_t *q, float *d, float *m) {
    const uint32_t qh = load_u32(b->qh);
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)((b->qs[j] & 0x0f) | (((qh >> j) & 1) << 4));
        q[j + 16] = (int8_t)((b->qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
    }
    *d = f16_to_f32(b->d), *m = f16_to_f32(b->m);
    return q;
}

static inline UNUSED_ON_VECTOR_VARIANTS const int8_t *unpack_q8_0(const block_q8_0 *b, int8_t *q, float *d, float *m) {
    (void)q;
    *d = f16_to_f32(b->d), *m = 0.0f;
    return b->qs;
}

static inline UNUSED_ON_VECTOR_VARIANTS const int8_t *unpack_q8_1(const block_q8_1 *b, int8_t *q, float *d, float *m) {
    (void)q;
    *d = f16_to_f32(b->d), *m = 0.0f;
    return b->qs;
}

#define SIGNED_DOT(q, x) dot32((q), (x))
#define UNSIGNED_DOT(q, x) udot32((const uint8_t *)(q), (x))

/* The min formats add m_w * s_x (Q8_1's s) per block; the others have no min term. */
#define ADD_MIN(sum, m, s) ((sum) = f32x4_add((sum), f32x4_mul((m), f32x4_set1(s))))
#define NO_MIN(sum, m, s) ((void)(m))

/* The arithmetic every variant and both paths share, per output and block in order (ggml's reference
 * sum): sumi = the block's exact integer dot product, sum += (d_w * d_x) * sumi, then sum += m_w * s_x
 * for the min formats. The tile keeps its four rows in the lanes of one float vector per token. */
#define LEGACY_BODY(NAME, BLOCK, XBLOCK, UNPACK, DOT, MIN_TERM, S_OF)                                       \
    static inline __attribute__((always_inline)) void body_##NAME(                                          \
        const uint8_t *w, size_t w_stride, const int nr, const uint8_t *x, size_t x_stride, const int nt,       \
        int64_t n_blocks, float *y, int64_t y_stride) {                                                      \
        f32x4 sum[TILE_TOKENS];                                                                              \
        for (int t = 0; t < nt; t++) sum[t] = f32x4_zero();                                                  \
        for (int64_t ib = 0; ib < n_blocks; ib++) {                                                          \
            _Alignas(32) int8_t buf[TILE_ROWS][QK];                                                          \
            const int8_t *q[TILE_ROWS];                                                                      \
            _Alignas(16) float d[TILE_ROWS] = {0}, m[TILE_ROWS] = {0};                                       \
            uint16_t dh[TILE_ROWS] = {0};  /* the scales' f16 bits: converted together (f32x4_from_f16) */   \
            for (int r = 0; r < nr; r++) {                                                                   \
                const uint8_t *row = w + (size_t)r * w_stride;                                               \
                prefetch_next_tile(row, w_stride, (size_t)ib * sizeof(BLOCK), sizeof(BLOCK));           \
                q[r] = UNPACK((const BLOCK *)row + ib, buf[r], &d[r], &m[r]);                                \
                dh[r] = ((const BLOCK *)row + ib)->d;                                                        \
            }                                                                                                \
            const f32x4 dw = f32x4_from_f16(dh[0], dh[1], dh[2], dh[3]), mw = f32x4_load(m);                 \
            for (int t = 0; t < nt; t++) {                                                                   \
                const XBLOCK *xb = (const XBLOCK *)(x + (size_t)t * x_stride) + ib;                          \
                i32x8 lanes[TILE_ROWS] = {i32x8_zero(), i32x8_zero(), i32x8_zero(), i32x8_zero()};           \
                for (int r = 0; r < nr; r++) lanes[r] = DOT(q[r], xb->qs);                                   \
                sum[t] = f32x4_add(sum[t], f32x4_mul(f32x4_mul(dw, f32x4_set1_f16(xb->d)),                   \
                                                     i32x8_sum4_f(lanes)));                                  \
                MIN_TERM(sum[t], mw, S_OF(xb));                                                              \
            }                                                                                                \
        }                                                                                                    \
        for (int t = 0; t < nt; t++) {                                                                       \
            _Alignas(16) float out[TILE_ROWS];                                                               \
            f32x4_store(out, sum[t]);                                                                        \
            for (int r = 0; r < nr; r++) y[t * y_stride + r] = out[r];                                       \
        }                                                                                                    \
    }

#define S_Q8_1(xb) f16_to_f32((xb)->s)
#define S_NONE(xb) 0.0f

#define fast_unpack_q8_0 unpack_q8_0  /* the quants as they are: nothing to unpack */
#define fast_unpack_q8_1 unpack_q8_1

#if defined(REALM_PANELS)

/* Vector unpackers: the same 32 quants as the scalar ones above, in one register. */
static inline __m256i nibbles_v(const uint8_t *qs) {
    const __m128i b = _mm_loadu_si128((const __m128i *)qs), low4 = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), low4), _mm_and_si128(b, low4));
}
static inline __m256i fifth_bits_v(const uint8_t *qh) {  /* 16 where bit j of qh is set, in byte j */
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    return _mm256_maskz_mov_epi8(load_u32(qh), _mm256_set1_epi8(16));
#else
    /* byte j takes byte j / 8 of qh, keeps bit j % 8, and becomes 16 where it is set */
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)load_u32(qh)),
                                               _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202,
                                                                  0x0303030303030303));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(16));
#endif
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

/* acc + the dot products of u's unsigned bytes with x's signed ones, in fours: vpdpbusd, or on plain
 * AVX2 vpmaddubsw + vpmaddwd, exact while u <= 128 (its int16 pair sums saturate beyond). */
#if (defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)
#define TILE_UNSIGNED_MAX 255
static inline __m256i udot_acc(__m256i acc, __m256i u, __m256i x) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, x);
#else
    return _mm256_dpbusd_avx_epi32(acc, u, x);
#endif
}
#else
#define TILE_UNSIGNED_MAX 128
static inline __m256i udot_acc(__m256i acc, __m256i u, __m256i x) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)));
}
#endif

/* The tile on x86: the quants stay in registers, as unsigned bytes q + Z where the dot product allows
 * (every format on VNNI; all but the 8-bit ones on AVX2), so one vpdpbusd per row and block does what
 * the sign trick took three instructions for: the lanes start at -Z times the activation's 4-byte
 * group sums, computed once per block for the tile's rows, and end at the same exact sums. The float
 * steps are LEGACY_BODY's, so are the bits. */
#define LEGACY_XBODY(NAME, BLOCK, XBLOCK, ZERO, MIN_TERM, S_OF)                                             \
    static inline __attribute__((always_inline)) void body_##NAME(                                          \
        const uint8_t *w, size_t w_stride, const int nr, const uint8_t *x, size_t x_stride, const int nt,       \
        int64_t n_blocks, float *y, int64_t y_stride) {                                                      \
        enum { UNSIGNED = 2 * (ZERO) - 1 <= TILE_UNSIGNED_MAX };                                             \
        f32x4 sum[TILE_TOKENS];                                                                              \
        for (int t = 0; t < nt; t++) sum[t] = f32x4_zero();                                                  \
        for (int64_t ib = 0; ib < n_blocks; ib++) {                                                          \
            __m256i q[TILE_ROWS];                                                                            \
            float d[TILE_ROWS] = {0}, m[TILE_ROWS] = {0};                                                    \
            uint16_t dh[TILE_ROWS] = {0};                                                                    \
            for (int r = 0; r < nr; r++) {                                                                   \
                const BLOCK *b = (const BLOCK *)(w + (size_t)r * w_stride) + ib;                             \
                prefetch_next_tile(w + (size_t)r * w_stride, w_stride, (size_t)ib * sizeof(BLOCK), sizeof(BLOCK)); \
                q[r] = vunpack_##NAME(b, &d[r], &m[r]);                                                      \
                if (UNSIGNED) q[r] = _mm256_add_epi8(q[r], _mm256_set1_epi8((char)(ZERO)));                  \
                dh[r] = b->d;                                                                                \
            }                                                                                                \
            const f32x4 dw = f32x4_from_f16(dh[0], dh[1], dh[2], dh[3]), mw = f32x4_load(m);                 \
            for (int t = 0; t < nt; t++) {                                                                   \
                const XBLOCK *xb = (const XBLOCK *)(x + (size_t)t * x_stride) + ib;                          \
                const __m256i xq = _mm256_loadu_si256((const __m256i *)xb->qs), zero = _mm256_setzero_si256(); \
                i32x8 lanes[TILE_ROWS] = {zero, zero, zero, zero};                                           \
                if (UNSIGNED) {                                                                              \
                    const __m256i init =                                                                     \
                        (ZERO) ? _mm256_sub_epi32(zero, udot_acc(zero, _mm256_set1_epi8((char)(ZERO)), xq)) : zero; \
                    for (int r = 0; r < nr; r++) lanes[r] = udot_acc(init, q[r], xq);                        \
                } else {                                                                                     \
                    for (int r = 0; r < nr; r++)                                                             \
                        lanes[r] = u8_times_s8(_mm256_sign_epi8(q[r], q[r]), _mm256_sign_epi8(xq, q[r]));   \
                }                                                                                            \
                sum[t] = f32x4_add(sum[t], f32x4_mul(f32x4_mul(dw, f32x4_set1_f16(xb->d)),                   \
                                                     i32x8_sum4_f(lanes)));                                  \
                MIN_TERM(sum[t], mw, S_OF(xb));                                                              \
            }                                                                                                \
        }                                                                                                    \
        for (int t = 0; t < nt; t++) {                                                                       \
            _Alignas(16) float out[TILE_ROWS];                                                               \
            f32x4_store(out, sum[t]);                                                                        \
            for (int r = 0; r < nr; r++) y[t * y_stride + r] = out[r];                                       \
        }                                                                                                    \
    }
#define TILE_BODY(NAME, BLOCK, XBLOCK, UNPACK, DOT, ZERO, MIN) LEGACY_XBODY(NAME, BLOCK, XBLOCK, ZERO, MIN##_TERM, S_##MIN)

/* Weight rows against up to MAX_PANELS token panels: per block, each row's quants plus the zero point
 * Z as unsigned bytes, each 4-byte group broadcast against 16 tokens' bytes; the accumulators start at
 * -Z times each token's block sum, so they end at the exact signed dot products. */
#define LEGACY_PANEL(NAME, BLOCK, UNPACK, ZERO, MIN_TERM)                                                   \
    static inline __attribute__((always_inline)) void panel_body_##NAME(                                    \
        const uint8_t *w, size_t w_stride, const int nr, int64_t n_blocks, const uint8_t *xp,                \
        size_t panel_stride, int n_panels, float *out) {                                                     \
        PANEL_ACCUMULATORS(acc);                                                                             \
        for (int64_t ib = 0; ib < n_blocks; ib++) {                                                          \
            float d[PANEL_ROWS], m[PANEL_ROWS];                                                              \
            _Alignas(32) uint8_t u[PANEL_ROWS][QK];                                                          \
            for (int r = 0; r < nr; r++) {                                                                   \
                prefetch_next_tile(w + r * w_stride, w_stride, (size_t)ib * sizeof(BLOCK), sizeof(BLOCK));    \
                _mm256_store_si256((__m256i *)u[r], _mm256_add_epi8(v##UNPACK((const BLOCK *)(w + r * w_stride) + ib, \
                                                                              &d[r], &m[r]),                  \
                                                                    _mm256_set1_epi8((char)(ZERO))));         \
            }                                                                                                \
            for (int p = 0; p < n_panels; p++) {                                                             \
                const xpanel_q8 *xb = (const xpanel_q8 *)(xp + (size_t)p * panel_stride) + ib;               \
                const pvi init = (ZERO) ? pvi_mullo(pvi_load(xb->sum), pvi_set1(-(ZERO))) : pvi_zero();      \
                pvi s[PANEL_ROWS];                                                                           \
                for (int r = 0; r < nr; r++) s[r] = init;                                                    \
                for (int g = 0; g < QK / 4; g++) {                                                           \
                    const pvi xg = pvi_load(xb->qs[g]);                                                      \
                    for (int r = 0; r < nr; r++)                                                             \
                        s[r] = PANEL_DOT4(ZERO)(s[r], pvi_set1((int32_t)load_u32(u[r] + 4 * g)), xg);        \
                }                                                                                            \
                const pvf xd = pvf_load(xb->d);                                                              \
                for (int r = 0; r < nr; r++) {                                                               \
                    acc[r][p] = pvf_add(acc[r][p], pvf_scaled(pvf_mul(pvf_set1(d[r]), xd), s[r]));           \
                    MIN_TERM(acc[r][p], pvf_set1(m[r]), xb);                                                 \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        PANEL_STORE(acc);                                                                                    \
    }                                                                                                        \
    DISPATCH_PANEL(NAME)
#define PANEL_ADD_MIN(acc, mw, xb) ((acc) = pvf_add((acc), pvf_mul((mw), pvf_load((xb)->s))))
#define PANEL_NO_MIN(acc, mw, xb) ((void)(mw))

#else
#define LEGACY_PANEL(NAME, BLOCK, UNPACK, ZERO, MIN_TERM)

#if defined(REALM_NEON)
/* NEON unpackers: the scalar ones' 32 quants, 16 at a time (clang leaves Q4_0's scalar loop, for
 * one, unvectorized). Weight j is the low nibble of qs[j], weight j + 16 its high nibble, plus 16
 * where bit j of qh is set (qh little-endian: bit j is bit j % 8 of byte j / 8), minus the offset. */
static inline void store_quants(const uint8_t *qs, const uint8_t *qh, uint8_t offset, int8_t *q) {
    const uint8x16_t b = vld1q_u8(qs), bit = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    uint8x16_t low = vandq_u8(b, vdupq_n_u8(0x0f)), high = vshrq_n_u8(b, 4);
    if (qh != NULL) {
        const uint8x16_t sixteen = vdupq_n_u8(16);
        low = vorrq_u8(low, vandq_u8(vtstq_u8(vcombine_u8(vdup_n_u8(qh[0]), vdup_n_u8(qh[1])), bit), sixteen));
        high = vorrq_u8(high, vandq_u8(vtstq_u8(vcombine_u8(vdup_n_u8(qh[2]), vdup_n_u8(qh[3])), bit), sixteen));
    }
    vst1q_u8((uint8_t *)q, vsubq_u8(low, vdupq_n_u8(offset)));
    vst1q_u8((uint8_t *)q + 16, vsubq_u8(high, vdupq_n_u8(offset)));
}
/* fast_unpack_NAME: the unpacker of format NAME with fifth bits QH (or NULL) and offset OFFSET */
#define NEON_UNPACK(NAME, QH, OFFSET, MIN)                                                                   \
    static inline const int8_t *fast_unpack_##NAME(const block_##NAME *b, int8_t *q, float *d, float *m) {  \
        store_quants(b->qs, QH, OFFSET, q);                                                                  \
        *d = f16_to_f32(b->d), *m = MIN;                                                                     \
        return q;                                                                                            \
    }
NEON_UNPACK(q4_0, NULL, 8, 0.0f)
NEON_UNPACK(q4_1, NULL, 0, f16_to_f32(b->m))
NEON_UNPACK(q5_0, b->qh, 16, 0.0f)
NEON_UNPACK(q5_1, b->qh, 0, f16_to_f32(b->m))
#define TILE_UNPACK(UNPACK) fast_##UNPACK
#else
#define TILE_UNPACK(UNPACK) UNPACK
#endif
#define TILE_BODY(NAME, BLOCK, XBLOCK, UNPACK, DOT, ZERO, MIN) \
    LEGACY_BODY(NAME, BLOCK, XBLOCK, TILE_UNPACK(UNPACK), DOT, MIN##_TERM, S_##MIN)
#endif

/* One tile and one panel function per format: UNPACK decodes a weight block, XBLOCK is the activation
 * block type, DOT the signed or unsigned lane product, ZERO the zero point that makes the quants
 * unsigned bytes, MIN says whether the format adds m_w * s_x. */
#define LEGACY_TILE(NAME, BLOCK, XBLOCK, UNPACK, DOT, ZERO, MIN)                                            \
    TILE_BODY(NAME, BLOCK, XBLOCK, UNPACK, DOT, ZERO, MIN)                                                  \
    DISPATCH_TILE(NAME)                                                                                      \
    LEGACY_PANEL(NAME, BLOCK, UNPACK, ZERO, PANEL_##MIN)

#define ADD_MIN_TERM ADD_MIN
#define NO_MIN_TERM NO_MIN
#define S_ADD_MIN S_Q8_1
#define S_NO_MIN S_NONE

LEGACY_TILE(q4_0, block_q4_0, block_q8_0, unpack_q4_0, SIGNED_DOT, 8, NO_MIN)
LEGACY_TILE(q4_1, block_q4_1, block_q8_1, unpack_q4_1, UNSIGNED_DOT, 0, ADD_MIN)
LEGACY_TILE(q5_0, block_q5_0, block_q8_0, unpack_q5_0, SIGNED_DOT, 16, NO_MIN)
LEGACY_TILE(q5_1, block_q5_1, block_q8_1, unpack_q5_1, UNSIGNED_DOT, 0, ADD_MIN)
LEGACY_TILE(q8_0, block_q8_0, block_q8_0, unpack_q8_0, SIGNED_DOT, 128, NO_MIN)
LEGACY_TILE(q8_1, block_q8_1, block_q8_1, unpack_q8_1, SIGNED_DOT, 128, NO_MIN)
