// Q4_K: 256 weights in 144 bytes: f16 d @0, f16 dmin @2, scales[12] @4 (see k4_scale_min), qs[128] @16.
// Weight e = 64*g + 32*h + l (g < 4, h < 2, l < 32) is nibble h of qs[32*g + l], in sub-block
// s = e / 32 with 6-bit scale sc and min m; y = d * sc * q - dmin * m.
fn dequant16(row: u32, ci: u32) -> Chunk {
    let blk = row + (ci >> 4u) * 144u;
    let c = ci & 15u;
    let head = w_words4(blk);  // d, dmin | scales[12]
    let dd = f16x2_to_f32(head.x);
    let sm = k4_scale_min(head.yzw, c >> 1u);
    let dl = dd.x * sm.x;
    let ml = dd.y * sm.y;
    let q = w_words4(blk + 16u + (c >> 2u) * 32u + (c & 1u) * 16u);
    let sh = ((c >> 1u) & 1u) * 4u;
    return Chunk(dl * nibbles4(q.x, sh) - ml, dl * nibbles4(q.y, sh) - ml,
                 dl * nibbles4(q.z, sh) - ml, dl * nibbles4(q.w, sh) - ml);
}
