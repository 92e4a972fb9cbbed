// Q5_0: 32 weights in 22 bytes: f16 d @0, u32 qh @2 (bit j = 5th bit of weight j), qs[16] @6.
// Low 4 bits as in Q4_0 (weight j < 16 low nibble of qs[j], j + 16 high nibble); y = d * (q - 16).
fn dequant16(row: u32, ci: u32) -> Chunk {
    let blk = row + (ci >> 1u) * 22u;
    let d = f16_to_f32(w_u16(blk));
    let qh = w_u32(blk + 2u);
    let q = w_16bytes(blk + 6u);
    let sh = (ci & 1u) * 4u;
    let hb = (ci & 1u) * 16u;
    return Chunk(d * (nibbles4(q.x, sh) + 16.0 * vec4<f32>(bits4(qh, hb)) - 16.0),
                 d * (nibbles4(q.y, sh) + 16.0 * vec4<f32>(bits4(qh, hb + 4u)) - 16.0),
                 d * (nibbles4(q.z, sh) + 16.0 * vec4<f32>(bits4(qh, hb + 8u)) - 16.0),
                 d * (nibbles4(q.w, sh) + 16.0 * vec4<f32>(bits4(qh, hb + 12u)) - 16.0));
}
