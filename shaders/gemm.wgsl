// Barrier-free and workgroup-tiled GEMM kernels (prelude: gemm_common.wgsl).
//   gemm_cpu:   no workgroup barriers and no subgroup operations: the portable fallback.
//   gemm_tiled4: 128x128 output tile per 256-thread workgroup, 16-deep slices of A and B
//               staged in workgroup memory, 8x8 outputs per thread read as vec4s (for GPUs).
//   gemm_tiled: the first tiled kernel (8-deep slices, scalar workgroup reads): a baseline.

@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;   // gemm_cpu's view of A

override CPU_WG: u32 = 64u;
override VEC_A: bool = false;

// gemm_cpu: each thread owns one row m of C and CTN = 8 consecutive columns; the columns
// are the same for the whole workgroup, so every B load (dense or im2col) is uniform: on a
// CPU adapter that is one scalar load broadcast to all SIMD lanes. A rows are read as vec4
// along K when VEC_A (A not transposed, K % 4 == 0), one per-lane gather per 4 k-steps.
const CTN: u32 = 8u;

// B(k, n0 + j) for j = 0..3 as a vec4 (columns past N read 0).
fn load_b4(z: u32, k: u32, n0: u32) -> vec4<f32> {
    return vec4<f32>(load_b(z, k, n0), load_b(z, k, n0 + 1u), load_b(z, k, n0 + 2u), load_b(z, k, n0 + 3u));
}

@compute @workgroup_size(CPU_WG)
fn gemm_cpu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let z = wid.z;
    let n0 = wid.x * CTN;
    let m = wid.y * CPU_WG + lid;
    let mc = min(m, p.m - 1u);   // out-of-range lanes compute a valid row; store drops it
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var k = 0u;
    if (VEC_A) {
        let row4 = (z * p.a_bs + mc * p.k) / 4u;
        for (; k + 4u <= p.k; k += 4u) {
            let av = a4[row4 + k / 4u];
            c0 += av.x * load_b4(z, k, n0);
            c1 += av.x * load_b4(z, k, n0 + 4u);
            c0 += av.y * load_b4(z, k + 1u, n0);
            c1 += av.y * load_b4(z, k + 1u, n0 + 4u);
            c0 += av.z * load_b4(z, k + 2u, n0);
            c1 += av.z * load_b4(z, k + 2u, n0 + 4u);
            c0 += av.w * load_b4(z, k + 3u, n0);
            c1 += av.w * load_b4(z, k + 3u, n0 + 4u);
        }
    }
    for (; k < p.k; k++) {
        var av: f32;
        if (TRANS_A) {
            let i = z * p.a_bs + k * p.m + mc;
            av = a4[i / 4u][i % 4u];
        } else {
            let i = z * p.a_bs + mc * p.k + k;
            av = a4[i / 4u][i % 4u];
        }
        c0 += av * load_b4(z, k, n0);
        c1 += av * load_b4(z, k, n0 + 4u);
    }
    store(z, m, n0, c0.x); store(z, m, n0 + 1u, c0.y); store(z, m, n0 + 2u, c0.z); store(z, m, n0 + 3u, c0.w);
    store(z, m, n0 + 4u, c1.x); store(z, m, n0 + 5u, c1.y); store(z, m, n0 + 6u, c1.z); store(z, m, n0 + 7u, c1.w);
}

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

// gemm_tiled4: the same 128x128 output tile per 256-thread workgroup, in 16-deep slices:
// each thread owns rows mb + 4ty + {0..3} and mb + 64 + 4ty + {0..3} and the same two
// runs of four columns, so every workgroup-memory read is a vec4 (4 reads per 64 FMAs,
// against 16 in gemm_tiled); the next slice's global loads are issued before this slice's
// FMAs (register prefetch), hiding their latency. Slice rows are 132 floats (BM + 4): a
// K-contiguous operand is staged with k fastest across lanes, and the padding spreads those
// stores over the banks. A convolution's B column (one output pixel) is fixed per thread:
// its window origin is computed once, and the window tap of its k advances incrementally.
// FOLD (convolutions, batch given as 1): the columns run over the pixels of every image,
// n = image * P + pixel with P = oh * ow, so that images of few pixels fill whole tiles;
// C keeps its (image, M, P) layout (c_bs per image) and b its b_bs per image.
override FOLD: bool = false;
const ROW4: u32 = 33u;   // vec4s per staged slice row (132 floats)

