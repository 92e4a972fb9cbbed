// matmul_subgroup.wgsl: matmul.wgsl's kernel with the row sum done by subgroup operations
// (entry point main_subgroup; needs `enable subgroups`). A workgroup owns ONE row here
// (the host sets TPR = WG), so subgroupAdd never mixes rows; per-subgroup sums meet in workgroup
// memory and invocation 0 adds them. Same bindings and params as matmul.wgsl, which must be
// included before this file.

@compute @workgroup_size(WG)
fn main_subgroup(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) sg_lane: u32,
                 @builtin(subgroup_id) sg_id: u32, @builtin(num_subgroups) n_sg: u32) {
    let row = wid.x + wid.y * nwg.x;
    let t0 = wid.z * TILE_T;
    let valid = row < params.n_groups && row < params.n_rows;
    var acc: array<f32, MAX_TILE_T>;
    if valid {
        acc = row_partial_sums(row, li, t0);
    }
    for (var t = 0u; t < TILE_T; t++) {
        let s = subgroupAdd(acc[t]);
        if sg_lane == 0u {
            partial[t * WG + sg_id] = s;
        }
    }
    workgroupBarrier();
    if li == 0u && valid {
        for (var t = 0u; t < TILE_T; t++) {
            var total = 0.0;
            for (var g = 0u; g < n_sg; g++) {
                total += partial[t * WG + g];
            }
            store(row, t0, t, total);
        }
    }
}
