/* Calls the cpu kernel library's exported functions on deterministic pseudo-random inputs and writes
 * every output to a file, so that builds of the library for different variants and architectures can
 * be compared byte for byte (tests/test_cpu_kernels_arm.py runs it natively and under qemu-aarch64).
 *
 * Usage: variant_driver OUT_FILE. Outputs go to OUT_FILE in case order; stdout gets one line per case,
 * "name offset bytes", so a mismatch can be named. Built statically together with the library's C
 * sources (no dlopen, no sysroot), with the library's own flags and -I host_functions/native.
 *
 * Inputs are built from integers and powers of two only, so every build generates the same bits
 * whatever its float conversions. Float outputs have their NaNs written as one canonical NaN: x86 and
 * ARM produce different default NaNs (sign bit) for the same invalid operation, and NaN payloads are
 * no promise of the kernels; every other bit is compared. The f16/bf16 conversion sweeps are written
 * as they are, NaNs included.
 *
 * Covered: every weight format of the quant table, 1..17 activation rows (tiles of 1..4 tokens, the
 * panel switch at 8 where the variant has panels) and 150 rows (several panel passes, a partial last
 * panel), weight row counts that are not a multiple of the tile or the thread split, 1 and 2 threads,
 * normal, zero and extreme (f16 max, subnormal) block scales, a fused call over mixed formats and
 * activation types, the activation encoders (rounding ties, zero blocks, huge values), attention
 * (GQA, windows, a head_dim tail, 1 and 2 threads), LoRA (row, rank and output tails) and the
 * header's f16/bf16 conversions over every f16 and a sweep of floats.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "realm_native.h"

/* The library's exported entry points and structs that realm_native.h does not declare (matmul.c,
 * lora.c, pool.c; the header has realm_segment and the entry points layer.c calls). */
typedef struct {
    const float *bt;
    int64_t out_offset, n_out, rank_offset, rank;
    double alpha_over_rank;
} realm_lora_part;
int realm_quantize_act(int type, const float *x, int64_t n_tok, int64_t n_cols, uint8_t *out);
int64_t realm_act_row_bytes(int type, int64_t n_cols);
int realm_lora(const float *x, int64_t x_stride, int64_t n_rows, int64_t n_in, const float *a, int64_t total_rank,
               const realm_lora_part *parts, int n_parts, double scale, float *y, int64_t y_stride);
int realm_set_threads(int n);

/* ---- output --------------------------------------------------------------------------------------- */

static FILE *out_file;
static long out_offset;

static void emit(const char *name, const void *data, size_t bytes) {
    if (fwrite(data, 1, bytes, out_file) != bytes) {
        fprintf(stderr, "variant_driver: cannot write the output file\n");
        exit(1);
    }
    printf("%s %ld %zu\n", name, out_offset, bytes);
    out_offset += (long)bytes;
}

static void emit_floats(const char *name, float *v, size_t n) {  /* NaNs made canonical in place */
    for (size_t i = 0; i < n; i++)
        if (v[i] != v[i]) v[i] = bits_f32(0x7fc00000u);
    emit(name, v, n * sizeof *v);
}

static void check(int status, const char *what) {
    if (status != 0) {
        fprintf(stderr, "variant_driver: %s returned %d\n", what, status);
        exit(1);
    }
}

static void *xmalloc(size_t bytes) {
    void *p = calloc(1, bytes ? bytes : 1);
    if (p == NULL) {
        fprintf(stderr, "variant_driver: out of memory\n");
        exit(1);
    }
    return p;
}

/* ---- deterministic inputs --------------------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t next_u64(void) {  /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* k significant bits times 2^e2: exact in float32 (and in f16 for k <= 11 in f16's range) */
static float random_float(int k, int e2) {
    const int64_t m = (int64_t)(next_u64() >> (64 - k)) - ((int64_t)1 << (k - 1));
    return (float)m * __builtin_ldexpf(1.0f, e2);
}

enum { NORMAL, ZERO, EXTREME, N_MODES };
static const char *const MODE_NAMES[N_MODES] = {"normal", "zero", "extreme"};

/* A block scale as f16 bits: random magnitudes 2^-9..2^-4 (either sign), zero, or the extremes
 * (largest finite, smallest subnormal, largest subnormal, smallest normal, one). */