var<workgroup> As4: array<vec4<f32>, 528>;   // [BK4][ROW4]: A(mb + 4q + c, k0 + kk) at [kk][q][c]
var<workgroup> Bs4: array<vec4<f32>, 528>;   // [BK4][ROW4]: B(k0 + kk, nb + 4q + c)

@compute @workgroup_size(256)
fn gemm_tiled4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // split K: this workgroup sums k in [k_begin, k_end) of image z into partials[wid.z]
    let splits = max(p.splits, 1u);
    let range = split_range(wid.z);
    let z = range.x;
    let k_begin = range.y;
    let k_end = range.z;
    let mb = wid.y * BM;
    let nb = wid.x * BN;
    let tx = lid % 16u;   // columns nb + 4tx + {0..3} and nb + 64 + 4tx + {0..3}
    let ty = lid / 16u;   // rows    mb + 4ty + {0..3} and mb + 64 + 4ty + {0..3}
    // acc[2i + h]: row i of the thread's 8 (i < 4: 4ty + i, else 64 + 4ty + i - 4), columns of run h
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    // a convolution's column of this thread (its image and output pixel), and the window
    // origin of that pixel
    let pix = nb + lid % BN;
    var o = vec2<i32>(0);
    var base = z * p.b_bs;
    if (B_MODE == 1u) {
        var q = min(pix, p.n - 1u);
        if (FOLD) {
            let img = q / (p.oh * p.ow);
            q -= img * p.oh * p.ow;
            base = img * p.b_bs;
        }
        o = conv_origin(q);
    }
    var ra = fetch_a(z, mb, k_begin, k_end, lid);
    var rb = fetch_b(z, nb, k_begin, k_end, lid, pix, base, o);
    for (var k0 = k_begin; k0 < k_end; k0 += BK4) {
        for (var r = 0u; r < 8u; r++) {
            let sa = a_slot(lid, r);
            As4[sa.y * ROW4 + sa.x / 4u][sa.x % 4u] = ra[r];
            let sb = b_slot(lid, r);
            Bs4[sb.y * ROW4 + sb.x / 4u][sb.x % 4u] = rb[r];
        }
        workgroupBarrier();
        if (k0 + BK4 < k_end) {
            ra = fetch_a(z, mb, k0 + BK4, k_end, lid);
            rb = fetch_b(z, nb, k0 + BK4, k_end, lid, pix, base, o);
        }
        for (var kk = 0u; kk < BK4; kk++) {
            let s = kk * ROW4;
            let a0 = As4[s + ty];
            let a1 = As4[s + 16u + ty];
            let b0 = Bs4[s + tx];
            let b1 = Bs4[s + 16u + tx];
            for (var i = 0u; i < 4u; i++) {
                acc[2u * i] = fma(vec4<f32>(a0[i]), b0, acc[2u * i]);
                acc[2u * i + 1u] = fma(vec4<f32>(a0[i]), b1, acc[2u * i + 1u]);
                acc[8u + 2u * i] = fma(vec4<f32>(a1[i]), b0, acc[8u + 2u * i]);
                acc[9u + 2u * i] = fma(vec4<f32>(a1[i]), b1, acc[9u + 2u * i]);
            }
        }
        workgroupBarrier();
    }
    if (FOLD && splits == 1u) {
        store_folded(mb, nb + 4u * tx, ty, acc);
        return;
    }
    for (var i = 0u; i < 8u; i++) {
        let m = mb + select(4u * ty + i, 64u + 4u * ty + i - 4u, i >= 4u);
        let n0 = nb + 4u * tx;
        store4(wid.z, m, n0, acc[2u * i], bias4(m, n0));
        store4(wid.z, m, n0 + 64u, acc[2u * i + 1u], bias4(m, n0 + 64u));
    }
}

