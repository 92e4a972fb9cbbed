// rounding.wgsl: f32 -> f16 / bf16 -> f32 rounding, round-to-nearest-even, written out in bits so
// every GPU rounds exactly as ggml's CPU conversions do (WGSL leaves the rounding of its own f16
// conversions to the implementation). Included in front of kernels that mimic llama.cpp's
// deliberate roundings: its f16 KV cache, its f16 attention operands, and its conversion of
// activations to F16/BF16 before dot products with F16/BF16 weights.

// x rounded to the nearest f16 value (ties to even), as an f32. Normal f16 keep 10 mantissa bits;
// below 2^-14 f16 is subnormal with a fixed quantum of 2^-24. |x| > 65504 is not handled
// (activations never get there; llama.cpp would produce inf).
fn round_f16(x: f32) -> f32 {
    if (abs(x) < 6.103515625e-5) {  // 2^-14: subnormal f16
        return round(x * 16777216.0) * 5.9604644775390625e-8;  // WGSL round() ties to even
    }
    let bits = bitcast<u32>(x);
    return bitcast<f32>((bits + 0xfffu + ((bits >> 13u) & 1u)) & 0xffffe000u);
}

// x rounded to the nearest bf16 value (ties to even), as an f32 (ggml_compute_fp32_to_bf16).
fn round_bf16(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    return bitcast<f32>((bits + 0x7fffu + ((bits >> 16u) & 1u)) & 0xffff0000u);
}
