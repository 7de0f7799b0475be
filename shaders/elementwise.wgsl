// Elementwise kernels over a logical shape of rank <= 8.
//
// Every operand is addressed by (offset, strides): a contiguous tensor has row-major
// strides, a broadcast dimension stride 0, a permuted/sliced view its own strides. So one
// kernel serves unary math, copies (permute, slice, concat, broadcast, nearest upsample)
// and broadcasting binary ops. Flags mark contiguous operands to skip the index math.
//
// Grid: 1-D over the n logical elements, 256 per workgroup, folded into x/y so that large
// tensors stay under 65535 workgroups per dimension.

struct Params {
    n: u32,
    rank: u32,
    flags: u32,          // bit 0: x/a contiguous, bit 1: b contiguous, bit 2: out contiguous
    x_off: u32,
    out_off: u32,
    alpha: f32,
    beta: f32,
    gamma: f32,
    shape: array<vec4<u32>, 2>,  // logical shape, dims 0..7
    xs: array<vec4<u32>, 2>,     // strides of x (or a)
    bs: array<vec4<u32>, 2>,     // strides of b
    os: array<vec4<u32>, 2>,     // strides of out
}

@group(0) @binding(0) var<uniform> p: Params;

// unary / copy: binding 1 = x, binding 2 = out
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
// binary: binding 1 = a (x above), binding 2 = b, binding 3 = out
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
// fill: binding 1 = out
@group(0) @binding(1) var<storage, read_write> f: array<f32>;

override OP: u32 = 0u;

const WG: u32 = 256u;

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// Offsets in (x, b, out) of element i of the logical shape's first `dims` dimensions.
fn strided_offsets(i: u32, dims: u32) -> vec3<u32> {
    var rem = i;
    var s = vec3<u32>(p.x_off, 0u, p.out_off);
    for (var d = i32(dims) - 1; d >= 0; d--) {
        let q = u32(d) / 4u;
        let r = u32(d) % 4u;
        let size = p.shape[q][r];
        let coord = rem % size;
        rem = rem / size;
        s += coord * vec3<u32>(p.xs[q][r], p.bs[q][r], p.os[q][r]);
    }
    return s;
}

// Offsets of logical element i in (x, b, out).
fn offsets(i: u32) -> vec3<u32> {
    var o = vec3<u32>(p.x_off + i, i, p.out_off + i);
    if ((p.flags & 7u) == 7u) {
        return o;
    }
    let s = strided_offsets(i, p.rank);
    return select(s, o, vec3<bool>((p.flags & 1u) != 0u, (p.flags & 2u) != 0u, (p.flags & 4u) != 0u));
}

// erf with |error| < 1.2e-7 (Numerical Recipes' erfc, Chebyshev fit).
fn erf(v: f32) -> f32 {
    let z = abs(v);
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
        t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
        t * (-0.82215223 + t * 0.17087277)))))))));
    return select(r - 1.0, 1.0 - r, v >= 0.0);
}

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

// tanh that stays finite for large |v| on every driver.
fn tanh_safe(v: f32) -> f32 {
    return tanh(clamp(v, -15.0, 15.0));
}

// OP codes: keep in sync with `UnaryOp` in kernels/src/ops/elementwise.rs.
fn unary_op(v: f32) -> f32 {
    switch OP {
        case 0u: { return v; }                                   // identity / copy
        case 1u: { return -v; }
        case 2u: { return exp(v); }
        case 3u: { return log(v); }
        case 4u: { return sqrt(v); }
        case 5u: { return inverseSqrt(v); }
        case 6u: { return abs(v); }
        case 7u: { return sigmoid(v); }
        case 8u: { return tanh_safe(v); }
        case 9u: { return max(v, 0.0); }                         // relu
        case 10u: { return v * sigmoid(v); }                     // silu
        case 11u: { return 0.5 * v * (1.0 + erf(v * 0.70710678118654752)); } // gelu (erf)
        case 12u: { return 0.5 * v * (1.0 + tanh_safe(0.7978845608028654 * (v + 0.044715 * v * v * v))); }
        case 13u: { return v * sigmoid(1.702 * v); }             // quick_gelu
        case 14u: { return v * v; }
        case 15u: { return 1.0 / v; }
        case 16u: { return sin(v); }
        case 17u: { return cos(v); }
        case 18u: { return pow(v, p.gamma); }                    // x^gamma (x > 0)
        default: { return v; }
    }
}

