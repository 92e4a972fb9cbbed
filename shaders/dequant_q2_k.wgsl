// Q2_K: 256 weights in 84 bytes: scales[16] @0, qs[64] @16, f16 d @80, f16 dmin @82.
// Weight e = 128*h + 32*j + l (h < 2, j < 4, l < 32) is bits 2j..2j+1 of qs[32*h + l].
// Sub-block e / 16 has scale byte sc (low nibble: scale, high nibble: min);
// y = d * (sc & 15) * q - dmin * (sc >> 4).
fn dequant16(row: u32, ci: u32) -> Chunk {
    let blk = row + (ci >> 4u) * 84u;
    let c = ci & 15u;
    let sc = w_u8(blk + c);
    let dd = f16x2_to_f32(w_word(blk + 80u));
    let dl = dd.x * f32(sc & 15u);
    let ml = dd.y * f32(sc >> 4u);
    let q = w_words4(blk + 16u + (c >> 3u) * 32u + (c & 1u) * 16u);
    let sh = ((c & 7u) >> 1u) * 2u;
    return Chunk(dl * vec4<f32>(crumbs4(q.x, sh)) - ml, dl * vec4<f32>(crumbs4(q.y, sh)) - ml,
                 dl * vec4<f32>(crumbs4(q.z, sh)) - ml, dl * vec4<f32>(crumbs4(q.w, sh)) - ml);
}
