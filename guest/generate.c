/*
 * generate.c: Realm's reference guest, standard text generation.
 *
 * Request (JSON object): "prompt" (string), "max_tokens" (int, default 128), "stop" (array of
 * strings), "special" (true: special-token text in the prompt, such as "<start_of_turn>", becomes
 * its token, as `realm run --special` and a rendered chat template ask), "logprobs" (int 0..20:
 * report every generated token's log-probability with that many alternatives; decoding is then
 * plain, not speculative, so each token's own step logits are what is reported), and the
 * sampling parameters ("temperature", "top_k", "top_p", "min_p", "repeat_penalty",
 * "presence_penalty", "frequency_penalty", "repeat_last_n", "seed", "logit_bias"), which go to
 * the host's sampler unchanged.
 *
 * When generation ends it reports why (stop, length or context) and the token counts with
 * result_report.
 *
 * "constraint" (optional, ABI 6): {"kind": "json_schema" | "json_object" | "regex" | "lark", "text": the
 * schema (as a string), regex or grammar}: the host masks every sampled token to the grammar, and
 * generation stops when it is complete ("stop") or at an end token it allows. Speculative decoding
 * works under it: spec_verify rejects a draft the grammar refuses.
 *
 * "lora" (optional) names one of the tenant's LoRA adapters by alias; it applies at its bound scale.
 *
 * "speculative" (optional) speeds decoding without changing what is generated: "ngram" drafts the
 * tokens that followed the latest earlier occurrence of the text's longest repeated suffix (2..8
 * tokens; prompt lookup, no model); "draft:PATH" drafts with a draft model the operator allowed;
 * "self:N" with this model's first N layers. The drafts are verified in one target step
 * (spec_verify) and the rejected tail is truncated; the number drafted adapts to how many get
 * accepted (4 at first, +2 after a full acceptance, up to 16; accepted + 1 after a rejection). A
 * step where prompt lookup finds nothing is a plain step, with a plain step's host calls. Drafts
 * that do not pay for themselves (judge_drafts) pause speculation: plain decoding for a while.
 *
 * Per token the guest makes 6 host calls: sample, token_is_eog, text_push, seq_append, seq_step
 * (every layer and the finish in one call, ABI 5) and emit; under a constraint, a 7th:
 * constraint_done. The 262144 logits of a large vocabulary never cross into guest memory: the host
 * samples.
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

#define NGRAM_MAX 8    /* prompt lookup matches the longest suffix of 8..NGRAM_MIN tokens seen before */
#define NGRAM_MIN 2
#define DRAFT_START 4  /* drafts per step at first; grows on full acceptance, shrinks on rejection */
#define DRAFT_MAX 16   /* the host keeps at most 17 rows of logits: the token and 16 drafts */
#define JUDGE_NGRAM 16 /* drafting is judged on windows of at least this many drafted tokens, */
#define JUDGE_MODEL 4  /* fewer for a draft model, which must be accepted far more often to pay */
#define PAUSE_START 16  /* plain tokens after a window that did not pay; doubles up to PAUSE_MAX */
#define PAUSE_MAX 256

