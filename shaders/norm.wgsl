// RMSNorm over rows, fused with the norm-weight multiply and an optional residual add.
//
//   y[r, c] = x[in_offset + r*n_cols + c] / sqrt(mean_c(x[r]^2) + eps) * w[c]
//   out[out_offset + r*n_cols + c] = y[r, c]            (ADD_TO_OUT = false)
//   out[out_offset + r*n_cols + c] += y[r, c]           (ADD_TO_OUT = true: gemma3's x += norm(a))
//
// One workgroup per row; rows may be laid out over a 2-D grid (row = wid.x + wid.y * num_workgroups.x)
// so more than 65535 rows can be dispatched. GGUF norm weights are used as stored (no +1).

struct Params {
    n_rows: u32,
    n_cols: u32,
    in_offset: u32,   // elements skipped at the start of x (logits of the last row only)
    out_offset: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG: u32 = 64;             // threads per row; a power of two
override ADD_TO_OUT: bool = false;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;


@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * groups.x;
    if (row >= params.n_rows) {  // uniform across the workgroup
        return;
    }
    let n = params.n_cols;
    let src = params.in_offset + row * n;
    var sum = 0.0;
    for (var c = lid; c < n; c += WG) {
        let v = x[src + c];
        sum += v * v;
    }
    let inv_rms = inverseSqrt(workgroup_sum(lid, sum) / f32(n) + params.eps);
    let dst = params.out_offset + row * n;
    for (var c = lid; c < n; c += WG) {
        let y = x[src + c] * inv_rms * w[c];
        if (ADD_TO_OUT) {
            out[dst + c] += y;
        } else {
            out[dst + c] = y;
        }
    }
}
