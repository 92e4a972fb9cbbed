// LoRA for a batch of rows that may each use a different adapter (or none):
//
//   shrink:  t[r, k]  = scale[r] * sum_i A[ad, k, i] * x[r, i]       ad = adapter[r] (t = 0 if ad < 0)
//   expand:  y[r, o] += sum_k B[ad, o, k] * t[r, k]                  rows with adapter[r] < 0 untouched
//
// A is every adapter's lora_a stacked: (n_adapters, rank, n_in); B is (n_adapters, n_out, rank).
// Adapters of smaller rank are zero-padded to `rank`. scale[r] is row r's user scale * alpha / rank
// (per row: sequences sharing an adapter may use it at different scales), applied to the
// rank-sized t (the cheapest place). y is the base projection's output, so the pair
// adds the low-rank update in place. `scale` is the last binding because only shrink reads it.
// shrink: one workgroup per (k, row) reducing over n_in; expand: one thread per (o, row).

struct Params {
    n_rows: u32,
    n_in: u32,
    n_out: u32,
    rank: u32,
}

override WG: u32 = 64;  // a power of two

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> adapter: array<i32>;   // (n_rows,)
@group(0) @binding(2) var<storage, read> x: array<f32>;         // shrink: (n_rows, n_in); expand: t (n_rows, rank)
@group(0) @binding(3) var<storage, read> weight: array<f32>;    // shrink: A; expand: B
@group(0) @binding(4) var<storage, read_write> y: array<f32>;   // shrink: t; expand: (n_rows, n_out)
@group(0) @binding(5) var<storage, read> scale: array<f32>;     // (n_rows,), shrink only


@compute @workgroup_size(WG)
fn shrink(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wid.x;
    let r = wid.y;
    // adapter[r] is the same for the whole workgroup, but a storage read is not provably uniform,
    // so rows without an adapter skip the loads instead of returning before the barriers.
    let ad = adapter[r];
    let n_in = params.n_in;
    let a_base = (u32(max(ad, 0)) * params.rank + k) * n_in;
    let x_base = r * n_in;
    var sum = 0.0;
    if (ad >= 0) {
        for (var i = lid; i < n_in; i += WG) {
            sum += weight[a_base + i] * x[x_base + i];
        }
    }
    let total = workgroup_sum(lid, sum);
    if (lid == 0u) {
        var s = 0.0;
        if (ad >= 0) {
            s = scale[r];
        }
        y[r * params.rank + k] = s * total;
    }
}

@compute @workgroup_size(WG)
fn expand(@builtin(global_invocation_id) gid: vec3<u32>) {
    let o = gid.x;
    let r = gid.y;
    if (o >= params.n_out) {
        return;
    }
    let ad = adapter[r];
    if (ad < 0) {
        return;
    }
    let rank = params.rank;
    let b_base = (u32(ad) * params.n_out + o) * rank;
    var sum = 0.0;
    for (var k = 0u; k < rank; k++) {
        sum += weight[b_base + k] * x[r * rank + k];
    }
    y[r * params.n_out + o] += sum;
}
