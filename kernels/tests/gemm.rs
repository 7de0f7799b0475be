//! Matmul, linear, conv2d and temporal conv against f64 references, on both kernel
//! variants (barrier-free and workgroup-tiled) whatever the adapter.
mod common;
use common::*;
use t2v_kernels::ops::{self, Conv2d, Matmul};
use t2v_kernels::{ConvPath, Gpu, KernelVariant, Tensor};

fn variants() -> Vec<(KernelVariant, Gpu)> {
    [KernelVariant::BarrierFree, KernelVariant::Tiled, KernelVariant::TiledScalar, KernelVariant::Subgroup, KernelVariant::Texture]
        .into_iter()
        .map(|v| {
            let g = private_gpu();
            g.set_kernel_variant(v);
            (v, g)
        })
        .collect()
}

fn upload(g: &Gpu, shape: &[usize], seed: u64) -> (Tensor, Vec<f32>) {
    let v = Rng::new(seed).uniform(numel(shape), -1.0, 1.0);
    (Tensor::from_slice(g, shape, &v).unwrap(), v)
}

#[test]
fn matmul_shapes_transposes_bias_batches() {
    // (M, K, N) including non-multiples of every tile, degenerate 1s and a tile overhang;
    // M = 13 and 45 take the subgroup kernels' 2- and 4-row-group tiles part-filled, with
    // K % 4 == 0 for their vec4 loads
    let dims = [(7, 13, 29), (1, 5, 1), (130, 3, 129), (64, 200, 65), (3, 1, 7), (13, 36, 21), (45, 12, 70)];
    for (v, g) in variants() {
        for (s, &(m, k, n)) in dims.iter().enumerate() {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let ash = if ta { [k, m] } else { [m, k] };
                let bsh = if tb { [n, k] } else { [k, n] };
                let (a, av) = upload(&g, &ash, 7 * s as u64 + 1);
                let (b, bv) = upload(&g, &bsh, 7 * s as u64 + 2);
                let (bias, biasv) = upload(&g, &[n], 7 * s as u64 + 3);
                let c = ops::matmul_ex(&a, &b, Matmul { trans_a: ta, trans_b: tb, alpha: 0.5, bias: Some(&bias) }).unwrap();
                assert_eq!(c.shape(), [m, n]);
                let want = matmul_ref(&av, &bv, m, k, n, ta, tb, 0.5, Some(&biasv));
                assert_close(&format!("{v:?} {m}x{k}x{n} ta={ta} tb={tb}"), &c.to_vec().unwrap(), &want, 1e-5 * (k as f64).sqrt(), 1e-5);
            }
        }
        // batched, and a shared right operand (batch stride 0)
        let (a, av) = upload(&g, &[2, 3, 7, 13], 50);
        let (b, bv) = upload(&g, &[2, 3, 13, 29], 51);
        let c = ops::matmul(&a, &b).unwrap();
        assert_eq!(c.shape(), [2, 3, 7, 29]);
        let cv = c.to_vec().unwrap();
        for z in 0..6 {
            let want = matmul_ref(&av[z * 91..(z + 1) * 91], &bv[z * 377..(z + 1) * 377], 7, 13, 29, false, false, 1.0, None);
            assert_close(&format!("{v:?} batch {z}"), &cv[z * 203..(z + 1) * 203], &want, 1e-5, 1e-5);
        }
        // K % 4 == 0 and M, N >= 16: the subgroup path transposes operands first
        for (ta, tb) in [(false, false), (true, true)] {
            let (a2, a2v) = upload(&g, if ta { &[2, 16, 20] } else { &[2, 20, 16] }, 53);
            let (b2, b2v) = upload(&g, if tb { &[2, 24, 16] } else { &[2, 16, 24] }, 54);
            let c2 = ops::matmul_ex(&a2, &b2, Matmul { trans_a: ta, trans_b: tb, ..Default::default() }).unwrap().to_vec().unwrap();
            for z in 0..2 {
                let want = matmul_ref(&a2v[z * 320..(z + 1) * 320], &b2v[z * 384..(z + 1) * 384], 20, 16, 24, ta, tb, 1.0, None);
                assert_close(&format!("{v:?} batch K%4 {z}"), &c2[z * 480..(z + 1) * 480], &want, 1e-5, 1e-5);
            }
        }
        let (w, wv) = upload(&g, &[13, 29], 52);
        let cv = ops::matmul(&a, &w).unwrap().to_vec().unwrap();
        for z in 0..6 {
            let want = matmul_ref(&av[z * 91..(z + 1) * 91], &wv, 7, 13, 29, false, false, 1.0, None);
            assert_close(&format!("{v:?} shared b {z}"), &cv[z * 203..(z + 1) * 203], &want, 1e-5, 1e-5);
        }
    }
}

