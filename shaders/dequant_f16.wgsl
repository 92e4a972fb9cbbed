// F16: IEEE half weights, two per word, 32 bytes per chunk of 16.
fn dequant16(row: u32, ci: u32) -> Chunk {
    let a = w_words4(row + ci * 32u);
    let b = w_words4(row + ci * 32u + 16u);
    return Chunk(vec4<f32>(f16x2_to_f32(a.x), f16x2_to_f32(a.y)), vec4<f32>(f16x2_to_f32(a.z), f16x2_to_f32(a.w)),
                 vec4<f32>(f16x2_to_f32(b.x), f16x2_to_f32(b.y)), vec4<f32>(f16x2_to_f32(b.z), f16x2_to_f32(b.w)));
}
