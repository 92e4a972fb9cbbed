/* Dot products of the K-quants (and Q8_K weights) against Q8_K activations, llama.cpp's pairing.
 *
 * Per 256-weight super-block: sumi = sum over 16-weight sub-blocks of scale_j * (q . x)_j, exact in
 * int32, and for the formats with mins summs = sum_j min_j * bsums_j (Q8_K's per-16 sums); then, as
 * ggml does, sumf += (d_x * d_w) * sumi and sumf -= (d_x * dmin_w) * summs. Every weight super-block is
 * unpacked once per tile: 256 quants (0..7 / 0..31 unsigned for Q2_K, Q4_K, Q5_K; signed for Q3_K,
 * Q6_K, Q8_K) and 16 scales and mins, one per 16 weights (formats with 32-weight sub-blocks repeat them).
 */
#include "lanes.h"

typedef struct {
    _Alignas(32) int8_t q[QK_K];
    int32_t sc[16], mn[16];
    float d, dmin;
} kblock;

/* The NEON paths below are the scalar loops next to them, 16 bytes at a time: clang vectorizes some of
 * those loops on its own, but not these. */

static inline void unpack_crumbs(const uint8_t *qs, int8_t *q) {
    /* bits 2k..2k+1 of byte l of 32-byte half h are weight 128h + 32k + l */
#if defined(REALM_NEON)
    for (int i = 0; i < 4; i++) {  /* bytes 16i.. of qs: h = i / 2, l = 16 (i % 2) + 0..15 */
        const uint8x16_t b = vld1q_u8(qs + 16 * i);
        for (int k = 0; k < 4; k++)
            vst1q_u8((uint8_t *)q + 128 * (i / 2) + 32 * k + 16 * (i % 2),
                     vandq_u8(vshlq_u8(b, vdupq_n_s8((int8_t)(-2 * k))), vdupq_n_u8(3)));
    }
#else
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 32; l++) q[128 * h + 32 * k + l] = (int8_t)((qs[32 * h + l] >> (2 * k)) & 3);
#endif
}

#if defined(REALM_NEON)
/* Q3_K's third and Q5_K's fifth bits: bit s of bits[l] belongs to weight 32s + l, which becomes
 * (q | value where the bit is set) - offset (the scalar loops in unpack_q3_k and unpack_q5_k). */
static inline void add_bit_planes(const uint8_t *bits, uint8_t value, uint8_t offset, int8_t *q) {
    for (int s = 0; s < 8; s++)
        for (int i = 0; i < 2; i++) {
            uint8_t *p = (uint8_t *)q + 32 * s + 16 * i;
            const uint8x16_t set = vtstq_u8(vld1q_u8(bits + 16 * i), vdupq_n_u8((uint8_t)(1 << s)));
            vst1q_u8(p, vsubq_u8(vorrq_u8(vld1q_u8(p), vandq_u8(set, vdupq_n_u8(value))), vdupq_n_u8(offset)));
        }
}
#endif

static inline void unpack_q2_k(const block_q2_K *b, kblock *k) {
    unpack_crumbs(b->qs, k->q);
    for (int j = 0; j < 16; j++) k->sc[j] = b->scales[j] & 0x0f, k->mn[j] = b->scales[j] >> 4;
    k->d = f16_to_f32(b->d), k->dmin = f16_to_f32(b->dmin);
}

static inline void unpack_q3_k(const block_q3_K *b, kblock *k) {
    unpack_crumbs(b->qs, k->q);
#if defined(REALM_NEON)
    add_bit_planes(b->hmask, 4, 4, k->q);
#else
    for (int s = 0; s < 8; s++)  /* bit s of hmask[l] is the third bit of weight 32s + l; clear means -4 */
        for (int l = 0; l < 32; l++) k->q[32 * s + l] = (int8_t)(k->q[32 * s + l] + 4 * ((b->hmask[l] >> s) & 1) - 4);
#endif
    for (int j = 0; j < 16; j++) {
        const int low = j < 8 ? b->scales[j] & 0x0f : b->scales[j - 8] >> 4;
        const int high = (b->scales[8 + j % 4] >> (2 * (j / 4))) & 3;
        k->sc[j] = (low | (high << 4)) - 32, k->mn[j] = 0;
    }
    k->d = f16_to_f32(b->d), k->dmin = 0.0f;
}

