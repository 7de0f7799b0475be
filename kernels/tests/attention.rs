//! Fused attention (and its unfused fallback) against an f64 reference.
mod common;
use common::*;
use t2v_kernels::{ops, AttentionPath};

/// (out, lse, probs) for q (bh, lq, d), k/v with kv_rep sharing.
fn attn_ref(q: &[f32], k: &[f32], v: &[f32], bh: usize, lq: usize, lk: usize, d: usize, dv: usize, rep: usize, scale: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut out, mut lse, mut probs) = (vec![], vec![], vec![]);
    for z in 0..bh {
        let zk = z / rep;
        for i in 0..lq {
            let s: Vec<f64> = (0..lk)
                .map(|j| scale * (0..d).map(|t| q[(z * lq + i) * d + t] as f64 * k[(zk * lk + j) * d + t] as f64).sum::<f64>())
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = s.iter().map(|x| (x - m).exp()).sum();
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / sum).collect();
            for t in 0..dv {
                out.push((0..lk).map(|j| p[j] * v[(zk * lk + j) * dv + t] as f64).sum());
            }
            lse.push(m + sum.ln());
            probs.extend(p);
        }
    }
    (out, lse, probs)
}

#[test]
fn fused_attention_self_cross_temporal_and_shared_kv() {
    // (bh, lq, lk, d, dv, kv batches)
    let cases = [
        (6, 37, 19, 24, 16, 6),  // odd everything
        (4, 29, 77, 64, 64, 2),  // cross attention, K/V shared by 2 query batches each
        (50, 16, 16, 40, 40, 50), // temporal: many short sequences
        (2, 1, 1, 8, 8, 1),
        (3, 70, 70, 128, 128, 3), // the fused kernel's largest head dim, rows > one workgroup
        (2, 9, 11, 160, 136, 2), // beyond the fused kernel: matmul/softmax fallback
        (2, 640, 640, 64, 64, 2), // spatial attention at the latent size
        (2, 5, 2100, 64, 64, 1),  // long keys: over llvmpipe's loop budget -> unfused path there
    ];
    // each case through the fused kernels and through materialised scores
    for (s, &(bh, lq, lk, d, dv, bk)) in cases.iter().enumerate().flat_map(|c| [c, c]) {
        let path = if gpu().attention_path() == AttentionPath::Fused { AttentionPath::Materialised } else { AttentionPath::Fused };
        gpu().set_attention_path(path);
        let (q, qv) = rand_tensor(&[bh, lq, d], 200 + s as u64, -1.0, 1.0);
        let (k, kv) = rand_tensor(&[bk, lk, d], 210 + s as u64, -1.0, 1.0);
        let (v, vv) = rand_tensor(&[bk, lk, dv], 220 + s as u64, -1.0, 1.0);
        let scale = 1.0 / (d as f32).sqrt();
        for capture in [false, true] {
            let a = ops::attention(&q, &k, &v, scale, capture).unwrap();
            let (out, lse, probs) = attn_ref(&qv, &kv, &vv, bh, lq, lk, d, dv, bh / bk, scale as f64);
            let what = format!("attention {:?} {path:?}", (bh, lq, lk, d, dv, bk));
            assert_eq!(a.out.shape(), [bh, lq, dv]);
            assert_close(&what, &a.out.to_vec().unwrap(), &out, 2e-6, 1e-5);
            assert_close(&format!("{what} lse"), &a.lse.to_vec().unwrap(), &lse, 1e-5, 1e-5);
            match (capture, a.probs) {
                (true, Some(p)) => {
                    assert_eq!(p.shape(), [bh, lq, lk]);
                    assert_close(&format!("{what} probs"), &p.to_vec().unwrap(), &probs, 1e-6, 1e-5);
                }
                (false, None) => {}
                (c, p) => panic!("capture {c} but probs {:?}", p.map(|t| t.shape().to_vec())),
            }
        }
    }
}

#[test]
fn attention_rejects_mismatched_shapes() {
    let (q, _) = rand_tensor(&[4, 5, 8], 1, -1.0, 1.0);
    let (k, _) = rand_tensor(&[3, 6, 8], 2, -1.0, 1.0);
    let (k2, _) = rand_tensor(&[4, 6, 7], 2, -1.0, 1.0);
    let (v, _) = rand_tensor(&[4, 6, 8], 3, -1.0, 1.0);
    assert!(ops::attention(&q, &k, &v, 1.0, false).is_err(), "3 K/V batches do not divide 4");
    let e = ops::attention(&q, &k2, &v, 1.0, false).unwrap_err().to_string();
    assert!(e.contains("[4, 5, 8]") && e.contains("[4, 6, 7]"), "{e}");
}

