// Fused AdamW step, in place, exactly PyTorch's torch.optim.AdamW:
//   g' = g * clip                       (clip: global-norm scale, one element)
//   p  = p * (1 - lr * wd)
//   m  = b1 m + (1 - b1) g'
//   v  = b2 v + (1 - b2) g'^2
//   p  = p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),  bc_i = 1 - b_i^step

struct Params {
    n: u32,
    _pad: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bc1: f32,
    bc2_sqrt: f32,
    _p1: u32,
    _p2: u32,
    _p3: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read> clip: array<f32>;

// The new moments (m, v) from the old ones and the clipped gradient g.
fn adamw_moments(m_old: f32, v_old: f32, g: f32) -> vec2<f32> {
    return vec2<f32>(p.beta1 * m_old + (1.0 - p.beta1) * g, p.beta2 * v_old + (1.0 - p.beta2) * g * g);
}

// The updated parameter from its old value and the new moments.
fn adamw_param(x_old: f32, mv: vec2<f32>) -> f32 {
    let x = x_old * (1.0 - p.lr * p.weight_decay);
    return x - (p.lr / p.bc1) * mv.x / (sqrt(mv.y) / p.bc2_sqrt + p.eps);
}

@compute @workgroup_size(256)
fn adamw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    let mv = adamw_moments(m[i], v[i], grad[i] * clip[0]);
    m[i] = mv.x;
    v[i] = mv.y;
    param[i] = adamw_param(param[i], mv);
}

// Partial sums of squares for the global gradient norm, one dispatch per tensor:
// workgroup w adds up x[w*SQ_CHUNK .. (w+1)*SQ_CHUNK) and writes partials[p._pad + w]
// (p.n = elements of x, p._pad = this tensor's first slot). The partials of all tensors
// are then summed once.
const SQ_CHUNK: u32 = 4096u;
@group(0) @binding(6) var<storage, read> sq_x: array<f32>;
@group(0) @binding(7) var<storage, read_write> sq_partials: array<f32>;
var<workgroup> sq_acc: array<f32, 256>;

@compute @workgroup_size(256)
fn sumsq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let w = wid.y * nwg.x + wid.x;
    let start = w * SQ_CHUNK;
    let end = min(start + SQ_CHUNK, p.n);
    var acc = 0.0;
    for (var i = start + lid; i < end; i += 256u) {
        let v = sq_x[i];
        acc += v * v;
    }
    sq_acc[lid] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            sq_acc[lid] += sq_acc[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u && start < p.n) {
        sq_partials[p._pad + w] = sq_acc[0];
    }
}

// AdamW with 8-bit states (bitsandbytes' block-wise dynamic quantisation, the reference's
// AdamW8bit): one workgroup per block of 256 elements (block b = elements 256b..256b+256),
// one invocation per code word (four elements).
//   m, v: one code byte per element, four per word (element 4w+k in byte k of word w;
//     block b = words 64b..64b+64); value = codes[code] * absmax (m: the signed map,
//     codes[0..256]; v: the unsigned map, codes[256..512]; both ascending, in [-1, 1] /
//     [0, 1]).
//   absmax: [2 * blocks], m's block maxima then v's.
// Each step dequantises, runs the f32 AdamW update above (adamw_moments, adamw_param) on the
// dequantised states,
// and quantises the new states again: per block absmax = max |m| (max v), 1 where 0, each
// value to the nearest code of value / absmax (the lower code on a tie).
@group(0) @binding(8) var<storage, read_write> q8_param: array<f32>;
@group(0) @binding(9) var<storage, read> q8_grad: array<f32>;
@group(0) @binding(10) var<storage, read_write> q8_m: array<u32>;
@group(0) @binding(11) var<storage, read_write> q8_v: array<u32>;
@group(0) @binding(12) var<storage, read_write> q8_absmax: array<f32>;
@group(0) @binding(13) var<storage, read> q8_clip: array<f32>;
@group(0) @binding(14) var<storage, read> q8_codes: array<f32>;
// both block maxima in one reduction (common.wgsl's wg_max twice measured 17% slower on
// llvmpipe: 119 vs 102 ms for 2.6 M weights)
var<workgroup> q8_max: array<vec2<f32>, 64>;

// The index (in 0..256, of the map starting at `base`) of the code nearest to x.
fn q8_nearest(x: f32, base: u32) -> u32 {
    // upper bound (the number of codes <= x) in 8 steps of the same length for every lane
    var first = 0u;
    for (var step = 128u; step > 0u; step >>= 1u) {
        first += select(0u, step, q8_codes[base + first + step - 1u] <= x);
    }
    if (first == 255u && q8_codes[base + 255u] <= x) {
        return 255u;
    }
    if (first == 0u) {
        return 0u;
    }
    let below = first - 1u;
    return select(first, below, x - q8_codes[base + below] <= q8_codes[base + first] - x);
}

@compute @workgroup_size(64)
fn adamw8bit(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    // workgroup b: block b; invocation lid: the four elements of code word 64b + lid
    let b = wid.y * nwg.x + wid.x;
    let blocks = (p.n + 255u) / 256u;
    if (b >= blocks) { // whole workgroups only: barriers below stay uniform
        return;
    }
    let word = b * 64u + lid;
    let old_m = q8_m[word];
    let old_v = q8_v[word];
    let am_old = q8_absmax[b];
    let av_old = q8_absmax[blocks + b];
    var mi: array<f32, 4>;
    var vi: array<f32, 4>;
    var mx = vec2<f32>(0.0, 0.0);
    for (var k = 0u; k < 4u; k++) {
        let i = 4u * word + k;
        mi[k] = 0.0;
        vi[k] = 0.0;
        if (i < p.n) {
            let m_old = q8_codes[(old_m >> (8u * k)) & 0xffu] * am_old;
            let v_old = q8_codes[256u + ((old_v >> (8u * k)) & 0xffu)] * av_old;
            let mv = adamw_moments(m_old, v_old, q8_grad[i] * q8_clip[0]);
            mi[k] = mv.x;
            vi[k] = mv.y;
            q8_param[i] = adamw_param(q8_param[i], mv);
            mx = max(mx, vec2<f32>(abs(mv.x), mv.y));
        }
    }
    q8_max[lid] = mx;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) {
            q8_max[lid] = max(q8_max[lid], q8_max[lid + s]);
        }
        workgroupBarrier();
    }
    let am = select(q8_max[0].x, 1.0, q8_max[0].x == 0.0);
    let av = select(q8_max[0].y, 1.0, q8_max[0].y == 0.0);
    var wm = 0u;
    var wv = 0u;
    for (var k = 0u; k < 4u; k++) {
        wm |= q8_nearest(mi[k] / am, 0u) << (8u * k);
        wv |= q8_nearest(vi[k] / av, 256u) << (8u * k);
    }
    q8_m[word] = wm;
    q8_v[word] = wv;
    if (lid == 0u) {
        q8_absmax[b] = am;
        q8_absmax[blocks + b] = av;
    }
}
