// Shared by the row-wise families (reduce, softmax, norm): prepended to their source.
// A workgroup of WG (a power of two, override) threads cooperates on one row;
// rows are folded into a 2-D grid of workgroups.

override WG: u32 = 256u;

var<workgroup> red: array<f32, WG>;

fn row_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

// Sum of v over the workgroup; every thread gets the result. Call in uniform control flow.
fn wg_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Max of v over the workgroup; every thread gets the result. Call in uniform control flow.
fn wg_max(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}
