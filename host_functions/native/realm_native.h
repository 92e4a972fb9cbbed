/* Shared definitions of the native CPU kernels: ggml's block layouts, f16/bf16 conversions, the
 * activation types each weight format is paired with, and the tile signature every format implements.
 *
 * Layouts are ggml's (ggml-common.h); the byte diagrams live next to the NumPy dequantizers in
 * host_functions/formats/quants.py. Blocks are packed because weight rows come straight from the memory-mapped
 * GGUF file, where an 18-byte Q4_0 block has no alignment to speak of.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define QK 32     /* weights per legacy block */
#define QK_K 256  /* weights per K-quant super-block */

#define PACKED __attribute__((packed, aligned(1)))
#define HIDDEN __attribute__((visibility("hidden")))
#define EXPORT __attribute__((visibility("default")))

/* GGML type numbers (ggml.h's enum ggml_type) for the formats of the quant table. */
enum {
    T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8, T_Q8_1 = 9,
    T_Q2_K = 10, T_Q3_K = 11, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_Q8_K = 15, T_BF16 = 30,
};

typedef struct PACKED { uint16_t d; uint8_t qs[16]; } block_q4_0;
typedef struct PACKED { uint16_t d, m; uint8_t qs[16]; } block_q4_1;
typedef struct PACKED { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } block_q5_0;
typedef struct PACKED { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } block_q5_1;
typedef struct PACKED { uint16_t d; int8_t qs[32]; } block_q8_0;
typedef struct PACKED { uint16_t d, s; int8_t qs[32]; } block_q8_1;
typedef struct PACKED { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; } block_q2_K;
typedef struct PACKED { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; } block_q3_K;
typedef struct PACKED { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } block_q4_K;
typedef struct PACKED { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } block_q5_K;
typedef struct PACKED { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } block_q6_K;
typedef struct PACKED { float d; int8_t qs[256]; int16_t bsums[16]; } block_q8_K;

_Static_assert(sizeof(block_q4_0) == 18 && sizeof(block_q4_1) == 20 && sizeof(block_q5_0) == 22 &&
               sizeof(block_q5_1) == 24 && sizeof(block_q8_0) == 34 && sizeof(block_q8_1) == 36 &&
               sizeof(block_q2_K) == 84 && sizeof(block_q3_K) == 110 && sizeof(block_q4_K) == 144 &&
               sizeof(block_q5_K) == 176 && sizeof(block_q6_K) == 210 && sizeof(block_q8_K) == 292,
               "ggml block sizes");

/* ---- float conversions (every variant rounds alike: round to nearest even) ---------------------- *
 *
 * Every variant gives the same bits for every input, NaNs included: IEEE 754's conversions, as x86's
 * F16C and ARM's fcvt compute them (a NaN keeps its sign and the top of its payload and comes out
 * quiet; subnormals are converted exactly, never flushed), and the plain C below does the same. */

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* The NEON code (lanes.h, dot_float.c) and ARM's conversion instructions: every aarch64 variant but
 * the portable one, which asks for plain C (aarch64 compilers always define __ARM_NEON). */
#if defined(__aarch64__) && defined(__ARM_NEON) && !defined(REALM_PLAIN_C)
#define REALM_NEON 1
#endif

#if defined(__F16C__)
#include <immintrin.h>
/* F16C's conversion of a value held in a general register (the empty asm keeps it there): vmovd
 * zero-fills the vector. From memory clang inserts the value into whatever vector register it likes
 * (vpinsrw), a tile's accumulator say, and the conversion then waits for that register's last writer:
 * every block of a tile chained to the one before (docs/decode_speed.md). */
