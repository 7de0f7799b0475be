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
// ACCUMULATE, the edges of C). Accumulators are eight named values, not an array: nothing
// indexes cooperative matrices dynamically.

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
    let range = split_range(wid.z);
    let z = range.x;
    let k_begin = range.y;
    let k_end = range.z;
    let mb = wid.y * BM;
    let nb = wid.x * BN;
    let fr = 2u * (sg / SG_COLS);   // this subgroup's first fragment row and column
    let fc = 4u * (sg % SG_COLS);
    // acc{i}{j}: fragment (fr + i, fc + j), zero-initialised; eight named values rather than
    // an array, so that no driver has to index cooperative matrices dynamically
    var acc00: Acc; var acc01: Acc; var acc02: Acc; var acc03: Acc;
    var acc10: Acc; var acc11: Acc; var acc12: Acc; var acc13: Acc;
    // a convolution's column of this thread (its output pixel) and that pixel's window origin
    let pix = nb + lid % BN;
    var o = vec2<i32>(0);
    let base = z * p.b_bs;
    if (B_MODE == 1u) {
        o = conv_origin(min(pix, p.n - 1u));
    }
    var ra = fetch_a(z, mb, k_begin, k_end, lid);
    var rb = fetch_b(z, nb, k_begin, k_end, lid, pix, base, o);
    let a_at = fr * T * A_ROW;
    let b_at = fc * T;
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
            let a0 = coopLoadT<FragA>(&Ah[a_at + kk], A_ROW);
            let a1 = coopLoadT<FragA>(&Ah[a_at + T * A_ROW + kk], A_ROW);
            let b0 = coopLoadT<FragB>(&Bh[kk * B_ROW + b_at], B_ROW);
            let b1 = coopLoadT<FragB>(&Bh[kk * B_ROW + b_at + T], B_ROW);
            let b2 = coopLoadT<FragB>(&Bh[kk * B_ROW + b_at + 2u * T], B_ROW);
            let b3 = coopLoadT<FragB>(&Bh[kk * B_ROW + b_at + 3u * T], B_ROW);
            acc00 = coopMultiplyAdd(a0, b0, acc00);
            acc01 = coopMultiplyAdd(a0, b1, acc01);
            acc02 = coopMultiplyAdd(a0, b2, acc02);
            acc03 = coopMultiplyAdd(a0, b3, acc03);
            acc10 = coopMultiplyAdd(a1, b0, acc10);
            acc11 = coopMultiplyAdd(a1, b1, acc11);
            acc12 = coopMultiplyAdd(a1, b2, acc12);
            acc13 = coopMultiplyAdd(a1, b3, acc13);
        }
        workgroupBarrier();
    }
    // each fragment through the subgroup's scratch into C
    let scratch = sg * T * T;
    let m0 = mb + fr * T;
    let n0 = nb + fc * T;
    coopStoreT(acc00, &Cs[scratch], T); drain(wid.z, m0, n0, scratch, lane, lanes);
    coopStoreT(acc01, &Cs[scratch], T); drain(wid.z, m0, n0 + T, scratch, lane, lanes);
    coopStoreT(acc02, &Cs[scratch], T); drain(wid.z, m0, n0 + 2u * T, scratch, lane, lanes);
    coopStoreT(acc03, &Cs[scratch], T); drain(wid.z, m0, n0 + 3u * T, scratch, lane, lanes);
    coopStoreT(acc10, &Cs[scratch], T); drain(wid.z, m0 + T, n0, scratch, lane, lanes);
    coopStoreT(acc11, &Cs[scratch], T); drain(wid.z, m0 + T, n0 + T, scratch, lane, lanes);
    coopStoreT(acc12, &Cs[scratch], T); drain(wid.z, m0 + T, n0 + 2u * T, scratch, lane, lanes);
    coopStoreT(acc13, &Cs[scratch], T); drain(wid.z, m0 + T, n0 + 3u * T, scratch, lane, lanes);
}

// The fragment a subgroup just stored at Cs[scratch..] (T x T, row-major) into C at (m0, n0):
// four columns per lane per store4 (bias, alpha, ACCUMULATE, the edges of C). Called by the
// whole workgroup alike (it holds its barriers).
fn drain(z: u32, m0: u32, n0: u32, scratch: u32, lane: u32, lanes: u32) {
    workgroupBarrier();
    for (var e = 4u * lane; e < T * T; e += 4u * lanes) {
        let m = m0 + e / T;
        let n = n0 + e % T;
        let v = vec4<f32>(Cs[scratch + e], Cs[scratch + e + 1u], Cs[scratch + e + 2u], Cs[scratch + e + 3u]);
        store4(z, m, n, v, bias4(m, n));
    }
    workgroupBarrier();
}
