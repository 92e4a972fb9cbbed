// Q4_1: 32 weights in 20 bytes: f16 d @0, f16 m @2, qs[16] @4.
// Weight j < 16 is the low nibble of qs[j], weight j + 16 its high nibble; y = d * q + m.
fn dequant16(row: u32, ci: u32) -> Chunk {
    let blk = row + (ci >> 1u) * 20u;
    let dm = f16x2_to_f32(w_word(blk));
    let q = w_words4(blk + 4u);
    let sh = (ci & 1u) * 4u;
    return Chunk(dm.x * nibbles4(q.x, sh) + dm.y, dm.x * nibbles4(q.y, sh) + dm.y,
                 dm.x * nibbles4(q.z, sh) + dm.y, dm.x * nibbles4(q.w, sh) + dm.y);
}