/// gemm_tex (operands in textures, CPU adapters with 8-lane subgroups): every layout, K
/// tails of 0..3, tiles part-filled in rows and columns, layers of batches and shared
/// operands, both ways into a texture (a plain copy of whole and part texture rows for rows
/// of 4k floats, else `pack`).
#[test]
fn texture_gemm_layouts_tails_batches() {
    let g = private_gpu();
    g.set_kernel_variant(KernelVariant::Texture);
    if g.fixed_subgroup_size() != Some(8) || g.set_profiling(true).is_err() {
        eprintln!("skipped: needs 8-lane subgroups and timestamps (the texture GEMM's adapter)");
        return;
    }
    // (batch A, batch B, M, K, N); a batch of 0 is a shared matrix
    let cases = [(0, 0, 33, 67, 41), (0, 0, 17, 9, 5), (0, 0, 40, 64, 128), (0, 0, 40, 68, 132), (0, 0, 300, 16, 20), (0, 0, 70, 130, 66), (3, 3, 20, 64, 64), (2, 0, 37, 6, 50), (0, 2, 19, 128, 7)];
    for (s, &(ba, bb, m, k, n)) in cases.iter().enumerate() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let mat = |batch: usize, r: usize, c: usize| if batch == 0 { vec![r, c] } else { vec![batch, r, c] };
            let (a, av) = upload(&g, &mat(ba, if ta { k } else { m }, if ta { m } else { k }), 11 * s as u64 + 1);
            let (b, bv) = upload(&g, &mat(bb, if tb { n } else { k }, if tb { k } else { n }), 11 * s as u64 + 2);
            let (bias, biasv) = upload(&g, &[n], 11 * s as u64 + 3);
            let c = ops::matmul_ex(&a, &b, Matmul { trans_a: ta, trans_b: tb, alpha: -1.5, bias: Some(&bias) }).unwrap();
            let batch = ba.max(bb).max(1);
            assert_eq!(c.numel(), batch * m * n);
            let cv = c.to_vec().unwrap();
            for z in 0..batch {
                let (za, zb) = (if ba == 0 { 0 } else { z }, if bb == 0 { 0 } else { z });
                let want = matmul_ref(&av[za * m * k..(za + 1) * m * k], &bv[zb * k * n..(zb + 1) * k * n], m, k, n, ta, tb, -1.5, Some(&biasv));
                let name = format!("texture {ba}x{bb}x{m}x{k}x{n} ta={ta} tb={tb} batch {z}");
                assert_close(&name, &cv[z * m * n..(z + 1) * m * n], &want, 1e-5 * (k as f64).sqrt(), 1e-5);
            }
        }
    }
    let kernels: Vec<String> = g.profile().unwrap().into_iter().map(|r| r.kernel).collect();
    for entry in ["gemm_texture::gemm_tex", "gemm_texture::pack"] {
        assert!(kernels.iter().any(|k| k.starts_with(entry)), "{entry} never ran: {kernels:?}");
    }
    // rows of C on vec4 boundaries (N % 4 == 0: plain vector stores) and not (per column)
    for vec4 in ["C_VEC4=1", "C_VEC4=0"] {
        assert!(kernels.iter().any(|k| k.starts_with("gemm_texture::gemm_tex") && k.contains(vec4)), "gemm_tex {vec4} never ran: {kernels:?}");
    }
}

#[test]
fn matmul_shape_errors_name_both_operands() {
    let g = gpu();
    let (a, _) = upload(g, &[3, 4], 1);
    let (b, _) = upload(g, &[5, 6], 2);
    let e = ops::matmul(&a, &b).unwrap_err().to_string();
    assert!(e.contains("[3, 4]") && e.contains("[5, 6]"), "{e}");
    let (c, _) = upload(g, &[2, 4, 6], 3);
    let (d, _) = upload(g, &[3, 6, 2], 3);
    assert!(ops::matmul(&c, &d).unwrap_err().to_string().contains("batch dims"));
    let (bias, _) = upload(g, &[7], 3);
    let (e2, _) = upload(g, &[4, 5], 3);
    assert!(ops::matmul_ex(&a, &e2, Matmul { bias: Some(&bias), ..Default::default() }).is_err());
}

#[test]
fn loop_limited_devices_refuse_what_they_would_truncate() {
    let g = private_gpu();
    let Some(limit) = g.loop_limit() else { return };
    // (variant, iterations per k slice, slice depth) as the dispatch estimates them
    for (variant, per_slice, depth) in [(KernelVariant::Tiled, 300, 16), (KernelVariant::TiledScalar, 645, 8)] {
        g.set_kernel_variant(variant);
        let k = (limit as usize / per_slice + 2) * depth;
        let (a, _) = upload(&g, &[2, k], 1);
        let (b, _) = upload(&g, &[k, 2], 2);
        let e = ops::matmul(&a, &b).unwrap_err().to_string();
        assert!(e.contains("loop iterations"), "{variant:?}: {e}");
        g.set_kernel_variant(KernelVariant::Auto);
        assert_eq!(ops::matmul(&a, &b).unwrap().shape(), [2, 2]);
    }
}

