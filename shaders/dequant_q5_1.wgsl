// Q5_1: 32 weights in 24 bytes: f16 d @0, f16 m @2, u32 qh @4 (bit j = 5th bit of weight j), qs[16] @8.
// Low 4 bits as in Q4_1; y = d * q + m.
fn dequant16(row: u32, ci: u32) -> Chunk {
    let blk = row + (ci >> 1u) * 24u;
    let dm = f16x2_to_f32(w_word(blk));
    let qh = w_word(blk + 4u);
    let q = w_words4(blk + 8u);
    let sh = (ci & 1u) * 4u;
    let hb = (ci & 1u) * 16u;
    return Chunk(dm.x * (nibbles4(q.x, sh) + 16.0 * vec4<f32>(bits4(qh, hb))) + dm.y,
                 dm.x * (nibbles4(q.y, sh) + 16.0 * vec4<f32>(bits4(qh, hb + 4u))) + dm.y,
                 dm.x * (nibbles4(q.z, sh) + 16.0 * vec4<f32>(bits4(qh, hb + 8u))) + dm.y,
                 dm.x * (nibbles4(q.w, sh) + 16.0 * vec4<f32>(bits4(qh, hb + 12u))) + dm.y);
}
