/*
 * realm.h: the SDK header of a Realm guest (wasm32-freestanding, no libc).
 *
 * A guest is a WebAssembly module that imports host functions from the module "realm" and
 * exports `memory`, `realm_alloc(size) -> ptr` and `realm_main(request_ptr, request_len) -> status`.
 * The host writes the request (a JSON object: "prompt", "max_tokens", "stop", sampling
 * parameters, and whatever else the client sent) into memory it got from realm_alloc, then calls
 * realm_main. Return REALM_OK, or a negative status to fail the request.
 *
 * Every function returns a non-negative value on success and a negative realm_status on
 * failure. Pointers and lengths are checked by the host; a bad one yields REALM_ERR_BAD_POINTER.
 * Handles (sequences, samplers) are opaque positive numbers valid only within one request.
 * The full reference is docs/abi.md; the numbers below are defined once, in
 * host_functions/abi/, and a test holds this header to them.
 *
 * One C file of a guest defines REALM_IMPLEMENTATION before including this header: that adds a
 * bump allocator exported as realm_alloc, and the memcpy/memset/memmove/memcmp the compiler
 * may call.
 *
 * Build: python -m ziglang cc --target=wasm32-freestanding -O2 -nostdlib -Wl,--no-entry ...
 */
#ifndef REALM_H
#define REALM_H

#include <stddef.h>
#include <stdint.h>

#define REALM_ABI_VERSION 6

/* Status codes: host function results (negative) and realm_main's result. */
typedef enum {
    REALM_OK = 0,
    REALM_ERR_INVALID_ARGUMENT = -1, /* a value out of range: token id, flag, k, JSON, empty mask */
    REALM_ERR_BAD_POINTER = -2,      /* (pointer, length) negative, overflowing or outside memory */
    REALM_ERR_BAD_HANDLE = -3,       /* not a live handle of this request, or the wrong kind */
    REALM_ERR_WRONG_STATE = -4,      /* out of order: layer skipped, no logits yet, append mid-step */
    REALM_ERR_CAPACITY = -5,         /* the sequence cannot hold that many tokens */
    REALM_ERR_LIMIT = -6,            /* a soft limit (log volume); the request goes on */
    REALM_ERR_INTERNAL = -7          /* the host failed */
} realm_status;

/* sample(): how bias_ptr is read. */
typedef enum {
    REALM_BIAS_ADD = 0,   /* realm_bias[bias_len]: add each bias to its token's logit */
    REALM_BIAS_ALLOW = 1, /* realm_bias[bias_len]: only these tokens may be sampled (bias added) */
    REALM_BIAS_DENSE = 2  /* float[n_vocab]: added to every logit; -INFINITY masks a token */
} realm_bias_mode;

/* result_report(): why generation ended. */
typedef enum {
    REALM_FINISH_STOP = 1,    /* an end-of-generation token or a stop string */
    REALM_FINISH_LENGTH = 2,  /* the request's max_tokens */
    REALM_FINISH_CONTEXT = 3  /* the sequence's capacity (the context) was full */
} realm_finish_reason;

/* constraint_open(): what the constraint's text is. */
typedef enum {
    REALM_CONSTRAINT_JSON_SCHEMA = 0, /* a JSON Schema */
    REALM_CONSTRAINT_JSON_OBJECT = 1, /* any JSON object; the text is ignored */
    REALM_CONSTRAINT_REGEX = 2,       /* a regular expression the whole output matches */
    REALM_CONSTRAINT_LARK = 3         /* a Lark grammar (llguidance's dialect) */
} realm_constraint_kind;

/* tokenize() flags */
#define REALM_TOKENIZE_ADD_SPECIAL 1   /* add BOS as the model's tokenizer asks */
#define REALM_TOKENIZE_PARSE_SPECIAL 2 /* "<start_of_turn>" etc. become special tokens */

/* text_push(): pass as token to flush the sequence's decoder at the end of its text. */
#define REALM_TEXT_FLUSH (-1)

typedef struct {
    int32_t token;
    float bias;
} realm_bias;

