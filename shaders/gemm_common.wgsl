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
// Split K (gemm_tiled4 with splits > 1): workgroup z = batch * splits + s sums the k of chunk
// s only into partials (batch * splits, M, N); sum_splits adds them (and the bias) into C.
//
// This prelude (parameters, operand loaders, the epilogue) is shared by gemm.wgsl
// (gemm_cpu, gemm_tiled) and gemm_subgroup.wgsl (gemm_sg).

struct Params {
    m: u32, n: u32, k: u32, batch: u32,
    a_bs: u32, b_bs: u32, c_bs: u32, alpha: f32,
    cin: u32, h: u32, w: u32, kh: u32,
    kw: u32, sh: u32, sw: u32, ph: u32,
    pw: u32, oh: u32, ow: u32, splits: u32,   // splits: K chunks of gemm_tiled4 (0 or 1: none)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
// C as vec4s (bindings are whole multiples of 16 bytes); `store` writes single components.
@group(0) @binding(4) var<storage, read_write> c: array<vec4<f32>>;

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override B_MODE: u32 = 0u;
override BIAS: u32 = 0u;
override ACCUMULATE: bool = false;
// Every row of C starts on a vec4 boundary (N % 4 == 0 and c_bs % 4 == 0): store4's
// columns are then wholly inside C or wholly past it, and the kernel has no per-column
// store path (whose mere presence made every store of gemm_tex ~2x slower on llvmpipe).
override C_VEC4: bool = false;

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

// The window position (input channel, ky, kx) of im2col row k = (c * kh + ky) * kw + kx.
fn window_tap(k: u32) -> vec3<u32> {
    let khw = p.kh * p.kw;
    let ch = k / khw;
    let r = k - ch * khw;
    let ky = r / p.kw;
    return vec3<u32>(ch, ky, r - ky * p.kw);
}

// im2col element k of the column whose input origin is o (zero outside the image).
fn load_im2col(z: u32, k: u32, o: vec2<i32>) -> f32 {
    let tap = window_tap(k);
    let ch = tap.x;
    let iy = o.x + i32(tap.y);
    let ix = o.y + i32(tap.z);
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
        o += c[idx / 4u][idx % 4u];
    }
    c[idx / 4u][idx % 4u] = o;
}

// Bias of row m for columns n..n+3 (zero without BIAS; indices clamped into range).
fn bias4(m: u32, n: u32) -> vec4<f32> {
    if (BIAS == 1u) {
        let last = p.n - 1u;
        return vec4<f32>(bias[min(n, last)], bias[min(n + 1u, last)], bias[min(n + 2u, last)], bias[min(n + 3u, last)]);
    }
    if (BIAS == 2u) {
        return vec4<f32>(bias[min(m, p.m - 1u)]);
    }
    return vec4<f32>(0.0);
}

// Columns n..n+3 of row m, with `bv` = bias4(m, n): one vector store when they are in C and
// start on a vec4 boundary (one store and no bias load per value on CPU adapters), else
// `store` per column.
fn store4(z: u32, m: u32, n: u32, v: vec4<f32>, bv: vec4<f32>) {
    if (m >= p.m) {
        return;
    }
    let idx = z * p.c_bs + m * p.n + n;
    if (C_VEC4) {
        if (n < p.n) {
            var o = p.alpha * v + bv;
            if (ACCUMULATE) {
                o += c[idx / 4u];
            }
            c[idx / 4u] = o;
        }
        return;
    }
    if (n + 3u < p.n && idx % 4u == 0u) {
        var o = p.alpha * v + bv;
        if (ACCUMULATE) {
            o += c[idx / 4u];
        }
        c[idx / 4u] = o;
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        store(z, m, n + j, v[j]);
    }
}

