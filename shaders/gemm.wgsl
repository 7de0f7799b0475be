// Batched GEMM and implicit-GEMM convolution.
//   C[z] = alpha * A[z] B[z] (+ bias) (+ C[z] if ACCUMULATE),  C[z] is (M, N) row-major.
//   A(m, k) = TRANS_A ? a[z*a_bs + k*M + m] : a[z*a_bs + m*K + k]
//   B(k, n), B_MODE 0: TRANS_B ? b[z*b_bs + n*K + k] : b[z*b_bs + k*N + n]
//            B_MODE 1: im2col of the image b[z] of shape (cin, h, w) for a kh x kw kernel,
//                      stride (sh, sw), padding (ph, pw): k = (c, ky, kx), n = (oy, ox).
//                      With A = weights (O, cin*kh*kw) this is conv2d into (O, oh*ow);
//                      a temporal conv over frames is the (3, 1) case on (C, F, H*W).
//   BIAS: 0 none, 1 per column (bias[n], linear), 2 per row (bias[m], conv channels).
// A batch stride of 0 broadcasts an operand (shared weights).
//
// gemm_cpu:   no workgroup barriers (expensive on CPU adapters). A workgroup owns CTM rows
//             (so A loads are uniform: one broadcast per row), each thread CTN columns
//             spaced CPU_WG apart (neighbouring threads read neighbouring columns).
// gemm_tiled: 128x128 output tile per 256-thread workgroup, BK = 8 deep slices of A and B
//             staged in workgroup memory, 8x8 outputs per thread (for GPUs).

struct Params {
    m: u32, n: u32, k: u32, batch: u32,
    a_bs: u32, b_bs: u32, c_bs: u32, alpha: f32,
    cin: u32, h: u32, w: u32, kh: u32,
    kw: u32, sh: u32, sw: u32, ph: u32,
    pw: u32, oh: u32, ow: u32, _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override B_MODE: u32 = 0u;
override BIAS: u32 = 0u;
override ACCUMULATE: bool = false;
override CPU_WG: u32 = 64u;

fn load_a(z: u32, m: u32, k: u32) -> f32 {
    if (m >= p.m || k >= p.k) {
        return 0.0;
    }
    if (TRANS_A) {
        return a[z * p.a_bs + k * p.m + m];
    }
    return a[z * p.a_bs + m * p.k + k];
}

// Top-left input coordinate (may be negative) of output pixel n of a convolution.
fn conv_origin(n: u32) -> vec2<i32> {
    let oy = n / p.ow;
    let ox = n % p.ow;
    return vec2<i32>(i32(oy * p.sh) - i32(p.ph), i32(ox * p.sw) - i32(p.pw));
}

// im2col element k of the column whose input origin is o (zero outside the image).
fn load_im2col(z: u32, k: u32, o: vec2<i32>) -> f32 {
    let khw = p.kh * p.kw;
    let ch = k / khw;
    let r = k % khw;
    let iy = o.x + i32(r / p.kw);
    let ix = o.y + i32(r % p.kw);
    if (iy < 0 || ix < 0 || iy >= i32(p.h) || ix >= i32(p.w)) {
        return 0.0;
    }
    return b[z * p.b_bs + (ch * p.h + u32(iy)) * p.w + u32(ix)];
}

fn load_b(z: u32, k: u32, n: u32) -> f32 {
    if (k >= p.k || n >= p.n) {
        return 0.0;
    }
    if (B_MODE == 1u) {
        return load_im2col(z, k, conv_origin(n));
    }
    if (TRANS_B) {
        return b[z * p.b_bs + n * p.k + k];
    }
    return b[z * p.b_bs + k * p.n + n];
}

fn store(z: u32, m: u32, n: u32, v: f32) {
    if (m >= p.m || n >= p.n) {
        return;
    }
    var o = p.alpha * v;
    if (BIAS == 1u) {
        o += bias[n];
    } else if (BIAS == 2u) {
        o += bias[m];
    }
    let idx = z * p.c_bs + m * p.n + n;
    if (ACCUMULATE) {
        o += c[idx];
    }
    c[idx] = o;
}

const CTM: u32 = 8u;   // rows per workgroup (gemm_cpu)

@compute @workgroup_size(CPU_WG)
fn gemm_cpu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let z = wid.z;
    let m0 = wid.y * CTM;
    let n0 = wid.x * CPU_WG * 2u + lid;
    let n1 = n0 + CPU_WG;
    // Clamped operand coordinates: out-of-range rows/columns read valid data that
    // `store` then drops, so the inner loop has no branches in B_MODE 0.
    let nc0 = min(n0, p.n - 1u);
    let nc1 = min(n1, p.n - 1u);
    let o0 = conv_origin(nc0);
    let o1 = conv_origin(nc1);
    var c0 = vec2<f32>(0.0); var c1 = vec2<f32>(0.0); var c2 = vec2<f32>(0.0); var c3 = vec2<f32>(0.0);
    var c4 = vec2<f32>(0.0); var c5 = vec2<f32>(0.0); var c6 = vec2<f32>(0.0); var c7 = vec2<f32>(0.0);
    for (var k = 0u; k < p.k; k++) {
        var bv: vec2<f32>;
        if (B_MODE == 1u) {
            bv = vec2<f32>(load_im2col(z, k, o0), load_im2col(z, k, o1));
        } else if (TRANS_B) {
            bv = vec2<f32>(b[z * p.b_bs + nc0 * p.k + k], b[z * p.b_bs + nc1 * p.k + k]);
        } else {
            bv = vec2<f32>(b[z * p.b_bs + k * p.n + nc0], b[z * p.b_bs + k * p.n + nc1]);
        }
        c0 += load_a(z, m0, k) * bv;
        c1 += load_a(z, m0 + 1u, k) * bv;
        c2 += load_a(z, m0 + 2u, k) * bv;
        c3 += load_a(z, m0 + 3u, k) * bv;
        c4 += load_a(z, m0 + 4u, k) * bv;
        c5 += load_a(z, m0 + 5u, k) * bv;
        c6 += load_a(z, m0 + 6u, k) * bv;
        c7 += load_a(z, m0 + 7u, k) * bv;
    }
    store(z, m0, n0, c0.x); store(z, m0, n1, c0.y);
    store(z, m0 + 1u, n0, c1.x); store(z, m0 + 1u, n1, c1.y);
    store(z, m0 + 2u, n0, c2.x); store(z, m0 + 2u, n1, c2.y);
    store(z, m0 + 3u, n0, c3.x); store(z, m0 + 3u, n1, c3.y);
    store(z, m0 + 4u, n0, c4.x); store(z, m0 + 4u, n1, c4.y);
    store(z, m0 + 5u, n0, c5.x); store(z, m0 + 5u, n1, c5.y);
    store(z, m0 + 6u, n0, c6.x); store(z, m0 + 6u, n1, c6.y);
    store(z, m0 + 7u, n0, c7.x); store(z, m0 + 7u, n1, c7.y);
}