/// The largest K the loop budget admits runs whole: the estimate of a tiled kernel's loop
/// iterations is not below what llvmpipe counts (else the tail of K would be dropped silently).
#[test]
fn tiled_kernels_at_the_largest_admitted_k_are_exact() {
    let g = private_gpu();
    let Some(limit) = g.loop_limit() else { return };
    for (variant, per_slice, fixed, depth) in [(KernelVariant::Tiled, 300, 100, 16), (KernelVariant::TiledScalar, 645, 136, 8)] {
        g.set_kernel_variant(variant);
        let k = (limit as usize - fixed) / per_slice * depth;
        // a 1x1 convolution (the im2col path: the most loop iterations per k; at 60 per
        // slice the matmul still passed, the conv did not); for gemm_tiled4 with enough
        // output tiles (23 x 23) that K is not split (each invocation would run a chunk of
        // K only) on one image (so that its columns are not folded either)
        let (o, h, w) = if variant == KernelVariant::Tiled { (23 * 128, 46, 64) } else { (2, 1, 3) };
        let (x, xv) = upload(&g, &[1, k, h, w], 3);
        let (wt, wv) = upload(&g, &[o, k, 1, 1], 4);
        let got = ops::conv2d(&x, &wt, None, Conv2d::new(1, 0)).unwrap().to_vec().unwrap();
        // out[o, p] = sum_c w[o, c] x[c, p], at the corners
        let pixels = h * w;
        for (oo, pp) in [(0, 0), (o - 1, pixels - 1), (o / 2, 1)] {
            let want: f64 = (0..k).map(|c| wv[oo * k + c] as f64 * xv[c * pixels + pp] as f64).sum();
            assert_close(&format!("{variant:?} 1x1 conv K={k} at ({oo}, {pp})"), &got[oo * pixels + pp..oo * pixels + pp + 1], &[want], 1e-4, 1e-4);
        }
    }
    g.set_kernel_variant(KernelVariant::Auto);
}

#[test]
fn linear_matches_torch_layout() {
    for (v, g) in variants() {
        let (x, xv) = upload(&g, &[2, 5, 13], 60);
        let (w, wv) = upload(&g, &[29, 13], 61);
        let (b, bv) = upload(&g, &[29], 62);
        let y = ops::linear(&x, &w, Some(&b)).unwrap();
        assert_eq!(y.shape(), [2, 5, 29]);
        let want = matmul_ref(&xv, &wv, 10, 13, 29, false, true, 1.0, Some(&bv));
        assert_close(&format!("{v:?} linear"), &y.to_vec().unwrap(), &want, 1e-5, 1e-5);
        assert!(ops::linear(&x, &b, None).is_err());
    }
}

/// The tiled kernel splits K when its grid has few workgroups (see
/// `ops::SPLIT_K_WORKGROUPS`): chunks of uneven length, transposes, scale, bias (added
/// once), batches with a shared operand, and convolutions all equal the references.
#[test]
fn split_k_gemms_equal_the_references() {
    let g = private_gpu();
    g.set_kernel_variant(KernelVariant::Tiled);
    // one 128 x 128 tile, K = 777: three chunks of 272, 272 and 233
    let (m, k, n) = (13, 777, 21);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let (ash, bsh) = (if ta { [k, m] } else { [m, k] }, if tb { [n, k] } else { [k, n] });
        let (a, av) = upload(&g, &ash, 1);
        let (b, bv) = upload(&g, &bsh, 2);
        let (bias, biasv) = upload(&g, &[n], 3);
        let c = ops::matmul_ex(&a, &b, Matmul { trans_a: ta, trans_b: tb, alpha: 0.5, bias: Some(&bias) }).unwrap();
        let want = matmul_ref(&av, &bv, m, k, n, ta, tb, 0.5, Some(&biasv));
        assert_close(&format!("split {m}x{k}x{n} ta={ta} tb={tb}"), &c.to_vec().unwrap(), &want, 1e-4, 1e-5);
    }
    // three images sharing B, two chunks each
    let (a, av) = upload(&g, &[3, 37, 600], 4);
    let (b, bv) = upload(&g, &[600, 19], 5);
    let c = ops::matmul(&a, &b).unwrap().to_vec().unwrap();
    for z in 0..3 {
        let want = matmul_ref(&av[z * 37 * 600..(z + 1) * 37 * 600], &bv, 37, 600, 19, false, false, 1.0, None);
        assert_close(&format!("split batch {z}"), &c[z * 37 * 19..(z + 1) * 37 * 19], &want, 1e-4, 1e-5);
    }
    // a 3x3 conv with K = 900 over two images, with a bias
    let (xs, ws, geo) = ([2, 100, 7, 9], [5, 100, 3, 3], Conv2d::new(1, 1));
    let (x, xv) = upload(&g, &xs, 6);
    let (w, wv) = upload(&g, &ws, 7);
    let (bias, biasv) = upload(&g, &[5], 8);
    let (want, shape) = conv_ref(&xv, xs, &wv, ws, Some(&biasv), geo);
    let y = ops::conv2d(&x, &w, Some(&bias), geo).unwrap();
    assert_eq!(y.shape(), shape);
    assert_close("split conv", &y.to_vec().unwrap(), &want, 1e-4, 1e-5);
}

