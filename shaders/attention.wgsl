// Causal grouped-query attention of new queries over a GPU-resident KV cache.
//
//   q:   (n_tokens, n_head, head_dim) f32, query t is at position pos + t
//   K,V: (capacity, n_head_kv, head_dim) of one layer, f32 bits or packed f16 pairs (KV_F16)
//   out: (n_tokens, n_head, head_dim) f32
// Query head h reads KV head h / (n_head / n_head_kv). Query position p attends to keys
// lo..p, lo = max(0, p - window + 1) when window > 0 (sliding-window layers), else 0.
// Softmax is computed online over chunks of WG keys (running max and sum, rescaled per chunk),
// so it is numerically stable and needs no score buffer of context length.
// One workgroup per (head, token): wid.x = head, wid.y = token.

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

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> q_row: array<f32, MAX_HEAD_DIM>;
var<workgroup> acc: array<f32, MAX_HEAD_DIM>;
var<workgroup> probs: array<f32, WG>;
var<workgroup> red: array<f32, WG>;

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

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            red[lid] = max(red[lid], red[lid + stride]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wid.x;
    let t = wid.y;
    let hd = params.head_dim;
    let kv_head = head / (params.n_head / params.n_head_kv);
    let kv_stride = params.n_head_kv * hd;  // elements per cached position
    let kv_base = kv_head * hd;
    let p = params.pos + t;
    var lo = 0u;
    if (params.window > 0u && p + 1u > params.window) {
        lo = p + 1u - params.window;
    }
    let q_base = (t * params.n_head + head) * hd;
    for (var d = lid; d < hd; d += WG) {
        q_row[d] = q[q_base + d] * params.scale;
        acc[d] = 0.0;
    }
    workgroupBarrier();

    var m = NEG_BIG;  // running max of scores
    var l = 0.0;      // running sum of exp(score - m)
    for (var start = lo; start <= p; start += WG) {
        let j = start + lid;
        var s = NEG_BIG;
        if (j <= p) {
            s = 0.0;
            let k_base = j * kv_stride + kv_base;
            for (var d = 0u; d < hd; d++) {
                s += q_row[d] * load_k(k_base + d);
            }
        }
        let m_new = max(m, reduce_max(lid, s));
        var e = 0.0;
        if (j <= p) {
            e = exp(s - m_new);
        }
        probs[lid] = e;
        let corr = exp(m - m_new);
        l = l * corr + reduce_sum(lid, e);  // reduce_sum's barriers also publish probs
        let n_keys = min(WG, p + 1u - start);
        for (var d = lid; d < hd; d += WG) {
            var a = acc[d] * corr;
            for (var jj = 0u; jj < n_keys; jj++) {
                a += probs[jj] * load_v((start + jj) * kv_stride + kv_base + d);
            }
            acc[d] = a;
        }
        m = m_new;
        workgroupBarrier();  // probs is rewritten by the next chunk
    }
    let inv_l = 1.0 / l;
    for (var d = lid; d < hd; d += WG) {
        out[q_base + d] = acc[d] * inv_l;
    }
}
