/* The one arithmetic primitive of the integer formats, in 8 lanes, and the float lanes it feeds.
 *
 * dot32(w, x): 32 int8 weights times 32 int8 activations as 8 int32 lanes, lane i holding the sum of
 * products 4i..4i+3. Integer sums are exact, so every variant gets the same lanes: VNNI's vpdpbusd,
 * AVX2's vpmaddubsw + vpmaddwd, ARM's sdot or NEON's vmull + widening pairwise adds, or plain C. The
 * float side (block sums times a block scale, added to an accumulator, four rows per vector) is
 * written out op by op in the same order everywhere, and the library is built with -ffp-contract=off,
 * so all variants produce the same bits.
 *
 * Signed weights use the sign trick on x86 (|w| unsigned times x with w's sign), as llama.cpp does;
 * udot32 is for weights known to be 0..63, where vpmaddubsw cannot saturate (and which ARM's signed
 * products read as they are). REALM_PLAIN_C (the portable variants) keeps the plain C lanes on a
 * target that has vector units anyway: aarch64 always defines __ARM_NEON.
 */
#pragma once

#include "realm_native.h"

#if defined(__AVX2__) && !defined(REALM_PLAIN_C)
#include <immintrin.h>

typedef __m256i i32x8;

static inline __m256i u8_times_s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

static inline i32x8 dot32(const int8_t *w, const int8_t *x) {
    __m256i a = _mm256_loadu_si256((const __m256i *)w), b = _mm256_loadu_si256((const __m256i *)x);
    return u8_times_s8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}
static inline i32x8 udot32(const uint8_t *w, const int8_t *x) {
    return u8_times_s8(_mm256_loadu_si256((const __m256i *)w), _mm256_loadu_si256((const __m256i *)x));
}
/* i32x8_scale2(dot32(w, x), s0, s1) in two instructions: vpmaddubsw's 16-bit pair sums (at most
 * 2 * 128 * 127, no saturation) times the scales by vpmaddwd, which also adds the pairs into lanes. */
static inline i32x8 dot32_scaled(const int8_t *w, const int8_t *x, int s0, int s1) {
    const __m256i a = _mm256_loadu_si256((const __m256i *)w), b = _mm256_loadu_si256((const __m256i *)x);
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
    return _mm256_madd_epi16(pairs, _mm256_setr_m128i(_mm_set1_epi16((short)s0), _mm_set1_epi16((short)s1)));
}
static inline i32x8 udot32_scaled(const uint8_t *w, const int8_t *x, int s0, int s1) {  /* w <= 127 */
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)w),
                                               _mm256_loadu_si256((const __m256i *)x));
    return _mm256_madd_epi16(pairs, _mm256_setr_m128i(_mm_set1_epi16((short)s0), _mm_set1_epi16((short)s1)));
}
static inline i32x8 i32x8_zero(void) { return _mm256_setzero_si256(); }
static inline i32x8 i32x8_add(i32x8 a, i32x8 b) { return _mm256_add_epi32(a, b); }
/* a * s, lanes 0-3 scaled by s0 and lanes 4-7 by s1 (the two 16-weight halves of a 32-weight chunk) */
static inline i32x8 i32x8_scale2(i32x8 a, int s0, int s1) {
    return _mm256_mullo_epi32(a, _mm256_setr_epi32(s0, s0, s0, s0, s1, s1, s1, s1));
}
static inline int i32x8_sum(i32x8 a) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1)));
}
/* Four rows' block sums as the float lanes of one vector: lane i = (float)(sum of v[i]'s lanes), by a
 * horizontal-add tree (the integer sums are exact in any order). */
typedef __m128 f32x4;
static inline f32x4 i32x8_sum4_f(const i32x8 v[4]) {
    const __m256i all = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    return _mm_cvtepi32_ps(_mm_add_epi32(_mm256_castsi256_si128(all), _mm256_extracti128_si256(all, 1)));
}
static inline f32x4 f32x4_zero(void) { return _mm_setzero_ps(); }
static inline f32x4 f32x4_load(const float *p) { return _mm_loadu_ps(p); }
static inline f32x4 f32x4_set1(float v) { return _mm_set1_ps(v); }
/* Four f16 bit patterns as floats (F16C: IEEE's conversion, as f16_to_f32), built up from a zeroed
 * register. Left to itself clang inserted the lanes into whatever register it liked, the tile's
 * accumulator included, which chained every block's scales to the previous block's sum. */
