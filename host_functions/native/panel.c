/* Token panels (see realm_native.h): the quantized activation rows of a call regrouped so that one
 * vector lane holds one token. Built once per call, before the threads split the weight rows; tokens
 * past the last of a panel are zeros (their lanes are computed and never stored).
 */
#include "realm_native.h"

HIDDEN int64_t panel_block_bytes(int act) {
    switch (act) {
    case ACT_Q8_0: case ACT_Q8_1: return (int64_t)sizeof(xpanel_q8);
    case ACT_Q8_K: return (int64_t)sizeof(xpanel_q8_k);
    default: return 0;
    }
}

static void build_q8(int act, const uint8_t *rows, size_t row_bytes, int nt, int64_t n_blocks, xpanel_q8 *out) {
    for (int64_t ib = 0; ib < n_blocks; ib++) {
        xpanel_q8 *p = out + ib;
        memset(p, 0, sizeof *p);
        for (int t = 0; t < nt; t++) {
            /* Q8_0 and Q8_1 blocks differ only in Q8_1's s, which sits between d and the quants */
            const uint8_t *b = rows + (size_t)t * row_bytes + (size_t)ib * (act == ACT_Q8_1 ? 36 : 34);
            const int8_t *qs = (const int8_t *)(b + (act == ACT_Q8_1 ? 4 : 2));
            uint16_t d, s = 0;
            memcpy(&d, b, 2);
            if (act == ACT_Q8_1) memcpy(&s, b + 2, 2);
            p->d[t] = f16_to_f32(d), p->s[t] = f16_to_f32(s);
            int32_t sum = 0;
            for (int j = 0; j < QK; j++) sum += qs[j];
            p->sum[t] = sum;
            for (int g = 0; g < QK / 4; g++) memcpy(p->qs[g][t], qs + 4 * g, 4);
        }
    }
}

static void build_q8_k(const uint8_t *rows, size_t row_bytes, int nt, int64_t n_blocks, xpanel_q8_k *out) {
    for (int64_t ib = 0; ib < n_blocks; ib++) {
        xpanel_q8_k *p = out + ib;
        memset(p, 0, sizeof *p);
        for (int t = 0; t < nt; t++) {
            const block_q8_K *b = (const block_q8_K *)(rows + (size_t)t * row_bytes) + ib;
            p->d[t] = b->d;
            for (int j = 0; j < QK_K / 16; j++) p->bsum[j][t] = b->bsums[j];
            for (int g = 0; g < QK_K / 4; g++) memcpy(p->qs[g][t], b->qs + 4 * g, 4);
        }
    }
}

/* One panel of nt <= PANEL_TOKENS tokens from activation rows row_bytes apart, into n_blocks blocks. */
HIDDEN void build_panel(int act, const uint8_t *rows, size_t row_bytes, int nt, int64_t n_blocks, uint8_t *out) {
    if (act == ACT_Q8_K) build_q8_k(rows, row_bytes, nt, n_blocks, (xpanel_q8_k *)out);
    else build_q8(act, rows, row_bytes, nt, n_blocks, (xpanel_q8 *)out);
}
