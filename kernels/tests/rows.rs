//! Reductions, softmax, layer norm and group norm against f64 CPU references.
mod common;
use common::*;
use t2v_kernels::ops::{self, Reduce};
use t2v_kernels::{KernelVariant, Tensor};

fn reduce_ref(x: &[f32], shape: &[usize], ax: usize, kind: Reduce) -> Vec<f64> {
    let outer: usize = shape[..ax].iter().product();
    let len = shape[ax];
    let inner: usize = shape[ax + 1..].iter().product();
    let mut out = vec![];
    for o in 0..outer {
        for i in 0..inner {
            let vals = (0..len).map(|j| x[(o * len + j) * inner + i] as f64);
            out.push(match kind {
                Reduce::Sum => vals.sum(),
                Reduce::Mean => vals.sum::<f64>() / len as f64,
                Reduce::Max => vals.fold(f64::NEG_INFINITY, f64::max),
                Reduce::Min => vals.fold(f64::INFINITY, f64::min),
            });
        }
    }
    out
}

#[test]
fn reductions_along_every_axis() {
    // Long axes take workgroup reductions (Tiled) or chunked partial ones (BarrierFree,
    // the CPU adapters' default): 100_003 needs three chunked passes, 65 a part-filled chunk.
    let shapes: [&[usize]; 6] = [&[7, 13, 29], &[1, 100_003], &[3, 5000, 7], &[5, 1, 3], &[4097, 3], &[2, 65, 33]];
    for variant in [KernelVariant::Tiled, KernelVariant::BarrierFree] {
        let g = private_gpu();
        g.set_kernel_variant(variant);
        for (s, shape) in shapes.iter().enumerate() {
            let xv = Rng::new(40 + s as u64).uniform(numel(shape), -2.0, 2.0);
            let x = Tensor::from_slice(&g, shape, &xv).unwrap();
            for ax in 0..shape.len() {
                for kind in [Reduce::Sum, Reduce::Mean, Reduce::Max, Reduce::Min] {
                    let y = ops::reduce(&x, ax as isize, kind).unwrap().to_vec().unwrap();
                    let want = reduce_ref(&xv, shape, ax, kind);
                    let len = shape[ax] as f64;
                    // f32 accumulation: error grows ~ sqrt(len) for random data
                    let atol = if kind == Reduce::Sum { 1e-6 * len.sqrt() * 4.0 } else { 1e-5 };
                    assert_close(&format!("{variant:?} {kind:?} axis {ax} of {shape:?}"), &y, &want, atol, 1e-5);
                }
            }
        }
    }
    let (x, _) = rand_tensor(&[2, 3], 1, 0.0, 1.0);
    assert!(ops::sum(&x, 2).is_err());
    assert_eq!(ops::sum(&x, -1).unwrap().shape(), [2]);
}