static inline float f16_to_f32(uint16_t h) {
    uint32_t v = h;
    __asm__("" : "+r"(v));
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((int)v)));
}
static inline uint16_t f32_to_f16(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
#elif defined(REALM_NEON)
static inline float f16_to_f32(uint16_t h) { __fp16 f; memcpy(&f, &h, 2); return (float)f; }  /* fcvt s, h */
static inline uint16_t f32_to_f16(float f) { const __fp16 h = (__fp16)f; uint16_t u; memcpy(&u, &h, 2); return u; }
#else
static inline float f16_to_f32(uint16_t h) {
    /* Exponent rebias by a multiply (handles subnormals exactly); inf and NaN (made quiet, with its
     * payload, as F16C and fcvt do) by bits. */
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, rest = h & 0x7fff;
    const uint32_t special = 0x7f800000u | (uint32_t)(rest > 0x7c00) << 22 | (rest & 0x3ff) << 13;
    return bits_f32(sign | (rest >= 0x7c00 ? special : f32_bits(bits_f32(rest << 13) * 0x1.0p+112f)));
}
static inline uint16_t f32_to_f16(float f) {
    /* The classic scale-and-add rounding: adding a power of two aligns the mantissa so that the
     * float adder itself rounds to nearest even at f16 precision. A NaN keeps its payload's top 10
     * bits, made quiet. */
    float base = (__builtin_fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    uint32_t w = f32_bits(f), shl1 = w + w, sign = w & 0x80000000u, bias = shl1 & 0xff000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = bits_f32((bias >> 1) + 0x07800000u) + base;
    uint32_t bits = f32_bits(base), nonsign = ((bits >> 13) & 0x7c00u) + (bits & 0x0fffu);
    return (uint16_t)((sign >> 16) | (shl1 > 0xff000000u ? 0x7e00u | ((w >> 13) & 0x3ffu) : nonsign));
}
#endif

static inline uint32_t load_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static inline float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 64); /* quiet NaN, as ggml */
    return (uint16_t)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

/* ---- activation types: what a weight format's dot product multiplies against -------------------- */

enum { ACT_F32, ACT_F16, ACT_BF16, ACT_Q8_0, ACT_Q8_1, ACT_Q8_K };

/* One tile of outputs: y[t * y_stride + r] = dot(weight row r, activation row t) for r < nr <= TILE_ROWS,
 * t < nt <= TILE_TOKENS; rows hold n_blocks blocks. Every output goes through the same arithmetic
 * whatever nr and nt are, which is what makes results independent of batch size and thread split. */
#define TILE_ROWS 4
#define TILE_TOKENS 4
typedef void (*tile_fn)(const uint8_t *w, size_t w_stride, int nr, const uint8_t *x, size_t x_stride, int nt,
                        int64_t n_blocks, float *y, int64_t y_stride);

/* Prefetch a block's bytes in the same rows of a row tile PREFETCH_BYTES or more ahead, which the thread
 * usually runs later (its chunk is consecutive tiles): the hardware prefetchers alone leave a one-token
 * matmul at about half the memory bandwidth (tiles read TILE_ROWS short streams at once), and one tile
 * ahead (2.7 KB on the default model's head) is too close to cover the memory latency at one core's
 * bandwidth: ~13 GB/s there, where ~10 KB ahead streams ~26 GB/s (docs/decode_speed.md). */
#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES 16384
#endif
static inline void prefetch_next_tile(const uint8_t *row, size_t w_stride, size_t offset, size_t bytes) {
    const size_t tile = TILE_ROWS * w_stride, ahead = (PREFETCH_BYTES + tile - 1) / tile * tile;
    const uint8_t *p = row + ahead + offset;
    for (size_t line = 0; line < bytes; line += 64) __builtin_prefetch(p + line);
}

/* tile_NAME calls body_NAME with nr and nt as constants, so that each of the 16 shapes compiles to its
 * own fully unrolled loop with the accumulators in registers (the arithmetic per output is the same). */
#define TILE_CASE(NAME, R, T) \
    case (R) * 8 + (T): body_##NAME(w, w_stride, R, x, x_stride, T, n_blocks, y, y_stride); break;
#define TILE_CASES_R(NAME, R) TILE_CASE(NAME, R, 1) TILE_CASE(NAME, R, 2) TILE_CASE(NAME, R, 3) TILE_CASE(NAME, R, 4)
#define DISPATCH_TILE(NAME)                                                                                  \
    HIDDEN void tile_##NAME(const uint8_t *w, size_t w_stride, int nr, const uint8_t *x, size_t x_stride,    \
                            int nt, int64_t n_blocks, float *y, int64_t y_stride) {                         \
        switch (nr * 8 + nt) {                                                                               \
            TILE_CASES_R(NAME, 1) TILE_CASES_R(NAME, 2) TILE_CASES_R(NAME, 3) TILE_CASES_R(NAME, 4)          \
        default: break;                                                                                      \
        }                                                                                                    \
    }

