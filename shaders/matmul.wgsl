// matmul.wgsl: fused dequantize + matrix product for every weight format.
//
//   out[t, out_col + r] = sum_c W[r, c] * x[t, c]     for r < n_rows, t < n_tokens
//
// W is one row-range part of a GGUF weight (raw ggml blocks, weights.wgsl) and a dequant_<fmt>.wgsl
// file supplies dequant16(); x and out are f32. Matrix-vector (n_tokens = 1) and matrix-matrix
// (prefill) are the same kernel: each invocation dequantizes a 16-weight chunk once and uses it for
// TILE_T tokens, so the weights are read once per tile of tokens, not once per token.
//
// Layout: a workgroup of WG invocations owns WG / TPR rows; the TPR invocations of a row stride over
// its chunks and their partial sums are added in workgroup memory (or by matmul_subgroup.wgsl).
// Workgroups form a 2-D grid (x, y) because a 262144-row output matrix exceeds 65535 groups on one
// axis; grid z is the token tile.
//
// Bindings (group 0): 0 w (weights.wgsl), 1 x, 2 out, 3 params.

struct Params {
    n_rows: u32,      // rows in this weight part
    row_bytes: u32,   // bytes per weight row (whole ggml blocks)
    n_chunks: u32,    // weights per row / 16
    n_tokens: u32,    // tokens in x and out
    x_stride: u32,    // vec4s between consecutive tokens of x (K / 4 for a dense (T, K) x)
    out_stride: u32,  // floats between consecutive tokens of out
    out_col: u32,     // column of out that receives this part's row 0
    n_groups: u32,    // workgroups that own rows; the grid may round up past it
}

override WG: u32 = 64;      // invocations per workgroup
override TPR: u32 = 16;     // invocations per row (a power of two dividing WG)
override TILE_T: u32 = 1;   // tokens per invocation (<= MAX_TILE_T)
const MAX_TILE_T: u32 = 16u;

@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

var<workgroup> partial: array<f32, WG * TILE_T>;

// This invocation's share of row `row` for tokens t0 .. t0 + TILE_T - 1.
fn row_partial_sums(row: u32, lane: u32, t0: u32) -> array<f32, MAX_TILE_T> {
    var acc: array<f32, MAX_TILE_T>;
    let base = row * params.row_bytes;
    for (var ci = lane; ci < params.n_chunks; ci += TPR) {
        let v = dequant16(base, ci);
        for (var t = 0u; t < TILE_T; t++) {
            let tok = t0 + t;
            if tok < params.n_tokens {
                let xi = tok * params.x_stride + ci * 4u;
                acc[t] += dot(v[0], x[xi]) + dot(v[1], x[xi + 1u]) + dot(v[2], x[xi + 2u]) + dot(v[3], x[xi + 3u]);
            }
        }
    }
    return acc;
}

fn store(row: u32, t0: u32, t: u32, value: f32) {
    let tok = t0 + t;
    if tok < params.n_tokens {
        out[tok * params.out_stride + params.out_col + row] = value;
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let group = wid.x + wid.y * nwg.x;
    let row = group * (WG / TPR) + li / TPR;
    let lane = li % TPR;
    let t0 = wid.z * TILE_T;
    var acc: array<f32, MAX_TILE_T>;
    // No early return: every invocation must reach the barriers below.
    if group < params.n_groups && row < params.n_rows {
        acc = row_partial_sums(row, lane, t0);
    }
    for (var t = 0u; t < TILE_T; t++) {
        partial[t * WG + li] = acc[t];
    }
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            for (var t = 0u; t < TILE_T; t++) {
                partial[t * WG + li] += partial[t * WG + li + s];
            }
        }
        workgroupBarrier();
    }
    if lane == 0u && group < params.n_groups && row < params.n_rows {
        for (var t = 0u; t < TILE_T; t++) {
            store(row, t0, t, partial[t * WG + li]);
        }
    }
}
