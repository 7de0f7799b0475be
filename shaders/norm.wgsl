// Layer norm and group norm as one row normalisation.
// A row of `len` elements is normalised by its own mean and variance (biased, two-pass),
// then scaled per channel: channel(row, j) = (row % groups) * cpg + j / inner.
//   layer norm over the last axis D: rows = numel / D, len = D, groups = 1, cpg = 0, inner = 1
//   group norm of (N, C, S) with G groups: rows = N*G, len = (C/G)*S, groups = G,
//                                          cpg = C/G, inner = S
// Also writes (mean, rstd) per row for the backward pass. ACT = 1 fuses a SiLU.

struct Params {
    rows: u32,
    len: u32,
    groups: u32,
    cpg: u32,
    inner: u32,
    eps: f32,
    affine: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;  // (rows, 2): mean, rstd

override ACT: u32 = 0u;   // 0 none, 1 silu

@compute @workgroup_size(WG)
fn norm_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg);
    let live = r < p.rows;
    let base = r * p.len;
    var s = 0.0;
    if (live) {
        for (var j = lid; j < p.len; j += WG) {
            s += x[base + j];
        }
    }
    let mean = wg_sum(s, lid) / f32(p.len);
    var v = 0.0;
    if (live) {
        for (var j = lid; j < p.len; j += WG) {
            let d = x[base + j] - mean;
            v += d * d;
        }
    }
    let rstd = inverseSqrt(wg_sum(v, lid) / f32(p.len) + p.eps);
    if (!live) {
        return;
    }
    let ch0 = (r % p.groups) * p.cpg;
    for (var j = lid; j < p.len; j += WG) {
        var o = (x[base + j] - mean) * rstd;
        if (p.affine != 0u) {
            let ch = ch0 + j / p.inner;
            o = o * gamma[ch] + beta[ch];
        }
        if (ACT == 1u) {
            o = o / (1.0 + exp(-o));
        }
        y[base + j] = o;
    }
    if (lid == 0u) {
        stats[2u * r] = mean;
        stats[2u * r + 1u] = rstd;
    }
}

// norm_rows4: the same with rows read and written as vec4s (len % 4 == 0).
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y4: array<vec4<f32>>;

fn affine4(o: vec4<f32>, ch0: u32, j: u32) -> vec4<f32> {
    var r = o;
    if (p.affine != 0u) {
        let ch = vec4<u32>(ch0) + (vec4<u32>(j) + vec4<u32>(0u, 1u, 2u, 3u)) / p.inner;
        r = r * vec4<f32>(gamma[ch.x], gamma[ch.y], gamma[ch.z], gamma[ch.w])
              + vec4<f32>(beta[ch.x], beta[ch.y], beta[ch.z], beta[ch.w]);
    }
    if (ACT == 1u) {
        r = r / (1.0 + exp(-r));
    }
    return r;
}

@compute @workgroup_size(WG)
fn norm_rows4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg);
    let live = r < p.rows;
    let len4 = p.len / 4u;
    let base = r * len4;
    var s = vec4<f32>(0.0);
    if (live) {
        for (var j = lid; j < len4; j += WG) {
            s += x4[base + j];
        }
    }
    let mean = wg_sum(s.x + s.y + s.z + s.w, lid) / f32(p.len);
    var v = vec4<f32>(0.0);
    if (live) {
        for (var j = lid; j < len4; j += WG) {
            let d = x4[base + j] - mean;
            v += d * d;
        }
    }
    let rstd = inverseSqrt(wg_sum(v.x + v.y + v.z + v.w, lid) / f32(p.len) + p.eps);
    if (!live) {
        return;
    }
    let ch0 = (r % p.groups) * p.cpg;
    for (var j = lid; j < len4; j += WG) {
        y4[base + j] = affine4((x4[base + j] - mean) * rstd, ch0, 4u * j);
    }
    if (lid == 0u) {
        stats[2u * r] = mean;
        stats[2u * r + 1u] = rstd;
    }
}
