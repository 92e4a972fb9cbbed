/*
 * choice.c: constrained decoding to a fixed list of choices, by masking logits inside the guest.
 *
 * Request (JSON object): "prompt" (string), "choices" (array of 1..64 non-empty strings), and
 * sampling parameters for the host's sampler. The output is exactly the text of one choice's
 * tokens, whatever the model or the sampling parameters.
 *
 * How: every choice is tokenized (without BOS). At each step the guest collects the next token
 * of every choice still consistent with what was generated and lets the host sample among those
 * tokens only (REALM_BIAS_ALLOW). When a choice is complete but a longer one is still possible,
 * EOS is allowed too and ends on the complete one. A lone candidate is forced without sampling,
 * and forced tokens are run through the model together, in the step before the next real choice.
 * The host's sampler never sees any other token, so the constraint holds by construction.
 */
#define REALM_IMPLEMENTATION
#include "realm.h"
#include "json.h"

#define MAX_CHOICES 64
#define MAX_CHOICE_TOKENS 256

typedef struct {
    int32_t *ids;
    int32_t n;
    int alive;
} choice;

static choice choices[MAX_CHOICES];
static int32_t n_choices;
static realm_bias allowed[MAX_CHOICES + 1];

static int32_t read_choices(json_slice request) {
    json_slice array, item;
    if (!json_get(request, "choices", &array)) return realm_fail(REALM_ERR_INVALID_ARGUMENT, "request has no choices");
    n_choices = 0;
    while (json_array_next(&array, &item)) {
        if (n_choices == MAX_CHOICES) return realm_fail(REALM_ERR_INVALID_ARGUMENT, "more than 64 choices");
        char *text = realm_alloc(item.n);
        int32_t len = text ? json_string(item, text, item.n) : -1;
        if (len <= 0) return realm_fail(REALM_ERR_INVALID_ARGUMENT, "choices must be non-empty strings");
        choice *c = &choices[n_choices++];
        c->ids = realm_alloc(MAX_CHOICE_TOKENS * 4);
        c->n = realm_tokenize(text, len, 0, c->ids, MAX_CHOICE_TOKENS);
        if (c->n < 0) return c->n;
        if (c->n == 0 || c->n > MAX_CHOICE_TOKENS)
            return realm_fail(REALM_ERR_INVALID_ARGUMENT, "a choice tokenizes to no tokens or too many");
        c->alive = 1;
    }
    return n_choices ? REALM_OK : realm_fail(REALM_ERR_INVALID_ARGUMENT, "choices is empty");
}

/* The tokens allowed at position pos; *complete is a live choice that ends here, or -1. */
static int32_t allowed_tokens(int32_t pos, int32_t eos, int32_t *complete) {
    int32_t n = 0;
    *complete = -1;
    for (int32_t i = 0; i < n_choices; i++) {
        if (!choices[i].alive) continue;
        if (choices[i].n == pos) {
            *complete = i;
            continue;
        }
        int32_t token = choices[i].ids[pos], seen = 0;
        for (int32_t j = 0; j < n; j++) seen |= allowed[j].token == token;
        if (!seen) {
            allowed[n].token = token;
            allowed[n++].bias = 0.0f;
        }
    }
    if (*complete >= 0 && n > 0 && eos >= 0) {
        allowed[n].token = eos;
        allowed[n++].bias = 0.0f;
    }
    return n;
}

__attribute__((export_name("realm_main"))) int32_t realm_main(const char *request, int32_t request_len) {
    json_slice req = {request, request_len};
    char *prompt;
    int32_t prompt_len = json_get_string(req, "prompt", realm_alloc, &prompt);
    if (prompt_len < 0) return realm_fail(REALM_ERR_INVALID_ARGUMENT, "request needs a \"prompt\" string");
    int32_t rc = read_choices(req);
    if (rc < 0) return rc;
    realm_model_info info;
    if ((rc = realm_model_info_get(&info, sizeof info)) < 0) return rc;

    int32_t cap = prompt_len + 8;
    int32_t *ids = realm_alloc(cap * 4);
    int32_t n_ids = realm_tokenize(prompt, prompt_len, REALM_TOKENIZE_ADD_SPECIAL, ids, cap);
    if (n_ids < 0) return n_ids;
    if (n_ids == 0 || n_ids > cap) return realm_fail(REALM_ERR_INVALID_ARGUMENT, "prompt tokenizes to nothing");
    if (n_ids + MAX_CHOICE_TOKENS > info.n_ctx) return realm_fail(REALM_ERR_CAPACITY, "prompt is too long");

    int32_t sampler = realm_sampler_new(request, request_len);
    if (sampler < 0) return realm_fail(sampler, "bad sampling parameters");
    int32_t seq = realm_seq_open(n_ids + MAX_CHOICE_TOKENS);
    if (seq < 0) return seq;
    if ((rc = realm_seq_append(seq, ids, n_ids)) < 0) return rc;

    /* Forced tokens are only appended; one step runs them all before the next real choice. */
    int32_t generated[MAX_CHOICE_TOKENS], pos = 0, complete = -1, pending = 1;
    for (;;) {
        int32_t n_allowed = allowed_tokens(pos, info.eos_id, &complete);
        if (n_allowed == 0) break; /* only a complete choice is left */
        int32_t token = allowed[0].token;
        if (n_allowed > 1) {
            if (pending && (rc = realm_step(seq, info.n_layers)) < 0) return rc;
            pending = 0;
            token = realm_sample(seq, sampler, allowed, n_allowed, REALM_BIAS_ALLOW);
            if (token < 0) return token;
        }
        if (complete >= 0 && token == info.eos_id) break;
        generated[pos] = token;
        for (int32_t i = 0; i < n_choices; i++)
            choices[i].alive &= choices[i].n > pos && choices[i].ids[pos] == token;
        pos++;
        if ((rc = realm_seq_append(seq, &token, 1)) < 0) return rc;
        pending = 1;
    }
    realm_seq_close(seq);
    realm_sampler_free(sampler);

    /* The text of the generated tokens, decoded by the host, is what the client gets. */
    int32_t n_text = realm_detokenize(generated, pos, 0, 0);
    if (n_text < 0) return n_text;
    char *text = realm_alloc(n_text);
    if ((rc = realm_detokenize(generated, pos, text, n_text)) < 0) return rc;
    return realm_emit(text, n_text);
}