/* Q4_K / Q5_K 6-bit scales and mins of the eight 32-weight sub-blocks, spread over 16 entries. */
static inline void unpack_k4_scales(const uint8_t *s, kblock *k) {
    for (int j = 0; j < 8; j++) {
        const int sc = j < 4 ? s[j] & 63 : (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        const int mn = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        k->sc[2 * j] = k->sc[2 * j + 1] = sc, k->mn[2 * j] = k->mn[2 * j + 1] = mn;
    }
}

static inline void unpack_nibbles32(const uint8_t *qs, int8_t *q) {
    /* group g of 32 bytes: low nibbles are weights 64g + l, high nibbles 64g + 32 + l */
#if defined(__AVX2__)
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    for (int g = 0; g < 4; g++) {
        const __m256i b = _mm256_loadu_si256((const __m256i *)(qs + 32 * g));
        _mm256_store_si256((__m256i *)(q + 64 * g), _mm256_and_si256(b, low4));
        _mm256_store_si256((__m256i *)(q + 64 * g + 32), _mm256_and_si256(_mm256_srli_epi16(b, 4), low4));
    }
#else
    for (int g = 0; g < 4; g++)
        for (int l = 0; l < 32; l++) {
            q[64 * g + l] = (int8_t)(qs[32 * g + l] & 0x0f);
            q[64 * g + 32 + l] = (int8_t)(qs[32 * g + l] >> 4);
        }
#endif
}

static inline void unpack_q4_k(const block_q4_K *b, kblock *k) {
    unpack_nibbles32(b->qs, k->q);
    unpack_k4_scales(b->scales, k);
    k->d = f16_to_f32(b->d), k->dmin = f16_to_f32(b->dmin);
}

static inline void unpack_q5_k(const block_q5_K *b, kblock *k) {
    unpack_nibbles32(b->qs, k->q);
#if defined(REALM_NEON)
    add_bit_planes(b->qh, 16, 0, k->q);
#else
    for (int s = 0; s < 8; s++)  /* bit s of qh[l] is the fifth bit of weight 32s + l */
        for (int l = 0; l < 32; l++) k->q[32 * s + l] = (int8_t)(k->q[32 * s + l] | (((b->qh[l] >> s) & 1) << 4));
#endif
    unpack_k4_scales(b->scales, k);
    k->d = f16_to_f32(b->d), k->dmin = f16_to_f32(b->dmin);
}

static inline void unpack_q6_k(const block_q6_K *b, kblock *k) {
#if defined(__AVX2__)
    const __m256i low4 = _mm256_set1_epi8(0x0f), two = _mm256_set1_epi8(3 << 4), off = _mm256_set1_epi8(32);
    for (int h = 0; h < 2; h++) {  /* the scalar loop below, 32 weights at a time */
        const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
        const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
        const __m256i low[4] = {_mm256_and_si256(ql0, low4), _mm256_and_si256(ql1, low4),
                                _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                                _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4)};
        const __m256i high[4] = {_mm256_and_si256(_mm256_slli_epi16(qh, 4), two),
                                 _mm256_and_si256(_mm256_slli_epi16(qh, 2), two), _mm256_and_si256(qh, two),
                                 _mm256_and_si256(_mm256_srli_epi16(qh, 2), two)};
        for (int c = 0; c < 4; c++)
            _mm256_store_si256((__m256i *)(k->q + 128 * h + 32 * c),
                               _mm256_sub_epi8(_mm256_or_si256(low[c], high[c]), off));
    }
#elif defined(REALM_NEON)
    const uint8x16_t low4 = vdupq_n_u8(0x0f), two = vdupq_n_u8(3 << 4);
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 2; i++) {  /* the scalar loop below for l = 16i..16i+15 */
            const uint8x16_t ql0 = vld1q_u8(b->ql + 64 * h + 16 * i), ql1 = vld1q_u8(b->ql + 64 * h + 32 + 16 * i);
            const uint8x16_t qh = vld1q_u8(b->qh + 32 * h + 16 * i);
            const uint8x16_t low[4] = {vandq_u8(ql0, low4), vandq_u8(ql1, low4), vshrq_n_u8(ql0, 4), vshrq_n_u8(ql1, 4)};
            const uint8x16_t high[4] = {vandq_u8(vshlq_n_u8(qh, 4), two), vandq_u8(vshlq_n_u8(qh, 2), two),
                                        vandq_u8(qh, two), vandq_u8(vshrq_n_u8(qh, 2), two)};
            for (int c = 0; c < 4; c++)
                vst1q_u8((uint8_t *)k->q + 128 * h + 32 * c + 16 * i, vsubq_u8(vorrq_u8(low[c], high[c]), vdupq_n_u8(32)));
        }