typedef struct {
    int32_t seq, sampler, n_layers, capacity;
    int32_t context_bound; /* the capacity is the context, not prompt + max_tokens */
    int64_t max_tokens;
    int32_t length;        /* tokens in the target sequence's cache */
    int32_t produced, reason;
    int32_t *history;      /* prompt and generated tokens, for prompt lookup and the draft model */
    int32_t n_history;
    int32_t speculate;     /* 0: plain decoding; 1: prompt lookup; 2: a draft sequence */
    int32_t draft_seq, draft_sampler, draft_layers, draft_len, n_draft;
    int32_t judged_drafted, judged_accepted; /* the current window of drafts (judge_drafts) */
    int32_t pause, paused;  /* the next pause's length; plain tokens left in this one */
    int32_t top_logprobs;  /* -1: the client wants no logprobs */
    int32_t constraint_kind, constraint_len, constraint; /* kind -1: unconstrained; constraint: its handle */
    char *constraint_text;
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

/* Take `token` as the next generated one: 1 to go on, 0 when generation ends (g->reason), or a
 * status. `cached`: the token is already in the target's cache (an accepted draft), so the
 * context cannot be full before it. */
static int32_t take(generation *g, int32_t token, int cached) {
    if (realm_token_is_eog(token)) {
        g->reason = REALM_FINISH_STOP;
        return 0;
    }
    int32_t rc;
    /* Only in plain decoding (see realm_main), where the last step's logits are this token's. */
    if (g->top_logprobs >= 0 && (rc = realm_token_logprobs(g->seq, token, g->top_logprobs)) < 0) return rc;
    g->produced++;
    rc = push_text(g, token);
    if (rc < 0) return rc;
    g->history[g->n_history++] = token;
    if (g->stops.stopped) {
        g->reason = REALM_FINISH_STOP;
        return 0;
    }
    if (g->produced == g->max_tokens) {
        g->reason = REALM_FINISH_LENGTH;
        return 0;
    }
    if (!cached && g->length == g->capacity) {
        g->reason = g->context_bound ? REALM_FINISH_CONTEXT : REALM_FINISH_LENGTH;
        return 0;
    }
    return 1;
}

/* Prompt lookup: the tokens after the latest earlier occurrence of the longest suffix of the history
 * (NGRAM_MIN..NGRAM_MAX tokens) that occurred before. A longer match is likelier to continue alike
 * (in periodic text it picks the right period), the latest among equals is the nearest context. */
static int32_t ngram_draft(const generation *g, int32_t *out, int32_t k) {
    const int32_t *h = g->history;
    int32_t n_h = g->n_history, best = 0, best_end = 0;
    for (int32_t end = n_h - 1; end > 0 && best < NGRAM_MAX; end--) { /* a match h[end-n .. end-1] */
        int32_t n = 0;
        while (n < NGRAM_MAX && n < end && h[end - 1 - n] == h[n_h - 1 - n]) n++;
        if (n > best) best = n, best_end = end;
    }
    if (best < NGRAM_MIN) return 0;
    int32_t count = 0;
    while (count < k && best_end + count < n_h) {
        out[count] = h[best_end + count];
        count++;
    }
    return count;
}

/* Draft k tokens with the draft sequence: catch it up with the history, then sample one at a time. */
static int32_t model_draft(generation *g, int32_t *out, int32_t k) {
    int32_t rc;
    if (g->draft_len < g->n_history) {
        rc = realm_seq_append(g->draft_seq, g->history + g->draft_len, g->n_history - g->draft_len);
        if (rc < 0 || (rc = realm_step(g->draft_seq, g->draft_layers)) < 0) return rc;
        g->draft_len = g->n_history;
    }
    for (int32_t i = 0; i < k; i++) {
        if (i > 0) {
            if ((rc = realm_seq_append(g->draft_seq, &out[i - 1], 1)) < 0) return rc;
            if ((rc = realm_step(g->draft_seq, g->draft_layers)) < 0) return rc;
            g->draft_len++;
        }
        out[i] = realm_sample(g->draft_seq, g->draft_sampler, 0, 0, REALM_BIAS_ADD);
        if (out[i] < 0) return out[i];
    }
    return k;
}

/* Drafting pays when the tokens accepted outweigh what it costs: each drafted token adds a row to the
 * verification step (about a quarter of a decode step on the cpu backend, whose kernels are compute
 * bound at a few rows; 0.3 here, with a margin) and, for a draft model, runs its layers (at least
 * draft_layers / n_layers of a target step, more with its output head). Judged on windows of
 * JUDGE_NGRAM (prompt lookup) or JUDGE_MODEL drafted tokens; when a window does not pay, decode
 * plainly for a while (longer each time in a row), so poor drafts cost a bounded share of the
 * tokens: a list whose items never repeat, or a draft model about as costly as the target. */
static void judge_drafts(generation *g, int32_t drafted, int32_t accepted) {
    g->judged_drafted += drafted;
    g->judged_accepted += accepted;
    int32_t draft_layers = g->speculate == 2 ? g->draft_layers : 0;
    if (g->judged_drafted < (g->speculate == 2 ? JUDGE_MODEL : JUDGE_NGRAM)) return;
    int64_t cost = (int64_t)g->judged_drafted * (10 * draft_layers + 3 * g->n_layers); /* x 10 n_layers */
    if ((int64_t)10 * g->n_layers * g->judged_accepted < cost) {
        g->paused = g->pause;
        g->pause = g->pause < PAUSE_MAX / 2 ? 2 * g->pause : PAUSE_MAX;
        /* A draft as deep as the target cannot pay even when every draft is accepted, and catching
         * it up after each pause costs a prefill: decode plainly from here on. */
        if (10 * draft_layers + 3 * g->n_layers >= 10 * g->n_layers) g->speculate = 0;
    } else {
        g->pause = PAUSE_START;
    }
    g->judged_drafted = g->judged_accepted = 0;
}

/* One target step over `token` and up to n_draft drafts; the next token lands in *next. Returns 1
 * to go on, 0 when generation ended, or a status. */
static int32_t speculative_step(generation *g, int32_t token, int32_t *next) {
    int32_t batch[DRAFT_MAX + 1];
    int32_t *drafts = batch + 1;
    int32_t room = g->capacity - g->length - 1, left = (int32_t)(g->max_tokens - g->produced);
    int32_t k = g->n_draft < room ? g->n_draft : room;
    if (left < k) k = left;
    int32_t n = k <= 0 ? 0 : g->speculate == 1 ? ngram_draft(g, drafts, k) : model_draft(g, drafts, k);
    if (n < 0) return n;
    batch[0] = token;
    int32_t rc = realm_seq_append(g->seq, batch, n + 1);
    if (rc < 0) return rc;
    if (n == 0) { /* nothing to draft: a plain step */
        if ((rc = realm_step(g->seq, g->n_layers)) < 0) return rc;
        g->length++;
        *next = realm_sample(g->seq, g->sampler, 0, 0, REALM_BIAS_ADD);
        return *next < 0 ? *next : 1;
    }
    if ((rc = realm_step_all(g->seq, g->n_layers)) < 0) return rc;
    int32_t accepted = realm_spec_verify(g->seq, g->sampler, g->speculate == 2 ? g->draft_seq : 0, next);
    if (accepted < 0) return accepted;
    g->length += 1 + accepted;
    if (accepted < n && (rc = realm_seq_truncate(g->seq, g->length)) < 0) return rc;
    if (g->speculate == 2) { /* the draft keeps the accepted drafts it has already run */
        int32_t keep = g->n_history + (accepted < n - 1 ? accepted : n - 1);
        if ((rc = realm_seq_truncate(g->draft_seq, keep)) < 0) return rc;
        g->draft_len = keep;
    }
    judge_drafts(g, n, accepted);
    g->n_draft = accepted == n ? (n + 2 < DRAFT_MAX ? n + 2 : DRAFT_MAX) : accepted + 1;
    for (int32_t i = 0; i < accepted; i++)
        if ((rc = take(g, drafts[i], 1)) <= 0) return rc;
    return 1;
}

static int32_t run(generation *g, const int32_t *prompt, int32_t n_prompt) {
    int32_t rc = realm_seq_append(g->seq, prompt, n_prompt);
    if (rc < 0) return rc;
    if (g->constraint_kind >= 0) { /* after the prompt: every token appended from here on advances it */
        g->constraint = realm_constraint_open(g->seq, g->constraint_kind, g->constraint_text, g->constraint_len);
        if (g->constraint < 0) return realm_fail(g->constraint, "cannot open the constraint");
    }
    if ((rc = realm_step(g->seq, g->n_layers)) < 0) return rc;
    g->length = n_prompt;
    g->reason = REALM_FINISH_LENGTH;
    int32_t token = realm_sample(g->seq, g->sampler, 0, 0, REALM_BIAS_ADD);
    while (token >= 0 && (rc = take(g, token, 0)) > 0) {
        if (g->speculate && g->paused == 0) {
            if ((rc = speculative_step(g, token, &token)) <= 0) break;
            continue;
        }
        if (g->paused > 0) g->paused--;
        if ((rc = realm_seq_append(g->seq, &token, 1)) < 0) return rc;
        if (g->constraint_kind >= 0 && (rc = realm_constraint_done(g->constraint)) != 0) {
            if (rc < 0) return rc;
            g->reason = REALM_FINISH_STOP; /* the grammar is complete: no step for its end token */
            break;
        }
        if ((rc = realm_step(g->seq, g->n_layers)) < 0) return rc;
        g->length++;
        token = realm_sample(g->seq, g->sampler, 0, 0, REALM_BIAS_ADD);
    }
    if (token < 0) return token;
    if (rc < 0) return rc;
    if ((rc = push_text(g, REALM_TEXT_FLUSH)) < 0) return rc;
    if (!g->stops.stopped && (rc = emit(g->stops.held, g->stops.n_held)) < 0) return rc;
    return realm_result_report(g->reason, n_prompt, g->produced);
}

/* "constraint": {"kind": ..., "text": ...}; kind -1 when the request has none. */
static int32_t read_constraint(generation *g, json_slice req) {
    static const char *kinds[] = {"json_schema", "json_object", "regex", "lark"};
    json_slice value;
    char *kind;
    g->constraint_kind = -1;
    if (!json_get(req, "constraint", &value)) return REALM_OK;
    int32_t n = json_get_string(value, "kind", realm_alloc, &kind);
    for (int32_t i = 0; i < 4 && g->constraint_kind < 0; i++)
        if (n == realm_strlen(kinds[i]) && memcmp(kind, kinds[i], n) == 0) g->constraint_kind = i;
    g->constraint_len = json_get_string(value, "text", realm_alloc, &g->constraint_text);
    if (g->constraint_kind < 0 || g->constraint_len < 0)
        return realm_fail(REALM_ERR_INVALID_ARGUMENT, "constraint needs a \"kind\" (json_schema, json_object, "
                                                      "regex, lark) and a \"text\" string");
    return REALM_OK;
}

/* "lora": the alias of one of the tenant's adapters, applied at its bound scale. */
static int32_t attach_lora(int32_t seq, json_slice req) {
    char *alias;
    json_slice value;
    if (!json_get(req, "lora", &value)) return REALM_OK;
    int32_t n = json_get_string(req, "lora", realm_alloc, &alias);
    if (n <= 0) return realm_fail(REALM_ERR_INVALID_ARGUMENT, "lora must be the alias of a bound adapter");
    int32_t adapter = realm_adapter_find(alias, n);
    if (adapter < 0) return realm_fail(adapter, "no such LoRA adapter for this tenant");
    return realm_seq_set_adapter(seq, adapter, 0);
}

/* Set up the request's "speculative" mode; a draft model is opened by its name. */
static int32_t open_speculation(generation *g, json_slice req, const char *request, int32_t request_len) {
    char *mode;
    int32_t n = json_get_string(req, "speculative", realm_alloc, &mode);
    g->speculate = g->draft_seq = 0;
    g->n_draft = DRAFT_START;
    g->judged_drafted = g->judged_accepted = g->paused = 0;
    g->pause = PAUSE_START;
    json_slice value;
    if (!json_get(req, "speculative", &value)) return REALM_OK;
    if (n == 5 && memcmp(mode, "ngram", 5) == 0) {
        g->speculate = 1;
        return REALM_OK;
    }
    if (n < 0 || !((n > 5 && memcmp(mode, "self:", 5) == 0) || (n > 6 && memcmp(mode, "draft:", 6) == 0)))
        return realm_fail(REALM_ERR_INVALID_ARGUMENT, "speculative must be \"ngram\", \"draft:PATH\" or \"self:N\"");
    int32_t draft = realm_draft_open(mode, n);
    if (draft < 0) return realm_fail(draft, "cannot open the speculative draft");
    g->draft_seq = realm_draft_seq_open(draft, g->capacity);
    if (g->draft_seq < 0) return g->draft_seq;
    g->draft_layers = realm_seq_layers(g->draft_seq);
    g->draft_sampler = realm_sampler_new(request, request_len);
    if (g->draft_sampler < 0) return g->draft_sampler;
    g->draft_len = 0;
    g->speculate = 2;
    return REALM_OK;
}

__attribute__((export_name("realm_main"))) int32_t realm_main(const char *request, int32_t request_len) {
    json_slice req = {request, request_len}, value;
    char *prompt;
    int32_t prompt_len = json_get_string(req, "prompt", realm_alloc, &prompt);
    if (prompt_len < 0) return realm_fail(REALM_ERR_INVALID_ARGUMENT, "request needs a \"prompt\" string");
    int64_t max_tokens = DEFAULT_MAX_TOKENS;
    if (json_get(req, "max_tokens", &value) && (!json_int(value, &max_tokens) || max_tokens < 1))
        return realm_fail(REALM_ERR_INVALID_ARGUMENT, "max_tokens must be a positive integer");

    generation g;
    int32_t rc = read_stops(req, &g.stops);
    if (rc < 0) return rc;
    realm_model_info info;
    if ((rc = realm_model_info_get(&info, sizeof info)) < 0) return rc;
    g.n_layers = info.n_layers;

    int special = 0;
    if (json_get(req, "special", &value) && !json_bool(value, &special))
        return realm_fail(REALM_ERR_INVALID_ARGUMENT, "special must be true or false");
    int32_t flags = REALM_TOKENIZE_ADD_SPECIAL | (special ? REALM_TOKENIZE_PARSE_SPECIAL : 0);
    int64_t top_logprobs = -1;
    if (json_get(req, "logprobs", &value) && (!json_int(value, &top_logprobs) || top_logprobs < 0 || top_logprobs > 20))
        return realm_fail(REALM_ERR_INVALID_ARGUMENT, "logprobs must be an integer 0..20");
    g.top_logprobs = (int32_t)top_logprobs;
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
    g.max_tokens = max_tokens;
    g.produced = g.n_history = 0;
    g.history = realm_alloc((g.capacity + DRAFT_MAX + 1) * 4);
    g.text = realm_alloc(TEXT_CAP);
    if (!g.history || !g.text) return realm_fail(REALM_ERR_INTERNAL, "out of memory");
    for (int32_t i = 0; i < n_ids; i++) g.history[g.n_history++] = ids[i];
    g.sampler = realm_sampler_new(request, request_len); /* the host reads the sampling keys */
    if (g.sampler < 0) return realm_fail(g.sampler, "bad sampling parameters");
    g.seq = realm_seq_open(g.capacity);
    if (g.seq < 0) return g.seq;
    if ((rc = attach_lora(g.seq, req)) < 0) return rc;
    g.speculate = g.paused = 0;
    if ((rc = read_constraint(&g, req)) < 0) return rc;
    if (g.top_logprobs < 0 && (rc = open_speculation(&g, req, request, request_len)) < 0) return rc;
    rc = run(&g, ids, n_ids);
    realm_seq_close(g.seq);
    realm_sampler_free(g.sampler);
    return rc;
}
