// common.wgsl: pure helpers shared by every Realm kernel. GPUContext.pipeline() puts this file in
// front of each kernel's sources (WGSL has no #include). Nothing here declares a binding, so any
// kernel can include it; helpers work on u32 words because weights arrive as raw GGUF bytes.

// IEEE half (low 16 bits of h) to f32, exactly, including subnormals, inf and NaN.
// Why not unpack2x16float: some GPUs flush f16 subnormals to zero, and small K-quant `dmin`
// scales are often subnormal; llama.cpp (the oracle) keeps them.
fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    let normal = bitcast<f32>(sign | (select(e + 112u, 255u, e == 31u) << 23u) | (m << 13u));
    let sub = select(1.0, -1.0, sign != 0u) * f32(m) * 5.9604644775390625e-8;  // m * 2^-24
    return select(normal, sub, e == 0u);
}

// The two halves packed in one little-endian word: (low, high).
fn f16x2_to_f32(w: u32) -> vec2<f32> {
    return vec2<f32>(f16_to_f32(w & 0xffffu), f16_to_f32(w >> 16u));
}

// Two bf16 values packed in one word: bf16 is the top half of an f32.
fn bf16x2_to_f32(w: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));
}

// The 4 bytes of a little-endian word, lowest first, as unsigned values.
fn bytes4(w: u32) -> vec4<u32> {
    return (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu);
}

// The 4 bytes of a word as signed int8 values (sign-extended), as f32.
fn sbytes4_f32(w: u32) -> vec4<f32> {
    let v = bitcast<vec4<i32>>(vec4<u32>(w) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
    return vec4<f32>(v);
}

// The 4 nibbles at bit `shift` (0 or 4) of each byte of w, lowest byte first.
fn nibbles4(w: u32, shift: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(w >> shift) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xfu));
}

// The 2-bit fields at bit `shift` (0, 2, 4, 6) of each byte of w, lowest byte first.
fn crumbs4(w: u32, shift: u32) -> vec4<u32> {
    return (vec4<u32>(w >> shift) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0x3u);
}

// Bits b..b+3 of a 32-bit mask, one per lane (0 or 1).
fn bits4(mask: u32, b: u32) -> vec4<u32> {
    return (vec4<u32>(mask >> b) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u);
}

// Bit `bit` of each byte of w, lowest byte first (0 or 1).
fn bytebit4(w: u32, bit: u32) -> vec4<u32> {
    return (vec4<u32>(w >> bit) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(1u);
}

// Scale and min (6 bits each) of sub-block j (0..7) from the 12 packed bytes shared by Q4_K and
// Q5_K, given as three little-endian words s. Bit layout (ggml get_scale_min_k4):
//   bytes 0-3:  EEAAAAAA ..  scale j<4 in the low 6 bits, top 2 bits of scale j+4
//   bytes 4-7:  eeaaaaaa ..  min j<4 in the low 6 bits, top 2 bits of min j+4
//   bytes 8-11: eeeeEEEE ..  low 4 bits of scale j+4 (low nibble) and min j+4 (high nibble)
fn k4_scale_min(s: vec3<u32>, j: u32) -> vec2<f32> {
    let sh = (j & 3u) * 8u;
    let b_lo = (s.x >> sh) & 0xffu;   // byte j%4
    let b_mid = (s.y >> sh) & 0xffu;  // byte j%4 + 4
    let b_hi = (s.z >> sh) & 0xffu;   // byte j%4 + 8
    if j < 4u {
        return vec2<f32>(f32(b_lo & 63u), f32(b_mid & 63u));
    }
    return vec2<f32>(f32((b_hi & 0xfu) | ((b_lo >> 6u) << 4u)), f32((b_hi >> 4u) | ((b_mid >> 6u) << 4u)));
}