/* ---- token panels: the GEMM path of the integer formats (panel.c) -------------------------------- *
 *
 * From PANEL_MIN_TOKENS activation rows on, a call regroups the quantized activations into panels of
 * PANEL_TOKENS tokens, one vector lane per token: for each 4-byte group of a block, the 16 tokens'
 * bytes side by side. A weight row's block is then decoded once and each of its 4-byte groups
 * broadcast against a whole panel (vpdpbusd: 16 tokens x 4 products per instruction; two 8-lane halves
 * on AVX2 and AVX-VNNI, `pvi`/`pvf` below), so the decoding
 * is shared by every token and the block's scale multiplies 16 outputs at once. Weights enter as
 * unsigned bytes (quant + the format's zero point z, subtracted again as z times the activations'
 * sum): the integer sums are exact, and the float steps per output are the tile's, in the same order,
 * so a row's results are the same bits whichever path computed them.
 */
#define PANEL_TOKENS 16
#define PANEL_MIN_TOKENS 8
#define MAX_PANELS 8  /* panels one kernel call accumulates (128 tokens) */

typedef struct {          /* one 32-weight block of Q8_0 / Q8_1 activations, for 16 tokens */
    _Alignas(64) float d[PANEL_TOKENS];
    float s[PANEL_TOKENS];        /* Q8_1's s (zero for Q8_0) */
    int32_t sum[PANEL_TOKENS];    /* sum of the block's quants */
    uint8_t qs[QK / 4][PANEL_TOKENS][4];
} xpanel_q8;
typedef struct {          /* one 256-weight super-block of Q8_K activations, for 16 tokens */
    _Alignas(64) float d[PANEL_TOKENS];
    int32_t bsum[QK_K / 16][PANEL_TOKENS];
    uint8_t qs[QK_K / 4][PANEL_TOKENS][4];
} xpanel_q8_k;

#define PANEL_ROWS 2  /* weight rows per kernel call: each activation load serves both */

/* out[r * PANEL_OUT + 16 p + l] = dot(weight row r, token l of panel p) for r < nr <= PANEL_ROWS (rows
 * w_stride apart) and p < n_panels <= MAX_PANELS; the panels of block ib sit at
 * xp + p * panel_stride + ib * sizeof(block's xpanel). */
#define PANEL_OUT (MAX_PANELS * PANEL_TOKENS)
typedef void (*panel_fn)(const uint8_t *w, size_t w_stride, int nr, int64_t n_blocks, const uint8_t *xp,
                         size_t panel_stride, int n_panels, float *out);

HIDDEN int64_t panel_block_bytes(int act);  /* 0: no panels for this activation type */
HIDDEN void build_panel(int act, const uint8_t *rows, size_t row_bytes, int nt, int64_t n_blocks, uint8_t *out);

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define REALM_PANELS 1
/* A panel's 16 token lanes: one zmm register. */
typedef __m512i pvi;
typedef __m512 pvf;
static inline pvi pvi_zero(void) { return _mm512_setzero_si512(); }
static inline pvi pvi_load(const void *p) { return _mm512_load_si512(p); }
static inline pvi pvi_set1(int32_t v) { return _mm512_set1_epi32(v); }
static inline pvi pvi_add(pvi a, pvi b) { return _mm512_add_epi32(a, b); }
static inline pvi pvi_mullo(pvi a, pvi b) { return _mm512_mullo_epi32(a, b); }
static inline pvi pvi_dot4(pvi acc, pvi u, pvi x) { return _mm512_dpbusd_epi32(acc, u, x); }
static inline pvi pvi_dot4_small(pvi acc, pvi u, pvi x) { return _mm512_dpbusd_epi32(acc, u, x); }
static inline pvf pvf_zero(void) { return _mm512_setzero_ps(); }
static inline pvf pvf_load(const float *p) { return _mm512_load_ps(p); }
static inline pvf pvf_set1(float v) { return _mm512_set1_ps(v); }
static inline pvf pvf_add(pvf a, pvf b) { return _mm512_add_ps(a, b); }
static inline pvf pvf_sub(pvf a, pvf b) { return _mm512_sub_ps(a, b); }
static inline pvf pvf_mul(pvf a, pvf b) { return _mm512_mul_ps(a, b); }
static inline pvf pvf_from_int(pvi a) { return _mm512_cvtepi32_ps(a); }
static inline void pvf_store(float *p, pvf a) { _mm512_storeu_ps(p, a); }
#elif defined(__AVX2__)
#define REALM_PANELS 1
/* A panel's 16 token lanes: two ymm registers, lanes 0-7 and 8-15. Every op is per lane, so the bits are
 * the zmm version's. */