#[test]
fn conv2d_kernels_strides_paddings() {
    let cases = [
        ([2, 3, 11, 13], [5, 3, 3, 3], Conv2d::new(1, 1)),
        ([2, 3, 11, 13], [5, 3, 3, 3], Conv2d::new(2, 1)),
        ([1, 7, 9, 5], [4, 7, 1, 1], Conv2d::new(1, 0)),
        ([2, 4, 10, 9], [6, 4, 3, 3], Conv2d { stride: (2, 2), padding: (0, 1, 0, 1) }), // ldm Downsample
        ([1, 2, 5, 6], [3, 2, 3, 1], Conv2d { stride: (1, 1), padding: (1, 1, 0, 0) }),   // temporal (3, 1)
        ([1, 66, 12, 12], [70, 66, 3, 3], Conv2d::new(1, 1)),                            // tiles overhang
        ([2, 8, 7, 9], [20, 8, 3, 3], Conv2d::new(2, 1)),   // K % 4 == 0, O >= 16: im2col + vec4 GEMM on CPU
        ([1, 16, 5, 7], [24, 16, 1, 1], Conv2d::new(1, 0)),
        ([3, 16, 150, 150], [20, 16, 3, 3], Conv2d::new(1, 1)), // columns (13 MB per image) over CONV_COLUMNS_MAX_BYTES: chunks of 2 + 1 images on CPU
        // on CPU adapters: (N, P, K) columns with a last block of 2 channels (P = 25); (N, K,
        // P) columns with quads of pixels read as texel pairs at every offset mod 4 (stride 1,
        // W and OW multiples of 4, uneven padding); case 5 above takes (N, K, P) columns with
        // quads, case 6 without (stride 2), case 8 (N, P, K) columns (3.2 M elements per
        // image, over the bound of the K-major layout)
        ([2, 6, 6, 6], [20, 6, 2, 2], Conv2d::new(1, 0)),
        ([2, 5, 6, 8], [17, 5, 3, 5], Conv2d { stride: (1, 1), padding: (1, 0, 2, 2) }),
    ];
    for (v, g) in variants() {
        for (s, (xs, ws, geo)) in cases.iter().enumerate() {
            let (x, xv) = upload(&g, xs, 70 + s as u64);
            let (w, wv) = upload(&g, ws, 80 + s as u64);
            let (b, bv) = upload(&g, &[ws[0]], 90 + s as u64);
            let y = ops::conv2d(&x, &w, Some(&b), *geo).unwrap();
            let (want, shape) = conv_ref(&xv, *xs, &wv, *ws, Some(&bv), *geo);
            assert_eq!(y.shape(), shape);
            let k = (ws[1] * ws[2] * ws[3]) as f64;
            assert_close(&format!("{v:?} conv {xs:?} {ws:?} {geo:?}"), &y.to_vec().unwrap(), &want, 1e-5 * k.sqrt(), 1e-5);
            let y0 = ops::conv2d(&x, &w, None, *geo).unwrap();
            let (want0, _) = conv_ref(&xv, *xs, &wv, *ws, None, *geo);
            assert_close("conv no bias", &y0.to_vec().unwrap(), &want0, 1e-5 * k.sqrt(), 1e-5);
        }
    }
    let g = gpu();
    let (x, _) = upload(g, &[1, 3, 4, 4], 1);
    let (w, _) = upload(g, &[2, 4, 3, 3], 1);
    assert!(ops::conv2d(&x, &w, None, Conv2d::new(1, 1)).unwrap_err().to_string().contains("[2, 4, 3, 3]"));
    let (w5, _) = upload(g, &[2, 3, 5, 5], 1);
    assert!(ops::conv2d(&x, &w5, None, Conv2d::new(1, 0)).is_err(), "kernel larger than padded input");
}

