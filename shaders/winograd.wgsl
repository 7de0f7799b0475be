// Winograd convolutions, 3x3 kernels, stride 1 (Lavin & Gray, 2016): F(2x2, 3x3) here,
// F(4x4, 3x3) further down (the winograd4_* entry points). Per 2x2 output tile
// y = A^T [ sum_c (G g_oc G^T) * (B^T d_c B) ] A, the 16 elementwise products summed over
// input channels as 16 GEMMs (ops::conv2d runs them between these kernels):
//   weights:  w (O, C, 3, 3) -> v (16, O, C), v[xi] = (G g G^T)[xi / 4][xi % 4]; with
//             FLIP the weights of the input gradient's correlation instead: w read as
//             (C', O', 3, 3) (p.o = O' = its input channels, p.c = C'), each kernel turned
//             by 180 degrees and the channel axes swapped, v (16, O', C')
//   input:    x (N, C, H, W) -> u (16, C, T), T = N * TH * TW tiles ordered (n, ty, tx)
//             of the pass's images n0 .. n0 + N;
//             d = the 4x4 patch at rows 2 ty - pad_top .. + 3, cols 2 tx - pad_left .. + 3
//             (zeros outside the image), u[xi] = (B^T d B)[xi / 4][xi % 4]
//   output:   m (16, O, T) -> y (N, O, OH, OW): the 2x2 block A^T m A at rows 2 ty, cols
//             2 tx (where inside the output) of image n0 + n, plus bias[o]
// G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
// B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
// A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
// One invocation per (o, c), (c, tile) or (o, tile); 256 per workgroup, the grid folded
// into x/y beyond the per-dimension limit.

struct Params {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    o: u32,
    oh: u32,
    ow: u32,
    th: u32,
    tw: u32,
    pad_top: u32,
    pad_left: u32,
    has_bias: u32,
    // first image of this pass: x and y are the whole batch, the pass covers images
    // n0 .. n0 + n (its tiles are numbered from 0)
    n0: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override FLIP: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
// weights: 1 = w, 2 = v
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read_write> v_out: array<f32>;
// input: 1 = x, 2 = u
@group(0) @binding(1) var<storage, read> x_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> u_out: array<f32>;
// output: 1 = m, 2 = bias, 3 = y
@group(0) @binding(1) var<storage, read> m_in: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y_out: array<f32>;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

// The 3x3 kernel (row-major) of weight pair i = o * C + c (with FLIP: of the input
// gradient's correlation, see above).
fn kernel_taps(i: u32) -> array<f32, 9> {
    var g: array<f32, 9>;
    if (FLIP) {
        // i = o' * C' + c' reads w[c', o'] turned by 180 degrees
        let b = ((i % p.c) * p.o + i / p.c) * 9u;
        for (var k = 0u; k < 9u; k++) {
            g[k] = wt[b + 8u - k];
        }
    } else {
        let b = i * 9u;
        for (var k = 0u; k < 9u; k++) {
            g[k] = wt[b + k];
        }
    }
    return g;
}

// Tile t of (n, ty, tx) order -> (n, ty, tx).
fn tile_of(t: u32) -> vec3<u32> {
    let per = p.th * p.tw;
    return vec3<u32>(t / per, (t % per) / p.tw, t % p.tw);
}

// (a, b, c) -> G (a, b, c)^T
fn g3(a: f32, b: f32, c: f32) -> vec4<f32> {
    return vec4<f32>(a, 0.5 * (a + b + c), 0.5 * (a - b + c), c);
}

@compute @workgroup_size(256)
fn winograd_weights(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid); // o * C + c
    let oc = p.o * p.c;
    if (i >= oc) {
        return;
    }
    let g = kernel_taps(i);
    // G g: column j of g through G, for each of g's 3 columns -> rows r0..r3 of (4, 3)
    let c0 = g3(g[0], g[3], g[6]);
    let c1 = g3(g[1], g[4], g[7]);
    let c2 = g3(g[2], g[5], g[8]);
    // (G g) G^T: each row (c0[r], c1[r], c2[r]) through G
    for (var r = 0u; r < 4u; r++) {
        let row = g3(c0[r], c1[r], c2[r]);
        for (var s = 0u; s < 4u; s++) {
            v_out[(r * 4u + s) * oc + i] = row[s];
        }
    }
}

// (a, b, c, d) -> B^T (a, b, c, d)^T
fn bt(d: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(d.x - d.z, d.y + d.z, d.z - d.y, d.y - d.w);
}

