// Element-wise ops of the transformer block, one override-selected op per pipeline:
//
//   OP_ADD        dst[i] += a[i]                      (residual add)
//   OP_SCALE      dst[i] *= scale                     (gemma3 embedding scale)
//   OP_SILU_GATE  dst[i] = silu(a[i]) * b[i]          (llama FFN: silu(gate) * up)
//   OP_GELU_GATE  dst[i] = gelu_tanh(a[i]) * b[i]     (gemma3 FFN: gelu(gate) * up)
//   OP_ROUND_F16  dst[i] = f16(a[i])                  (llama.cpp converts a matmul's input to
//   OP_ROUND_BF16 dst[i] = bf16(a[i])                  F16/BF16 before dot products with such weights)
//   OP_ADD_BIAS   dst[i] += a[i % width]              (a bias vector on every row: qwen2's Q, K, V)
//
// Unused inputs may be bound to any buffer. Elements are indexed over a 2-D grid:
// i = gid.x + gid.y * num_workgroups.x * WG. Needs rounding.wgsl in front.

struct Params {
    n: u32,
    scale: f32,
    width: u32,        // OP_ADD_BIAS only
    _pad1: u32,
}

const OP_ADD: u32 = 0u;
const OP_SCALE: u32 = 1u;
const OP_SILU_GATE: u32 = 2u;
const OP_GELU_GATE: u32 = 3u;
const OP_ROUND_F16: u32 = 4u;
const OP_ROUND_BF16: u32 = 5u;
const OP_ADD_BIAS: u32 = 6u;

override WG: u32 = 64;
override OP: u32 = OP_ADD;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

fn silu(x: f32) -> f32 {
    // exp(-x) overflows to inf for x < -88 and x / inf = -0: the correct limit.
    return x / (1.0 + exp(-x));
}

fn gelu_tanh(x: f32) -> f32 {
    // tanh saturates to +-1 in f32 beyond |u| ~ 9; clamping keeps implementations that build tanh
    // from exp() away from inf / inf.
    let u = clamp(0.7978845608028654 * (x + 0.044715 * x * x * x), -10.0, 10.0);
    return 0.5 * x * (1.0 + tanh(u));
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * WG;
    if (i >= params.n) {
        return;
    }
    switch OP {
        case OP_ADD: {
            dst[i] += a[i];
        }
        case OP_SCALE: {
            dst[i] *= params.scale;
        }
        case OP_SILU_GATE: {
            dst[i] = silu(a[i]) * b[i];
        }
        case OP_GELU_GATE: {
            dst[i] = gelu_tanh(a[i]) * b[i];
        }
        case OP_ROUND_F16: {
            dst[i] = round_f16(a[i]);
        }
        case OP_ROUND_BF16: {
            dst[i] = round_bf16(a[i]);
        }
        case OP_ADD_BIAS: {
            dst[i] += a[i % params.width];
        }
        default: {}
    }
}
