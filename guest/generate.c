/*
 * generate.c: Realm's reference guest, standard text generation.
 *
 * Request (JSON object): "prompt" (string), "max_tokens" (int, default 128), "stop" (array of
 * strings), "special" (true: special-token text in the prompt, such as a rendered chat
 * template's "<start_of_turn>", becomes special tokens), "logprobs" (int 0..20: report every
 * generated token's log-probability with that many alternatives), and the sampling parameters
 * ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "presence_penalty",
 * "frequency_penalty", "repeat_last_n", "seed", "logit_bias"), which go to the host's sampler
 * unchanged.
 *
 * When generation ends it reports why (stop, length or context) and the token counts with
 * result_report.
 *
 * Per token the guest makes n_layers + 6 host calls: sample, token_is_eog, text_push,
 * seq_append, forward_layer for every layer, seq_finish, and emit. The 262144 logits of a large
 * vocabulary never cross into guest memory: the host samples.
 */
#define REALM_IMPLEMENTATION
#include "realm.h"
#include "json.h"

#define MAX_STOPS 16
#define TEXT_CAP 4096
#define DEFAULT_MAX_TOKENS 128

/* ---- stop strings over streamed text ---- */

typedef struct {
    const char *text[MAX_STOPS];
    int32_t len[MAX_STOPS];
    int32_t count, longest;
    char *held; /* text not emitted yet because it may be the start of a stop string */
    int32_t n_held;
    int stopped;
} stopper;

static int ends_with_prefix(const char *text, int32_t n, const char *stop, int32_t k) {
    for (int32_t i = 0; i < k; i++)
        if (text[n - k + i] != stop[i]) return 0;
    return 1;
}

static int32_t find(const char *text, int32_t n, const char *needle, int32_t m) {
    for (int32_t i = 0; i + m <= n; i++) {
        int32_t j = 0;
        while (j < m && text[i + j] == needle[j]) j++;
        if (j == m) return i;
    }
    return -1;
}

static int32_t emit(const char *text, int32_t n) {
    return n > 0 ? realm_emit(text, n) : REALM_OK;
}

/* Add streamed text; emit what can no longer be part of a stop string. */
static int32_t stopper_push(stopper *s, const char *piece, int32_t n) {
    if (s->stopped) return REALM_OK;
    if (s->count == 0) return emit(piece, n);
    for (int32_t i = 0; i < n; i++) s->held[s->n_held + i] = piece[i];
    s->n_held += n;
    int32_t hit = -1;
    for (int32_t i = 0; i < s->count; i++) {
        int32_t at = find(s->held, s->n_held, s->text[i], s->len[i]);
        if (at >= 0 && (hit < 0 || at < hit)) hit = at;
    }
    if (hit >= 0) {
        s->stopped = 1;
        return emit(s->held, hit);
    }
    int32_t keep = 0;
    for (int32_t i = 0; i < s->count; i++)
        for (int32_t k = s->len[i] - 1; k > keep; k--)
            if (k <= s->n_held && ends_with_prefix(s->held, s->n_held, s->text[i], k)) {
                keep = k;
                break;
            }
    int32_t rc = emit(s->held, s->n_held - keep);
    for (int32_t i = 0; i < keep; i++) s->held[i] = s->held[s->n_held - keep + i];
    s->n_held = keep;
    return rc;
}

static int32_t read_stops(json_slice request, stopper *s) {
    json_slice array, item;
    s->count = s->longest = s->n_held = s->stopped = 0;
    if (!json_get(request, "stop", &array)) return REALM_OK;
    while (json_array_next(&array, &item)) {
        if (s->count == MAX_STOPS) return realm_fail(REALM_ERR_INVALID_ARGUMENT, "too many stop strings");
        char *text = realm_alloc(item.n);
        int32_t len = text ? json_string(item, text, item.n) : -1;
        if (len <= 0) return realm_fail(REALM_ERR_INVALID_ARGUMENT, "stop strings must be non-empty strings");
        s->text[s->count] = text;
        s->len[s->count++] = len;
        if (len > s->longest) s->longest = len;
    }
    s->held = realm_alloc(s->longest + TEXT_CAP);
    return s->held ? REALM_OK : realm_fail(REALM_ERR_INTERNAL, "out of memory");
}

/* ---- generation ---- */

typedef struct {
    int32_t seq, sampler, n_layers, capacity;
    int32_t context_bound; /* the capacity is the context, not prompt + max_tokens */
    int32_t top_logprobs;  /* -1: the client wants no logprobs */
    char *text;
    stopper stops;
} generation;