// Index in C of element (0, n) of folded column n (image n / P, pixel n % P).
fn folded_index(n: u32) -> u32 {
    let pixels = p.oh * p.ow;
    let img = n / pixels;
    return img * p.c_bs + n - img * pixels;
}

// gemm_tiled4's epilogue with FOLD: the thread's 8 columns (runs at n0 and n0 + 64) are
// located once, then its 8 rows stored element by element (a run may cross images).
fn store_folded(mb: u32, n0: u32, ty: u32, acc: array<vec4<f32>, 16>) {
    let pixels = p.oh * p.ow;
    var at: array<u32, 8>;
    for (var j = 0u; j < 8u; j++) {
        at[j] = folded_index(n0 + (j / 4u) * 64u + j % 4u);
    }
    for (var i = 0u; i < 8u; i++) {
        let m = mb + select(4u * ty + i, 64u + 4u * ty + i - 4u, i >= 4u);
        if (m >= p.m) {
            continue;
        }
        var bm = 0.0;
        if (BIAS == 2u) {
            bm = bias[m];
        }
        for (var j = 0u; j < 8u; j++) {
            if (n0 + (j / 4u) * 64u + j % 4u < p.n) {
                let idx = at[j] + m * pixels;
                var v = p.alpha * acc[2u * i + j / 4u][j % 4u] + bm;
                if (ACCUMULATE) {
                    v += c[idx / 4u][idx % 4u];
                }
                c[idx / 4u][idx % 4u] = v;
            }
        }
    }
}

// sum_splits: C[z] (+)= sum over s of partials[z * splits + s] (+ bias), the partials (b) of a
// split-K gemm_tiled4 run with BIAS 0 and c_bs = M * N; here c_bs is C's (with FOLD, the
// partials' columns are folded columns of C). One thread per element of C; grid 1-D
// folded, z = workgroup_id.z.
@compute @workgroup_size(256)
fn sum_splits(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    let mn = p.m * p.n;
    if (i >= mn) {
        return;
    }
    let z = wid.z;
    var v = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        v += b[(z * p.splits + s) * mn + i];
    }
    let m = i / p.n;
    let n = i - m * p.n;
    if (BIAS == 1u) {
        v += bias[n];
    } else if (BIAS == 2u) {
        v += bias[m];
    }
    var idx = z * p.c_bs + i;
    if (FOLD) {
        idx = folded_index(n) + m * p.oh * p.ow;
    }
    if (ACCUMULATE) {
        v += c[idx / 4u][idx % 4u];
    }
    c[idx / 4u][idx % 4u] = v;
}

// im2col: cols[z, n, k] = im2col element k of output pixel n of image b[z], i.e. the
// convolution's B operand stored transposed (K-contiguous), for the vec4 GEMM on CPU
// adapters. KMAJOR instead writes cols[k, z * P + n] (K rows over all images: the operand
// of the weight gradient dW = dY (O, N*P) x cols^T). One thread per (input channel c,
// output pixel n) of one image writes the kh*kw window elements k = c*kh*kw + ky*kw + kx,
// so the index divisions (scalarised on CPU adapters) are paid once per window. Grid: the
// cin * P threads 1-D folded; z = workgroup_id.z. (im2col4 and im2col4_kmajor below store
// vec4s where K or P allows.)

// The im2col kernels and col2im read `b` through image_at: from its texture with TEX_IN.
@group(0) @binding(9) var image_tex: texture_2d<f32>;