static uint16_t scale_f16(int mode, int i) {
    static const uint16_t extremes[] = {0x7bff, 0xfbff, 0x0001, 0x83ff, 0x0400, 0x3c00};
    if (mode == ZERO) return 0;
    if (mode == EXTREME) return extremes[i % 6];
    const uint64_t r = next_u64();
    return (uint16_t)(((r & 1) << 15) | ((6 + (r >> 1) % 6) << 10) | ((r >> 8) & 0x3ff));
}

/* n activation values: ~N(0, 3)-like integers-times-powers-of-two, zeros, or huge and tiny values */
static void fill_activations(float *x, size_t n, int mode) {
    for (size_t i = 0; i < n; i++) {
        if (mode == ZERO) x[i] = 0.0f;
        else if (mode == EXTREME) x[i] = random_float(20, i % 3 == 0 ? 70 : i % 3 == 1 ? -130 : -19);
        else x[i] = random_float(24, -21);
    }
}

typedef struct {
    const char *name;
    int type, block, bytes;
    int n_scales;        /* f16 scale fields per block */
    int scale_off[3];
} format;

#define OFF(T, F) ((int)offsetof(T, F))
static const format FORMATS[] = {
    {"F32", T_F32, 1, 4, 0, {0}},
    {"F16", T_F16, 1, 2, 0, {0}},
    {"BF16", T_BF16, 1, 2, 0, {0}},
    {"Q4_0", T_Q4_0, QK, sizeof(block_q4_0), 1, {OFF(block_q4_0, d)}},
    {"Q4_1", T_Q4_1, QK, sizeof(block_q4_1), 2, {OFF(block_q4_1, d), OFF(block_q4_1, m)}},
    {"Q5_0", T_Q5_0, QK, sizeof(block_q5_0), 1, {OFF(block_q5_0, d)}},
    {"Q5_1", T_Q5_1, QK, sizeof(block_q5_1), 2, {OFF(block_q5_1, d), OFF(block_q5_1, m)}},
    {"Q8_0", T_Q8_0, QK, sizeof(block_q8_0), 1, {OFF(block_q8_0, d)}},
    {"Q8_1", T_Q8_1, QK, sizeof(block_q8_1), 2, {OFF(block_q8_1, d), OFF(block_q8_1, s)}},
    {"Q2_K", T_Q2_K, QK_K, sizeof(block_q2_K), 2, {OFF(block_q2_K, d), OFF(block_q2_K, dmin)}},
    {"Q3_K", T_Q3_K, QK_K, sizeof(block_q3_K), 1, {OFF(block_q3_K, d)}},
    {"Q4_K", T_Q4_K, QK_K, sizeof(block_q4_K), 2, {OFF(block_q4_K, d), OFF(block_q4_K, dmin)}},
    {"Q5_K", T_Q5_K, QK_K, sizeof(block_q5_K), 2, {OFF(block_q5_K, d), OFF(block_q5_K, dmin)}},
    {"Q6_K", T_Q6_K, QK_K, sizeof(block_q6_K), 1, {OFF(block_q6_K, d)}},
    {"Q8_K", T_Q8_K, QK_K, sizeof(block_q8_K), 0, {0}},  /* its d is a float32: set below */
};
#define N_FORMATS (int)(sizeof FORMATS / sizeof FORMATS[0])

static const format *format_named(const char *name) {
    for (int i = 0; i < N_FORMATS; i++)
        if (strcmp(FORMATS[i].name, name) == 0) return &FORMATS[i];
    return NULL;
}

/* n_rows rows of n_cols weights: random quant bytes with the scale fields set by mode, or random
 * float elements (EXTREME: any finite f16 / bf16 bit pattern and float32 magnitudes 2^-140..2^60). */
