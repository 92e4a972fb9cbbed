// Rotary position embedding of attention heads, optionally preceded by a per-head RMSNorm
// (gemma3's Q/K norms), writing f32 or packed f16 (the KV cache).
//
// Input rows are heads: src[src_offset + (t*n_heads + h)*head_dim + d] for token t at position
// pos + t. For dimension pair i (0 <= i < head_dim/2):
//   theta = (pos + t) * base^(-2i/head_dim) / factors[t, i]      (factors = 1 without HAS_FACTORS)
// with the factors of each token's own sequence (Llama 3.1's rope_freqs; LongRoPE's short or long
// set, chosen by the context the sequence is set up for), and cos, sin multiplied by mscale
// (LongRoPE's attn_factor; 1 elsewhere), as ggml's rope does.
//   llama (NEOX = false) rotates interleaved pairs (x[2i], x[2i+1]);
//   NeoX  (NEOX = true, gemma3) rotates halves (x[i], x[i + head_dim/2]).
// With NORM, x is first replaced by x / rms(x) * norm_w (per head, weights as stored).
// ROTATE = false skips the rotation: a plain (optionally normalized) copy/convert, used to store
// V rows into an f16 or f32 KV cache with the same kernel.
//
// Output element e of the rotated block goes to dst[dst_offset + e]: as f32 bits (OUT_F16 = false)
// or as half of a packed f16 pair (OUT_F16 = true; dst_offset is even, counted in f16 elements).
//
// ROW_POSITIONS takes token t's position from rows[2t] instead of pos + t (a batched step's rows
// come from many sequences). PAGED (with ROW_POSITIONS) stores token t's heads at its KV-cache
// slot instead of at row t: slot = table[rows[2t+1] + p / BLOCK_TOKENS] * BLOCK_TOKENS + p % BLOCK_TOKENS,
// where rows[2t+1] is where the token's sequence's block table starts in `table` (the paged KV
// pool: dst holds (pool slots, n_heads, head_dim) of one layer).
// One workgroup per (token, head) row; rows = wid.x + wid.y * num_workgroups.x.
// Needs rounding.wgsl in front (f16 output rounds to nearest even, as ggml's cache store does).

struct Params {
    n_rows: u32,       // n_tokens * n_heads
    n_heads: u32,
    head_dim: u32,     // even, <= MAX_HEAD_DIM
    pos: u32,          // position of token 0
    src_offset: u32,   // in f32 elements
    dst_offset: u32,   // in output elements (f32 or f16)
    base: f32,         // rope frequency base of this layer
    eps: f32,          // RMSNorm epsilon (NORM only)
    mscale: f32,       // multiplies cos and sin
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const MAX_HEAD_DIM: u32 = 512u;
const TAU: f32 = 6.283185307179586;

override WG: u32 = 64;
override NORM: bool = false;
override ROTATE: bool = true;
override NEOX: bool = false;
override HAS_FACTORS: bool = false;
override OUT_F16: bool = false;
override ROW_POSITIONS: bool = false;
override PAGED: bool = false;
override BLOCK_TOKENS: u32 = 16;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> norm_w: array<f32>;   // (head_dim,), bound to anything without NORM
@group(0) @binding(3) var<storage, read> factors: array<f32>;  // (n_tokens, head_dim/2), anything without HAS_FACTORS
@group(0) @binding(4) var<storage, read_write> dst: array<u32>;
@group(0) @binding(5) var<storage, read> rows: array<u32>;    // (n_tokens, 2): position, table start; ROW_POSITIONS
@group(0) @binding(6) var<storage, read> table: array<u32>;   // block tables of the step's sequences; PAGED

var<workgroup> row_buf: array<f32, MAX_HEAD_DIM>;

fn row_inv_rms(lid: u32, base: u32, n: u32) -> f32 {
    var sum = 0.0;
    for (var d = lid; d < n; d += WG) {
        let v = src[base + d];
        sum += v * v;
    }
    return inverseSqrt(workgroup_sum(lid, sum) / f32(n) + params.eps);
}

// Angle of pair i at position p, reduced to [0, 2pi) because WGSL only bounds sin/cos error there.
fn angle(p: u32, t: u32, i: u32, n: u32) -> f32 {
    let inv_freq = exp2(-f32(2u * i) / f32(n) * log2(params.base));
    var theta = f32(p) * inv_freq;
    if (HAS_FACTORS) {
        theta /= factors[t * (n / 2u) + i];
    }
    return theta - TAU * floor(theta / TAU);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * groups.x;
    if (row >= params.n_rows) {
        return;
    }
    let n = params.head_dim;
    let half = n / 2u;
    let base = params.src_offset + row * n;
    var scale = 1.0;
    if (NORM) {
        scale = row_inv_rms(lid, base, n);
    }
    let t = row / params.n_heads;
    var p = params.pos + t;
    var dst_row = row;
    if (ROW_POSITIONS) {
        p = rows[2u * t];
    }
    if (PAGED) {
        let slot = table[rows[2u * t + 1u] + p / BLOCK_TOKENS] * BLOCK_TOKENS + p % BLOCK_TOKENS;
        dst_row = slot * params.n_heads + row % params.n_heads;
    }
    for (var i = lid; i < half; i += WG) {
        var i0 = 2u * i;
        var i1 = 2u * i + 1u;
        if (NEOX) {
            i0 = i;
            i1 = i + half;
        }
        var x0 = src[base + i0] * scale;
        var x1 = src[base + i1] * scale;
        if (NORM) {
            x0 *= norm_w[i0];
            x1 *= norm_w[i1];
        }
        if (ROTATE) {
            let theta = angle(p, t, i, n);
            let c = cos(theta) * params.mscale;
            let s = sin(theta) * params.mscale;
            let r0 = x0 * c - x1 * s;
            x1 = x0 * s + x1 * c;
            x0 = r0;
        }
        row_buf[i0] = x0;
        row_buf[i1] = x1;
    }
    workgroupBarrier();
    // Write adjacent pairs so f16 output packs two values per u32 without races.
    let out_base = params.dst_offset + dst_row * n;
    for (var i = lid; i < half; i += WG) {
        let a = row_buf[2u * i];
        let b = row_buf[2u * i + 1u];
        if (OUT_F16) {
            // round_f16 first: the values are then exact in f16 and pack2x16float cannot round differently
            dst[out_base / 2u + i] = pack2x16float(vec2<f32>(round_f16(a), round_f16(b)));
        } else {
            dst[out_base + 2u * i] = bitcast<u32>(a);
            dst[out_base + 2u * i + 1u] = bitcast<u32>(b);
        }
    }
}