// Strided unary / copy by runs: one thread per run of up to RUN elements along the last
// (coalesced) dimension, so the index decomposition (integer divisions, slow on CPU
// adapters) happens once per run instead of once per element. p.n = number of runs.
const RUN: u32 = 32u;

// Run t: (row over the leading dimensions, first and one-past-last element along the last).
fn run_of(t: u32) -> vec3<u32> {
    let last = p.rank - 1u;
    let len = p.shape[last / 4u][last % 4u];
    let runs = (len + RUN - 1u) / RUN;
    let row = t / runs;
    let start = (t - row * runs) * RUN;
    return vec3<u32>(row, start, min(len, start + RUN));
}

@compute @workgroup_size(256)
fn unary_runs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let t = flat_index(wid, nwg, lid);
    if (t >= p.n) {
        return;
    }
    let last = p.rank - 1u;
    let r = run_of(t);
    let o = strided_offsets(r.x, last);
    let xs = p.xs[last / 4u][last % 4u];
    let os = p.os[last / 4u][last % 4u];
    for (var j = r.y; j < r.z; j++) {
        y[o.z + j * os] = p.alpha * unary_op(x_at(o.x + j * xs)) + p.beta;
    }
}

// y = alpha * op(x) + beta
@compute @workgroup_size(256)
fn unary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let o = offsets(i);
    y[o.z] = p.alpha * unary_op(x_at(o.x)) + p.beta;
}

// OP codes: keep in sync with `BinaryOp`.
fn binary_op(u: f32, v: f32) -> f32 {
    switch OP {
        case 0u: { return u + v; }
        case 1u: { return u - v; }
        case 2u: { return u * v; }
        case 3u: { return u / v; }
        case 4u: { return max(u, v); }
        case 5u: { return min(u, v); }
        case 6u: { return pow(u, v); }
        case 7u: { return p.alpha * u + p.beta * v; }            // axpby
        case 8u: { return select(0.0, 1.0, u == v); }            // eq (masks)
        default: { return u; }
    }
}

// out = op(a, b) with broadcasting (out contiguous or strided)
@compute @workgroup_size(256)
fn binary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let o = offsets(i);
    c[o.z] = binary_op(x_at(o.x), b_at(o.y));
}

// out[i] = alpha
@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i < p.n) {
        f[i] = p.alpha;
    }
}

// Whole contiguous tensors as vec4s (4 elements per thread): unary4 (x -> y), binary4
// (a, b -> c, same shape). Bindings are padded to 16 bytes, so the last vec4 may cover
// up to 3 padding elements past n; they are computed and written but never read as data.
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c4: array<vec4<f32>>;

// Reads of x (or a) and b: with TEX_IN from their textures (every entry but fill and
// add_assign4). Indices are element (x_at, b_at) or vec4 (x4_at, b4_at) indices.
@group(0) @binding(9) var x_tex: texture_2d<f32>;
@group(0) @binding(10) var b_tex: texture_2d<f32>;

fn x_at(i: u32) -> f32 {
    if (TEX_IN) {
        return element_at(x_tex, i);
    }
    return x[i];
}

fn b_at(i: u32) -> f32 {
    if (TEX_IN) {
        return element_at(b_tex, i);
    }
    return b[i];
}

fn x4_at(i: u32) -> vec4<f32> {
    if (TEX_IN) {
        return texel_at(x_tex, i);
    }
    return x4[i];
}

fn b4_at(i: u32) -> vec4<f32> {
    if (TEX_IN) {
        return texel_at(b_tex, i);
    }
    return b4[i];
}

@compute @workgroup_size(256)
fn unary4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i * 4u >= p.n) {
        return;
    }
    y4[i] = unary_affine4(x4_at(i));
}

fn unary_affine4(v: vec4<f32>) -> vec4<f32> {
    return p.alpha * vec4<f32>(unary_op(v.x), unary_op(v.y), unary_op(v.z), unary_op(v.w)) + p.beta;
}