static uint8_t *make_weights(const format *f, int64_t n_rows, int64_t n_cols, int mode) {
    const int64_t n_blocks = n_rows * (n_cols / f->block);
    uint8_t *w = xmalloc((size_t)(n_blocks * f->bytes));
    for (int64_t b = 0; b < n_blocks; b++) {
        uint8_t *blk = w + b * f->bytes;
        if (f->type == T_F32) {
            const float v = mode == ZERO ? 0.0f : mode == EXTREME ? random_float(24, (int)(b % 9) * 25 - 160)
                                                                  : random_float(24, -24);
            memcpy(blk, &v, 4);
        } else if (f->type == T_F16 || f->type == T_BF16) {
            const int f16 = f->type == T_F16;
            const uint16_t exponent = f16 ? 0x7c00 : 0x7f80, mantissa = f16 ? 0x03ff : 0x007f;
            const uint16_t r = (uint16_t)next_u64();
            uint16_t h = r;
            if (mode == ZERO) h = 0;
            else if (mode == NORMAL) h = (uint16_t)((r & (0x8000 | mantissa)) | (f16 ? 0x3400 : 0x3e80));  /* +-2^-2.. */
            else if ((r & exponent) == exponent) h ^= 0x4000;  /* any finite pattern: not all exponent ones */
            memcpy(blk, &h, 2);
        } else {
            for (int i = 0; i < f->bytes; i++) blk[i] = (uint8_t)next_u64();
            for (int s = 0; s < f->n_scales; s++) {
                const uint16_t h = scale_f16(mode, (int)b + s);
                memcpy(blk + f->scale_off[s], &h, 2);
            }
            if (f->type == T_Q8_K) {
                const float d = mode == ZERO ? 0.0f : mode == EXTREME ? random_float(8, b % 2 ? 100 : -140)
                                                                      : random_float(8, -14);
                memcpy(blk, &d, 4);
            }
        }
    }
    return w;
}

/* ---- cases ----------------------------------------------------------------------------------------- */

static int64_t cols_for(const format *f) { return f->block == 1 ? 100 : f->block == QK ? 96 : 512; }

/* y = x @ W.T for one weight, written out under "matmul/FORMAT/MODE/ROWSxCOLS/nt=N/thr=T" */
static void matmul_case(const format *f, int mode, int64_t n_rows, int n_tok, int threads) {
    const int64_t n_cols = cols_for(f);
    uint8_t *w = make_weights(f, n_rows, n_cols, mode);
    float *x = xmalloc(sizeof(float) * (size_t)(n_tok * n_cols)), *y = xmalloc(sizeof(float) * (size_t)(n_tok * n_rows));
    fill_activations(x, (size_t)(n_tok * n_cols), mode == EXTREME && n_tok % 2 ? EXTREME : NORMAL);
    const realm_segment seg = {f->type, 0, w, n_cols / f->block * f->bytes, n_rows};
    realm_set_threads(threads);
    check(realm_matmul(&seg, 1, n_cols, x, n_tok, y, n_rows), "realm_matmul");
    char name[128];
    snprintf(name, sizeof name, "matmul/%s/%s/%lldx%lld/nt=%d/thr=%d", f->name, MODE_NAMES[mode], (long long)n_rows,
             (long long)n_cols, n_tok, threads);
    emit_floats(name, y, (size_t)(n_tok * n_rows));
    free(w), free(x), free(y);
}

/* One call over several weights (a fused projection), activation types mixed. */
static void fused_case(const char *const names[], const int64_t rows[], int n_seg, int64_t n_cols, int n_tok) {
    realm_segment seg[8];
    uint8_t *w[8];
    int64_t total = 0;
    char name[128] = "fused";
    for (int s = 0; s < n_seg; s++) {
        const format *f = format_named(names[s]);
        w[s] = make_weights(f, rows[s], n_cols, NORMAL);
        seg[s] = (realm_segment){f->type, 0, w[s], n_cols / f->block * f->bytes, rows[s]};
        total += rows[s];
        snprintf(name + strlen(name), sizeof name - strlen(name), "/%s:%lld", f->name, (long long)rows[s]);
    }
    snprintf(name + strlen(name), sizeof name - strlen(name), "/nt=%d", n_tok);
    float *x = xmalloc(sizeof(float) * (size_t)(n_tok * n_cols)), *y = xmalloc(sizeof(float) * (size_t)(n_tok * total));
    fill_activations(x, (size_t)(n_tok * n_cols), NORMAL);
    realm_set_threads(2);
    check(realm_matmul(seg, n_seg, n_cols, x, n_tok, y, total), "realm_matmul (fused)");
    emit_floats(name, y, (size_t)(n_tok * total));
    for (int s = 0; s < n_seg; s++) free(w[s]);
    free(x), free(y);
}

/* The activation encoders, byte for byte, on 5 rows: random, zero, huge/tiny, exact integers up to
 * 127 (no rounding) and halves (every one a rounding tie). */