fn image_at(i: u32) -> f32 {
    if (TEX_IN) {
        return element_at(image_tex, i);
    }
    return b[i];
}

@group(0) @binding(3) var<storage, read_write> cols: array<f32>;

override KMAJOR: bool = false;

@compute @workgroup_size(256)
fn im2col(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i >= p.n * p.cin) {
        return;
    }
    let ch = i / p.n;
    let n = i - ch * p.n;
    let o = conv_origin(n);
    let src = wid.z * p.b_bs + ch * p.h * p.w;
    var k = ch * p.kh * p.kw;
    for (var ky = 0u; ky < p.kh; ky++) {
        let iy = o.x + i32(ky);
        let row_in = iy >= 0 && iy < i32(p.h);
        for (var kx = 0u; kx < p.kw; kx++) {
            let ix = o.y + i32(kx);
            var v = 0.0;
            if (row_in && ix >= 0 && ix < i32(p.w)) {
                v = image_at(src + u32(iy) * p.w + u32(ix));
            }
            if (KMAJOR) {
                cols[k * p.batch * p.n + wid.z * p.n + n] = v;
            } else {
                cols[(wid.z * p.n + n) * p.k + k] = v;
            }
            k++;
        }
    }
}

// im2col4: im2col (K-contiguous, KMAJOR = 0) with K % 4 == 0, one thread per output pixel n
// and block j of four input channels 4j..4j+4 (fewer in the last block) of image z =
// wid.z: it writes the block's 4*kh*kw consecutive elements k = 4j*kh*kw.. (a multiple of
// 4 since K is) as vec4 stores (a per-element store is a loop over the lanes on CPU
// adapters), reading the input from its texture with TEX_IN. The index divisions
// (scalarised per lane on CPU adapters) are paid once per block, not per vec4: per vec4
// they made this kernel 4x slower than a copy. Threads: n fastest, then j.
@group(0) @binding(3) var<storage, read_write> cols4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn im2col4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    let blocks = (p.cin + 3u) / 4u;
    if (i >= p.n * blocks) {
        return;
    }
    let j = i / p.n;
    let n = i - j * p.n;
    let o = conv_origin(n);
    let c0 = 4u * j;
    let c1 = min(c0 + 4u, p.cin);
    // vec4 slot of element k = c0 * kh * kw of this pixel's column
    var at = ((wid.z * p.n + n) * p.k + c0 * p.kh * p.kw) / 4u;
    var v = vec4<f32>(0.0);
    var lane = 0u;
    for (var ch = c0; ch < c1; ch++) {
        let src = wid.z * p.b_bs + ch * p.h * p.w;
        for (var ky = 0u; ky < p.kh; ky++) {
            let iy = o.x + i32(ky);
            let row_in = iy >= 0 && iy < i32(p.h);
            for (var kx = 0u; kx < p.kw; kx++) {
                let ix = o.y + i32(kx);
                var x = 0.0;
                if (row_in && ix >= 0 && ix < i32(p.w)) {
                    x = image_at(src + u32(iy) * p.w + u32(ix));
                }
                v = select(v, vec4<f32>(x), vec4<u32>(0u, 1u, 2u, 3u) == vec4<u32>(lane));
                if (lane == 3u) {
                    cols4[at] = v;
                    at++;
                    lane = 0u;
                } else {
                    lane++;
                }
            }
        }
    }
}

// im2col4_kmajor: im2col in K-major layout where P % 4 == 0, one thread per input channel c
// and quad of output pixels n0..n0+4 of image z = wid.z, looping over the window taps:
// one vec4 store per tap at row k = (c * kh + ky) * kw + kx. Layout: with PER_IMAGE
// cols[z, k, n] (the forward conv's B operand, N-contiguous), else cols[k, z * P + n] (K
// rows over all images: the operand of the weight gradient dW = dY (O, N*P) x cols^T).
// With QUADS (stride 1 along W, OW % 4 == 0 and W % 4 == 0: the quad lies in one output
// row and reads 4 consecutive inputs) a tap's 4 values come from the two texels they span
// (row_quad); else element by element, each bounds-checked. The index divisions
// (scalarised per lane on CPU adapters) are paid once per thread.
override PER_IMAGE: bool = false;