static inline f32x4 f32x4_from_f16(uint16_t a, uint16_t b, uint16_t c, uint16_t d) {
    return _mm_cvtph_ps(_mm_setr_epi16((short)a, (short)b, (short)c, (short)d, 0, 0, 0, 0));
}
static inline f32x4 f32x4_set1_f16(uint16_t h) { return f32x4_set1(f16_to_f32(h)); }
static inline f32x4 f32x4_add(f32x4 a, f32x4 b) { return _mm_add_ps(a, b); }
static inline f32x4 f32x4_mul(f32x4 a, f32x4 b) { return _mm_mul_ps(a, b); }
static inline void f32x4_store(float *p, f32x4 a) { _mm_storeu_ps(p, a); }

#elif defined(REALM_NEON)
#include <arm_neon.h>

typedef struct { int32x4_t lo, hi; } i32x8;  /* lanes 0-3 and 4-7 */

/* 16 signed byte products summed in fours into 4 lanes: sdot where the CPU has it (armv8.2-a
 * dotprod), else vmull's int16 products (|w x| <= 2^14 fits), widened to int32 before any two are
 * added (a pair can reach 2^15, one past int16) and paired once more. */
static inline int32x4_t dot16(int8x16_t w, int8x16_t x) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(vdupq_n_s32(0), w, x);
#else
    return vpaddq_s32(vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(x))), vpaddlq_s16(vmull_high_s8(w, x)));
#endif
}
static inline i32x8 dot32(const int8_t *w, const int8_t *x) {
    i32x8 r = {dot16(vld1q_s8(w), vld1q_s8(x)), dot16(vld1q_s8(w + 16), vld1q_s8(x + 16))};
    return r;
}
static inline i32x8 udot32(const uint8_t *w, const int8_t *x) {  /* w <= 127: the same bytes as int8 */
    return dot32((const int8_t *)w, x);
}
static inline i32x8 i32x8_zero(void) { i32x8 r = {vdupq_n_s32(0), vdupq_n_s32(0)}; return r; }
static inline i32x8 i32x8_add(i32x8 a, i32x8 b) {
    i32x8 r = {vaddq_s32(a.lo, b.lo), vaddq_s32(a.hi, b.hi)};
    return r;
}
static inline i32x8 i32x8_scale2(i32x8 a, int s0, int s1) {
    i32x8 r = {vmulq_n_s32(a.lo, s0), vmulq_n_s32(a.hi, s1)};
    return r;
}
static inline i32x8 dot32_scaled(const int8_t *w, const int8_t *x, int s0, int s1) {
    return i32x8_scale2(dot32(w, x), s0, s1);
}
static inline i32x8 udot32_scaled(const uint8_t *w, const int8_t *x, int s0, int s1) {
    return i32x8_scale2(udot32(w, x), s0, s1);
}
static inline int i32x8_sum(i32x8 a) { return vaddvq_s32(vaddq_s32(a.lo, a.hi)); }
/* Four rows' block sums as the lanes of one float vector, by a pairwise-add tree (exact in any order). */
typedef float32x4_t f32x4;
static inline f32x4 i32x8_sum4_f(const i32x8 v[4]) {
    const int32x4_t s0 = vaddq_s32(v[0].lo, v[0].hi), s1 = vaddq_s32(v[1].lo, v[1].hi);
    const int32x4_t s2 = vaddq_s32(v[2].lo, v[2].hi), s3 = vaddq_s32(v[3].lo, v[3].hi);
    return vcvtq_f32_s32(vpaddq_s32(vpaddq_s32(s0, s1), vpaddq_s32(s2, s3)));
}
static inline f32x4 f32x4_zero(void) { return vdupq_n_f32(0.0f); }
static inline f32x4 f32x4_load(const float *p) { return vld1q_f32(p); }
static inline f32x4 f32x4_set1(float v) { return vdupq_n_f32(v); }
static inline f32x4 f32x4_from_f16(uint16_t a, uint16_t b, uint16_t c, uint16_t d) {
    const float v[4] = {f16_to_f32(a), f16_to_f32(b), f16_to_f32(c), f16_to_f32(d)};
    return vld1q_f32(v);
}
static inline f32x4 f32x4_set1_f16(uint16_t h) { return vdupq_n_f32(f16_to_f32(h)); }
static inline f32x4 f32x4_add(f32x4 a, f32x4 b) { return vaddq_f32(a, b); }
static inline f32x4 f32x4_mul(f32x4 a, f32x4 b) { return vmulq_f32(a, b); }
static inline void f32x4_store(float *p, f32x4 a) { vst1q_f32(p, a); }

