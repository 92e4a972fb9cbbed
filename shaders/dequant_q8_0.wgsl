// Q8_0: 32 weights in 34 bytes: f16 d @0, int8 qs[32] @2; y = d * q.
fn dequant16(row: u32, ci: u32) -> Chunk {
    let blk = row + (ci >> 1u) * 34u;
    let d = f16_to_f32(w_u16(blk));
    let q = w_16bytes(blk + 2u + (ci & 1u) * 16u);
    return Chunk(d * sbytes4_f32(q.x), d * sbytes4_f32(q.y), d * sbytes4_f32(q.z), d * sbytes4_f32(q.w));
}
