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
    slice: u32,   // norm_affine_bwd: elements per slice
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

// norm_rows4: the same with rows read and written as vec4s (len % 4 == 0). With TEX_IN
// (norm_rows4 and norm_thread4) x, gamma and beta are read from their textures.
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y4: array<vec4<f32>>;
@group(0) @binding(9) var x_tex: texture_2d<f32>;
@group(0) @binding(10) var gamma_tex: texture_2d<f32>;
@group(0) @binding(11) var beta_tex: texture_2d<f32>;

fn x4_at(i: u32) -> vec4<f32> {
    if (TEX_IN) {
        return texel_at(x_tex, i);
    }
    return x4[i];
}

// (gamma, beta) of channel ch.
fn gamma_beta(ch: u32) -> vec2<f32> {
    if (TEX_IN) {
        return vec2<f32>(element_at(gamma_tex, ch), element_at(beta_tex, ch));
    }
    return vec2<f32>(gamma[ch], beta[ch]);
}

// (gamma, beta) of channels 4t .. 4t + 3.
fn gamma_beta4(t: u32) -> array<vec4<f32>, 2> {
    if (TEX_IN) {
        return array<vec4<f32>, 2>(texel_at(gamma_tex, t), texel_at(beta_tex, t));
    }
    let c = 4u * t;
    return array<vec4<f32>, 2>(vec4<f32>(gamma[c], gamma[c + 1u], gamma[c + 2u], gamma[c + 3u]),
                               vec4<f32>(beta[c], beta[c + 1u], beta[c + 2u], beta[c + 3u]));
}

fn affine4(o: vec4<f32>, ch0: u32, j: u32) -> vec4<f32> {
    var r = o;
    if (p.affine != 0u && p.inner == 1u && ch0 % 4u == 0u) {
        // one channel per element (layer norm): channels ch0 + j .. + 3, one texel each
        let gb = gamma_beta4((ch0 + j) / 4u);
        r = r * gb[0] + gb[1];
    } else if (p.affine != 0u && p.inner % 4u == 0u) {
        // the four elements share a channel
        let gb = gamma_beta(ch0 + j / p.inner);
        r = r * gb.x + gb.y;
    } else if (p.affine != 0u) {
        let ch = vec4<u32>(ch0) + (vec4<u32>(j) + vec4<u32>(0u, 1u, 2u, 3u)) / p.inner;
        let g0 = gamma_beta(ch.x);
        let g1 = gamma_beta(ch.y);
        let g2 = gamma_beta(ch.z);
        let g3 = gamma_beta(ch.w);
        r = r * vec4<f32>(g0.x, g1.x, g2.x, g3.x) + vec4<f32>(g0.y, g1.y, g2.y, g3.y);
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
            s += x4_at(base + j);
        }
    }
    let mean = wg_sum(s.x + s.y + s.z + s.w, lid) / f32(p.len);
    var v = vec4<f32>(0.0);
    if (live) {
        for (var j = lid; j < len4; j += WG) {
            let d = x4_at(base + j) - mean;
            v += d * d;
        }
    }
    let rstd = inverseSqrt(wg_sum(v.x + v.y + v.z + v.w, lid) / f32(p.len) + p.eps);
    if (!live) {
        return;
    }
    let ch0 = (r % p.groups) * p.cpg;
    for (var j = lid; j < len4; j += WG) {
        y4[base + j] = affine4((x4_at(base + j) - mean) * rstd, ch0, 4u * j);
    }
    if (lid == 0u) {
        stats[2u * r] = mean;
        stats[2u * r + 1u] = rstd;
    }
}

// norm_thread4: norm_rows4 with one invocation per row (row index = group * WG + lid) and no
// workgroup barriers, for short rows (layer norms over C channels), where a workgroup per
// row would leave most lanes idle and pay its barriers for a few elements, and on CPU
// adapters for many long rows too (ops::thread_per_row).
@compute @workgroup_size(WG)
fn norm_thread4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg) * WG + lid;
    if (r >= p.rows) {
        return;
    }
    let len4 = p.len / 4u;
    let base = r * len4;
    var s = vec4<f32>(0.0);
    for (var j = 0u; j < len4; j++) {
        s += x4_at(base + j);
    }
    let mean = (s.x + s.y + s.z + s.w) / f32(p.len);
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < len4; j++) {
        let d = x4_at(base + j) - mean;
        v += d * d;
    }
    let rstd = inverseSqrt((v.x + v.y + v.z + v.w) / f32(p.len) + p.eps);
    let ch0 = (r % p.groups) * p.cpg;
    for (var j = 0u; j < len4; j++) {
        y4[base + j] = affine4((x4_at(base + j) - mean) * rstd, ch0, 4u * j);
    }
    stats[2u * r] = mean;
    stats[2u * r + 1u] = rstd;
}

// norm_bwd: backward of norm_rows from the saved (mean, rstd). With g = dy' * gamma (dy'
// being dy through the fused SiLU's derivative, gamma = 1 without affine):
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
// (the weight and bias gradients: norm_affine_bwd below).
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;
@group(0) @binding(5) var<storage, read> stats_in: array<f32>;
@group(0) @binding(6) var<storage, read> dy: array<f32>;

// With TEX_IN (norm_bwd, norm_bwd_thread) x, gamma, beta and dy are read from their textures.
@group(0) @binding(12) var dy_tex: texture_2d<f32>;

fn x_at(i: u32) -> f32 {
    if (TEX_IN) {
        return element_at(x_tex, i);
    }
    return x[i];
}

