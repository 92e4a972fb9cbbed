// Workgroup-wide reductions, shared by the kernels that reduce over a row (norm, rope's Q/K norm,
// attention's softmax, LoRA's shrink). Prepend this file to a kernel that declares
// `override WG: u32` (a power of two) and runs with @workgroup_size(WG). Call from uniform control
// flow: every invocation of the workgroup must call it.

var<workgroup> reduce_buf: array<f32, WG>;

fn workgroup_sum(lid: u32, value: f32) -> f32 {
    reduce_buf[lid] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            reduce_buf[lid] += reduce_buf[lid + stride];
        }
        workgroupBarrier();
    }
    let total = reduce_buf[0];
    workgroupBarrier();  // the buffer may be reused at once
    return total;
}

fn workgroup_max(lid: u32, value: f32) -> f32 {
    reduce_buf[lid] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            reduce_buf[lid] = max(reduce_buf[lid], reduce_buf[lid + stride]);
        }
        workgroupBarrier();
    }
    let top = reduce_buf[0];
    workgroupBarrier();
    return top;
}
