// weights.wgsl: one part of a weight tensor exactly as stored in the GGUF file (ggml blocks, rows
// back to back, little-endian), bound as u32 words at @binding(0), with byte-addressed loads.
// Rows and blocks need not be 4-byte aligned (a Q4_0 block is 18 bytes), so loads take a byte
// offset and funnel-shift two words when it is unaligned. The host pads each part with 4 spare
// bytes so the word after the last one is always inside the binding.
//
// Every dequant_<format>.wgsl defines, on top of this file:
//   fn dequant16(row: u32, ci: u32) -> Chunk
// the 16 consecutive weights ci*16 .. ci*16+15 of the row starting at byte `row`, as f32.
// Every ggml format has a single scale per 16 consecutive weights, so a chunk never straddles
// a scale, and kernels share all their structure: only dequant16 differs per format.

@group(0) @binding(0) var<storage, read> w: array<u32>;

alias Chunk = array<vec4<f32>, 4>;

// The 4 bytes at byte offset b as one little-endian word. Branch-free: both words are always
// loaded (the host's spare bytes keep w[i + 1] in bounds) and `select` drops the second one when
// b is aligned, where a shift by 32 would be a shift by 0 in WGSL.
fn w_u32(b: u32) -> u32 {
    let i = b >> 2u;
    let s = (b & 3u) * 8u;
    let lo = w[i];
    let hi = w[i + 1u];
    return select((lo >> s) | (hi << (32u - s)), lo, s == 0u);
}

// The 2 bytes at an EVEN byte offset b (little-endian), in the low half: they never straddle a
// word, so one load. Every f16 field of every ggml block sits at an even offset.
fn w_u16(b: u32) -> u32 {
    return (w[b >> 2u] >> ((b & 2u) * 8u)) & 0xffffu;
}

// The byte at byte offset b.
fn w_u8(b: u32) -> u32 {
    return (w[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
}

// The 16 bytes at byte offset b as four little-endian words (branch-free, as w_u32).
fn w_16bytes(b: u32) -> vec4<u32> {
    let i = b >> 2u;
    let s = (b & 3u) * 8u;
    let a = vec4<u32>(w[i], w[i + 1u], w[i + 2u], w[i + 3u]);
    let n = vec4<u32>(a.yzw, w[i + 4u]);
    return select((a >> vec4<u32>(s)) | (n << vec4<u32>(32u - s)), a, s == 0u);
}

// Word-aligned loads for formats whose block size is a multiple of 4 bytes (F32, F16, BF16, Q4_1,
// Q5_1, Q8_1, Q2_K, Q4_K, Q5_K, Q8_K): rows and every field they read then start on a word, so
// each word is one load. Loads dominate on CPU drivers, which scalarize them per lane.
fn w_word(b: u32) -> u32 {
    return w[b >> 2u];
}

fn w_words4(b: u32) -> vec4<u32> {
    let i = b >> 2u;
    return vec4<u32>(w[i], w[i + 1u], w[i + 2u], w[i + 3u]);
}