/* Stream the text of `token` (or REALM_TEXT_FLUSH) through the stop strings. */
static int32_t push_text(generation *g, int32_t token) {
    int32_t n;
    do {
        n = realm_text_push(g->seq, token, g->text, TEXT_CAP);
        if (n < 0) return n;
        int32_t rc = stopper_push(&g->stops, g->text, n);
        if (rc < 0) return rc;
    } while (token == REALM_TEXT_FLUSH && n > 0); /* drain text that did not fit */
    return REALM_OK;
}

static int32_t run(generation *g, const int32_t *prompt, int32_t n_prompt, int64_t max_tokens) {
    int32_t rc = realm_seq_append(g->seq, prompt, n_prompt);
    if (rc < 0) return rc;
    if ((rc = realm_step(g->seq, g->n_layers)) < 0) return rc;
    int32_t length = n_prompt, produced = 0, reason = REALM_FINISH_LENGTH;
    while (produced < max_tokens) {
        int32_t token = realm_sample(g->seq, g->sampler, 0, 0, REALM_BIAS_ADD);
        if (token < 0) return token;
        if (realm_token_is_eog(token)) {
            reason = REALM_FINISH_STOP;
            break;
        }
        if (g->top_logprobs >= 0 && (rc = realm_token_logprobs(g->seq, token, g->top_logprobs)) < 0) return rc;
        produced++;
        if ((rc = push_text(g, token)) < 0) return rc;
        if (g->stops.stopped) {
            reason = REALM_FINISH_STOP;
            break;
        }
        if (produced == max_tokens) break;
        if (length == g->capacity) {
            reason = g->context_bound ? REALM_FINISH_CONTEXT : REALM_FINISH_LENGTH;
            break;
        }
        if ((rc = realm_seq_append(g->seq, &token, 1)) < 0) return rc;
        if ((rc = realm_step(g->seq, g->n_layers)) < 0) return rc;
        length++;
    }
    if ((rc = push_text(g, REALM_TEXT_FLUSH)) < 0) return rc;
    if (!g->stops.stopped && (rc = emit(g->stops.held, g->stops.n_held)) < 0) return rc;
    return realm_result_report(reason, n_prompt, produced);
}

__attribute__((export_name("realm_main"))) int32_t realm_main(const char *request, int32_t request_len) {
    json_slice req = {request, request_len}, value;
    char *prompt;
    int32_t prompt_len = json_get_string(req, "prompt", realm_alloc, &prompt);
    if (prompt_len < 0) return realm_fail(REALM_ERR_INVALID_ARGUMENT, "request needs a \"prompt\" string");
    int64_t max_tokens = DEFAULT_MAX_TOKENS;
    if (json_get(req, "max_tokens", &value) && (!json_int(value, &max_tokens) || max_tokens < 1))
        return realm_fail(REALM_ERR_INVALID_ARGUMENT, "max_tokens must be a positive integer");
    int32_t flags = REALM_TOKENIZE_ADD_SPECIAL;
    if (json_get(req, "special", &value) && json_is_true(value)) flags |= REALM_TOKENIZE_PARSE_SPECIAL;
    int64_t top_logprobs = -1;
    if (json_get(req, "logprobs", &value) && (!json_int(value, &top_logprobs) || top_logprobs < 0 || top_logprobs > 20))
        return realm_fail(REALM_ERR_INVALID_ARGUMENT, "logprobs must be an integer 0..20");

    generation g;
    g.top_logprobs = (int32_t)top_logprobs;
    int32_t rc = read_stops(req, &g.stops);
    if (rc < 0) return rc;
    realm_model_info info;
    if ((rc = realm_model_info_get(&info, sizeof info)) < 0) return rc;
    g.n_layers = info.n_layers;

    int32_t cap = prompt_len + 8;
    int32_t *ids = realm_alloc(cap * 4);
    int32_t n_ids = realm_tokenize(prompt, prompt_len, flags, ids, cap);
    if (n_ids > cap) { /* never for real tokenizers, but the ABI allows it */
        ids = realm_alloc(n_ids * 4);
        n_ids = realm_tokenize(prompt, prompt_len, flags, ids, n_ids);
    }
    if (n_ids < 0) return n_ids;
    if (n_ids == 0) return REALM_OK; /* nothing to continue */
    if (n_ids > info.n_ctx) return realm_fail(REALM_ERR_CAPACITY, "prompt is longer than the context");

    g.context_bound = n_ids + max_tokens > info.n_ctx;
    g.capacity = g.context_bound ? info.n_ctx : n_ids + (int32_t)max_tokens;
    g.text = realm_alloc(TEXT_CAP);
    g.sampler = realm_sampler_new(request, request_len); /* the host reads the sampling keys */
    if (g.sampler < 0) return realm_fail(g.sampler, "bad sampling parameters");
    g.seq = realm_seq_open(g.capacity);
    if (g.seq < 0) return g.seq;
    rc = run(&g, ids, n_ids, max_tokens);
    realm_seq_close(g.seq);
    realm_sampler_free(g.sampler);
    return rc;
}
