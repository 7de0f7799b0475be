// Softmax along the last axis of (rows, len): y = softmax(scale * x).
//   softmax_thread: one thread per row (short rows, e.g. temporal attention over frames;
//                   on CPU adapters also many long rows, see ops::thread_per_row)
//   softmax_wg:     one workgroup per row
// and the in-place row kernels of attention over materialised scores (rows = BH * Lq,
// len = Lk; with `causal` = Lq > 0, row r is query r % Lq and sees keys 0..=r % Lq). They
// are separate entries because one buffer cannot be both the read-only x and the
// read-write y of a dispatch:
//   softmax_lse_thread(4) / _wg: s <- softmax(s) in place, lse[r] = log sum_j exp(s[r, j])
//   exp_sub_rows:             s <- exp(s - lse[r]) in place (probabilities from saved lse)
//   ds_rows:                  dp <- p * (dp - dvec[r]) in place (softmax backward)

struct Params {
    rows: u32,
    len: u32,
    scale: f32,
    causal: u32,         // row kernels: Lq of a causal mask, 0 for none
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
// row kernels: binding 1 = s (in place), binding 2 = per-row values, binding 3 = dp (in place)
@group(0) @binding(1) var<storage, read_write> s_io: array<f32>;
@group(0) @binding(2) var<storage, read_write> row_out: array<f32>;
@group(0) @binding(2) var<storage, read> row_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> dp_io: array<f32>;
// softmax_thread, softmax_lse_thread: with TEX_IN the input (x, or s before it is
// overwritten) is read from its texture.
@group(0) @binding(9) var in_tex: texture_2d<f32>;

fn x_at(i: u32) -> f32 {
    if (TEX_IN) {
        return element_at(in_tex, i);
    }
    return x[i];
}

fn s_at(i: u32) -> f32 {
    if (TEX_IN) {
        return element_at(in_tex, i);
    }
    return s_io[i];
}

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
        m = max(m, p.scale * x_at(base + j));
    }
    var s = 0.0;
    for (var j = 0u; j < p.len; j++) {
        s += exp(p.scale * x_at(base + j) - m);
    }
    let inv = 1.0 / s;
    for (var j = 0u; j < p.len; j++) {
        y[base + j] = exp(p.scale * x_at(base + j) - m) * inv;
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

// Is key j hidden from row r by the causal mask?
fn masked(r: u32, j: u32) -> bool {
    return p.causal > 0u && j > r % p.causal;
}

@compute @workgroup_size(WG)
fn softmax_lse_thread(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg) * WG + lid;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.len;
    var m = neg_inf();
    for (var j = 0u; j < p.len; j++) {
        if (!masked(r, j)) {
            m = max(m, s_at(base + j));
        }
    }
    var t = 0.0;
    for (var j = 0u; j < p.len; j++) {
        if (!masked(r, j)) {
            t += exp(s_at(base + j) - m);
        }
    }
    let inv = 1.0 / t;
    for (var j = 0u; j < p.len; j++) {
        s_io[base + j] = select(exp(s_at(base + j) - m) * inv, 0.0, masked(r, j));
    }
    row_out[r] = m + log(t);
}

// softmax_lse_thread4: softmax_lse_thread in vec4s, for rows of a multiple of 4 keys and no
// causal mask: a quarter of the loads and stores (scalarised per lane on CPU adapters),
// the maximum and the sum kept per component and combined at the end.
@group(0) @binding(1) var<storage, read_write> s_io4: array<vec4<f32>>;

fn s4_at(i: u32) -> vec4<f32> {
    if (TEX_IN) {
        return texel_at(in_tex, i);
    }
    return s_io4[i];
}

@compute @workgroup_size(WG)
fn softmax_lse_thread4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg) * WG + lid;
    if (r >= p.rows) {
        return;
    }
    let len4 = p.len / 4u;
    let base = r * len4;
    var m4 = vec4<f32>(neg_inf());
    for (var j = 0u; j < len4; j++) {
        m4 = max(m4, s4_at(base + j));
    }
    let m = max(max(m4.x, m4.y), max(m4.z, m4.w));
    var t4 = vec4<f32>(0.0);
    for (var j = 0u; j < len4; j++) {
        t4 += exp(s4_at(base + j) - m);
    }
    let t = (t4.x + t4.y) + (t4.z + t4.w);
    let inv = 1.0 / t;
    for (var j = 0u; j < len4; j++) {
        s_io4[base + j] = exp(s4_at(base + j) - m) * inv;
    }
    row_out[r] = m + log(t);
}

@compute @workgroup_size(WG)
fn softmax_lse_wg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg);
    let live = r < p.rows;
    let base = r * p.len;
    var m = neg_inf();
    if (live) {
        for (var j = lid; j < p.len; j += WG) {
            if (!masked(r, j)) {
                m = max(m, s_io[base + j]);
            }
        }
    }
    m = wg_max(m, lid);
    var t = 0.0;
    if (live) {
        for (var j = lid; j < p.len; j += WG) {
            if (!masked(r, j)) {
                t += exp(s_io[base + j] - m);
            }
        }
    }
    t = wg_sum(t, lid);
    if (live) {
        let inv = 1.0 / t;
        for (var j = lid; j < p.len; j += WG) {
            s_io[base + j] = select(exp(s_io[base + j] - m) * inv, 0.0, masked(r, j));
        }
        if (lid == 0u) {
            row_out[r] = m + log(t);
        }
    }
}

// One workgroup per row (WG threads stride along it): no per-element index division.
@compute @workgroup_size(WG)
fn exp_sub_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    let base = r * p.len;
    let l = row_in[r];
    // with a causal mask, keys past the query get 0
    let seen = select(p.len, min(p.len, r % max(p.causal, 1u) + 1u), p.causal > 0u);
    for (var j = lid; j < p.len; j += WG) {
        s_io[base + j] = select(0.0, exp(s_io[base + j] - l), j < seen);
    }
}

@compute @workgroup_size(WG)
fn ds_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    let base = r * p.len;
    let d = row_in[r];
    for (var j = lid; j < p.len; j += WG) {
        dp_io[base + j] = x[base + j] * (dp_io[base + j] - d);
    }
}
