// Fused scaled-dot-product attention with online softmax (no Lq x Lk matrix in memory).
//   q (BH, Lq, D), k (BH/kv_rep, Lk, D), v (BH/kv_rep, Lk, Dv) -> out (BH, Lq, Dv)
//   lse (BH, Lq) = log-sum-exp of the scaled scores (kept for the backward pass)
//   CAPTURE: also writes probs (BH, Lq, Lk) = softmax(scale q k^T) (motion guidance reads
//   the temporal attention maps). kv_rep > 1 lets kv_rep consecutive query batches share
//   one K/V batch (the same text context for every frame) without copies.
// One thread per query row; a workgroup holds 64 rows of one batch, so K/V loads are
// uniform across the workgroup. Rows are handled as vec4s: D, Dv multiples of 4, <= 128.
// causal: query i attends to keys 0..=i (the CLIP text tower).

// Keys query row i may see.
fn key_end(i: u32) -> u32 {
    return select(p.lk, min(i + 1u, p.lk), p.causal != 0u);
}

struct Params {
    bh: u32,
    lq: u32,
    lk: u32,
    d4: u32,     // D / 4
    dv4: u32,    // Dv / 4
    scale: f32,
    kv_rep: u32,
    causal: u32,   // 1: query i sees keys 0..=i only (Lq == Lk)
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
    let jend = key_end(i);
    for (var j = 0u; j < jend; j++) {
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
            probs[row * p.lk + j] = select(0.0, exp(s - lse_row), j < jend);
        }
    }
}

// Backward (FlashAttention-2 style: probabilities recomputed from the saved lse, never
// stored). With P_ij = exp(scale q_i.k_j - lse_i), D_i = dO_i . O_i (precomputed):
//   dS_ij = P_ij (dO_i . v_j - D_i)
//   dQ_i = scale sum_j dS_ij k_j           attention_bwd_dq: one thread per query row
//   dK_j = scale sum_i dS_ij q_i           attention_bwd_dkv: one thread per key row,
//   dV_j = sum_i P_ij dO_i                 over every query batch that shares this K/V batch
@group(0) @binding(4) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> lse_in: array<f32>;
@group(0) @binding(6) var<storage, read> dvec: array<f32>;
@group(0) @binding(7) var<storage, read_write> dq: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> dk: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> dv: array<vec4<f32>>;

@compute @workgroup_size(64)
fn attention_bwd_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
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
    var go: array<vec4<f32>, MAX_D4>;
    var acc: array<vec4<f32>, MAX_D4>;
    for (var t = 0u; t < p.d4; t++) {
        qv[t] = q[row * p.d4 + t] * p.scale;
        acc[t] = vec4<f32>(0.0);
    }
    for (var t = 0u; t < p.dv4; t++) {
        go[t] = dout[row * p.dv4 + t];
    }
    let l = lse_in[row];
    let di = dvec[row];
    var kj: array<vec4<f32>, MAX_D4>;   // key row j, loaded once per j
    let jend = key_end(i);
    for (var j = 0u; j < jend; j++) {
        var s = 0.0;
        for (var t = 0u; t < p.d4; t++) {
            kj[t] = k[kb + j * p.d4 + t];
            s += dot(qv[t], kj[t]);
        }
        var dp = 0.0;
        for (var t = 0u; t < p.dv4; t++) {
            dp += dot(go[t], v[vb + j * p.dv4 + t]);
        }
        let ds = exp(s - l) * (dp - di);
        for (var t = 0u; t < p.d4; t++) {
            acc[t] = fma(vec4<f32>(ds), kj[t], acc[t]);
        }
    }
    for (var t = 0u; t < p.d4; t++) {
        dq[row * p.d4 + t] = acc[t] * p.scale;
    }
}

@compute @workgroup_size(64)
fn attention_bwd_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let zk = wid.z * nwg.y + wid.y;   // K/V batch
    let j = wid.x * 64u + lid;        // key row
    if (zk * p.kv_rep >= p.bh || j >= p.lk) {
        return;
    }
    let krow = zk * p.lk + j;
    var kv: array<vec4<f32>, MAX_D4>;
    var vv: array<vec4<f32>, MAX_D4>;
    var dka: array<vec4<f32>, MAX_D4>;
    var dva: array<vec4<f32>, MAX_D4>;
    for (var t = 0u; t < p.d4; t++) {
        kv[t] = k[krow * p.d4 + t] * p.scale;
        dka[t] = vec4<f32>(0.0);
    }
    for (var t = 0u; t < p.dv4; t++) {
        vv[t] = v[krow * p.dv4 + t];
        dva[t] = vec4<f32>(0.0);
    }
    var qi: array<vec4<f32>, MAX_D4>;   // query row i, loaded once per i
    for (var z = zk * p.kv_rep; z < (zk + 1u) * p.kv_rep; z++) {
        // causal: only queries i >= j see key j
        for (var i = select(0u, j, p.causal != 0u); i < p.lq; i++) {
            let row = z * p.lq + i;
            var s = 0.0;
            for (var t = 0u; t < p.d4; t++) {
                qi[t] = q[row * p.d4 + t];
                s += dot(kv[t], qi[t]);
            }
            let pij = exp(s - lse_in[row]);
            var dp = 0.0;
            for (var t = 0u; t < p.dv4; t++) {
                let g = dout[row * p.dv4 + t];
                dp += dot(g, vv[t]);
                dva[t] = fma(vec4<f32>(pij), g, dva[t]);
            }
            let ds = pij * (dp - dvec[row]);
            for (var t = 0u; t < p.d4; t++) {
                dka[t] = fma(vec4<f32>(ds), qi[t], dka[t]);
            }
        }
    }
    for (var t = 0u; t < p.d4; t++) {
        dk[krow * p.d4 + t] = dka[t] * p.scale;
    }
    for (var t = 0u; t < p.dv4; t++) {
        dv[krow * p.dv4 + t] = dva[t];
    }
}
