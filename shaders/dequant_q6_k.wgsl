// Q6_K: 256 weights in 210 bytes: ql[128] @0, qh[64] @128, int8 scales[16] @192, f16 d @208.
// Weight e = 128*h + r (h < 2, r < 128): low 4 bits are nibble r / 64 of ql[64*h + r % 64], high
// 2 bits are bits 2*(r / 32) of qh[32*h + r % 32]; sub-block e / 16 has scale sc;
// y = d * sc * (q - 32).
fn dequant16(row: u32, ci: u32) -> Chunk {
    let blk = row + (ci >> 4u) * 210u;
    let c = ci & 15u;
    let h = c >> 3u;
    let r = (c & 7u) * 16u;
    let sc = f32((bitcast<i32>(w_u8(blk + 192u + c) << 24u)) >> 24u);
    let dl = f16_to_f32(w_u16(blk + 208u)) * sc;
    let ql = w_16bytes(blk + h * 64u + (r & 63u));
    let qh = w_16bytes(blk + 128u + h * 32u + (r & 31u));
    let shl = (r >> 6u) * 4u;
    let shh = (r >> 5u) * 2u;
    return Chunk(dl * (nibbles4(ql.x, shl) + 16.0 * vec4<f32>(crumbs4(qh.x, shh)) - 32.0),
                 dl * (nibbles4(ql.y, shl) + 16.0 * vec4<f32>(crumbs4(qh.y, shh)) - 32.0),
                 dl * (nibbles4(ql.z, shl) + 16.0 * vec4<f32>(crumbs4(qh.z, shh)) - 32.0),
                 dl * (nibbles4(ql.w, shl) + 16.0 * vec4<f32>(crumbs4(qh.w, shh)) - 32.0));
}