fn dy_at(i: u32) -> f32 {
    if (TEX_IN) {
        return element_at(dy_tex, i);
    }
    return dy[i];
}

// (dy', g) at element j of row `base` with channel `ch`.
fn norm_dy(i: u32, xh: f32, ch: u32) -> vec2<f32> {
    var d = dy_at(i);
    var gm = 1.0;
    if (p.affine != 0u) {
        gm = gamma_beta(ch).x;
    }
    if (ACT == 1u) {
        var z = xh;
        if (p.affine != 0u) {
            z = xh * gm + gamma_beta(ch).y;
        }
        let s = 1.0 / (1.0 + exp(-z));
        d = d * s * (1.0 + z * (1.0 - s));
    }
    return vec2<f32>(d, d * gm);
}

// dx at element j of the row at `base`, given the row's mean(g) and mean(g * xhat).
fn norm_bwd_store(base: u32, j: u32, mean: f32, rstd: f32, ch0: u32, mg: f32, mgx: f32) {
    let xh = (x_at(base + j) - mean) * rstd;
    let dg = norm_dy(base + j, xh, ch0 + j / p.inner);
    dx[base + j] = rstd * (dg.y - mg - xh * mgx);
}

@compute @workgroup_size(WG)
fn norm_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg);
    let live = r < p.rows;
    let base = r * p.len;
    var mean = 0.0;
    var rstd = 0.0;
    if (live) {
        mean = stats_in[2u * r];
        rstd = stats_in[2u * r + 1u];
    }
    let ch0 = (r % p.groups) * p.cpg;
    var sg = 0.0;
    var sgx = 0.0;
    if (live) {
        for (var j = lid; j < p.len; j += WG) {
            let xh = (x_at(base + j) - mean) * rstd;
            let dg = norm_dy(base + j, xh, ch0 + j / p.inner);
            sg += dg.y;
            sgx += dg.y * xh;
        }
    }
    let mg = wg_sum(sg, lid) / f32(p.len);
    let mgx = wg_sum(sgx, lid) / f32(p.len);
    if (!live) {
        return;
    }
    for (var j = lid; j < p.len; j += WG) {
        norm_bwd_store(base, j, mean, rstd, ch0, mg, mgx);
    }
}

// norm_bwd_thread: norm_bwd with one invocation per row, where norm_thread4 would be used.
@compute @workgroup_size(WG)
fn norm_bwd_thread(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg) * WG + lid;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.len;
    let mean = stats_in[2u * r];
    let rstd = stats_in[2u * r + 1u];
    let ch0 = (r % p.groups) * p.cpg;
    var sg = 0.0;
    var sgx = 0.0;
    for (var j = 0u; j < p.len; j++) {
        let xh = (x_at(base + j) - mean) * rstd;
        let dg = norm_dy(base + j, xh, ch0 + j / p.inner);
        sg += dg.y;
        sgx += dg.y * xh;
    }
    let mg = sg / f32(p.len);
    let mgx = sgx / f32(p.len);
    for (var j = 0u; j < p.len; j++) {
        norm_bwd_store(base, j, mean, rstd, ch0, mg, mgx);
    }
}

// norm_affine_bwd: the weight and bias gradients of an affine normalisation,
//   dgamma[c] = sum of dy' * xhat,  dbeta[c] = sum of dy'
// over the elements of channel c, the tensor seen as (outer, C, inner) (layer norm: (rows,
// D, 1); group norm: (N, C, S)). Invocation t = s * C + c sums elements e = (o, i) of
// channel c, o * inner + i in slice s: [s * per, (s + 1) * per) with per = p.slice, walking
// (o, i) without divisions, and writes the partial sums at [t] (the caller adds up the
// slices when there are several). One dispatch instead of per-element terms and four
// reductions; per stays within llvmpipe's loop budget.
@group(0) @binding(4) var<storage, read_write> dgamma_part: array<f32>;
@group(0) @binding(7) var<storage, read_write> dbeta_part: array<f32>;

@compute @workgroup_size(64)
fn norm_affine_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * nwg.x + wid.x) * 64u + lid;
    let chans = select(p.groups * p.cpg, p.len, p.cpg == 0u);
    let outer = p.rows / p.groups;
    let total = outer * p.inner;
    let per = p.slice;
    if (t >= ((total + per - 1u) / per) * chans) {
        return;
    }
    let s = t / chans;
    let c = t - s * chans;
    // channel c lies in group grp of each (outer) index, at offset within * inner of its row
    var grp = 0u;
    var within = c;
    if (p.cpg != 0u) {
        grp = c / p.cpg;
        within = c - grp * p.cpg;
    }
    let e0 = s * per;
    let e1 = min(total, e0 + per);
    let o = e0 / p.inner;
    var i = e0 - o * p.inner;
    var r = o * p.groups + grp;
    var mean = stats_in[2u * r];
    var rstd = stats_in[2u * r + 1u];
    var base = r * p.len + within * p.inner;
    var sw = 0.0;
    var sb = 0.0;
    for (var e = e0; e < e1; e++) {
        let xh = (x_at(base + i) - mean) * rstd;
        let d = norm_dy(base + i, xh, c).x;
        sw += d * xh;
        sb += d;
        i++;
        if (i == p.inner && e + 1u < e1) {
            i = 0u;
            r += p.groups;
            mean = stats_in[2u * r];
            rstd = stats_in[2u * r + 1u];
            base = r * p.len + within * p.inner;
        }
    }
    dgamma_part[t] = sw;
    dbeta_part[t] = sb;
}
