// Fused scaled-dot-product attention with online softmax (no Lq x Lk matrix in memory).
//   q (BH, Lq, D), k (BH/kv_rep, Lk, D), v (BH/kv_rep, Lk, Dv) -> out (BH, Lq, Dv)
//   lse (BH, Lq) = log-sum-exp of the scaled scores (kept for the backward pass)
//   CAPTURE: also writes probs (BH, Lq, Lk) = softmax(scale q k^T) (motion guidance reads
//   the temporal attention maps). kv_rep > 1 lets kv_rep consecutive query batches share
//   one K/V batch (the same text context for every frame) without copies.
// One thread per query row; a workgroup holds 64 rows of one batch, so K/V loads are
// uniform across the workgroup. Rows are handled as vec4s: D, Dv multiples of 4, <= 128.

struct Params {
    bh: u32,
    lq: u32,
    lk: u32,
    d4: u32,     // D / 4
    dv4: u32,    // Dv / 4
    scale: f32,
    kv_rep: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;
@group(0) @binding(6) var<storage, read_write> probs: array<f32>;

override CAPTURE: bool = false;

const MAX_D4: u32 = 32u;

@compute @workgroup_size(64)
fn attention_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let z = wid.z * nwg.y + wid.y;
    let i = wid.x * 64u + lid;
    if (z >= p.bh || i >= p.lq) {
        return;
    }
    let row = z * p.lq + i;
    let zk = z / p.kv_rep;
    let kb = zk * p.lk * p.d4;
    let vb = zk * p.lk * p.dv4;
    var qv: array<vec4<f32>, MAX_D4>;
    var acc: array<vec4<f32>, MAX_D4>;
    for (var t = 0u; t < p.d4; t++) {
        qv[t] = q[row * p.d4 + t] * p.scale;
    }
    for (var t = 0u; t < p.dv4; t++) {
        acc[t] = vec4<f32>(0.0);
    }
    var m = bitcast<f32>(0xff800000u);
    var l = 0.0;
    for (var j = 0u; j < p.lk; j++) {
        var s = 0.0;
        for (var t = 0u; t < p.d4; t++) {
            s += dot(qv[t], k[kb + j * p.d4 + t]);
        }
        let mn = max(m, s);
        let corr = exp(m - mn);
        let e = exp(s - mn);
        l = l * corr + e;
        for (var t = 0u; t < p.dv4; t++) {
            acc[t] = fma(vec4<f32>(e), v[vb + j * p.dv4 + t], acc[t] * corr);
        }
        m = mn;
    }
    let inv = 1.0 / l;
    for (var t = 0u; t < p.dv4; t++) {
        out[row * p.dv4 + t] = acc[t] * inv;
    }
    let lse_row = m + log(l);
    lse[row] = lse_row;
    if (CAPTURE) {
        for (var j = 0u; j < p.lk; j++) {
            var s = 0.0;
            for (var t = 0u; t < p.d4; t++) {
                s += dot(qv[t], k[kb + j * p.d4 + t]);
            }
            probs[row * p.lk + j] = exp(s - lse_row);
        }
    }
}
