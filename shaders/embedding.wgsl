// Embeddings.
//   sinusoidal: ldm's timestep_embedding: for t (N,) -> (N, dim), half = dim / 2,
//     freq_j = exp(-ln(max_period) * j / half), out = [cos(t freq), sin(t freq)] (+ a zero
//     column when dim is odd). sin/cos use their own range reduction and polynomials, so
//     large arguments (t up to 1000, or w * 1000) are accurate on every driver.
//   gather_rows: out[i, :] = table[idx[i], :] (zeros for an out-of-range index).

struct Params {
    n: u32,        // output rows
    dim: u32,      // output columns
    half: u32,     // sinusoidal: dim / 2
    vocab: u32,    // gather: rows of the table
    log_max_period: f32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// sinusoidal: 1 = t, 2 = out
@group(0) @binding(1) var<storage, read> t_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> emb: array<f32>;
// gather_rows: 1 = table, 2 = idx, 3 = out
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> rows: array<f32>;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

// (sin x, cos x): Cody-Waite reduction by pi/2, then cephes' single-precision polynomials.
fn sincos(x: f32) -> vec2<f32> {
    let kf = round(x * 0.63661977236758134);
    let r = ((x - kf * 1.5703125) - kf * 4.837512969970703125e-4) - kf * 7.54978995489188216e-8;
    let z = r * r;
    let s = r + r * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * -1.9515295891e-4));
    let c = 1.0 - 0.5 * z + z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5));
    let q = u32(i32(kf) & 3);
    switch q {
        case 0u: { return vec2<f32>(s, c); }
        case 1u: { return vec2<f32>(c, -s); }
        case 2u: { return vec2<f32>(-s, -c); }
        default: { return vec2<f32>(-c, s); }
    }
}

@compute @workgroup_size(256)
fn sinusoidal(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n * p.dim) {
        return;
    }
    let row = i / p.dim;
    let j = i % p.dim;
    if (j >= 2u * p.half) {
        emb[i] = 0.0;
        return;
    }
    let jj = j % p.half;
    let freq = exp(-p.log_max_period * f32(jj) / f32(p.half));
    let sc = sincos(t_in[row] * freq);
    emb[i] = select(sc.x, sc.y, j < p.half);
}

@compute @workgroup_size(256)
fn gather_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n * p.dim) {
        return;
    }
    let r = idx[i / p.dim];
    rows[i] = select(0.0, table[r * p.dim + i % p.dim], r < p.vocab);
}

// scatter_rows_sum: the backward of a gather. The ids were grouped on the host: unique id
// u owns positions[offsets[u] .. offsets[u + 1]] of the gathered rows, so
// out[uniq[u], :] = sum of g[pos, :] over them. Each output row has one writer: no atomics.
// p.n = number of unique ids, p.dim = D. out must be zero-filled (rows never gathered).
@group(0) @binding(1) var<storage, read> g_rows: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> offsets: array<u32>;
@group(0) @binding(4) var<storage, read> uniq: array<u32>;
@group(0) @binding(5) var<storage, read_write> dtable: array<f32>;

@compute @workgroup_size(256)
fn scatter_rows_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n * p.dim) {
        return;
    }
    let u = i / p.dim;
    let d = i % p.dim;
    var s = 0.0;
    for (var k = offsets[u]; k < offsets[u + 1u]; k++) {
        s += g_rows[positions[k] * p.dim + d];
    }
    dtable[uniq[u] * p.dim + d] = s;
}