typedef struct { __m256i lo, hi; } pvi;
typedef struct { __m256 lo, hi; } pvf;
static inline pvi pvi_zero(void) { return (pvi){_mm256_setzero_si256(), _mm256_setzero_si256()}; }
static inline pvi pvi_load(const void *p) {
    return (pvi){_mm256_load_si256((const __m256i *)p), _mm256_load_si256((const __m256i *)p + 1)};
}
static inline pvi pvi_set1(int32_t v) { return (pvi){_mm256_set1_epi32(v), _mm256_set1_epi32(v)}; }
static inline pvi pvi_add(pvi a, pvi b) { return (pvi){_mm256_add_epi32(a.lo, b.lo), _mm256_add_epi32(a.hi, b.hi)}; }
static inline pvi pvi_mullo(pvi a, pvi b) {
    return (pvi){_mm256_mullo_epi32(a.lo, b.lo), _mm256_mullo_epi32(a.hi, b.hi)};
}
#if defined(__AVXVNNI__)
static inline __m256i dot4_256(__m256i acc, __m256i u, __m256i x) { return _mm256_dpbusd_avx_epi32(acc, u, x); }
static inline __m256i dot4_small_256(__m256i acc, __m256i u, __m256i x) { return dot4_256(acc, u, x); }
#else
/* vpmaddubsw adds two u*x products into a saturating int16: exact while u <= 128 (|x| <= 127, as the
 * activation quantizers guarantee), so a full-range u is split into its top bit and the rest. */
static inline __m256i dot4_small_256(__m256i acc, __m256i u, __m256i x) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)));
}
static inline __m256i dot4_256(__m256i acc, __m256i u, __m256i x) {
    const __m256i top = _mm256_set1_epi8((char)0x80);
    return dot4_small_256(dot4_small_256(acc, _mm256_andnot_si256(top, u), x), _mm256_and_si256(top, u), x);
}
#endif
/* acc + per lane the dot product of the lane's 4 unsigned bytes of u with its 4 signed bytes of x;
 * the _small form for u <= 128. */
