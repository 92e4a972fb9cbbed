// Q8_1: 32 weights in 36 bytes (ggml's block_q8_1; gguf-py's size table says 40, which is stale):
// f16 d @0, f16 s @2 (d * sum(q), unused here), int8 qs[32] @4; y = d * q.
fn dequant16(row: u32, ci: u32) -> Chunk {
    let blk = row + (ci >> 1u) * 36u;
    let d = f16_to_f32(w_word(blk) & 0xffffu);
    let q = w_words4(blk + 4u + (ci & 1u) * 16u);
    return Chunk(d * sbytes4_f32(q.x), d * sbytes4_f32(q.y), d * sbytes4_f32(q.z), d * sbytes4_f32(q.w));
}
