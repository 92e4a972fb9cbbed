// Q8_K: 256 weights in 292 bytes: f32 d @0, int8 qs[256] @4, int16 bsums[16] @260 (unused); y = d * q.
fn dequant16(row: u32, ci: u32) -> Chunk {
    let blk = row + (ci >> 4u) * 292u;
    let d = bitcast<f32>(w_word(blk));
    let q = w_words4(blk + 4u + (ci & 15u) * 16u);
    return Chunk(d * sbytes4_f32(q.x), d * sbytes4_f32(q.y), d * sbytes4_f32(q.z), d * sbytes4_f32(q.w));
}