#else
    for (int h = 0; h < 2; h++)
        for (int c = 0; c < 4; c++)  /* weights 128h + 32c + l: nibble of ql[64h + 32(c % 2) + l], crumb c of qh */
            for (int l = 0; l < 32; l++) {
                const int ql = b->ql[64 * h + 32 * (c & 1) + l], low = c < 2 ? ql & 0x0f : ql >> 4;
                k->q[128 * h + 32 * c + l] = (int8_t)((low | (((b->qh[32 * h + l] >> (2 * c)) & 3) << 4)) - 32);
            }
#endif
    for (int j = 0; j < 16; j++) k->sc[j] = b->scales[j], k->mn[j] = 0;
    k->d = f16_to_f32(b->d), k->dmin = 0.0f;
}

static inline void unpack_q8_k(const block_q8_K *b, kblock *k) {
    memcpy(k->q, b->qs, QK_K);
    for (int j = 0; j < 16; j++) k->sc[j] = 1, k->mn[j] = 0;
    k->d = b->d, k->dmin = 0.0f;
}

#define SIGNED_DOT(q, x, s0, s1) dot32_scaled((q), (x), (s0), (s1))
#define UNSIGNED_DOT(q, x, s0, s1) udot32_scaled((const uint8_t *)(q), (x), (s0), (s1))

