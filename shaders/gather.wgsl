// gather.wgsl: embedding lookup straight from a quantized table.
//
//   out[t, :] = scale * dequant(W[ids[t], :])     for tokens t whose id falls in this part
//
// W is one row-range part of the table (weights.wgsl, rows row_start .. row_start + n_rows - 1) and a
// dequant_<fmt>.wgsl file supplies dequant16(). Tokens whose id lies in another part are left alone,
// so the host dispatches once per part and every token is written exactly once.
// One invocation writes one 16-weight chunk; grid x covers the row's chunks, grid y the tokens.
//
// Bindings (group 0): 0 w (weights.wgsl), 1 ids, 2 out, 3 params.

struct Params {
    n_rows: u32,      // rows in this weight part
    row_bytes: u32,   // bytes per weight row (whole ggml blocks)
    n_chunks: u32,    // weights per row / 16
    n_tokens: u32,    // ids to look up
    row_start: u32,   // table row held by this part's row 0
    out_stride: u32,  // vec4s between consecutive tokens of out (n_cols / 4 for a dense (T, n_cols) out)
    scale: f32,       // multiplies every weight (e.g. gemma's sqrt(n_embd) embedding scale)
    _pad: u32,
}

override WG: u32 = 64;

@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let ci = gid.x;
    let tok = gid.y;
    if ci >= params.n_chunks || tok >= params.n_tokens {
        return;
    }
    let id = ids[tok];
    // u32 wrap-around makes ids below row_start huge, so one comparison covers both ends.
    let row = id - params.row_start;
    if row >= params.n_rows {
        return;
    }
    let v = dequant16(row * params.row_bytes, ci);
    let o = tok * params.out_stride + ci * 4u;
    out[o] = params.scale * v[0];
    out[o + 1u] = params.scale * v[1];
    out[o + 2u] = params.scale * v[2];
    out[o + 3u] = params.scale * v[3];
}