#[test]
fn winograd_convs_equal_the_reference() {
    // odd sizes (tiles overhanging the output), no / uneven padding, more channels than a
    // GEMM tile, one image and several; under both tiled GEMMs and the adapter's default
    let cases = [
        ([2, 5, 7, 9], [7, 5, 3, 3], Conv2d::new(1, 1)),
        ([3, 4, 6, 5], [3, 4, 3, 3], Conv2d::new(1, 0)),
        ([1, 3, 5, 8], [6, 3, 3, 3], Conv2d { stride: (1, 1), padding: (0, 1, 2, 0) }),
        ([2, 40, 9, 11], [36, 40, 3, 3], Conv2d::new(1, 1)),
        ([1, 2, 3, 3], [2, 2, 3, 3], Conv2d::new(1, 0)), // a single output pixel
        ([1, 130, 4, 3], [131, 130, 3, 3], Conv2d::new(1, 1)),
    ];
    // (F(4x4, 3x3)'s larger transform constants round more in principle; at these sizes
    // both stay within the same bound)
    let tol = 4e-5;
    for (v, path) in [
        (KernelVariant::Auto, ConvPath::Winograd),
        (KernelVariant::Tiled, ConvPath::Winograd),
        (KernelVariant::TiledScalar, ConvPath::Winograd),
        (KernelVariant::Auto, ConvPath::Winograd4),
        (KernelVariant::Tiled, ConvPath::Winograd4),
    ] {
        let g = private_gpu();
        g.set_kernel_variant(v);
        g.set_conv_path(path);
        for (s, (xs, ws, geo)) in cases.iter().enumerate() {
            let (x, xv) = upload(&g, xs, 170 + s as u64);
            let (w, wv) = upload(&g, ws, 180 + s as u64);
            let (b, bv) = upload(&g, &[ws[0]], 190 + s as u64);
            let k = (ws[1] * 9) as f64;
            for bias in [true, false] {
                let y = ops::conv2d(&x, &w, bias.then_some(&b), *geo).unwrap();
                let (want, shape) = conv_ref(&xv, *xs, &wv, *ws, bias.then_some(&bv[..]), *geo);
                assert_eq!(y.shape(), shape);
                // the transforms add and subtract up to 4 x 4 terms on each side
                assert_close(&format!("{v:?} {path:?} {xs:?} {ws:?} {geo:?} bias {bias}"), &y.to_vec().unwrap(), &want, tol * k.sqrt(), 1e-4);
            }
            // the input gradient (the turned kernels' correlation) against the direct one
            let (dy, _) = upload(&g, &conv_ref(&xv, *xs, &wv, *ws, None, *geo).1, 200 + s as u64);
            let dx = ops::conv2d_backward(&x, &w, &dy, *geo, (true, false, false)).unwrap().0.unwrap().to_vec().unwrap();
            g.set_conv_path(ConvPath::Direct);
            let direct = ops::conv2d_backward(&x, &w, &dy, *geo, (true, false, false)).unwrap().0.unwrap().to_vec().unwrap();
            g.set_conv_path(path);
            let direct: Vec<f64> = direct.iter().map(|&v| v as f64).collect();
            let ko = (ws[0] * 9) as f64;
            assert_close(&format!("{v:?} {path:?} dx {xs:?} {ws:?} {geo:?}"), &dx, &direct, tol * ko.sqrt(), 1e-4);
        }
        // strided and non-3x3 convs are left to the direct kernels
        let (x, xv) = upload(&g, &[1, 3, 9, 9], 3);
        let (w, wv) = upload(&g, &[4, 3, 3, 3], 4);
        let y = ops::conv2d(&x, &w, None, Conv2d::new(2, 1)).unwrap();
        assert_close("stride 2 under Winograd", &y.to_vec().unwrap(), &conv_ref(&xv, [1, 3, 9, 9], &wv, [4, 3, 3, 3], None, Conv2d::new(2, 1)).0, 1e-5, 1e-5);
    }
}