/* model_info() fills this (all int32, little-endian). */
typedef struct {
    int32_t abi_version;
    int32_t n_vocab;
    int32_t n_layers;
    int32_t n_ctx;            /* largest sequence capacity this request may open */
    int32_t n_embd;
    int32_t bos_id;           /* -1 if the vocabulary has none */
    int32_t eos_id;           /* -1 if the vocabulary has none */
    int32_t max_sequences;    /* live sequences this request may hold */
    int32_t max_tokens;       /* tokens this request may feed to the model in total */
    int32_t max_output_bytes; /* bytes this request may emit */
} realm_model_info;

#define REALM_IMPORT(name) __attribute__((import_module("realm"), import_name(#name)))

/* Model and tokenizer. Buffer-filling calls write at most *_cap items and return the full count. */
REALM_IMPORT(model_info) int32_t realm_model_info_get(realm_model_info *out, int32_t out_len);
REALM_IMPORT(tokenize) int32_t realm_tokenize(const char *text, int32_t text_len, int32_t flags,
                                              int32_t *out, int32_t out_cap);
REALM_IMPORT(detokenize) int32_t realm_detokenize(const int32_t *ids, int32_t n_ids, char *out, int32_t out_cap);
REALM_IMPORT(token_piece) int32_t realm_token_piece(int32_t token, char *out, int32_t out_cap);
REALM_IMPORT(token_is_eog) int32_t realm_token_is_eog(int32_t token);

/* Sequences: one KV cache each. A step is seq_append -> forward_layer(0..n_layers-1) -> seq_finish,
 * or seq_append -> seq_step (ABI 5). */
REALM_IMPORT(seq_open) int32_t realm_seq_open(int32_t capacity); /* 0: n_ctx; returns a handle */
REALM_IMPORT(seq_close) int32_t realm_seq_close(int32_t seq);
/* A new sequence with seq's tokens, adapter and logits, sharing its KV blocks; returns a handle. */
REALM_IMPORT(seq_fork) int32_t realm_seq_fork(int32_t seq);
REALM_IMPORT(seq_append) int32_t realm_seq_append(int32_t seq, const int32_t *ids, int32_t n_ids);
REALM_IMPORT(forward_layer) int32_t realm_forward_layer(int32_t seq, int32_t layer);
REALM_IMPORT(seq_finish) int32_t realm_seq_finish(int32_t seq);
/* ABI 5: the step's remaining layers and seq_finish in one host call (what realm_step uses). */
REALM_IMPORT(seq_step) int32_t realm_seq_step(int32_t seq);
REALM_IMPORT(seq_len) int32_t realm_seq_len(int32_t seq);
REALM_IMPORT(seq_truncate) int32_t realm_seq_truncate(int32_t seq, int32_t n);

/* Logits of the last finished step (host-resident until the next append). */
REALM_IMPORT(logits_read) int32_t realm_logits_read(int32_t seq, float *out, int32_t n);
REALM_IMPORT(logits_topk) int32_t realm_logits_topk(int32_t seq, int32_t k, int32_t *ids, float *values);

/* Host-side sampling: a sampler is made from a JSON object of sampling parameters. */
REALM_IMPORT(sampler_new) int32_t realm_sampler_new(const char *json, int32_t json_len);
REALM_IMPORT(sampler_free) int32_t realm_sampler_free(int32_t sampler);
REALM_IMPORT(sample) int32_t realm_sample(int32_t seq, int32_t sampler, const void *bias, int32_t bias_len,
                                          int32_t mode); /* returns the token; does not append it */
/* Report a generated token's log-probability and its top_k (0..20) alternatives to the client. */
REALM_IMPORT(token_logprobs) int32_t realm_token_logprobs(int32_t seq, int32_t token, int32_t top_k);

/* Text to the client. */
REALM_IMPORT(text_push) int32_t realm_text_push(int32_t seq, int32_t token, char *out, int32_t out_cap);
REALM_IMPORT(emit) int32_t realm_emit(const char *text, int32_t len);
REALM_IMPORT(log) int32_t realm_log(int32_t level, const char *text, int32_t len);
REALM_IMPORT(result_report) int32_t realm_result_report(int32_t finish_reason, int32_t prompt_tokens,
                                                        int32_t completion_tokens); /* ABI 2 */