#[test]
fn memory_lean_scopes_take_the_fused_kernels() {
    let g = &private_gpu(); // its own attention setting, apart from the tests above
    g.set_attention_path(AttentionPath::Auto);
    let cpu_default = ops::materialises_scores(g, 2, 64, 64);
    assert_eq!(cpu_default, g.is_cpu(), "Auto materialises short sequences on CPU adapters only");
    assert!(ops::materialises_scores(g, 2, 2560, 2560), "and long self-attention everywhere");
    assert_eq!(ops::materialises_scores(g, 32, 2560, 77), g.is_cpu(), "77 text tokens: fused on GPUs");
    // inside (nested) scopes: fused, except small scores on CPU adapters
    let big = ops::LEAN_CPU_MATERIALISED_SCORES_MAX_BYTES / (4 * 64 * 64) + 1;
    let inside = g.memory_lean(|| (ops::materialises_scores(g, big, 64, 64), g.memory_lean(|| g.is_memory_lean()), g.is_memory_lean()));
    assert_eq!(inside, (false, true, true), "fused inside (nested) scopes");
    assert_eq!(g.memory_lean(|| ops::materialises_scores(g, 2, 64, 64)), g.is_cpu(), "small scores on CPU adapters");
    assert!(!g.is_memory_lean(), "the scope ends with its closure");
    // a forced path is kept inside the scope
    g.set_attention_path(AttentionPath::Materialised);
    assert!(g.memory_lean(|| ops::materialises_scores(g, 2, 64, 64)));
    g.set_attention_path(AttentionPath::Auto);
    // an early exit (panic) leaves no scope behind
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g.memory_lean(|| panic!("inside"))));
    assert!(!g.is_memory_lean());
}

#[test]
fn materialised_scores_run_in_chunks_of_whole_kv_batches() {
    // 12 query batches, each K/V batch serving 3, 2400 x 2400 scores: 276 MB, above the
    // chunk budget (256 MiB, or the binding limit where smaller) on every device, so the
    // materialised path runs in chunks of 3, 6 or 9 query batches; same values and
    // gradients as the fused kernels, and the scores are never held whole
    let g = &private_gpu();
    let (bh, bk, l, d) = (12, 4, 2400, 8);
    let scores = bh * l * l * 4;
    assert!(scores > ops::MATERIALISED_CHUNK_BYTES);
    let (q, _) = rand_on(g, &[bh, l, d], 301, -1.0, 1.0);
    let (k, _) = rand_on(g, &[bk, l, d], 302, -1.0, 1.0);
    let (v, _) = rand_on(g, &[bk, l, d], 303, -1.0, 1.0);
    let (dout, _) = rand_on(g, &[bh, l, d], 304, -1.0, 1.0);
    let scale = 1.0 / (d as f32).sqrt();
    let run = |path: AttentionPath| {
        g.set_attention_path(path);
        g.sync().unwrap();
        g.reset_peak_memory();
        let base = g.memory().live_bytes;
        let a = ops::attention(&q, &k, &v, scale, false).unwrap();
        let (dq, dk, dv) = ops::attention_backward(&q, &k, &v, &a.out, &a.lse, &dout, scale, false, (true, true, true)).unwrap();
        let outs: Vec<Vec<f32>> = [&a.out, &a.lse, &dq.unwrap(), &dk.unwrap(), &dv.unwrap()].iter().map(|t| t.to_vec().unwrap()).collect();
        (outs, g.memory().peak_live_bytes - base)
    };
    let (fused, _) = run(AttentionPath::Fused);
    let (chunked, peak) = run(AttentionPath::Materialised);
    g.set_attention_path(AttentionPath::Auto);
    assert!((peak as usize) < scores, "peak {peak} bytes: the scores ({scores} bytes) were held at once");
    for (name, a, b) in ["out", "lse", "dq", "dk", "dv"].iter().zip(&fused).zip(&chunked).map(|((n, a), b)| (n, a, b)) {
        let want: Vec<f64> = a.iter().map(|&x| x as f64).collect();
        assert_close(&format!("chunked {name}"), b, &want, 1e-5, 1e-4);
    }
}
