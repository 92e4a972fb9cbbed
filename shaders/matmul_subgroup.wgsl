// matmul_subgroup.wgsl: matmul.wgsl's kernel with the row sums done by subgroup operations
// (entry point main_subgroup; needs `enable subgroups`). A workgroup owns ONE row group here
// (the host sets TPR = WG), so subgroupAdd never mixes rows; per-subgroup sums meet in workgroup
// memory and one invocation per output adds them. Same bindings, params and register tile as matmul.wgsl,
// which must be included before this file.

@compute @workgroup_size(WG)
fn main_subgroup(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) sg_lane: u32,
                 @builtin(subgroup_id) sg_id: u32, @builtin(num_subgroups) n_sg: u32) {
    let group = wid.x + wid.y * nwg.x;
    let row0 = group * ROWS;
    let t0 = wid.z * TILE_T;
    let acc = tile_sums(row0, li, t0);
    // Output k = r * TILE_T + t: one subgroup sum per subgroup in partial[k * WG + sg_id], then
    // invocation k adds those up.
    let n = ROWS * TILE_T;
    for (var k = 0u; k < n; k++) {
        let s = subgroupAdd(acc[(k / TILE_T) * MAX_TILE_T + k % TILE_T]);
        if sg_lane == 0u {
            partial[k * WG + sg_id] = s;
        }
    }
    workgroupBarrier();
    if group < params.n_groups {
        for (var k = li; k < n; k += WG) {
            var total = 0.0;
            for (var g = 0u; g < n_sg; g++) {
                total += partial[k * WG + g];
            }
            store(row0 + k / TILE_T, t0 + k % TILE_T, total);
        }
    }
}