@compute @workgroup_size(256)
fn im2col4_kmajor(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    let p4 = p.n / 4u;
    if (i >= p.cin * p4) {
        return;
    }
    let ch = i / p4;
    let n0 = 4u * (i - ch * p4);
    let src = wid.z * p.b_bs + ch * p.h * p.w;
    // input origins (top-left of the window) of the quad's 4 output pixels
    var oy = n0 / p.ow;
    var ox = n0 - oy * p.ow;
    var y0 = vec4<i32>(0);
    var x0 = vec4<i32>(0);
    for (var t = 0u; t < 4u; t++) {
        y0[t] = i32(oy * p.sh) - i32(p.ph);
        x0[t] = i32(ox * p.sw) - i32(p.pw);
        ox++;
        if (ox == p.ow) {
            ox = 0u;
            oy++;
        }
    }
    var row_stride = p.batch * p.n;
    var at = wid.z * p.n + n0;
    if (PER_IMAGE) {
        row_stride = p.n;
        at = wid.z * p.k * p.n + n0;
    }
    at += ch * p.kh * p.kw * row_stride;
    for (var ky = 0u; ky < p.kh; ky++) {
        let iy = y0 + vec4<i32>(i32(ky));
        let rows_in = iy >= vec4<i32>(0) & iy < vec4<i32>(i32(p.h));
        for (var kx = 0u; kx < p.kw; kx++) {
            var v = vec4<f32>(0.0);
            if (QUADS) {
                if (rows_in.x) {
                    v = row_quad(src + u32(iy.x) * p.w, x0.x + i32(kx), p.w);
                }
            } else {
                let ix = x0 + vec4<i32>(i32(kx));
                let inside = rows_in & ix >= vec4<i32>(0) & ix < vec4<i32>(i32(p.w));
                for (var t = 0u; t < 4u; t++) {
                    if (inside[t]) {
                        v[t] = image_at(src + u32(iy[t]) * p.w + u32(ix[t]));
                    }
                }
            }
            cols4[at / 4u] = v;
            at += row_stride;
        }
    }
}

// col2im: the transpose of im2col (a convolution's input gradient). For image z,
// dx[c, iy, ix] = sum over (ky, kx) of dcols[(c, ky, kx), (oy, ox)] where the window of
// output pixel (oy, ox) covers (iy, ix). dcols (batch, K, P = oh * ow) is `b` (binding 2,
// batch stride b_bs; read from its texture with TEX_IN), dx (batch, cin, h, w) is `cols`
// (binding 3). One thread per input element; no atomics. The loops skip taps with
// if-blocks, not `continue`: llvmpipe runs a loop with `continue` several times slower.
// The output index o with o * stride = t (t = input index + padding - kernel tap), or -1
// when there is none in 0..outputs. Stride 1 skips the divisions (scalarised per lane on
// CPU adapters; the branch is uniform).
fn window_step(t: i32, stride: u32, outputs: u32) -> i32 {
    if (stride == 1u) {
        return select(-1, t, t >= 0 && t < i32(outputs));
    }
    if (t < 0 || t % i32(stride) != 0 || t / i32(stride) >= i32(outputs)) {
        return -1;
    }
    return t / i32(stride);
}

