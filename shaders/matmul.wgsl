// matmul.wgsl: fused dequantize + matrix product for every weight format.
//
//   out[t, out_col + r] = sum_c W[r, c] * x[t, c]     for r < n_rows, t < n_tokens
//
// (x starts x_first vec4s into its binding, so one dispatch can cover a range of a step's rows.)
//
// W is one row-range part of a GGUF weight (raw ggml blocks, weights.wgsl) and a dequant_<fmt>.wgsl
// file supplies dequant16(); x and out are f32. Matrix-vector (decode) and matrix-matrix (prefill)
// are the same kernel, register-tiled: an invocation owns ROWS rows x TILE_T tokens of the output.
// Per 16-weight chunk it dequantizes the chunk of each of its rows once and reads each token's 16
// inputs once, then does ROWS * TILE_T dot products. So weights are read once per token tile and
// inputs once per ROWS rows; memory traffic per output falls as 1 / TILE_T + 1 / ROWS.
//
// Layout: a workgroup of WG invocations owns (WG / TPR) * ROWS rows; the TPR invocations of a row
// group stride over its chunks and their partial sums are added in workgroup memory (TPR > 1) or
// by subgroup operations (matmul_subgroup.wgsl). TPR = 1 (no reduction at all) suits CPU drivers,
// where every storage load is scalarized per lane; TPR > 1 makes consecutive lanes read
// consecutive chunks, which GPUs coalesce. Workgroups form a 2-D grid (x, y) because a
// 262144-row output matrix exceeds 65535 groups on one axis; grid z is the token tile.
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
    x_first: u32,     // vec4s of x before token 0 (a range of rows that starts on no binding alignment)
}

override WG: u32 = 64;      // invocations per workgroup
override TPR: u32 = 1;      // invocations per row group (a power of two dividing WG)
override ROWS: u32 = 1;     // rows per invocation (<= MAX_ROWS)
override TILE_T: u32 = 1;   // tokens per invocation (<= MAX_TILE_T)
const MAX_ROWS: u32 = 8u;
const MAX_TILE_T: u32 = 8u;

@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

// One invocation's outputs: sums[r * MAX_TILE_T + t] for row row0 + r, token t0 + t.
alias Sums = array<f32, MAX_ROWS * MAX_TILE_T>;

var<workgroup> partial: array<f32, WG * ROWS * TILE_T>;

// This invocation's share of rows row0 .. row0 + ROWS - 1 for tokens t0 .. t0 + TILE_T - 1: chunks
// lane, lane + TPR, ... The ROWS and TILE_T loops have constant trip counts once the pipeline is
// specialized, so the shader compiler unrolls them and `v` and `acc` become registers (constant
// indices). Rows past the part's end and tokens past the last one re-read the last row / token:
// their sums are dropped by store(), and no invocation branches around the loop.
fn tile_sums(row0: u32, lane: u32, t0: u32) -> Sums {
    var acc: Sums;
    var v: array<Chunk, MAX_ROWS>;
    let last_row = params.n_rows - 1u;
    let last_tok = params.n_tokens - 1u;
    for (var ci = lane; ci < params.n_chunks; ci += TPR) {
        for (var r = 0u; r < ROWS; r++) {
            v[r] = dequant16(min(row0 + r, last_row) * params.row_bytes, ci);
        }
        for (var t = 0u; t < TILE_T; t++) {
            let xi = params.x_first + min(t0 + t, last_tok) * params.x_stride + ci * 4u;
            let x0 = x[xi];
            let x1 = x[xi + 1u];
            let x2 = x[xi + 2u];
            let x3 = x[xi + 3u];
            for (var r = 0u; r < ROWS; r++) {
                acc[r * MAX_TILE_T + t] += dot(v[r][0], x0) + dot(v[r][1], x1) + dot(v[r][2], x2) + dot(v[r][3], x3);
            }
        }
    }
    return acc;
}

// Write one invocation's sums (rows and tokens past the end are dropped).
fn store_tile(row0: u32, t0: u32, acc: Sums) {
    for (var r = 0u; r < ROWS; r++) {
        for (var t = 0u; t < TILE_T; t++) {
            store(row0 + r, t0 + t, acc[r * MAX_TILE_T + t]);
        }
    }
}

fn store(row: u32, tok: u32, value: f32) {
    if row < params.n_rows && tok < params.n_tokens {
        out[tok * params.out_stride + params.out_col + row] = value;
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let group = wid.x + wid.y * nwg.x;
    let first_group = group * (WG / TPR);  // the workgroup's first row group
    let row0 = (first_group + li / TPR) * ROWS;
    let lane = li % TPR;
    let t0 = wid.z * TILE_T;
    let acc = tile_sums(row0, lane, t0);
    if TPR == 1u {
        if group < params.n_groups {
            store_tile(row0, t0, acc);
        }
        return;
    }
    // TPR > 1: partial sums meet in workgroup memory, laid out [row group][output][lane]; after one
    // barrier each invocation adds up whole outputs (a loop, not an unrolled tree, keeps the
    // shader small). Outputs are indexed k = r * TILE_T + t within a row group.
    let n = ROWS * TILE_T;
    for (var k = 0u; k < n; k++) {
        partial[((li / TPR) * n + k) * TPR + lane] = acc[(k / TILE_T) * MAX_TILE_T + k % TILE_T];
    }
    workgroupBarrier();
    if group < params.n_groups {
        for (var o = li; o < (WG / TPR) * n; o += WG) {
            var total = 0.0;
            for (var j = 0u; j < TPR; j++) {
                total += partial[o * TPR + j];
            }
            let k = o % n;
            store((first_group + o / n) * ROWS + k / TILE_T, t0 + k % TILE_T, total);
        }
    }
}