static void quantize_case(const format *f) {
    enum { ROWS = 5, COLS = 512 };
    static float x[ROWS * COLS];
    fill_activations(x, COLS, NORMAL);
    fill_activations(x + COLS, COLS, ZERO);
    fill_activations(x + 2 * COLS, COLS, EXTREME);
    for (int i = 0; i < COLS; i++) {
        x[3 * COLS + i] = i % 32 == 0 ? 127.0f : (float)((int)(next_u64() % 255) - 127);
        x[4 * COLS + i] = i % 32 == 0 ? 127.0f : (float)((int)(next_u64() % 254) - 127) + 0.5f;
    }
    const int64_t rb = realm_act_row_bytes(f->type, COLS);
    uint8_t *q = xmalloc((size_t)(rb * ROWS));
    check(realm_quantize_act(f->type, x, ROWS, COLS, q), "realm_quantize_act");
    char name[64];
    snprintf(name, sizeof name, "quantize/%s", f->name);
    emit(name, q, (size_t)(rb * ROWS));
    free(q);
}

static void attention_case(int64_t n, int n_head, int n_kv, int hd, int64_t pos, int64_t window, int threads) {
    const int64_t n_keys = pos + n;
    float *q = xmalloc(sizeof(float) * (size_t)(n * n_head * hd)), *out = xmalloc(sizeof(float) * (size_t)(n * n_head * hd));
    float *k = xmalloc(sizeof(float) * (size_t)(n_keys * n_kv * hd)), *v = xmalloc(sizeof(float) * (size_t)(n_keys * n_kv * hd));
    for (int64_t i = 0; i < n * n_head * hd; i++) q[i] = random_float(24, -22);
    for (int64_t i = 0; i < n_keys * n_kv * hd; i++) k[i] = random_float(11, -8), v[i] = random_float(11, -10);
    realm_set_threads(threads);
    check(realm_attention(q, n, n_head, n_kv, hd, k, v, n_keys, NULL, pos, 0, window, 1.0f / 8.0f, out),
          "realm_attention");
    char name[128];
    snprintf(name, sizeof name, "attention/n=%lld/heads=%d:%d/hd=%d/pos=%lld/window=%lld/thr=%d", (long long)n, n_head,
             n_kv, hd, (long long)pos, (long long)window, threads);
    emit_floats(name, out, (size_t)(n * n_head * hd));
    /* the same keys scattered through a pool twice as large, read through their slots (reversed order) */
    const int64_t row = (int64_t)n_kv * hd;
    float *kp = xmalloc(sizeof(float) * (size_t)(2 * n_keys * row)), *vp = xmalloc(sizeof(float) * (size_t)(2 * n_keys * row));
    int64_t *slots = xmalloc(sizeof(int64_t) * (size_t)n_keys);
    for (int64_t i = 0; i < n_keys; i++) {
        slots[i] = 2 * (n_keys - 1 - i) + 1;
        memcpy(kp + slots[i] * row, k + i * row, sizeof(float) * (size_t)row);
        memcpy(vp + slots[i] * row, v + i * row, sizeof(float) * (size_t)row);
    }
    check(realm_attention(q, n, n_head, n_kv, hd, kp, vp, 2 * n_keys, slots, pos, 0, window, 1.0f / 8.0f, out),
          "realm_attention (slots)");
    snprintf(name, sizeof name, "attention-slots/n=%lld/heads=%d:%d/hd=%d/pos=%lld/window=%lld/thr=%d", (long long)n,
             n_head, n_kv, hd, (long long)pos, (long long)window, threads);
    emit_floats(name, out, (size_t)(n * n_head * hd));
    free(q), free(out), free(k), free(v), free(kp), free(vp), free(slots);
}