@compute @workgroup_size(256)
fn winograd_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid); // c * T + t
    let per = p.th * p.tw;
    let t_all = p.n * per;
    if (i >= p.c * t_all) {
        return;
    }
    let c = i / t_all;
    let tl = tile_of(i % t_all);
    let n = tl.x;
    let ty = tl.y;
    let tx = tl.z;
    let plane = ((p.n0 + n) * p.c + c) * p.h * p.w;
    // rows of the 4x4 patch, zero outside the image (coordinates offset by the padding)
    var d: array<vec4<f32>, 4>;
    for (var r = 0u; r < 4u; r++) {
        let yy = 2u * ty + r;
        var row = vec4<f32>(0.0);
        if (yy >= p.pad_top && yy - p.pad_top < p.h) {
            let base = plane + (yy - p.pad_top) * p.w;
            for (var s = 0u; s < 4u; s++) {
                let xx = 2u * tx + s;
                if (xx >= p.pad_left && xx - p.pad_left < p.w) {
                    row[s] = x_in[base + xx - p.pad_left];
                }
            }
        }
        d[r] = row;
    }
    // B^T d (rows combined), then each row through B (as B^T on the row vector)
    let q = array<vec4<f32>, 4>(d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]);
    let ct = p.c * t_all;
    for (var r = 0u; r < 4u; r++) {
        let row = bt(q[r]);
        for (var s = 0u; s < 4u; s++) {
            u_out[(r * 4u + s) * ct + i] = row[s];
        }
    }
}

@compute @workgroup_size(256)
fn winograd_output(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid); // o * T + t
    let per = p.th * p.tw;
    let t_all = p.n * per;
    let ot = p.o * t_all;
    if (i >= ot) {
        return;
    }
    let o = i / t_all;
    let tl = tile_of(i % t_all);
    let n = tl.x;
    let ty = tl.y;
    let tx = tl.z;
    var m: array<vec4<f32>, 4>;
    for (var r = 0u; r < 4u; r++) {
        m[r] = vec4<f32>(m_in[(r * 4u) * ot + i], m_in[(r * 4u + 1u) * ot + i], m_in[(r * 4u + 2u) * ot + i], m_in[(r * 4u + 3u) * ot + i]);
    }
    // A^T m: two rows; then each through A
    let s0 = m[0] + m[1] + m[2];
    let s1 = m[1] - m[2] - m[3];
    var b = 0.0;
    if (p.has_bias != 0u) {
        b = bias[o];
    }
    let out = array<vec2<f32>, 2>(
        vec2<f32>(s0.x + s0.y + s0.z, s0.y - s0.z - s0.w) + b,
        vec2<f32>(s1.x + s1.y + s1.z, s1.y - s1.z - s1.w) + b,
    );
    let plane = ((p.n0 + n) * p.o + o) * p.oh * p.ow;
    for (var r = 0u; r < 2u; r++) {
        let yy = 2u * ty + r;
        if (yy < p.oh) {
            for (var s = 0u; s < 2u; s++) {
                let xx = 2u * tx + s;
                if (xx < p.ow) {
                    y_out[plane + yy * p.ow + xx] = out[r][s];
                }
            }
        }
    }
}

// ---- F(4x4, 3x3): 6x6 input tiles, 36 GEMMs, 4x4 output tiles (4x fewer multiplications
// than the direct convolution; larger transform constants, so slightly larger rounding).
//   v (36, O, C), u (36, C, T) with TH = ceil(OH / 4), TW = ceil(OW / 4), m (36, O, T)
// G = [[1/4, 0, 0], [-1/6, -1/6, -1/6], [-1/6, 1/6, -1/6], [1/24, 1/12, 1/6],
//      [1/24, -1/12, 1/6], [0, 0, 1]]
// B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
//        [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
// A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]

fn g6(a: f32, b: f32, c: f32) -> array<f32, 6> {
    return array<f32, 6>(0.25 * a, -(a + b + c) / 6.0, -(a - b + c) / 6.0, a / 24.0 + b / 12.0 + c / 6.0, a / 24.0 - b / 12.0 + c / 6.0, c);
}

