// Q5_K: 256 weights in 176 bytes: f16 d @0, f16 dmin @2, scales[12] @4 (as Q4_K), qh[32] @16, qs[128] @48.
// Low 4 bits as in Q4_K; the 5th bit of weight e = 32*s + l is bit s of qh[l].
// y = d * sc * q - dmin * m.
fn dequant16(row: u32, ci: u32) -> Chunk {
    let blk = row + (ci >> 4u) * 176u;
    let c = ci & 15u;
    let s = c >> 1u;
    let head = w_words4(blk);  // d, dmin | scales[12]
    let dd = f16x2_to_f32(head.x);
    let sm = k4_scale_min(head.yzw, s);
    let dl = dd.x * sm.x;
    let ml = dd.y * sm.y;
    let l0 = (c & 1u) * 16u;
    let qh = w_words4(blk + 16u + l0);
    let q = w_words4(blk + 48u + (c >> 2u) * 32u + l0);
    let sh = (s & 1u) * 4u;
    return Chunk(dl * (nibbles4(q.x, sh) + 16.0 * vec4<f32>(bytebit4(qh.x, s))) - ml,
                 dl * (nibbles4(q.y, sh) + 16.0 * vec4<f32>(bytebit4(qh.y, s))) - ml,
                 dl * (nibbles4(q.z, sh) + 16.0 * vec4<f32>(bytebit4(qh.z, s))) - ml,
                 dl * (nibbles4(q.w, sh) + 16.0 * vec4<f32>(bytebit4(qh.w, s))) - ml);
}
