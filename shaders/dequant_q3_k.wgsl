// Q3_K: 256 weights in 110 bytes: hmask[32] @0, qs[64] @32, scales[12] @96, f16 d @108.
// Weight e = 128*h + 32*j + l: low 2 bits are bits 2j..2j+1 of qs[32*h + l]; the high bit is bit
// e / 32 of hmask[l], and a CLEAR bit subtracts 4: q = low - 4 * (1 - hbit), in -4..3.
// Sub-block s = e / 16 has a 6-bit scale: low 4 bits in nibble s / 8 of byte s % 8, high 2 bits
// at bits 2*(s / 4) of byte 8 + s % 4; it is stored +32. y = d * (scale - 32) * q.
fn dequant16(row: u32, ci: u32) -> Chunk {
    let blk = row + (ci >> 4u) * 110u;
    let c = ci & 15u;
    let d = f16_to_f32(w_u16(blk + 108u));
    let lo = (w_u8(blk + 96u + (c & 7u)) >> ((c >> 3u) * 4u)) & 15u;
    let hi = (w_u8(blk + 104u + (c & 3u)) >> ((c >> 2u) * 2u)) & 3u;
    let dl = d * f32(i32(lo | (hi << 4u)) - 32);
    let l0 = (c & 1u) * 16u;
    let q = w_16bytes(blk + 32u + (c >> 3u) * 32u + l0);
    let hm = w_16bytes(blk + l0);
    let sh = ((c & 7u) >> 1u) * 2u;
    let hb = c >> 1u;
    return Chunk(dl * (vec4<f32>(crumbs4(q.x, sh)) + 4.0 * vec4<f32>(bytebit4(hm.x, hb)) - 4.0),
                 dl * (vec4<f32>(crumbs4(q.y, sh)) + 4.0 * vec4<f32>(bytebit4(hm.y, hb)) - 4.0),
                 dl * (vec4<f32>(crumbs4(q.z, sh)) + 4.0 * vec4<f32>(bytebit4(hm.z, hb)) - 4.0),
                 dl * (vec4<f32>(crumbs4(q.w, sh)) + 4.0 * vec4<f32>(bytebit4(hm.w, hb)) - 4.0));
}