/* The row-wise ops of a layer (norm.c, activation.c, rope.c) and the KV writes, on 1 and 2 threads. */
static void rowwise_case(int64_t n_rows, int64_t n_cols, int threads) {
    const size_t n = (size_t)(n_rows * n_cols);
    float *x = xmalloc(sizeof(float) * 2 * n), *w = xmalloc(sizeof(float) * (size_t)n_cols);
    float *out = xmalloc(sizeof(float) * 2 * n);
    for (size_t i = 0; i < 2 * n; i++) x[i] = i % 17 == 0 ? random_float(20, -12) : random_float(24, -21);
    for (int64_t c = 0; c < n_cols; c++) w[c] = random_float(12, -10);
    realm_set_threads(threads);
    char name[128];
    check(realm_rms_norm(x, n_rows, n_cols, w, 1e-6f, out), "realm_rms_norm");
    snprintf(name, sizeof name, "rms_norm/%lldx%lld/thr=%d", (long long)n_rows, (long long)n_cols, threads);
    emit_floats(name, out, n);
    for (int kind = 0; kind <= 1; kind++) {  /* gate|up rows of 2 n_cols: gates out to +-100 and subnormal */
        for (size_t i = 0; i < 2 * n; i += 9) x[i] = random_float(8, (int)(i % 3) * 3 - 2);
        x[1] = 1e-40f, x[2] = -1e-40f;
        check(realm_gated(kind, x, n_rows, n_cols, out), "realm_gated");
        snprintf(name, sizeof name, "gated/%s/%lldx%lld/thr=%d", kind ? "gelu" : "silu", (long long)n_rows,
                 (long long)n_cols, threads);
        emit_floats(name, out, n);
    }
    if (n_cols % 2 == 0) {  /* n_rows tokens of 2 heads of n_cols / 2; cos/sin per token and pair */
        const int hd = (int)(n_cols / 2);
        float *cs = xmalloc(sizeof(float) * (size_t)(n_rows * hd));
        for (int64_t i = 0; i < n_rows * hd; i++) cs[i] = random_float(24, -24);
        for (int neox = 0; neox <= 1; neox++) {
            check(realm_rope(x, n_rows, 2, hd, cs, cs + n_rows * hd / 2, neox, out), "realm_rope");
            snprintf(name, sizeof name, "rope/%s/%lldx2x%d/thr=%d", neox ? "neox" : "normal", (long long)n_rows, hd,
                     threads);
            emit_floats(name, out, n);
        }
        free(cs);
    }
    int64_t *slots = xmalloc(sizeof(int64_t) * (size_t)n_rows);  /* into a pool of 2 n_rows rows, scattered */
    for (int64_t t = 0; t < n_rows; t++) slots[t] = (3 * t + 1) % (2 * n_rows);
    float *pool = calloc(4 * n, sizeof(float));  /* K rows, then V rows */
    if (pool == NULL) exit(1);
    for (size_t i = 0; i < n; i += 5) x[i] = random_float(24, i % 2 ? -30 : 4);  /* f16 ties, subnormals, overflow */
    check(realm_kv_store(pool, pool + 2 * n, 2 * n_rows, n_cols, slots, n_rows, x, x + n), "realm_kv_store");
    snprintf(name, sizeof name, "kv_store/%lldx%lld", (long long)n_rows, (long long)n_cols);
    emit_floats(name, pool, 4 * n);
    free(x), free(w), free(out), free(slots), free(pool);
}

/* y += scale * alpha/rank * B (A x) for two parts of a fused projection, into a nonzero y */
static void lora_case(int64_t n_rows, int64_t n_in, int64_t rank0, int64_t rank1, int64_t out0, int64_t out1) {
    const int64_t total_rank = rank0 + rank1, n_out = out0 + out1;
    float *x = xmalloc(sizeof(float) * (size_t)(n_rows * n_in)), *y = xmalloc(sizeof(float) * (size_t)(n_rows * n_out));
    float *a = xmalloc(sizeof(float) * (size_t)(total_rank * n_in));
    float *b0 = xmalloc(sizeof(float) * (size_t)(rank0 * out0)), *b1 = xmalloc(sizeof(float) * (size_t)(rank1 * out1));
    fill_activations(x, (size_t)(n_rows * n_in), NORMAL);
    fill_activations(y, (size_t)(n_rows * n_out), NORMAL);
    for (int64_t i = 0; i < total_rank * n_in; i++) a[i] = random_float(24, -26);
    for (int64_t i = 0; i < rank0 * out0; i++) b0[i] = random_float(24, -26);
    for (int64_t i = 0; i < rank1 * out1; i++) b1[i] = random_float(24, -26);
    const realm_lora_part parts[2] = {{b0, 0, out0, 0, rank0, 2.0 / (double)rank0},
                                      {b1, out0, out1, rank0, rank1, 1.5 / (double)rank1}};
    check(realm_lora(x, n_in, n_rows, n_in, a, total_rank, parts, 2, 0.75, y, n_out), "realm_lora");
    char name[128];
    snprintf(name, sizeof name, "lora/rows=%lld/in=%lld/ranks=%lld+%lld/out=%lld+%lld", (long long)n_rows,
             (long long)n_in, (long long)rank0, (long long)rank1, (long long)out0, (long long)out1);
    emit_floats(name, y, (size_t)(n_rows * n_out));
    free(x), free(y), free(a), free(b0), free(b1);
}

