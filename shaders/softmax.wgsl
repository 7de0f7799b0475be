// Softmax along the last axis of (rows, len): y = softmax(scale * x).
//   softmax_thread: one thread per row (short rows, e.g. temporal attention over frames)
//   softmax_wg:     one workgroup per row

struct Params {
    rows: u32,
    len: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn softmax_thread(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg) * WG + lid;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.len;
    var m = neg_inf();
    for (var j = 0u; j < p.len; j++) {
        m = max(m, p.scale * x[base + j]);
    }
    var s = 0.0;
    for (var j = 0u; j < p.len; j++) {
        s += exp(p.scale * x[base + j] - m);
    }
    let inv = 1.0 / s;
    for (var j = 0u; j < p.len; j++) {
        y[base + j] = exp(p.scale * x[base + j] - m) * inv;
    }
}

@compute @workgroup_size(WG)
fn softmax_wg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg);
    let live = r < p.rows;
    let base = r * p.len;
    var m = neg_inf();
    if (live) {
        for (var j = lid; j < p.len; j += WG) {
            m = max(m, p.scale * x[base + j]);
        }
    }
    m = wg_max(m, lid);
    var s = 0.0;
    if (live) {
        for (var j = lid; j < p.len; j += WG) {
            s += exp(p.scale * x[base + j] - m);
        }
    }
    s = wg_sum(s, lid);
    if (live) {
        let inv = 1.0 / s;
        for (var j = lid; j < p.len; j += WG) {
            y[base + j] = exp(p.scale * x[base + j] - m) * inv;
        }
    }
}