static inline pvi pvi_dot4(pvi acc, pvi u, pvi x) { return (pvi){dot4_256(acc.lo, u.lo, x.lo), dot4_256(acc.hi, u.hi, x.hi)}; }
static inline pvi pvi_dot4_small(pvi acc, pvi u, pvi x) {
    return (pvi){dot4_small_256(acc.lo, u.lo, x.lo), dot4_small_256(acc.hi, u.hi, x.hi)};
}
static inline pvf pvf_zero(void) { return (pvf){_mm256_setzero_ps(), _mm256_setzero_ps()}; }
static inline pvf pvf_load(const float *p) { return (pvf){_mm256_load_ps(p), _mm256_load_ps(p + 8)}; }
static inline pvf pvf_set1(float v) { return (pvf){_mm256_set1_ps(v), _mm256_set1_ps(v)}; }
static inline pvf pvf_add(pvf a, pvf b) { return (pvf){_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
static inline pvf pvf_sub(pvf a, pvf b) { return (pvf){_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }
static inline pvf pvf_mul(pvf a, pvf b) { return (pvf){_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
static inline pvf pvf_from_int(pvi a) { return (pvf){_mm256_cvtepi32_ps(a.lo), _mm256_cvtepi32_ps(a.hi)}; }
static inline void pvf_store(float *p, pvf a) { _mm256_storeu_ps(p, a.lo); _mm256_storeu_ps(p + 8, a.hi); }
#endif

#if defined(REALM_PANELS)
#define PANEL_FN(NAME) panel_##NAME
/* The 4-byte-group dot for a format of zero point ZERO: its unsigned quants q + ZERO stay below 128
 * (at most 63) except in the 8-bit formats, whose ZERO is 128. */
#define PANEL_DOT4(ZERO) ((ZERO) < 128 ? pvi_dot4_small : pvi_dot4)
/* A block's float step, one token per lane: scale times its exact integer sum (the tiles' order). */
static inline pvf pvf_scaled(pvf scale, pvi sum) { return pvf_mul(scale, pvf_from_int(sum)); }
/* The start and end of every panel body (its accumulators acc[r][p], zeroed, then stored to out), and
 * panel_NAME, which calls panel_body_NAME with the row count as a constant. */
#define PANEL_ACCUMULATORS(acc)                                                                              \
    pvf acc[PANEL_ROWS][MAX_PANELS];                                                                         \
    for (int r = 0; r < nr; r++)                                                                             \
        for (int p = 0; p < n_panels; p++) (acc)[r][p] = pvf_zero()
#define PANEL_STORE(acc)                                                                                     \
    for (int r = 0; r < nr; r++)                                                                             \
        for (int p = 0; p < n_panels; p++) pvf_store(out + r * PANEL_OUT + PANEL_TOKENS * p, (acc)[r][p])
#define DISPATCH_PANEL(NAME)                                                                                 \
    HIDDEN void panel_##NAME(const uint8_t *w, size_t w_stride, int nr, int64_t n_blocks, const uint8_t *xp,  \
                             size_t panel_stride, int n_panels, float *out) {                                \
        if (nr == PANEL_ROWS) panel_body_##NAME(w, w_stride, PANEL_ROWS, n_blocks, xp, panel_stride, n_panels, out); \
        else panel_body_##NAME(w, w_stride, 1, n_blocks, xp, panel_stride, n_panels, out);                  \
    }
HIDDEN void panel_q4_0(const uint8_t *, size_t, int, int64_t, const uint8_t *, size_t, int, float *);
HIDDEN void panel_q4_1(const uint8_t *, size_t, int, int64_t, const uint8_t *, size_t, int, float *);
HIDDEN void panel_q5_0(const uint8_t *, size_t, int, int64_t, const uint8_t *, size_t, int, float *);
HIDDEN void panel_q5_1(const uint8_t *, size_t, int, int64_t, const uint8_t *, size_t, int, float *);
HIDDEN void panel_q8_0(const uint8_t *, size_t, int, int64_t, const uint8_t *, size_t, int, float *);
HIDDEN void panel_q8_1(const uint8_t *, size_t, int, int64_t, const uint8_t *, size_t, int, float *);
HIDDEN void panel_q2_k(const uint8_t *, size_t, int, int64_t, const uint8_t *, size_t, int, float *);
HIDDEN void panel_q3_k(const uint8_t *, size_t, int, int64_t, const uint8_t *, size_t, int, float *);
HIDDEN void panel_q4_k(const uint8_t *, size_t, int, int64_t, const uint8_t *, size_t, int, float *);
HIDDEN void panel_q5_k(const uint8_t *, size_t, int, int64_t, const uint8_t *, size_t, int, float *);
HIDDEN void panel_q6_k(const uint8_t *, size_t, int, int64_t, const uint8_t *, size_t, int, float *);
HIDDEN void panel_q8_k(const uint8_t *, size_t, int, int64_t, const uint8_t *, size_t, int, float *);
#else
#define PANEL_FN(NAME) NULL  /* the tiles do every call (the same bits, without the speed) */
#endif

/* Activation quantizers (quantize.c): one row of k values into the row's activation encoding. */
HIDDEN void quantize_row_act(int act, const float *x, uint8_t *out, int64_t k);
HIDDEN int64_t act_row_bytes(int act, int64_t k);

/* Tiles, one per weight format (dot_legacy.c, dot_kquants.c, dot_float.c). */
HIDDEN void tile_q4_0(const uint8_t *, size_t, int, const uint8_t *, size_t, int, int64_t, float *, int64_t);
HIDDEN void tile_q4_1(const uint8_t *, size_t, int, const uint8_t *, size_t, int, int64_t, float *, int64_t);
HIDDEN void tile_q5_0(const uint8_t *, size_t, int, const uint8_t *, size_t, int, int64_t, float *, int64_t);
HIDDEN void tile_q5_1(const uint8_t *, size_t, int, const uint8_t *, size_t, int, int64_t, float *, int64_t);
HIDDEN void tile_q8_0(const uint8_t *, size_t, int, const uint8_t *, size_t, int, int64_t, float *, int64_t);
HIDDEN void tile_q8_1(const uint8_t *, size_t, int, const uint8_t *, size_t, int, int64_t, float *, int64_t);
HIDDEN void tile_q2_k(const uint8_t *, size_t, int, const uint8_t *, size_t, int, int64_t, float *, int64_t);
HIDDEN void tile_q3_k(const uint8_t *, size_t, int, const uint8_t *, size_t, int, int64_t, float *, int64_t);
HIDDEN void tile_q4_k(const uint8_t *, size_t, int, const uint8_t *, size_t, int, int64_t, float *, int64_t);
HIDDEN void tile_q5_k(const uint8_t *, size_t, int, const uint8_t *, size_t, int, int64_t, float *, int64_t);
HIDDEN void tile_q6_k(const uint8_t *, size_t, int, const uint8_t *, size_t, int, int64_t, float *, int64_t);
HIDDEN void tile_q8_k(const uint8_t *, size_t, int, const uint8_t *, size_t, int, int64_t, float *, int64_t);
HIDDEN void tile_f32(const uint8_t *, size_t, int, const uint8_t *, size_t, int, int64_t, float *, int64_t);
HIDDEN void tile_f16(const uint8_t *, size_t, int, const uint8_t *, size_t, int, int64_t, float *, int64_t);
HIDDEN void tile_bf16(const uint8_t *, size_t, int, const uint8_t *, size_t, int, int64_t, float *, int64_t);

/* Thread pool (pool.c): run fn(arg, i, n) on threads i = 0..n-1 (0 is the caller) and wait for all. */
typedef void (*pool_fn)(void *arg, int ith, int nth);
HIDDEN void pool_run(pool_fn fn, void *arg);
HIDDEN int pool_threads(void);
/* Row-wise kernels (norm.c, activation.c, rope.c): fn(arg, first, end) over rows first..end-1, the rows
 * shared out over the pool when there are enough of them (row_floats: the work of one row). A row's
 * result must depend on that row alone, so the split never changes a bit. */
typedef void (*rows_fn)(const void *arg, int64_t first, int64_t end);
HIDDEN void pool_run_rows(rows_fn fn, const void *arg, int64_t n_rows, int64_t row_floats);

/* ---- entry points one file calls from another (layer.c runs a block through them) ---------------- */

/* One weight of a fused projection: its rows land in output columns [first column, + n_rows). */
typedef struct {
    int32_t type;
    int32_t reserved;
    const uint8_t *w;
    int64_t w_stride;  /* bytes from one weight row to the next */
    int64_t n_rows;
} realm_segment;

EXPORT int realm_matmul(const realm_segment *segs, int n_seg, int64_t n_cols, const float *x, int64_t n_tok, float *y,
                        int64_t y_stride);
EXPORT int realm_rms_norm(const float *x, int64_t n_rows, int64_t n_cols, const float *w, float eps, float *out);
EXPORT int realm_rope(const float *x, int64_t n_tok, int n_head, int hd, const float *cos, const float *sin, int neox,
                      float *out);
EXPORT int realm_kv_store(float *k_pool, float *v_pool, int64_t n_slots, int64_t row, const int64_t *slots, int64_t n,
                          const float *k, const float *v);
EXPORT int realm_attention(const float *q, int64_t n, int n_head, int n_kv, int hd, const float *keys,
                           const float *values, int64_t n_slots, const int64_t *slots, int64_t pos, int64_t start,
                           int64_t window, float scale, float *out);
EXPORT int realm_gated(int kind, const float *gate_up, int64_t n_rows, int64_t n_ff, float *out);