const BM: u32 = 128u;
const BN: u32 = 128u;
const BK: u32 = 8u;

var<workgroup> As: array<f32, 1024>;   // [BK][BM]
var<workgroup> Bs: array<f32, 1024>;   // [BK][BN]

@compute @workgroup_size(256)
fn gemm_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let z = wid.z;
    let mb = wid.y * BM;
    let nb = wid.x * BN;
    let tx = lid % 16u;   // this thread's columns: nb + tx + 16 j
    let ty = lid / 16u;   // this thread's rows:    mb + ty + 16 i
    var acc: array<f32, 64>;
    for (var i = 0u; i < 64u; i++) {
        acc[i] = 0.0;
    }
    var av: array<f32, 8>;
    var bv: array<f32, 8>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Stage A and B slices; the fast-varying index follows each operand's contiguous axis.
        for (var r = 0u; r < 4u; r++) {
            let e = lid + r * 256u;
            var mm: u32; var ka: u32;
            if (TRANS_A) { mm = e % BM; ka = e / BM; } else { ka = e % BK; mm = e / BK; }
            As[ka * BM + mm] = load_a(z, mb + mm, k0 + ka);
            var nn: u32; var kb: u32;
            if (B_MODE == 0u && TRANS_B) { kb = e % BK; nn = e / BK; } else { nn = e % BN; kb = e / BN; }
            Bs[kb * BN + nn] = load_b(z, k0 + kb, nb + nn);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            for (var i = 0u; i < 8u; i++) {
                av[i] = As[kk * BM + ty + 16u * i];
                bv[i] = Bs[kk * BN + tx + 16u * i];
            }
            for (var i = 0u; i < 8u; i++) {
                for (var j = 0u; j < 8u; j++) {
                    acc[i * 8u + j] = fma(av[i], bv[j], acc[i * 8u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 8u; i++) {
        for (var j = 0u; j < 8u; j++) {
            store(z, mb + ty + 16u * i, nb + tx + 16u * j, acc[i * 8u + j]);
        }
    }
}
