// gemm_coop: the GEMM of gemm_common.wgsl (batched, implicit-GEMM convolutions, bias, split
// K) on the adapter's matrix units through cooperative matrices (NVIDIA tensor cores; needs
// the EXPERIMENTAL_COOPERATIVE_MATRIX and SHADER_F16 features). Prelude: coop8.wgsl or
// coop16.wgsl (T), gemm_common.wgsl, gemm_staging.wgsl.
//
// A 256-thread workgroup computes a 128 x 128 tile of C as in gemm_tiled4: 16-deep slices of
// A and B are fetched into registers (the next slice's while this one is multiplied) and
// staged in workgroup memory rounded to f16; the products accumulate in f32. The tile holds
// G x G fragments of T x T (G = 128 / T); subgroup s owns the 2 x 4 fragments at fragment
// rows 2 (s / (G / 4)) + {0, 1} and columns 4 (s % (G / 4)) + {0..3}, so the workgroup has
// G^2 / 8 subgroups: 32 of 8 lanes for T = 8, 8 of 32 lanes for T = 16 (the host checks the
// subgroup size). Inputs are rounded to f16: finite only within +-65504.
// Epilogue: each fragment goes through the subgroup's T x T scratch to store4 (bias, alpha,
// ACCUMULATE, the edges of C).

const G: u32 = BM / T;
const SG_COLS: u32 = G / 4u;       // subgroups per row of the subgroup grid
const A_ROW: u32 = BK4 + 8u;       // f16 per staged row of A: 48 bytes (coopLoad wants
const B_ROW: u32 = BN + 8u;        // rows 16-byte aligned); f16 per staged row of B

var<workgroup> Ah: array<f16, 3072>;   // [BM][A_ROW]: A(mb + r, k0 + kk) at r * A_ROW + kk
var<workgroup> Bh: array<f16, 2176>;   // [BK4][B_ROW]: B(k0 + kk, nb + q) at kk * B_ROW + q
var<workgroup> Cs: array<f32, 2048>;   // [subgroup][T * T]: one fragment on its way out

@compute @workgroup_size(256)
fn gemm_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
             @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32,
             @builtin(subgroup_size) lanes: u32) {
    // split K: this workgroup sums k in [k_begin, k_end) of image z into partials[wid.z]
    let splits = max(p.splits, 1u);
    let z = wid.z / splits;
    let chunk = (p.k + splits - 1u) / splits;
    let k_begin = (wid.z % splits) * ((chunk + BK4 - 1u) / BK4 * BK4);
    let k_end = min(p.k, k_begin + (chunk + BK4 - 1u) / BK4 * BK4);
    let mb = wid.y * BM;
    let nb = wid.x * BN;
    let fr = 2u * (sg / SG_COLS);   // this subgroup's first fragment row and column
    let fc = 4u * (sg % SG_COLS);
    // acc[4i + j]: fragment (fr + i, fc + j); zero-initialised
    var acc: array<Acc, 8>;
    // a convolution's column of this thread (its output pixel) and that pixel's window origin
    let pix = nb + lid % BN;
    var o = vec2<i32>(0);
    let base = z * p.b_bs;
    if (B_MODE == 1u) {
        o = conv_origin(min(pix, p.n - 1u));
    }
    var ra = fetch_a(z, mb, k_begin, k_end, lid);
    var rb = fetch_b(z, nb, k_begin, k_end, lid, pix, base, o);
    for (var k0 = k_begin; k0 < k_end; k0 += BK4) {
        for (var r = 0u; r < 8u; r++) {
            let sa = a_slot(lid, r);
            Ah[sa.x * A_ROW + sa.y] = f16(ra[r]);
            let sb = b_slot(lid, r);
            Bh[sb.y * B_ROW + sb.x] = f16(rb[r]);
        }
        workgroupBarrier();
        if (k0 + BK4 < k_end) {
            ra = fetch_a(z, mb, k0 + BK4, k_end, lid);
            rb = fetch_b(z, nb, k0 + BK4, k_end, lid, pix, base, o);
        }
        for (var kk = 0u; kk < BK4; kk += T) {
            let a0 = coopLoadT<FragA>(&Ah[fr * T * A_ROW + kk], A_ROW);
            let a1 = coopLoadT<FragA>(&Ah[(fr + 1u) * T * A_ROW + kk], A_ROW);
            for (var j = 0u; j < 4u; j++) {
                let bj = coopLoadT<FragB>(&Bh[kk * B_ROW + (fc + j) * T], B_ROW);
                acc[j] = coopMultiplyAdd(a0, bj, acc[j]);
                acc[4u + j] = coopMultiplyAdd(a1, bj, acc[4u + j]);
            }
        }
        workgroupBarrier();
    }
    let scratch = sg * T * T;
    for (var f = 0u; f < 8u; f++) {
        coopStoreT(acc[f], &Cs[scratch], T);
        workgroupBarrier();
        let m0 = mb + (fr + f / 4u) * T;
        let n0 = nb + (fc + f % 4u) * T;
        for (var e = 4u * lane; e < T * T; e += 4u * lanes) {
            let m = m0 + e / T;
            let n = n0 + e % T;
            let v = vec4<f32>(Cs[scratch + e], Cs[scratch + e + 1u], Cs[scratch + e + 2u], Cs[scratch + e + 3u]);
            store4(wid.z, m, n, v, bias4(m, n));
        }
        workgroupBarrier();
    }
}