/// A conv whose one image's transformed tiles would exceed a binding (2.25x the image for
/// F(4x4), 4x for F(2x2)) runs the direct kernels under every path instead of failing:
/// 64 channels on 512 x 512 (64 MiB) against llvmpipe's 128 MiB bindings; on adapters with
/// larger bindings it runs Winograd. Checked at sampled outputs (borders and inside).
#[test]
fn convs_too_wide_for_winograd_tiles_still_run() {
    let (xs, ws) = ([1, 64, 512, 512], [64, 64, 3, 3]);
    let g = private_gpu();
    let (x, xv) = upload(&g, &xs, 31);
    let (w, wv) = upload(&g, &ws, 32);
    let at = |o: usize, r: usize, c: usize| -> f64 {
        let mut acc = 0.0;
        for ci in 0..64 {
            for (dr, dc) in (0..9).map(|k| (k / 3, k % 3)) {
                let (yy, xx) = ((r + dr) as isize - 1, (c + dc) as isize - 1);
                if (0..512).contains(&yy) && (0..512).contains(&xx) {
                    acc += xv[(ci * 512 + yy as usize) * 512 + xx as usize] as f64 * wv[(o * 64 + ci) * 9 + dr * 3 + dc] as f64;
                }
            }
        }
        acc
    };
    let points = [(0, 0, 0), (5, 511, 511), (17, 0, 300), (63, 257, 3), (40, 128, 511), (9, 333, 222)];
    for path in [ConvPath::Auto, ConvPath::Winograd, ConvPath::Winograd4] {
        g.set_conv_path(path);
        let y = ops::conv2d(&x, &w, None, Conv2d::new(1, 1)).unwrap().to_vec().unwrap();
        for &(o, r, c) in &points {
            let (got, want) = (y[(o * 512 + r) * 512 + c] as f64, at(o, r, c));
            assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{path:?} output ({o}, {r}, {c}): {got} vs {want}");
        }
    }
}

/// conv2d is bilinear, so its gradients are its adjoints: <dy, conv(x, w)> = <dx, x> =
/// <dw, w>. Checked at a batch whose columns exceed CONV_COLUMNS_MAX_BYTES (the backward
/// then runs a few images at a time) and at one that fits, with the GEMMs on storage
/// buffers (BarrierFree, Subgroup) and on textures (Texture). (The tiled kernels would
/// exceed llvmpipe's loop budget on the weight gradient's K = 7040.)
#[test]
fn conv2d_backward_is_the_adjoint_in_chunks_and_whole() {
    for (v, g) in variants().into_iter().filter(|(v, _)| !matches!(v, KernelVariant::Tiled | KernelVariant::TiledScalar)) {
        conv2d_adjoints(&g, &format!("{v:?}"));
    }
    // the 3x3 stride-1 cases' forward and input gradient through Winograd
    for path in [ConvPath::Winograd, ConvPath::Winograd4] {
        let g = private_gpu();
        g.set_conv_path(path);
        conv2d_adjoints(&g, &format!("{path:?}"));
    }
}

fn conv2d_adjoints(g: &Gpu, v: &str) {
    // case 2: uneven padding on each side; cases 3-6: widths that are multiples of 4 (the
    // input gradient then folds 4 elements of a row per thread), stride 1 and 2, uneven
    // padding, a (3, 1) kernel as the temporal conv uses, and output widths that are
    // multiples of 4 with 1x5 taps at every offset mod 4 (dcols read as aligned quads)
    for (s, (xs, ws, geo)) in [
        ([3usize, 16, 150, 150], [20usize, 16, 3, 3], Conv2d::new(1, 1)),
        ([2, 3, 11, 13], [5, 3, 3, 3], Conv2d::new(2, 1)),
        ([2, 16, 9, 11], [8, 16, 3, 3], Conv2d { stride: (1, 1), padding: (0, 2, 1, 0) }),
        ([2, 5, 7, 12], [6, 5, 3, 3], Conv2d { stride: (1, 1), padding: (2, 0, 1, 2) }),
        ([3, 4, 9, 20], [7, 4, 3, 3], Conv2d::new(2, 1)),
        ([2, 6, 5, 36], [4, 6, 3, 1], Conv2d { stride: (1, 1), padding: (1, 1, 0, 0) }),
        ([2, 3, 6, 16], [5, 3, 3, 5], Conv2d { stride: (1, 1), padding: (1, 0, 2, 2) }),
    ]
    .into_iter()
    .enumerate()
    {
        let per_image = ws[1] * ws[2] * ws[3] * xs[2] * xs[3] * 4 / (geo.stride.0 * geo.stride.1);
        assert_eq!(per_image * xs[0] > ops::CONV_COLUMNS_MAX_BYTES, s == 0, "case {s} chunks as intended");
        let (x, xv) = upload(g, &xs, 300 + s as u64);
        let (w, wv) = upload(g, &ws, 310 + s as u64);
        let y = ops::conv2d(&x, &w, None, geo).unwrap();
        let (dy, dyv) = upload(g, y.shape(), 320 + s as u64);
        let (dx, dw, db) = ops::conv2d_backward(&x, &w, &dy, geo, (true, true, true)).unwrap();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum::<f64>();
        let yy = dot(&dyv, &y.to_vec().unwrap());
        let (xx, ww) = (dot(&dx.unwrap().to_vec().unwrap(), &xv), dot(&dw.unwrap().to_vec().unwrap(), &wv));
        assert!((xx - yy).abs() <= 1e-4 * yy.abs().max(1.0) && (ww - yy).abs() <= 1e-4 * yy.abs().max(1.0), "{v} case {s}: <dy,y> {yy}, <dx,x> {xx}, <dw,w> {ww}");
        // the bias gradient sums dy over images and pixels
        let o = ws[0];
        let pix = dyv.len() / (xs[0] * o);
        let want: Vec<f64> = (0..o).map(|c| (0..xs[0]).map(|n| dyv[(n * o + c) * pix..(n * o + c + 1) * pix].iter().map(|&v| v as f64).sum::<f64>()).sum()).collect();
        assert_close(&format!("{v} conv bias grad"), &db.unwrap().to_vec().unwrap(), &want, 1e-4, 1e-5);
    }
}