@compute @workgroup_size(256)
fn col2im(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    let hw = p.h * p.w;
    if (i >= p.cin * hw) {
        return;
    }
    let ch = i / hw;
    let iy = i32((i / p.w) % p.h);
    let ix = i32(i % p.w);
    let zb = wid.z * p.b_bs;
    var s = 0.0;
    for (var ky = 0u; ky < p.kh; ky++) {
        let oy = window_step(iy + i32(p.ph) - i32(ky), p.sh, p.oh);
        if (oy >= 0) {
            for (var kx = 0u; kx < p.kw; kx++) {
                let ox = window_step(ix + i32(p.pw) - i32(kx), p.sw, p.ow);
                if (ox >= 0) {
                    s += image_at(zb + ((ch * p.kh + ky) * p.kw + kx) * p.n + u32(oy) * p.ow + u32(ox));
                }
            }
        }
    }
    cols[wid.z * p.cin * hw + i] = s;
}

// col2im4: col2im where W % 4 == 0, one thread per 4 input elements ix0..ix0+4 of one row
// (c, iy) of image z = wid.z: the row's index divisions are paid once per 4 elements and the
// result is one vec4 store (a per-element store is a loop over the lanes on CPU adapters).
// For each window tap (ky, kx) the 4 elements read dcols row (c, ky, kx) at output row oy:
// with QUADS (stride 1 along W, OW % 4 == 0) as one aligned quad (row_quad), else element
// by element, each bounds-checked as in col2im. (QUADS is a pipeline constant: an untaken
// branch still costs on llvmpipe.)
override QUADS: bool = false;

// Elements t0..t0+4 of the row of `len` elements starting at `base` (4-aligned with
// QUADS), those outside 0..len zero. From the texture: the two texels they span, the offset
// t0 mod 4 being the same for every thread of a dispatch (the quads start at multiples of
// 4), so picking the four lanes is a uniform branch instead of four per-element texel
// fetches and lane extracts.
fn row_quad(base: u32, t0: i32, len: u32) -> vec4<f32> {
    let ox = vec4<i32>(t0) + vec4<i32>(0, 1, 2, 3);
    let inside = ox >= vec4<i32>(0) & ox < vec4<i32>(i32(len));
    var v = vec4<f32>(0.0);
    if (TEX_IN) {
        let r = t0 & 3;
        let first = i32(base / 4u) + (t0 - r) / 4;
        let lo = texel_at(image_tex, u32(max(first, 0)));
        v = lo;
        if (r != 0) {
            let hi = texel_at(image_tex, u32(first + 1));
            switch r {
                case 1: { v = vec4<f32>(lo.yzw, hi.x); }
                case 2: { v = vec4<f32>(lo.zw, hi.xy); }
                default: { v = vec4<f32>(lo.w, hi.xyz); }
            }
        }
    } else {
        for (var t = 0; t < 4; t++) {
            if (inside[t]) {
                v[t] = b[base + u32(ox[t])];
            }
        }
    }
    return select(vec4<f32>(0.0), v, inside);
}

@compute @workgroup_size(256)
fn col2im4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    let w4 = p.w / 4u;
    if (i >= p.cin * p.h * w4) {
        return;
    }
    let row = i / w4;
    let ix0 = i32(4u * (i - row * w4));
    let ch = row / p.h;
    let iy = i32(row - ch * p.h);
    let zb = wid.z * p.b_bs;
    var s = vec4<f32>(0.0);
    for (var ky = 0u; ky < p.kh; ky++) {
        let oy = window_step(iy + i32(p.ph) - i32(ky), p.sh, p.oh);
        if (oy >= 0) {
            for (var kx = 0u; kx < p.kw; kx++) {
                let base = zb + ((ch * p.kh + ky) * p.kw + kx) * p.n + u32(oy) * p.ow;
                let t0 = ix0 + i32(p.pw) - i32(kx);
                if (QUADS) {
                    s += row_quad(base, t0, p.ow);
                } else {
                    for (var t = 0; t < 4; t++) {
                        let ox = window_step(t0 + t, p.sw, p.ow);
                        if (ox >= 0) {
                            s[t] += image_at(base + u32(ox));
                        }
                    }
                }
            }
        }
    }
    cols4[(wid.z * p.cin * p.h * p.w) / 4u + i] = s;
}