// The strided unary / copy in vec4s, for views whose offsets and strides are multiples of
// 4 (on a CPU adapter every storage access is a loop over the lanes, so moving 4 elements
// per access makes a copy ~4x cheaper). Two layouts of the last (coalesced) dimensions:
//
// unary_runs4: the last dimension is contiguous in x and out (head split/merge permutes,
// slices): one thread per run of up to RUN elements, as unary_runs. p.n = number of runs.
@compute @workgroup_size(256)
fn unary_runs4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let t = flat_index(wid, nwg, lid);
    if (t >= p.n) {
        return;
    }
    let r = run_of(t) / vec3<u32>(1u, 4u, 4u);
    let o = strided_offsets(r.x, p.rank - 1u) / 4u;
    for (var j = r.y; j < r.z; j++) {
        y4[o.z + j] = unary_affine4(x4_at(o.x + j));
    }
}

// unary_rows4: the layout of unary_runs4 with a short last dimension (head split/merge
// permutes: runs of 16): one thread per ROWS consecutive rows of the second-to-last
// dimension, so the index decomposition is paid once per up to ROWS runs. Needs rank >= 2.
// p.n = (rows over dims 0..rank-3) * ceil(shape[rank-2] / ROWS).
const ROWS: u32 = 8u;

@compute @workgroup_size(256)
fn unary_rows4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let t = flat_index(wid, nwg, lid);
    if (t >= p.n) {
        return;
    }
    let dr = p.rank - 2u;
    let dl = p.rank - 1u;
    let rows = p.shape[dr / 4u][dr % 4u];
    let len4 = p.shape[dl / 4u][dl % 4u] / 4u;
    let chunks = (rows + ROWS - 1u) / ROWS;
    let outer = t / chunks;
    let r0 = (t - outer * chunks) * ROWS;
    let r1 = min(rows, r0 + ROWS);
    let o = strided_offsets(outer, dr);
    let xr = p.xs[dr / 4u][dr % 4u];   // strides along the rows, in elements
    let orr = p.os[dr / 4u][dr % 4u];
    for (var r = r0; r < r1; r++) {
        let ix = (o.x + r * xr) / 4u;
        let io = (o.z + r * orr) / 4u;
        for (var j = 0u; j < len4; j++) {
            y4[io + j] = unary_affine4(x4_at(ix + j));
        }
    }
}

// unary_transpose4: the last two dimensions (R, C) are transposed: x is contiguous along R,
// out along C. One thread per 4x4 tile: 4 vec4 loads down x's columns, a register
// transpose, 4 vec4 stores along out's rows. p.n = number of tiles.
@compute @workgroup_size(256)
fn unary_transpose4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let t = flat_index(wid, nwg, lid);
    if (t >= p.n) {
        return;
    }
    let dr = p.rank - 2u;
    let dc = p.rank - 1u;
    let tiles_c = p.shape[dc / 4u][dc % 4u] / 4u;
    let tiles = p.shape[dr / 4u][dr % 4u] / 4u * tiles_c;
    let outer = t / tiles;
    let r0 = (t - outer * tiles) / tiles_c * 4u;
    let c0 = (t - outer * tiles) % tiles_c * 4u;
    let o = strided_offsets(outer, dr);
    let xc = p.xs[dc / 4u][dc % 4u] / 4u;   // x's step along C, in vec4s
    let or = p.os[dr / 4u][dr % 4u] / 4u;   // out's step along R, in vec4s
    let ix = (o.x + r0 + c0 * xc * 4u) / 4u;
    let v0 = x4_at(ix);
    let v1 = x4_at(ix + xc);
    let v2 = x4_at(ix + 2u * xc);
    let v3 = x4_at(ix + 3u * xc);
    let io = (o.z + r0 * or * 4u + c0) / 4u;
    y4[io] = unary_affine4(vec4<f32>(v0.x, v1.x, v2.x, v3.x));
    y4[io + or] = unary_affine4(vec4<f32>(v0.y, v1.y, v2.y, v3.y));
    y4[io + 2u * or] = unary_affine4(vec4<f32>(v0.z, v1.z, v2.z, v3.z));
    y4[io + 3u * or] = unary_affine4(vec4<f32>(v0.w, v1.w, v2.w, v3.w));
}

@compute @workgroup_size(256)
fn binary4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i * 4u >= p.n) {
        return;
    }
    let u = x4_at(i);
    let v = b4_at(i);
    c4[i] = vec4<f32>(binary_op(u.x, v.x), binary_op(u.y, v.y), binary_op(u.z, v.z), binary_op(u.w, v.w));
}