#[test]
fn temporal_conv_is_conv3d_311() {
    let g = gpu();
    let [b, c, f, h, w, o] = [2, 3, 5, 4, 3, 4];
    let (x, xv) = upload(g, &[b, c, f, h, w], 100);
    let (wt, wv) = upload(g, &[o, c, 3, 1, 1], 101);
    let (bias, bv) = upload(g, &[o], 102);
    let y = ops::temporal_conv(&x, &wt, Some(&bias)).unwrap();
    assert_eq!(y.shape(), [b, o, f, h, w]);
    let yv = y.to_vec().unwrap();
    let xi = |bb: usize, cc: usize, ff: usize, hw: usize| xv[((bb * c + cc) * f + ff) * h * w + hw] as f64;
    let mut want = vec![];
    for bb in 0..b { for oc in 0..o { for ff in 0..f { for hw in 0..h * w {
        let mut s = bv[oc] as f64;
        for cc in 0..c { for t in 0..3 {
            let src = ff as isize + t as isize - 1;
            if (0..f as isize).contains(&src) {
                s += wv[(oc * c + cc) * 3 + t] as f64 * xi(bb, cc, src as usize, hw);
            }
        } }
        want.push(s);
    } } } }
    assert_close("temporal conv", &yv, &want, 1e-5, 1e-5);
    let (bad, _) = upload(g, &[o, c, 3, 3, 1], 1);
    assert!(ops::temporal_conv(&x, &bad, None).is_err());
}

