/*
 * json.h: just enough JSON for a guest to read its request, with no libc.
 *
 * The request is one JSON object. json_get finds a top-level key and returns its raw value as a
 * slice; json_string / json_int / json_bool / json_array_next turn values into C data. Every function checks
 * bounds against the slice it is given and reports malformed input by returning 0 or -1.
 */
#ifndef REALM_JSON_H
#define REALM_JSON_H

#include <stdint.h>

typedef struct {
    const char *p;
    int32_t n;
} json_slice;

static inline const char *json_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* The end of the string starting at p (which points at its opening quote), or 0. */
static inline const char *json_string_end(const char *p, const char *end) {
    for (p++; p < end; p++) {
        if (*p == '\\') p++;
        else if (*p == '"') return p + 1;
    }
    return 0;
}

/* The end of the value starting at p, or 0 if it is malformed or runs past end. */
static inline const char *json_value_end(const char *p, const char *end) {
    if (p >= end) return 0;
    if (*p == '"') return json_string_end(p, end);
    if (*p == '{' || *p == '[') {
        int32_t depth = 0;
        while (p < end) {
            if (*p == '"') {
                p = json_string_end(p, end);
                if (!p) return 0;
                continue;
            }
            if (*p == '{' || *p == '[') depth++;
            if (*p == '}' || *p == ']') {
                if (--depth == 0) return p + 1;
            }
            p++;
        }
        return 0;
    }
    const char *start = p;
    while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n' && *p != '\r' && *p != '\t')
        p++;
    return p > start ? p : 0;
}

/* Find top-level `key` (plain ASCII, no escapes) in the object `obj`; 1 and its value if found. */
static inline int json_get(json_slice obj, const char *key, json_slice *value) {
    const char *p = obj.p, *end = obj.p + obj.n;
    p = json_ws(p, end);
    if (p >= end || *p != '{') return 0;
    p = json_ws(p + 1, end);
    while (p < end && *p == '"') {
        const char *kend = json_string_end(p, end);
        if (!kend) return 0;
        const char *k = p + 1;
        int32_t klen = (int32_t)(kend - 1 - k), i = 0;
        while (i < klen && key[i] && key[i] == k[i]) i++;
        int match = i == klen && key[i] == 0;
        p = json_ws(kend, end);
        if (p >= end || *p != ':') return 0;
        p = json_ws(p + 1, end);
        const char *vend = json_value_end(p, end);
        if (!vend) return 0;
        if (match) {
            value->p = p;
            value->n = (int32_t)(vend - p);
            return 1;
        }
        p = json_ws(vend, end);
        if (p < end && *p == ',') p = json_ws(p + 1, end);
    }
    return 0;
}

static inline int json_hex4(const char *p, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static inline int32_t json_put_utf8(char *out, int32_t at, int32_t cap, uint32_t cp) {
    char buf[4];
    int32_t n;
    if (cp < 0x80) { buf[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { buf[0] = (char)(0xC0 | (cp >> 6)); buf[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) {
        buf[0] = (char)(0xE0 | (cp >> 12)); buf[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        buf[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
    } else {
        buf[0] = (char)(0xF0 | (cp >> 18)); buf[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        buf[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); buf[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
    }
    if (at + n > cap) return -1;
    for (int32_t i = 0; i < n; i++) out[at + i] = buf[i];
    return at + n;
}

/* Decode the JSON string `v` into UTF-8 at out (at most cap bytes); its length, or -1.
 * The decoded text is never longer than v.n, so cap = v.n always suffices. */
static inline int32_t json_string(json_slice v, char *out, int32_t cap) {
    const char *p = v.p, *end = v.p + v.n;
    if (v.n < 2 || *p != '"' || end[-1] != '"') return -1;
    int32_t n = 0;
    for (p++, end--; p < end; p++) {
        uint32_t cp = (unsigned char)*p;
        if (cp == '\\') {
            if (++p >= end) return -1;
            switch (*p) {
            case 'n': cp = '\n'; break;
            case 't': cp = '\t'; break;
            case 'r': cp = '\r'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'u':
                if (end - p < 5 || !json_hex4(p + 1, &cp)) return -1;
                p += 4;
                if (cp >= 0xD800 && cp < 0xDC00 && end - p >= 7 && p[1] == '\\' && p[2] == 'u') {
                    uint32_t lo;
                    if (json_hex4(p + 3, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        p += 6;
                    }
                }
                if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD; /* a lone surrogate */
                break;
            default: cp = (unsigned char)*p; /* \" \\ \/ */
            }
            n = json_put_utf8(out, n, cap, cp);
            if (n < 0) return -1;
        } else {
            if (n >= cap) return -1;
            out[n++] = (char)cp; /* raw UTF-8 bytes pass through */
        }
    }
    return n;
}

/* An integer value (no fraction or exponent); 1 on success. */
/* The string at `key` of obj, decoded into a buffer from `alloc`; its length, or -1 if absent or not a string. */
static inline int32_t json_get_string(json_slice obj, const char *key, void *(*alloc)(int32_t), char **out) {
    json_slice value;
    if (!json_get(obj, key, &value)) return -1;
    *out = alloc(value.n);
    return *out ? json_string(value, *out, value.n) : -1;
}

static inline int json_int(json_slice v, int64_t *out) {
    const char *p = v.p, *end = v.p + v.n;
    int neg = p < end && *p == '-';
    if (neg) p++;
    if (p >= end) return 0;
    int64_t x = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9' || x > 100000000000000LL) return 0;
        x = x * 10 + (*p - '0');
    }
    *out = neg ? -x : x;
    return 1;
}

/* true or false; 0 for any other value. */
static inline int json_bool(json_slice v, int *out) {
    static const char t[] = "true", f[] = "false";
    int is_true = v.n == 4, is_false = v.n == 5;
    for (int32_t i = 0; i < v.n; i++) {
        is_true = is_true && v.p[i] == t[i];
        is_false = is_false && v.p[i] == f[i];
    }
    if (!is_true && !is_false) return 0;
    *out = is_true;
    return 1;
}

/* Iterate an array: start with *cursor = the array's slice; each call yields the next item. */
static inline int json_array_next(json_slice *cursor, json_slice *item) {
    const char *p = cursor->p, *end = cursor->p + cursor->n;
    p = json_ws(p, end);
    if (p < end && (*p == '[' || *p == ',')) p = json_ws(p + 1, end);
    if (p >= end || *p == ']') return 0;
    const char *vend = json_value_end(p, end);
    if (!vend) return 0;
    item->p = p;
    item->n = (int32_t)(vend - p);
    p = json_ws(vend, end);
    cursor->p = p;
    cursor->n = (int32_t)(end - p);
    return 1;
}

#endif /* REALM_JSON_H */
