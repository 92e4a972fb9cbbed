// Q4_0: 32 weights in 18 bytes: f16 d @0, qs[16] @2.
// Weight j < 16 is the low nibble of qs[j], weight j + 16 its high nibble; y = d * (q - 8).
fn dequant16(row: u32, ci: u32) -> Chunk {
    let blk = row + (ci >> 1u) * 18u;
    let d = f16_to_f32(w_u16(blk));
    let q = w_16bytes(blk + 2u);
    let sh = (ci & 1u) * 4u;
    return Chunk(d * (nibbles4(q.x, sh) - 8.0), d * (nibbles4(q.y, sh) - 8.0),
                 d * (nibbles4(q.z, sh) - 8.0), d * (nibbles4(q.w, sh) - 8.0));
}