// add_assign4: acc = alpha * acc + beta * b in place, whole contiguous tensors of one size
// (gradient accumulation with alpha = beta = 1, moving averages; no new buffer).
// binding 4 = acc, binding 5 = b.
@group(0) @binding(4) var<storage, read_write> acc4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> addend4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn add_assign4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i * 4u >= p.n) {
        return;
    }
    acc4[i] = p.alpha * acc4[i] + p.beta * addend4[i];
}

// d/dv of alpha * op(v) + beta, without alpha (same OP codes as unary_op).
fn unary_deriv(v: f32) -> f32 {
    switch OP {
        case 0u: { return 1.0; }
        case 1u: { return -1.0; }
        case 2u: { return exp(v); }
        case 3u: { return 1.0 / v; }
        case 4u: { return 0.5 * inverseSqrt(v); }
        case 5u: { return -0.5 * inverseSqrt(v) / v; }
        case 6u: { return sign(v); }
        case 7u: { let s = sigmoid(v); return s * (1.0 - s); }
        case 8u: { let t = tanh_safe(v); return 1.0 - t * t; }
        case 9u: { return select(0.0, 1.0, v > 0.0); }
        case 10u: { let s = sigmoid(v); return s * (1.0 + v * (1.0 - s)); }
        case 11u: {
            // Phi(v) + v phi(v)
            return 0.5 * (1.0 + erf(v * 0.70710678118654752)) + v * 0.3989422804014327 * exp(-0.5 * v * v);
        }
        case 12u: {
            let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
            let t = tanh_safe(u);
            return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * v * v);
        }
        case 13u: { let s = sigmoid(1.702 * v); return s * (1.0 + 1.702 * v * (1.0 - s)); }
        case 14u: { return 2.0 * v; }
        case 15u: { return -1.0 / (v * v); }
        case 16u: { return cos(v); }
        case 17u: { return -sin(v); }
        case 18u: { return p.gamma * pow(v, p.gamma - 1.0); }
        default: { return 1.0; }
    }
}

// dx = alpha * dy * op'(x); bindings as binary: 1 = x, 2 = dy, 3 = dx (contiguous, same shape)
@compute @workgroup_size(256)
fn unary_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    c[i] = p.alpha * b_at(i) * unary_deriv(x_at(i));
}

// Gated activations (GEGLU: OP = gelu) over the last dimension: x (rows, 2H) -> y (rows, H),
// y[r, j] = x[r, j] * op(x[r, H + j]): the value is the first half, the gate the second
// (torch.chunk's order). p.shape[0].x = H. gated: one thread per element of y; gated4: per
// vec4 of y (H % 4 == 0). p.n = threads.
@compute @workgroup_size(256)
fn gated(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let h = p.shape[0].x;
    let a = i + i / h * h; // row r = i / H: r * 2H + j
    y[i] = x_at(a) * unary_op(x_at(a + h));
}

@compute @workgroup_size(256)
fn gated4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let h4 = p.shape[0].x / 4u;
    let a = i + i / h4 * h4;
    let g = x4_at(a + h4);
    y4[i] = x4_at(a) * vec4<f32>(unary_op(g.x), unary_op(g.y), unary_op(g.z), unary_op(g.w));
}

// Their backward; bindings as binary: 1 = x (rows, 2H), 2 = dy (rows, H), 3 = dx (rows, 2H):
// dx[r, j] = dy * op(gate), dx[r, H + j] = dy * value * op'(gate). Threads as the forward.
@compute @workgroup_size(256)
fn gated_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let h = p.shape[0].x;
    let a = i + i / h * h;
    let g = x_at(a + h);
    let dy = b_at(i);
    c[a] = dy * unary_op(g);
    c[a + h] = dy * x_at(a) * unary_deriv(g);
}

@compute @workgroup_size(256)
fn gated_grad4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let h4 = p.shape[0].x / 4u;
    let a = i + i / h4 * h4;
    let g = x4_at(a + h4);
    let dy = b4_at(i);
    c4[a] = dy * vec4<f32>(unary_op(g.x), unary_op(g.y), unary_op(g.z), unary_op(g.w));
    c4[a + h4] = dy * x4_at(a) * vec4<f32>(unary_deriv(g.x), unary_deriv(g.y), unary_deriv(g.z), unary_deriv(g.w));
}
