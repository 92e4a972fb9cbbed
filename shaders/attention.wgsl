// Causal grouped-query attention of new queries over a GPU-resident KV cache.
//
//   q:   (n_tokens, n_head, head_dim) f32, query t is at position pos + t
//   K,V: (capacity, n_head_kv, head_dim) of one layer, f32 bits or packed f16 pairs (KV_F16)
//   out: (n_tokens, n_head, head_dim) f32
// Query head h reads KV head h / (n_head / n_head_kv). Query position p attends to keys
// lo..p, lo = max(0, p - window + 1) when window > 0 (sliding-window layers), else 0.
//
// Two passes over the keys, so no score buffer of context length is needed and the softmax is
// numerically stable: pass 1 gives each thread a running (max, sum of exp) over its keys, merged
// across the workgroup; pass 2 recomputes each score, turns it into its final probability and
// accumulates probability * V, WG keys at a time. With KV_F16 the kernel rounds the query and the
// probabilities to f16 first, as llama.cpp's f16-cache matmuls (KQ and KQV) do; the oracle's logits
// carry those roundings, so mirroring them is what matches it.
// PAGED: the caches are one layer of the paged KV pool, (pool slots, n_head_kv, head_dim), and the
// queries are rows of a batched step from many sequences: query t is at position rows[2t] of its
// sequence, whose block table starts at table[rows[2t+1]]; its key j lives in slot
// table[start + j / BLOCK_TOKENS] * BLOCK_TOKENS + j % BLOCK_TOKENS. The arithmetic is the same in
// both modes (same keys, same order), so where a sequence's blocks lie never changes its result.
// One workgroup per (head, token): wid.x = head, wid.y = token. Needs rounding.wgsl in front.

struct Params {
    n_tokens: u32,
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,   // <= MAX_HEAD_DIM
    pos: u32,
    window: u32,     // 0: unlimited
    scale: f32,      // usually 1/sqrt(head_dim)
    _pad0: u32,
}

const MAX_HEAD_DIM: u32 = 512u;
const NEG_BIG: f32 = -3.0e38;  // "no key yet": exp(NEG_BIG - finite) underflows to 0 without inf - inf

override WG: u32 = 64;          // keys per chunk and threads per workgroup; a power of two
override KV_F16: bool = false;
override PAGED: bool = false;
override BLOCK_TOKENS: u32 = 16;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> rows: array<u32>;   // PAGED: (n_tokens, 2) position, table start
@group(0) @binding(6) var<storage, read> table: array<u32>;  // PAGED: the step's block tables

var<workgroup> q_row: array<f32, MAX_HEAD_DIM>;
var<workgroup> acc: array<f32, MAX_HEAD_DIM>;
var<workgroup> probs: array<f32, WG>;
var<workgroup> key_rows: array<u32, WG>;  // cache row of each key of the chunk in pass 2

var<private> table_start: u32;

fn load_k(i: u32) -> f32 {
    if (KV_F16) {
        return unpack2x16float(k_cache[i / 2u])[i % 2u];
    }
    return bitcast<f32>(k_cache[i]);
}

fn load_v(i: u32) -> f32 {
    if (KV_F16) {
        return unpack2x16float(v_cache[i / 2u])[i % 2u];
    }
    return bitcast<f32>(v_cache[i]);
}

// The cache row (position, or pool slot when PAGED) holding key j of this workgroup's sequence.
fn key_row(j: u32) -> u32 {
    if (PAGED) {
        return table[table_start + j / BLOCK_TOKENS] * BLOCK_TOKENS + j % BLOCK_TOKENS;
    }
    return j;
}

// (scaled) q . K[key]; k_base is the key's first element.
fn score(k_base: u32, hd: u32) -> f32 {
    var s = 0.0;
    for (var d = 0u; d < hd; d++) {
        s += q_row[d] * load_k(k_base + d);
    }
    return s * params.scale;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wid.x;
    let t = wid.y;
    let hd = params.head_dim;
    let kv_stride = params.n_head_kv * hd;  // elements per cached position
    let kv_base = (head / (params.n_head / params.n_head_kv)) * hd;
    var p = params.pos + t;
    if (PAGED) {
        p = rows[2u * t];
        table_start = rows[2u * t + 1u];
    }
    var lo = 0u;
    if (params.window > 0u && p + 1u > params.window) {
        lo = p + 1u - params.window;
    }
    let q_base = (t * params.n_head + head) * hd;
    for (var d = lid; d < hd; d += WG) {
        var v = q[q_base + d];
        if (KV_F16) {
            v = round_f16(v);
        }
        q_row[d] = v;
        acc[d] = 0.0;
    }
    workgroupBarrier();

    // Pass 1: thread lid sees keys lo + lid, lo + lid + WG, ...
    var m = NEG_BIG;  // running max of this thread's scores
    var l = 0.0;      // running sum of exp(score - m)
    for (var j = lo + lid; j <= p; j += WG) {
        let s = score(key_row(j) * kv_stride + kv_base, hd);
        let m_new = max(m, s);
        l = l * exp(m - m_new) + exp(s - m_new);
        m = m_new;
    }
    let m_all = workgroup_max(lid, m);
    let inv_sum = 1.0 / workgroup_sum(lid, l * exp(m - m_all));

    // Pass 2: probabilities of WG keys at a time, then each thread accumulates its own dims.
    for (var start = lo; start <= p; start += WG) {
        let j = start + lid;
        var e = 0.0;
        var kr = 0u;
        if (j <= p) {
            kr = key_row(j);
            e = exp(score(kr * kv_stride + kv_base, hd) - m_all) * inv_sum;
            if (KV_F16) {
                e = round_f16(e);
            }
        }
        probs[lid] = e;
        key_rows[lid] = kr;
        workgroupBarrier();
        let n_keys = min(WG, p + 1u - start);
        for (var d = lid; d < hd; d += WG) {
            var a = acc[d];
            for (var jj = 0u; jj < n_keys; jj++) {
                a += probs[jj] * load_v(key_rows[jj] * kv_stride + kv_base + d);
            }
            acc[d] = a;
        }
        workgroupBarrier();  // probs and key_rows are rewritten by the next chunk
    }
    for (var d = lid; d < hd; d += WG) {
        out[q_base + d] = acc[d];
    }
}