@compute @workgroup_size(256)
fn winograd4_weights(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    let oc = p.o * p.c;
    if (i >= oc) {
        return;
    }
    let g = kernel_taps(i);
    // columns of G g (6 rows each), then each row of G g through G
    let c0 = g6(g[0], g[3], g[6]);
    let c1 = g6(g[1], g[4], g[7]);
    let c2 = g6(g[2], g[5], g[8]);
    for (var r = 0u; r < 6u; r++) {
        let row = g6(c0[r], c1[r], c2[r]);
        for (var s = 0u; s < 6u; s++) {
            v_out[(r * 6u + s) * oc + i] = row[s];
        }
    }
}

fn bt6(d: array<f32, 6>) -> array<f32, 6> {
    return array<f32, 6>(
        4.0 * d[0] - 5.0 * d[2] + d[4],
        -4.0 * (d[1] + d[2]) + d[3] + d[4],
        4.0 * (d[1] - d[2]) - d[3] + d[4],
        2.0 * (d[3] - d[1]) - d[2] + d[4],
        2.0 * (d[1] - d[3]) - d[2] + d[4],
        4.0 * d[1] - 5.0 * d[3] + d[5],
    );
}

@compute @workgroup_size(256)
fn winograd4_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid); // c * T + t
    let per = p.th * p.tw;
    let t_all = p.n * per;
    if (i >= p.c * t_all) {
        return;
    }
    let c = i / t_all;
    let tl = tile_of(i % t_all);
    let n = tl.x;
    let ty = tl.y;
    let tx = tl.z;
    let plane = ((p.n0 + n) * p.c + c) * p.h * p.w;
    // d^T's columns = d's rows through B^T one column at a time: first each column of the
    // 6x6 patch through B^T (q[r][s] = (B^T d)[r][s]), then each row of q through B^T
    var q: array<array<f32, 6>, 6>;
    for (var s = 0u; s < 6u; s++) {
        var col: array<f32, 6>;
        let xx = 4u * tx + s;
        let x_in_range = xx >= p.pad_left && xx - p.pad_left < p.w;
        for (var r = 0u; r < 6u; r++) {
            let yy = 4u * ty + r;
            var v = 0.0;
            if (x_in_range && yy >= p.pad_top && yy - p.pad_top < p.h) {
                v = x_in[plane + (yy - p.pad_top) * p.w + xx - p.pad_left];
            }
            col[r] = v;
        }
        let tc = bt6(col);
        for (var r = 0u; r < 6u; r++) {
            q[r][s] = tc[r];
        }
    }
    let ct = p.c * t_all;
    for (var r = 0u; r < 6u; r++) {
        let row = bt6(q[r]);
        for (var s = 0u; s < 6u; s++) {
            u_out[(r * 6u + s) * ct + i] = row[s];
        }
    }
}

fn at6(m: array<f32, 6>) -> vec4<f32> {
    return vec4<f32>(
        m[0] + m[1] + m[2] + m[3] + m[4],
        m[1] - m[2] + 2.0 * (m[3] - m[4]),
        m[1] + m[2] + 4.0 * (m[3] + m[4]),
        m[1] - m[2] + 8.0 * (m[3] - m[4]) + m[5],
    );
}

@compute @workgroup_size(256)
fn winograd4_output(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid); // o * T + t
    let per = p.th * p.tw;
    let t_all = p.n * per;
    let ot = p.o * t_all;
    if (i >= ot) {
        return;
    }
    let o = i / t_all;
    let tl = tile_of(i % t_all);
    let n = tl.x;
    let ty = tl.y;
    let tx = tl.z;
    // A^T m: each column of m through A^T (4 rows), then each of those rows through A^T
    var h: array<vec4<f32>, 6>; // h[s] = column s of A^T m
    for (var s = 0u; s < 6u; s++) {
        var col: array<f32, 6>;
        for (var r = 0u; r < 6u; r++) {
            col[r] = m_in[(r * 6u + s) * ot + i];
        }
        h[s] = at6(col);
    }
    var b = 0.0;
    if (p.has_bias != 0u) {
        b = bias[o];
    }
    let plane = ((p.n0 + n) * p.o + o) * p.oh * p.ow;
    for (var r = 0u; r < 4u; r++) {
        let yy = 4u * ty + r;
        if (yy < p.oh) {
            let row = at6(array<f32, 6>(h[0][r], h[1][r], h[2][r], h[3][r], h[4][r], h[5][r])) + b;
            for (var s = 0u; s < 4u; s++) {
                let xx = 4u * tx + s;
                if (xx < p.ow) {
                    y_out[plane + yy * p.ow + xx] = row[s];
                }
            }
        }
    }
}