/* Speculative decoding (ABI 3): every row's logits, verification of drafts, draft models. */
REALM_IMPORT(seq_finish_all) int32_t realm_seq_finish_all(int32_t seq); /* returns the rows kept */
REALM_IMPORT(seq_step_all) int32_t realm_seq_step_all(int32_t seq); /* ABI 5: the remaining layers + seq_finish_all */
REALM_IMPORT(logits_row) int32_t realm_logits_row(int32_t seq, int32_t row);
REALM_IMPORT(spec_verify) int32_t realm_spec_verify(int32_t seq, int32_t sampler, int32_t draft_seq, int32_t *next);
REALM_IMPORT(draft_open) int32_t realm_draft_open(const char *name, int32_t name_len); /* "self:N", "draft:PATH" */
REALM_IMPORT(draft_seq_open) int32_t realm_draft_seq_open(int32_t draft, int32_t capacity);
REALM_IMPORT(seq_layers) int32_t realm_seq_layers(int32_t seq);

/* LoRA (ABI 4): the tenant's own adapters, by alias; scale_bits is a float32's bits, 0 = the binding's scale. */
REALM_IMPORT(adapter_find) int32_t realm_adapter_find(const char *alias, int32_t alias_len);
REALM_IMPORT(seq_set_adapter) int32_t realm_seq_set_adapter(int32_t seq, int32_t adapter, int32_t scale_bits);

/* Constrained decoding (ABI 6): a grammar bound to a sequence masks its sampling; appended tokens advance it. */
REALM_IMPORT(constraint_open) int32_t realm_constraint_open(int32_t seq, int32_t kind, const char *text,
                                                            int32_t text_len);
REALM_IMPORT(constraint_done) int32_t realm_constraint_done(int32_t constraint); /* 1: nothing more may follow */

/* ---- small helpers every guest wants ---- */

static inline int32_t realm_strlen(const char *s) {
    int32_t n = 0;
    while (s[n]) n++;
    return n;
}

/* Log `message` as an error and return rc if it is a status, else REALM_ERR_INVALID_ARGUMENT. */
static inline int32_t realm_fail(int32_t rc, const char *message) {
    realm_log(3, message, realm_strlen(message));
    return rc < 0 ? rc : REALM_ERR_INVALID_ARGUMENT;
}

/* Run one step over the sequence's pending tokens: every layer, then finish, in one host call
 * (seq_step; the host knows the sequence's layers, so n_layers, which guests of ABI 4 and earlier
 * passed to a loop of forward_layer calls, is not needed any more). */
static inline int32_t realm_step(int32_t seq, int32_t n_layers) {
    (void)n_layers;
    return realm_seq_step(seq);
}

/* The same, keeping the logits of every pending token (to verify drafts); returns the rows kept. */
static inline int32_t realm_step_all(int32_t seq, int32_t n_layers) {
    (void)n_layers;
    return realm_seq_step_all(seq);
}

/* A float32's bits, for seq_set_adapter's scale. */
static inline int32_t realm_f32_bits(float value) {
    union { float f; int32_t i; } u = {value};
    return u.i;
}

void *realm_alloc(int32_t size);

#ifdef REALM_IMPLEMENTATION

extern unsigned char __heap_base;
static uintptr_t realm_heap_top;

/* A bump allocator: guests serve one request and end, so nothing is ever freed. */
__attribute__((export_name("realm_alloc"))) void *realm_alloc(int32_t size) {
    if (size < 0) return 0;
    if (!realm_heap_top) realm_heap_top = (uintptr_t)&__heap_base;
    uintptr_t start = (realm_heap_top + 15) & ~(uintptr_t)15;
    uintptr_t end = start + (uintptr_t)size;
    uintptr_t have = __builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        uintptr_t pages = (end - have + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return 0;
    }
    realm_heap_top = end;
    return (void *)start;
}

void *memcpy(void *dst, const void *src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--) *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (d < s) {
        while (n--) *d++ = *s++;
    } else {
        while (n--) d[n] = s[n];
    }
    return dst;
}

void *memset(void *dst, int c, size_t n) {
    unsigned char *d = dst;
    while (n--) *d++ = (unsigned char)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y) return *x - *y;
    return 0;
}

#endif /* REALM_IMPLEMENTATION */
#endif /* REALM_H */