#define KQUANT_TILE(NAME, BLOCK, UNPACK, DOT, HAS_MIN)                                                      \
    static inline __attribute__((always_inline)) void body_##NAME(                                          \
        const uint8_t *w, size_t w_stride, const int nr, const uint8_t *x, size_t x_stride, const int nt,       \
        int64_t n_blocks, float *y, int64_t y_stride) {                                                      \
        float sum[TILE_ROWS][TILE_TOKENS] = {{0}};                                                           \
        kblock k;                                                                                            \
        for (int64_t ib = 0; ib < n_blocks; ib++) {                                                          \
            for (int r = 0; r < nr; r++) {                                                                   \
                prefetch_next_tile(w + (size_t)r * w_stride, w_stride, (size_t)ib * sizeof(BLOCK), sizeof(BLOCK)); \
                UNPACK((const BLOCK *)(w + (size_t)r * w_stride) + ib, &k);                                  \
                for (int t = 0; t < nt; t++) {                                                               \
                    const block_q8_K *xb = (const block_q8_K *)(x + (size_t)t * x_stride) + ib;              \
                    i32x8 acc = i32x8_zero();                                                                \
                    for (int c = 0; c < 8; c++)                                                              \
                        acc = i32x8_add(acc, DOT(k.q + 32 * c, xb->qs + 32 * c, k.sc[2 * c], k.sc[2 * c + 1])); \
                    sum[r][t] += (xb->d * k.d) * (float)i32x8_sum(acc);                                      \
                    if (HAS_MIN) {                                                                           \
                        int summs = 0;                                                                       \
                        for (int j = 0; j < 16; j++) summs += xb->bsums[j] * k.mn[j];                        \
                        sum[r][t] -= (xb->d * k.dmin) * (float)summs;                                        \
                    }                                                                                        \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (int r = 0; r < nr; r++)                                                                         \
            for (int t = 0; t < nt; t++) y[t * y_stride + r] = sum[r][t];                                    \
    }                                                                                                        \
    DISPATCH_TILE(NAME)

#if defined(REALM_PANELS)
/* Weight rows against up to MAX_PANELS token panels (realm_native.h): per super-block and 16-weight
 * sub-block j, the exact sum of (q + Z) * x started at -Z * bsum_j, times the sub-block's scale; the
 * mins against bsums; then the tile's float steps, one token per lane. */
#define KQUANT_PANEL(NAME, BLOCK, UNPACK, ZERO, HAS_MIN)                                                    \
    static inline __attribute__((always_inline)) void panel_body_##NAME(                                    \
        const uint8_t *w, size_t w_stride, const int nr, int64_t n_blocks, const uint8_t *xp,                \
        size_t panel_stride, int n_panels, float *out) {                                                     \
        PANEL_ACCUMULATORS(acc);                                                                             \
        kblock k[PANEL_ROWS];                                                                                \
        _Alignas(32) uint8_t u[PANEL_ROWS][QK_K];                                                            \
        for (int64_t ib = 0; ib < n_blocks; ib++) {                                                          \
            for (int r = 0; r < nr; r++) {                                                                   \
                prefetch_next_tile(w + r * w_stride, w_stride, (size_t)ib * sizeof(BLOCK), sizeof(BLOCK));    \
                UNPACK((const BLOCK *)(w + r * w_stride) + ib, &k[r]);                                       \
                for (int c = 0; c < QK_K / 32; c++)                                                          \
                    _mm256_store_si256((__m256i *)(u[r] + 32 * c),                                           \
                                       _mm256_add_epi8(_mm256_load_si256((const __m256i *)(k[r].q + 32 * c)), \
                                                       _mm256_set1_epi8((char)(ZERO))));                     \
            }                                                                                                \
            for (int p = 0; p < n_panels; p++) {                                                             \
                const xpanel_q8_k *xb = (const xpanel_q8_k *)(xp + (size_t)p * panel_stride) + ib;           \
                pvi sumi[PANEL_ROWS], summs[PANEL_ROWS];                                                     \
                for (int r = 0; r < nr; r++) sumi[r] = summs[r] = pvi_zero();                                \
                for (int j = 0; j < QK_K / 16; j++) {                                                        \
                    const pvi bsum = pvi_load(xb->bsum[j]);                                                  \
                    const pvi init = (ZERO) ? pvi_mullo(bsum, pvi_set1(-(ZERO))) : pvi_zero();               \
                    pvi acc_j[PANEL_ROWS];                                                                   \
                    for (int r = 0; r < nr; r++) acc_j[r] = init;                                            \
                    for (int g = 0; g < 4; g++) {                                                            \
                        const pvi xg = pvi_load(xb->qs[4 * j + g]);                                          \
                        for (int r = 0; r < nr; r++)                                                         \
                            acc_j[r] = PANEL_DOT4(ZERO)(acc_j[r], pvi_set1((int32_t)load_u32(u[r] + 16 * j + 4 * g)), xg); \
                    }                                                                                        \
                    for (int r = 0; r < nr; r++) {                                                           \
                        sumi[r] = pvi_add(sumi[r], pvi_mullo(acc_j[r], pvi_set1(k[r].sc[j])));               \
                        if (HAS_MIN) summs[r] = pvi_add(summs[r], pvi_mullo(bsum, pvi_set1(k[r].mn[j])));    \
                    }                                                                                        \
                }                                                                                            \
                const pvf xd = pvf_load(xb->d);                                                              \
                for (int r = 0; r < nr; r++) {                                                               \
                    acc[r][p] = pvf_add(acc[r][p], pvf_scaled(pvf_mul(xd, pvf_set1(k[r].d)), sumi[r]));      \
                    if (HAS_MIN)                                                                             \
                        acc[r][p] = pvf_sub(acc[r][p], pvf_scaled(pvf_mul(xd, pvf_set1(k[r].dmin)), summs[r])); \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        PANEL_STORE(acc);                                                                                    \
    }                                                                                                        \
    DISPATCH_PANEL(NAME)
#else
#define KQUANT_PANEL(NAME, BLOCK, UNPACK, ZERO, HAS_MIN)
#endif

/* ZERO: what makes the format's quants unsigned bytes (the panels' vpdpbusd and vpmaddubsw need them so). */
#define KQUANT(NAME, BLOCK, UNPACK, DOT, HAS_MIN, ZERO) \
    KQUANT_TILE(NAME, BLOCK, UNPACK, DOT, HAS_MIN)      \
    KQUANT_PANEL(NAME, BLOCK, UNPACK, ZERO, HAS_MIN)

KQUANT(q2_k, block_q2_K, unpack_q2_k, UNSIGNED_DOT, 1, 0)
KQUANT(q3_k, block_q3_K, unpack_q3_k, SIGNED_DOT, 0, 4)
#if defined(__AVX2__) && !defined(REALM_PLAIN_C)
/* Q4_K's tile on x86, ggml's way: the 6-bit scales and mins unpacked by whole words (ggml's kmask
 * trick) into 16-bit lanes, each 32-weight chunk's pair sums times its scale by vpmaddwd, the mins
 * against Q8_K's bsums by one vpmaddwd. The generic tile spent ~2 instructions per weight byte on the
 * scalar scales and mins (compute-bound at ~9 GB/s one-token); the integers are the same exact sums,
 * so the float steps, and the bits, are the generic tile's. */
static inline __m128i q4_k_scales_mins(const uint8_t *scales) {  /* 8 scales, then 8 mins, as bytes */
    uint32_t u[3], m[2];
    memcpy(u, scales, 12);
    m[1] = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4);
    m[0] = u[1] & 0x3f3f3f3f;
    u[1] = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4);
    u[0] &= 0x3f3f3f3f;
    return _mm_setr_epi32((int)u[0], (int)u[1], (int)m[0], (int)m[1]);
}

static inline __attribute__((always_inline)) void body_q4_k(const uint8_t *w, size_t w_stride, const int nr,
                                                            const uint8_t *x, size_t x_stride, const int nt,
                                                            int64_t n_blocks, float *y, int64_t y_stride) {
    float sum[TILE_ROWS][TILE_TOKENS] = {{0}};
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    for (int64_t ib = 0; ib < n_blocks; ib++) {
        for (int r = 0; r < nr; r++) {
            prefetch_next_tile(w + (size_t)r * w_stride, w_stride, (size_t)ib * sizeof(block_q4_K), sizeof(block_q4_K));
            const block_q4_K *b = (const block_q4_K *)(w + (size_t)r * w_stride) + ib;
            const __m128i sm = q4_k_scales_mins(b->scales);
            const __m256i scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));  /* scale c: int16 lane c */
            const __m128i mins = _mm_cvtepu8_epi16(_mm_unpackhi_epi64(sm, sm));
            const float d = f16_to_f32(b->d), dmin = f16_to_f32(b->dmin);
            __m256i q[8];
            for (int g = 0; g < 4; g++) {  /* group g: low nibbles are chunk 2g, high nibbles chunk 2g + 1 */
                const __m256i bits = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * g));
                q[2 * g] = _mm256_and_si256(bits, low4);
                q[2 * g + 1] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), low4);
            }
            for (int t = 0; t < nt; t++) {
                const block_q8_K *xb = (const block_q8_K *)(x + (size_t)t * x_stride) + ib;
                __m256i acc = _mm256_setzero_si256();
                for (int c = 0; c < 8; c++) {
                    const __m256i scale = _mm256_shuffle_epi8(scales, _mm256_set1_epi16((short)(0x0100 + 0x0202 * c)));
                    const __m256i pairs = _mm256_maddubs_epi16(q[c], _mm256_loadu_si256((const __m256i *)(xb->qs + 32 * c)));
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, scale));
                }
                const __m256i bsums = _mm256_loadu_si256((const __m256i *)xb->bsums);
                const __m128i bsum_pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256(bsums, 1));
                const __m128i summs4 = _mm_madd_epi16(mins, bsum_pairs);
                const int summs = i32x8_sum(_mm256_setr_m128i(summs4, _mm_setzero_si128()));
                sum[r][t] += (xb->d * d) * (float)i32x8_sum(acc);
                sum[r][t] -= (xb->d * dmin) * (float)summs;
            }
        }
    }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) y[t * y_stride + r] = sum[r][t];
}
DISPATCH_TILE(q4_k)
KQUANT_PANEL(q4_k, block_q4_K, unpack_q4_k, 0, 1)
#else
KQUANT(q4_k, block_q4_K, unpack_q4_k, UNSIGNED_DOT, 1, 0)
#endif
KQUANT(q5_k, block_q5_K, unpack_q5_k, UNSIGNED_DOT, 1, 0)
KQUANT(q6_k, block_q6_K, unpack_q6_k, SIGNED_DOT, 0, 32)
KQUANT(q8_k, block_q8_K, unpack_q8_k, SIGNED_DOT, 0, 128)
