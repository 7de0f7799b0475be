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

@compute @workgroup_size(256)
fn adamw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    let g = grad[i] * clip[0];
    let mi = p.beta1 * m[i] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    let x = param[i] * (1.0 - p.lr * p.weight_decay);
    param[i] = x - (p.lr / p.bc1) * mi / (sqrt(vi) / p.bc2_sqrt + p.eps);
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