#else /* portable C, the same lanes */

typedef struct { int32_t v[8]; } i32x8;

/* One loop for both weight signednesses: the products are exact either way. */
#define REALM_DOT32_LANES(w, x)                                                 \
    i32x8 r;                                                                    \
    for (int i = 0; i < 8; i++) {                                               \
        int32_t s = 0;                                                          \
        for (int j = 4 * i; j < 4 * i + 4; j++) s += (int32_t)(w)[j] * (x)[j];  \
        r.v[i] = s;                                                             \
    }                                                                           \
    return r
static inline i32x8 dot32(const int8_t *w, const int8_t *x) { REALM_DOT32_LANES(w, x); }
static inline i32x8 udot32(const uint8_t *w, const int8_t *x) { REALM_DOT32_LANES(w, x); }
static inline i32x8 i32x8_zero(void) { i32x8 r = {{0}}; return r; }
static inline i32x8 i32x8_add(i32x8 a, i32x8 b) { for (int i = 0; i < 8; i++) a.v[i] += b.v[i]; return a; }
static inline i32x8 i32x8_scale2(i32x8 a, int s0, int s1) {
    for (int i = 0; i < 8; i++) a.v[i] *= i < 4 ? s0 : s1;
    return a;
}
static inline i32x8 dot32_scaled(const int8_t *w, const int8_t *x, int s0, int s1) {
    return i32x8_scale2(dot32(w, x), s0, s1);
}
static inline i32x8 udot32_scaled(const uint8_t *w, const int8_t *x, int s0, int s1) {
    return i32x8_scale2(udot32(w, x), s0, s1);
}
static inline int i32x8_sum(i32x8 a) { int s = 0; for (int i = 0; i < 8; i++) s += a.v[i]; return s; }
typedef struct { float v[4]; } f32x4;
static inline f32x4 i32x8_sum4_f(const i32x8 v[4]) {
    f32x4 r;
    for (int i = 0; i < 4; i++) r.v[i] = (float)i32x8_sum(v[i]);
    return r;
}
static inline f32x4 f32x4_zero(void) { f32x4 r = {{0}}; return r; }
static inline f32x4 f32x4_load(const float *p) { f32x4 r; memcpy(r.v, p, sizeof r.v); return r; }
static inline f32x4 f32x4_set1(float v) { f32x4 r = {{v, v, v, v}}; return r; }
static inline f32x4 f32x4_from_f16(uint16_t a, uint16_t b, uint16_t c, uint16_t d) {
    f32x4 r = {{f16_to_f32(a), f16_to_f32(b), f16_to_f32(c), f16_to_f32(d)}};
    return r;
}
static inline f32x4 f32x4_set1_f16(uint16_t h) { return f32x4_set1(f16_to_f32(h)); }
static inline f32x4 f32x4_add(f32x4 a, f32x4 b) { for (int i = 0; i < 4; i++) a.v[i] += b.v[i]; return a; }
static inline f32x4 f32x4_mul(f32x4 a, f32x4 b) { for (int i = 0; i < 4; i++) a.v[i] *= b.v[i]; return a; }
static inline void f32x4_store(float *p, f32x4 a) { memcpy(p, a.v, sizeof a.v); }
#endif