/* realm_native.h's conversions as this build compiles them: every f16 to f32, and to f16 / bf16
 * every f16 value, the midpoints between neighbours (rounding ties), specials and random floats. */
static void conversion_case(void) {
    enum { N_RANDOM = 1 << 16 };
    static uint32_t f32_out[1 << 16];
    static uint16_t h_out[3 << 16], bf_out[N_RANDOM];
    for (uint32_t h = 0; h < 1 << 16; h++) f32_out[h] = f32_bits(f16_to_f32((uint16_t)h));
    emit("convert/f16_to_f32", f32_out, sizeof f32_out);
    for (uint32_t h = 0; h < 1 << 16; h++) {
        const float v = bits_f32(f32_out[h]);
        h_out[h] = f32_to_f16(v);
        h_out[(1 << 16) + h] = f32_to_f16(bits_f32(f32_bits(v) + (1u << 12)));  /* halfway up to the next f16 */
        h_out[(2 << 16) + h] = f32_to_f16(bits_f32((uint32_t)next_u64()));
    }
    emit("convert/f32_to_f16", h_out, sizeof h_out);
    for (uint32_t i = 0; i < N_RANDOM; i++) {
        const uint32_t u = i < 16 ? (uint32_t[]){0, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u,
                                                 0xffffffffu, 1, 0x007fffffu, 0x00800000u, 0x3f808000u, 0x3f818000u,
                                                 0x7f7fffffu, 0x7f7f8000u, 0xff7fffffu, 0x3f80ffffu}[i]
                                   : (uint32_t)next_u64();
        bf_out[i] = f32_to_bf16(bits_f32(u));
    }
    emit("convert/f32_to_bf16", bf_out, sizeof bf_out);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: variant_driver OUT_FILE\n");
        return 2;
    }
    out_file = fopen(argv[1], "wb");
    if (out_file == NULL) {
        fprintf(stderr, "variant_driver: cannot open %s\n", argv[1]);
        return 1;
    }
    rng_state = 0x5eed;
    conversion_case();
    for (int i = 0; i < N_FORMATS; i++) {
        const format *f = &FORMATS[i];
        for (int threads = 1; threads <= 2; threads++)
            for (int n_tok = 1; n_tok <= 17; n_tok++) matmul_case(f, NORMAL, threads == 1 ? 37 : 13, n_tok, threads);
        for (int mode = ZERO; mode <= EXTREME; mode++)
            for (int n_tok = 1; n_tok <= 17; n_tok += 8) matmul_case(f, mode, 9, n_tok, 2);
        quantize_case(f);
    }
    static const char *const long_formats[] = {"Q4_0", "Q5_1", "Q8_0", "Q2_K", "Q4_K", "Q6_K", "F16"};
    for (size_t i = 0; i < sizeof long_formats / sizeof long_formats[0]; i++)
        matmul_case(format_named(long_formats[i]), NORMAL, 6, 150, 2);
    fused_case((const char *const[]){"Q5_0", "Q5_0", "Q8_0"}, (const int64_t[]){40, 9, 9}, 3, 256, 3);
    fused_case((const char *const[]){"Q4_K", "Q6_K", "F16", "Q4_1"}, (const int64_t[]){7, 5, 6, 3}, 4, 256, 10);
    attention_case(1, 4, 1, 256, 300, 0, 1);
    attention_case(20, 4, 1, 64, 0, 0, 2);
    attention_case(9, 8, 2, 64, 70, 16, 2);
    attention_case(3, 2, 2, 40, 5, 0, 1);
    attention_case(5, 6, 3, 24, 0, 2, 2);
    for (int threads = 1; threads <= 2; threads++) {
        rowwise_case(1, 640, threads);
        rowwise_case(5, 37, threads);
        rowwise_case(17, 2048, threads);
    }
    lora_case(1, 64, 8, 8, 64, 64);
    lora_case(3, 100, 5, 3, 70, 130);
    lora_case(11, 37, 16, 1, 9, 200);
    if (fclose(out_file) != 0) {
        fprintf(stderr, "variant_driver: cannot write %s\n", argv[1]);
        return 1;
    }
    return 0;
}
