// BF16: bfloat16 weights (the top half of an f32), two per word, 32 bytes per chunk of 16.
fn dequant16(row: u32, ci: u32) -> Chunk {
    let a = w_words4(row + ci * 32u);
    let b = w_words4(row + ci * 32u + 16u);
    return Chunk(vec4<f32>(bf16x2_to_f32(a.x), bf16x2_to_f32(a.y)), vec4<f32>(bf16x2_to_f32(a.z), bf16x2_to_f32(a.w)),
                 vec4<f32>(bf16x2_to_f32(b.x), bf16x2_to_f32(b.y)), vec4<f32>(bf16x2_to_f32(b.z), bf16x2_to_f32(b.w)));
}