/// The matrix-core GEMM (gemm_coop: inputs rounded to f16, f32 accumulation) where the adapter
/// has cooperative matrices (lavapipe from Mesa 25.1 on, NVIDIA; `GpuOptions::matrix_cores`):
/// matmuls of every layout, odd shapes overhanging its 128 x 128 tiles, scale and bias,
/// batches with a shared operand, split K, linear and convolutions (strides, uneven padding,
/// 1x1) equal references computed on the f16-rounded inputs — and differ from the f32 ones
/// by that rounding (the matrix units did run). Elsewhere the device refuses to open, which
/// this test then reports and checks.
#[test]
fn matrix_core_gemms_equal_references_on_f16_inputs() {
    let g = match Gpu::new(&t2v_kernels::GpuOptions { quiet: true, matrix_cores: true, ..Default::default() }) {
        Ok(g) => g,
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("matrix cores requested") && msg.contains("run without them"), "{msg}");
            eprintln!("skipped: {msg}");
            return;
        }
    };
    let t = g.matrix_tile().expect("opened for matrix cores");
    assert!(t == 8 || t == 16);
    let f16 = |v: &[f32]| v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect::<Vec<f32>>();
    // f32 sums of exact f16 x f16 products, in another order than the reference's
    let tol = |k: usize| 2e-5 * (k as f64).sqrt();
    let dims = [(7, 13, 29), (1, 5, 1), (130, 3, 129), (64, 200, 65), (45, 12, 70), (129, 40, 257)];
    for (s, &(m, k, n)) in dims.iter().enumerate() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let ash = if ta { [k, m] } else { [m, k] };
            let bsh = if tb { [n, k] } else { [k, n] };
            let (a, av) = upload(&g, &ash, 7 * s as u64 + 1);
            let (b, bv) = upload(&g, &bsh, 7 * s as u64 + 2);
            let (bias, biasv) = upload(&g, &[n], 7 * s as u64 + 3);
            let c = ops::matmul_ex(&a, &b, Matmul { trans_a: ta, trans_b: tb, alpha: 0.5, bias: Some(&bias) }).unwrap().to_vec().unwrap();
            let want = matmul_ref(&f16(&av), &f16(&bv), m, k, n, ta, tb, 0.5, Some(&biasv));
            assert_close(&format!("{t}x{t} fragments {m}x{k}x{n} ta={ta} tb={tb}"), &c, &want, tol(k), 1e-5);
            if k >= 40 {
                // the inputs were rounded: many times closer to the f16 inputs' product than
                // to the f32 one
                let exact = matmul_ref(&av, &bv, m, k, n, ta, tb, 0.5, Some(&biasv));
                let dist = |r: &[f64]| c.iter().zip(r).map(|(&x, &y)| (x as f64 - y).abs()).fold(0.0, f64::max);
                let (to16, to32) = (dist(&want), dist(&exact));
                assert!(to32 > 8.0 * to16.max(1e-7), "{m}x{k}x{n}: {to16} from the f16 inputs' product, {to32} from the f32 one: did the matrix units run?");
            }
        }
    }
    // batched, and a shared right operand (batch stride 0)
    let (a, av) = upload(&g, &[2, 3, 7, 13], 50);
    let (w, wv) = upload(&g, &[13, 29], 52);
    let cv = ops::matmul(&a, &w).unwrap().to_vec().unwrap();
    for z in 0..6 {
        let want = matmul_ref(&f16(&av[z * 91..(z + 1) * 91]), &f16(&wv), 7, 13, 29, false, false, 1.0, None);
        assert_close(&format!("shared b {z}"), &cv[z * 203..(z + 1) * 203], &want, tol(13), 1e-5);
    }
    // one 128 x 128 tile and K = 777: split into chunks (scale and bias added once)
    let (m, k, n) = (13, 777, 21);
    let (a, av) = upload(&g, &[m, k], 60);
    let (b, bv) = upload(&g, &[n, k], 61);
    let (bias, biasv) = upload(&g, &[n], 62);
    let c = ops::matmul_ex(&a, &b, Matmul { trans_b: true, alpha: 0.5, bias: Some(&bias), ..Default::default() }).unwrap().to_vec().unwrap();
    assert_close("split K", &c, &matmul_ref(&f16(&av), &f16(&bv), m, k, n, false, true, 0.5, Some(&biasv)), tol(k), 1e-5);
    // linear: x W^T + b
    let (x, xv) = upload(&g, &[3, 5, 24], 63);
    let (w, wv) = upload(&g, &[17, 24], 64);
    let (lb, lbv) = upload(&g, &[17], 65);
    let y = ops::linear(&x, &w, Some(&lb)).unwrap();
    assert_eq!(y.shape(), [3, 5, 17]);
    assert_close("linear", &y.to_vec().unwrap(), &matmul_ref(&f16(&xv), &f16(&wv), 15, 24, 17, false, true, 1.0, Some(&lbv)), tol(24), 1e-5);
    // convolutions as implicit GEMMs (no Winograd under matrix cores)
    let cases = [
        ([2, 3, 11, 13], [5, 3, 3, 3], Conv2d::new(1, 1)),
        ([2, 3, 11, 13], [5, 3, 3, 3], Conv2d::new(2, 1)),
        ([1, 7, 9, 5], [4, 7, 1, 1], Conv2d::new(1, 0)),
        ([2, 4, 10, 9], [6, 4, 3, 3], Conv2d { stride: (2, 2), padding: (0, 1, 0, 1) }),
        ([1, 66, 12, 12], [70, 66, 3, 3], Conv2d::new(1, 1)),
        ([2, 5, 6, 8], [17, 5, 3, 5], Conv2d { stride: (1, 1), padding: (1, 0, 2, 2) }),
        ([2, 100, 7, 9], [5, 100, 3, 3], Conv2d::new(1, 1)), // K = 900 over a 1-tile grid: split
    ];
    for (s, (xs, ws, geo)) in cases.iter().enumerate() {
        let (x, xv) = upload(&g, xs, 70 + s as u64);
        let (w, wv) = upload(&g, ws, 80 + s as u64);
        let (b, bv) = upload(&g, &[ws[0]], 90 + s as u64);
        let y = ops::conv2d(&x, &w, Some(&b), *geo).unwrap();
        let (want, shape) = conv_ref(&f16(&xv), *xs, &f16(&wv), *ws, Some(&bv), *geo);
        assert_eq!(y.shape(), shape);
        assert_close(&format!("conv {xs:?} {ws:?} {geo:?}"), &y.to_vec().unwrap(), &want, tol(ws[1] * ws[2] * ws[3]), 1e-5);
    }
    // the f32 kernels stay available on the same device
    g.set_kernel_variant(KernelVariant::Tiled);
    let (a, av) = upload(&g, &[64, 200], 1);
    let (b, bv) = upload(&g, &[200, 65], 2);
    let c = ops::matmul(&a, &b).unwrap().to_vec().unwrap();
    assert_close("tiled f32 on the same device", &c, &matmul_ref(&av, &bv, 64, 200, 65, false, false, 1.0, None), 1e-5 * 200f64.sqrt(), 1e-5);
}