fn softmax_ref(x: &[f32], len: usize, scale: f64) -> Vec<f64> {
    x.chunks(len)
        .flat_map(|r| {
            let m = r.iter().map(|&v| scale * v as f64).fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = r.iter().map(|&v| (scale * v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect()
}

#[test]
fn softmax_short_and_long_rows() {
    for (k, (shape, scale, lo, hi)) in [
        (vec![7, 13, 29], 1.0, -3.0, 3.0),
        (vec![5, 1000], 0.125, -50.0, 50.0),
        (vec![3, 1], 1.0, -1.0, 1.0),
        (vec![2, 129], 1.0, 500.0, 1000.0), // large logits: must not overflow
        (vec![40_000, 16], 1.0, -8.0, 8.0),  // temporal-attention-like rows
        (vec![130, 300], 1.0, -8.0, 8.0),    // many long rows: one thread each on CPU adapters
    ]
    .into_iter()
    .enumerate()
    {
        let (x, xv) = rand_tensor(&shape, 60 + k as u64, lo, hi);
        let got = ops::softmax_scaled(&x, scale).unwrap().to_vec().unwrap();
        assert_close(&format!("softmax {shape:?}"), &got, &softmax_ref(&xv, *shape.last().unwrap(), scale as f64), 1e-6, 1e-5);
    }
}

#[test]
fn layer_norm_with_and_without_affine() {
    // short rows of a multiple of 4 take the thread-per-row kernel (131 rows: not a multiple of its 64)
    for (k, shape) in [vec![7, 13, 29], vec![77, 1024], vec![3, 1], vec![2, 5, 300], vec![131, 36], vec![5, 128], vec![2, 132], vec![130, 260]].into_iter().enumerate() {
        let d = *shape.last().unwrap();
        let (x, xv) = rand_tensor(&shape, 80 + k as u64, -3.0, 5.0);
        let (g, gv) = rand_tensor(&[d], 90 + k as u64, 0.5, 1.5);
        let (b, bv) = rand_tensor(&[d], 95 + k as u64, -1.0, 1.0);
        let n = ops::layer_norm(&x, Some(&g), Some(&b), 1e-5).unwrap();
        let (want, stats) = norm_ref(&xv, d, 1e-5, |_, j| j, Some((&gv, &bv)), false);
        assert_close(&format!("layer_norm {shape:?}"), &n.y.to_vec().unwrap(), &want, 2e-5, 2e-5);
        assert_close("layer_norm stats", &n.stats.to_vec().unwrap(), &stats, 2e-5, 2e-5);
        let plain = ops::layer_norm(&x, None, None, 1e-5).unwrap().y.to_vec().unwrap();
        assert_close("layer_norm plain", &plain, &norm_ref(&xv, d, 1e-5, |_, j| j, None, false).0, 2e-5, 2e-5);
    }
    let (x, _) = rand_tensor(&[3, 4], 1, 0.0, 1.0);
    let (g, _) = rand_tensor(&[5], 1, 0.0, 1.0);
    assert!(ops::layer_norm(&x, Some(&g), Some(&g), 1e-5).is_err());
    assert!(ops::layer_norm(&x, Some(&g), None, 1e-5).is_err());
}

#[test]
fn group_norm_4d_and_5d_with_fused_silu() {
    for (k, (shape, groups)) in [(vec![3, 12, 5, 7], 4), (vec![2, 32, 3, 5, 7], 8), (vec![1, 6, 1], 3), (vec![2, 64, 9, 11], 32), (vec![3, 8, 3, 4], 4), (vec![4, 64, 8, 10], 32)]
        .into_iter()
        .enumerate()
    {
        let c = shape[1];
        let s: usize = shape[2..].iter().product();
        let cpg = c / groups;
        let (x, xv) = rand_tensor(&shape, 100 + k as u64, -2.0, 4.0);
        let (g, gv) = rand_tensor(&[c], 110 + k as u64, 0.5, 1.5);
        let (b, bv) = rand_tensor(&[c], 120 + k as u64, -1.0, 1.0);
        for silu in [false, true] {
            let n = ops::group_norm(&x, groups, Some(&g), Some(&b), 1e-6, silu).unwrap();
            let (want, stats) = norm_ref(&xv, cpg * s, 1e-6, |r, j| (r % groups) * cpg + j / s, Some((&gv, &bv)), silu);
            assert_close(&format!("group_norm {shape:?} silu={silu}"), &n.y.to_vec().unwrap(), &want, 2e-5, 2e-5);
            assert_close("group_norm stats", &n.stats.to_vec().unwrap(), &stats, 2e-5, 2e-5);
        }
    }
    let (x, _) = rand_tensor(&[2, 6, 3], 1, 0.0, 1.0);
    assert!(ops::group_norm(&x, 4, None, None, 1e-5, false).unwrap_err().to_string().contains("6 channels"));
}

/// Host (dgamma, dbeta) of a normalisation: sums over each channel's elements of dy' * xhat
/// and dy' (dy' = dy through the fused SiLU's derivative).
fn affine_grads_ref(x: &[f32], dy: &[f32], len: usize, ch: impl Fn(usize, usize) -> usize, gm: &[f32], bt: &[f32], silu: bool) -> (Vec<f64>, Vec<f64>) {
    let (_, stats) = norm_ref(x, len, 1e-5, &ch, None::<(&[f32], &[f32])>, false);
    let (mut dg, mut db) = (vec![0.0; gm.len()], vec![0.0; gm.len()]);
    for (i, (&xv, &d)) in x.iter().zip(dy).enumerate() {
        let (r, j) = (i / len, i % len);
        let c = ch(r, j);
        let xh = (xv as f64 - stats[2 * r]) * stats[2 * r + 1];
        let mut d = d as f64;
        if silu {
            let z = xh * gm[c] as f64 + bt[c] as f64;
            let s = 1.0 / (1.0 + (-z).exp());
            d *= s * (1.0 + z * (1.0 - s));
        }
        dg[c] += d * xh;
        db[c] += d;
    }
    (dg, db)
}

/// The weight and bias gradients of the norms, also where a channel has more elements than
/// one invocation sums on CPU adapters (llvmpipe's loop budget: 60000), so that its sum is
/// split in slices that start in the middle of a row and are added up afterwards.
#[test]
fn norm_affine_grads_in_one_and_several_slices() {
    // group norm: (N, C, H, W) with G groups; channel c of image n is row n * G + c / cpg
    for (k, (shape, groups, silu)) in [([2usize, 6, 5, 7], 3usize, true), ([3, 4, 150, 150], 2, false), ([3, 4, 150, 150], 2, true)].into_iter().enumerate() {
        let (c, s) = (shape[1], shape[2] * shape[3]);
        let cpg = c / groups;
        let (x, xv) = rand_tensor(&shape, 200 + k as u64, -2.0, 3.0);
        let (dy, dyv) = rand_tensor(&shape, 210 + k as u64, -1.0, 1.0);
        let (g, gv) = rand_tensor(&[c], 220 + k as u64, 0.5, 1.5);
        let (b, bv) = rand_tensor(&[c], 230 + k as u64, -1.0, 1.0);
        let n = ops::group_norm(&x, groups, Some(&g), Some(&b), 1e-5, silu).unwrap();
        let d = ops::group_norm_backward(&x, groups, Some(&g), Some(&b), &n.stats, &dy, 1e-5, silu).unwrap();
        let (wg, wb) = affine_grads_ref(&xv, &dyv, cpg * s, |r, j| (r % groups) * cpg + j / s, &gv, &bv, silu);
        let tol = 1e-4 * (shape.iter().product::<usize>() as f64).sqrt();
        assert_close(&format!("group_norm {shape:?} dgamma"), &d.dgamma.unwrap().to_vec().unwrap(), &wg, tol, 1e-4);
        assert_close(&format!("group_norm {shape:?} dbeta"), &d.dbeta.unwrap().to_vec().unwrap(), &wb, tol, 1e-4);
    }
    // layer norm: 61003 rows of 3 channels
    let (rows, dim) = (61003, 3);
    let (x, xv) = rand_tensor(&[rows, dim], 240, -2.0, 3.0);
    let (dy, dyv) = rand_tensor(&[rows, dim], 241, -1.0, 1.0);
    let (g, gv) = rand_tensor(&[dim], 242, 0.5, 1.5);
    let (b, bv) = rand_tensor(&[dim], 243, -1.0, 1.0);
    let n = ops::layer_norm(&x, Some(&g), Some(&b), 1e-5).unwrap();
    let d = ops::layer_norm_backward(&x, Some(&g), Some(&b), &n.stats, &dy, 1e-5).unwrap();
    let (wg, wb) = affine_grads_ref(&xv, &dyv, dim, |_, j| j, &gv, &bv, false);
    let tol = 1e-4 * ((rows * dim) as f64).sqrt();
    assert_close("layer_norm dgamma", &d.dgamma.unwrap().to_vec().unwrap(), &wg, tol, 1e-4);
    assert_close("layer_norm dbeta", &d.dbeta.unwrap().to_vec().unwrap(), &wb, tol, 1e-4);
}

/// The row kernels give the same bits reading textures (CPU adapters) as reading buffers:
/// softmax, the norms forward and backward (thread-per-row and workgroup-per-row rows,
/// group channels shared by 4 elements or not) and the thread reductions.
#[test]
fn row_kernels_read_textures_like_buffers() {
    let entries = [
        "softmax::softmax_thread",
        "softmax::softmax_lse_thread",
        "softmax::softmax_lse_thread4",
        "norm::norm_thread4",
        "norm::norm_rows4",
        "norm::norm_bwd_thread",
        "norm::norm_bwd",
        "norm::norm_affine_bwd",
        "reduce::reduce_thread",
    ];
    texel_reads_agree("rows", &entries, |g| {
        let mut out = Vec::new();
        let (s, _) = rand_on(g, &[37, 29], 1, -4.0, 4.0);
        out.push(ops::softmax_scaled(&s, 0.7).unwrap().to_vec().unwrap());
        // attention over materialised scores: the in-place softmax rows of 12 keys (vec4)
        // and of 7 (scalar)
        g.set_attention_path(t2v_kernels::AttentionPath::Materialised);
        for (lk, seed) in [(12usize, 2u64), (7, 3)] {
            let (q, _) = rand_on(g, &[3, 9, 8], seed, -2.0, 2.0);
            let (k, _) = rand_on(g, &[3, lk, 8], seed + 10, -2.0, 2.0);
            let a = ops::attention(&q, &k, &k, 0.5, true).unwrap();
            out.extend([a.out.to_vec().unwrap(), a.lse.to_vec().unwrap(), a.probs.unwrap().to_vec().unwrap()]);
        }
        // (shape, groups): S = 12 (channels per vec4), S = 15 (mixed), one long row
        for (k, (shape, groups)) in [(vec![3, 8, 3, 4], 4), (vec![2, 6, 3, 5], 3), (vec![1, 4, 40, 41], 2)].into_iter().enumerate() {
            let c = shape[1];
            let (x, _) = rand_on(g, &shape, 10 + k as u64, -2.0, 3.0);
            let (gm, _) = rand_on(g, &[c], 20 + k as u64, 0.5, 1.5);
            let (bt, _) = rand_on(g, &[c], 30 + k as u64, -1.0, 1.0);
            let (dy, _) = rand_on(g, &shape, 40 + k as u64, -1.0, 1.0);
            let n = ops::group_norm(&x, groups, Some(&gm), Some(&bt), 1e-5, true).unwrap();
            let d = ops::group_norm_backward(&x, groups, Some(&gm), Some(&bt), &n.stats, &dy, 1e-5, true).unwrap();
            out.extend([n.y.to_vec().unwrap(), n.stats.to_vec().unwrap(), d.dx.to_vec().unwrap(), d.dgamma.unwrap().to_vec().unwrap(), d.dbeta.unwrap().to_vec().unwrap()]);
        }
        let (x, _) = rand_on(g, &[70, 36], 50, -2.0, 3.0);
        let (dy, _) = rand_on(g, &[70, 36], 51, -1.0, 1.0);
        let n = ops::layer_norm(&x, None, None, 1e-5).unwrap();
        out.push(n.y.to_vec().unwrap());
        let (gm, _) = rand_on(g, &[36], 52, 0.5, 1.5);
        let (bt, _) = rand_on(g, &[36], 53, -1.0, 1.0);
        out.push(ops::layer_norm(&x, Some(&gm), Some(&bt), 1e-5).unwrap().y.to_vec().unwrap()); // a texel of gamma per vec4
        out.push(ops::layer_norm_backward(&x, None, None, &n.stats, &dy, 1e-5).unwrap().dx.to_vec().unwrap());
        out.push(ops::sum(&x, 0).unwrap().to_vec().unwrap());
        out.push(ops::max(&x, 1).unwrap().to_vec().unwrap());
        out
    });
}
