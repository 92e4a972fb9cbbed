// F32: plain little-endian float32 weights, 64 bytes per chunk of 16.
fn dequant16(row: u32, ci: u32) -> Chunk {
    let b = row + ci * 64u;
    return Chunk(bitcast<vec4<f32>>(w_words4(b)), bitcast<vec4<f32>>(w_words4(b + 16u)),
                 bitcast<vec4<f32>>(w_words4(b + 32u)), bitcast<vec4<f32>>(w_words4(b + 48u)));
}
