//! Backward passes: every differentiable op against central differences of its f64 CPU
//! reference at odd shapes, plus the tape's semantics.
mod common;
use common::*;
use t2v_kernels::autograd::{self as ad, Tape, Var};
use t2v_kernels::ops::{Conv2d, UnaryOp};
use t2v_kernels::{AttentionPath, Error, Result, Tensor};

type CpuFn<'a> = &'a dyn Fn(&[Vec<f64>]) -> Vec<f64>;

/// Checks the tape's gradient of L = sum(R * f(inputs)) (R a fixed random cotangent)
/// against central differences of the f64 reference `cpu`, on every element of small
/// inputs and 48 random elements of larger ones. Also checks the forward value.
fn grad_check(name: &str, inputs: &[(&[usize], f32, f32)], gpu_f: &dyn Fn(&[Var]) -> Result<Var>, cpu: CpuFn) {
    let tape = Tape::new();
    let data: Vec<Vec<f32>> = inputs.iter().enumerate().map(|(i, (s, lo, hi))| Rng::new(1000 + i as u64).uniform(numel(s), *lo, *hi)).collect();
    let vars: Vec<Var> = inputs.iter().zip(&data).map(|((s, _, _), d)| tape.leaf(Tensor::from_slice(gpu(), s, d).unwrap())).collect();
    let y = gpu_f(&vars).unwrap();
    let x64: Vec<Vec<f64>> = data.iter().map(|d| to64(d)).collect();
    let want = cpu(&x64);
    assert_close(&format!("{name} forward"), &y.value().to_vec().unwrap(), &want, 1e-4, 1e-4);
    let r = Rng::new(77).uniform(want.len(), -1.0, 1.0);
    let seed = Tensor::from_slice(gpu(), y.shape(), &r).unwrap();
    let grads = tape.backward_with(&y, seed).unwrap();
    let loss = |x: &[Vec<f64>]| -> f64 { cpu(x).iter().zip(&r).map(|(a, b)| a * *b as f64).sum() };
    for (i, v) in vars.iter().enumerate() {
        let g = grads.get(v).unwrap_or_else(|| panic!("{name}: no gradient for input {i}")).to_vec().unwrap();
        assert_eq!(g.len(), data[i].len(), "{name}: gradient {i} shape");
        let n = data[i].len();
        let picks: Vec<usize> = if n <= 64 { (0..n).collect() } else { (0..48).map(|j| (j * 7919 + 13) % n).collect() };
        for &e in &picks {
            let h = 1e-4 * (1.0 + x64[i][e].abs());
            let mut xp = x64.clone();
            xp[i][e] += h;
            let mut xm = x64.clone();
            xm[i][e] -= h;
            let num = (loss(&xp) - loss(&xm)) / (2.0 * h);
            let err = (g[e] as f64 - num).abs();
            assert!(err <= 2e-3 * (1.0 + num.abs()), "{name}: d/dinput{i}[{e}]: tape {} vs finite difference {num}", g[e]);
        }
    }
}

fn elementwise(x: &[f64], f: impl Fn(f64) -> f64) -> Vec<f64> {
    x.iter().map(|&v| f(v)).collect()
}

#[test]
fn unary_ops() {
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let cases: Vec<(UnaryOp, f32, f32, Box<dyn Fn(f64) -> f64>)> = vec![
        (UnaryOp::Identity, -2.0, 2.0, Box::new(|v| v)),
        (UnaryOp::Neg, -2.0, 2.0, Box::new(|v| -v)),
        (UnaryOp::Exp, -2.0, 2.0, Box::new(f64::exp)),
        (UnaryOp::Log, 0.2, 3.0, Box::new(f64::ln)),
        (UnaryOp::Sqrt, 0.2, 3.0, Box::new(f64::sqrt)),
        (UnaryOp::Rsqrt, 0.2, 3.0, Box::new(|v| 1.0 / v.sqrt())),
        (UnaryOp::Abs, 0.1, 2.0, Box::new(f64::abs)),
        (UnaryOp::Sigmoid, -3.0, 3.0, Box::new(sig)),
        (UnaryOp::Tanh, -3.0, 3.0, Box::new(f64::tanh)),
        (UnaryOp::Relu, 0.1, 2.0, Box::new(|v| v.max(0.0))),
        (UnaryOp::Silu, -3.0, 3.0, Box::new(move |v| v * sig(v))),
        (UnaryOp::Gelu, -3.0, 3.0, Box::new(|v| 0.5 * v * (1.0 + erf(v / 2f64.sqrt())))),
        (UnaryOp::GeluTanh, -3.0, 3.0, Box::new(|v| 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh()))),
        (UnaryOp::QuickGelu, -3.0, 3.0, Box::new(move |v| v * sig(1.702 * v))),
        (UnaryOp::Square, -2.0, 2.0, Box::new(|v| v * v)),
        (UnaryOp::Recip, 0.3, 2.0, Box::new(|v| 1.0 / v)),
        (UnaryOp::Sin, -3.0, 3.0, Box::new(f64::sin)),
        (UnaryOp::Cos, -3.0, 3.0, Box::new(f64::cos)),
    ];
    for (op, lo, hi, f) in cases {
        grad_check(&format!("{op:?}"), &[(&[3, 5, 7], lo, hi)], &|v| ad::unary_affine(&v[0], op, 1.3, 0.2), &|x| elementwise(&x[0], |t| 1.3 * f(t) + 0.2));
    }
    grad_check("powf", &[(&[13], 0.3, 2.0)], &|v| ad::powf(&v[0], 1.7), &|x| elementwise(&x[0], |t| t.powf(1.7)));
    // gated (GEGLU): half widths 7 (scalar kernels) and 8 (vec4)
    let gelu = |v: f64| 0.5 * v * (1.0 + erf(v / 2f64.sqrt()));
    for shape in [[3usize, 2, 14], [2, 3, 16]] {
        let h = shape[2] / 2;
        let cpu = move |x: &[Vec<f64>]| -> Vec<f64> { x[0].chunks(2 * h).flat_map(|row| (0..h).map(move |j| row[j] * gelu(row[h + j]))).collect() };
        grad_check(&format!("gated {shape:?}"), &[(&shape, -3.0, 3.0)], &|v| ad::gated(&v[0], UnaryOp::Gelu), &cpu);
    }
}

/// out[i] = f(a[bcast], b[bcast]) for a (3,1,5), b (4,1) -> (3,4,5).
fn bcast(x: &[Vec<f64>], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    let mut out = vec![];
    for i in 0..3 {
        for j in 0..4 {
            for l in 0..5 {
                out.push(f(x[0][i * 5 + l], x[1][j]));
            }
        }
    }
    out
}

#[test]
fn broadcasting_binary_ops() {
    let ins: &[(&[usize], f32, f32)] = &[(&[3, 1, 5], -2.0, 2.0), (&[4, 1], 0.5, 2.0)];
    grad_check("add", ins, &|v| ad::add(&v[0], &v[1]), &|x| bcast(x, |a, b| a + b));
    grad_check("sub", ins, &|v| ad::sub(&v[0], &v[1]), &|x| bcast(x, |a, b| a - b));
    grad_check("mul", ins, &|v| ad::mul(&v[0], &v[1]), &|x| bcast(x, |a, b| a * b));
    grad_check("div", ins, &|v| ad::div(&v[0], &v[1]), &|x| bcast(x, |a, b| a / b));
    grad_check("axpby", ins, &|v| ad::axpby(&v[0], 0.7, &v[1], -1.9), &|x| bcast(x, |a, b| 0.7 * a - 1.9 * b));
}

#[test]
fn layout_ops() {
    // permute (2,3,5) -> (5,2,3)
    grad_check("permute", &[(&[2, 3, 5], -1.0, 1.0)], &|v| ad::permute(&v[0], &[2, 0, 1]), &|x| {
        let mut o = vec![];
        for c in 0..5 { for a in 0..2 { for b in 0..3 { o.push(x[0][(a * 3 + b) * 5 + c]); } } }
        o
    });
    grad_check("slice", &[(&[3, 7], -1.0, 1.0)], &|v| ad::slice(&v[0], 1, 2, 3), &|x| {
        (0..3).flat_map(|r| (2..5).map(move |c| (r, c))).map(|(r, c)| x[0][r * 7 + c]).collect()
    });
    grad_check("concat", &[(&[2, 3], -1.0, 1.0), (&[2, 1], -1.0, 1.0)], &|v| ad::concat(&[&v[0], &v[1], &v[0]], 1), &|x| {
        (0..2).flat_map(|r| {
            let mut row: Vec<f64> = x[0][r * 3..r * 3 + 3].to_vec();
            row.push(x[1][r]);
            row.extend_from_slice(&x[0][r * 3..r * 3 + 3]);
            row
        }).collect()
    });
    grad_check("broadcast_to", &[(&[3, 1], -1.0, 1.0)], &|v| ad::broadcast_to(&v[0], &[2, 3, 4]), &|x| {
        (0..24).map(|i| x[0][(i / 4) % 3]).collect()
    });
    grad_check("upsample", &[(&[2, 3, 5], -1.0, 1.0)], &|v| ad::upsample_nearest2x(&v[0]), &|x| {
        let mut o = vec![];
        for b in 0..2 { for i in 0..6 { for j in 0..10 { o.push(x[0][(b * 3 + i / 2) * 5 + j / 2]); } } }
        o
    });
    grad_check("reshape+transpose", &[(&[6, 5], -1.0, 1.0)], &|v| ad::transpose(&ad::reshape(&v[0], &[2, 3, 5])?, -1, -2), &|x| {
        let mut o = vec![];
        for a in 0..2 { for c in 0..5 { for b in 0..3 { o.push(x[0][(a * 3 + b) * 5 + c]); } } }
        o
    });
}

#[test]
fn reductions_softmax_and_losses() {
    grad_check("sum axis 1", &[(&[3, 7, 2], -1.0, 1.0)], &|v| ad::sum(&v[0], 1), &|x| {
        (0..3).flat_map(|a| (0..2).map(move |c| (a, c))).map(|(a, c)| (0..7).map(|b| x[0][(a * 7 + b) * 2 + c]).sum()).collect()
    });
    grad_check("max axis 0", &[(&[5, 4], -1.0, 1.0)], &|v| ad::max(&v[0], 0), &|x| {
        (0..4).map(|c| (0..5).map(|r| x[0][r * 4 + c]).fold(f64::MIN, f64::max)).collect()
    });
    grad_check("min axis 1", &[(&[5, 4], -1.0, 1.0)], &|v| ad::min(&v[0], 1), &|x| {
        (0..5).map(|r| (0..4).map(|c| x[0][r * 4 + c]).fold(f64::MAX, f64::min)).collect()
    });
    grad_check("mean last", &[(&[3, 7], -1.0, 1.0)], &|v| ad::mean(&v[0], -1), &|x| {
        (0..3).map(|a| x[0][a * 7..a * 7 + 7].iter().sum::<f64>() / 7.0).collect()
    });
    grad_check("softmax", &[(&[4, 9], -2.0, 2.0)], &|v| ad::softmax_scaled(&v[0], 0.7), &|x| {
        x[0].chunks(9).flat_map(|r| {
            let m = r.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = r.iter().map(|v| (0.7 * (v - m)).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        }).collect()
    });
    grad_check("mse", &[(&[5, 3], -1.0, 1.0), (&[5, 3], -1.0, 1.0)], &|v| ad::mse(&v[0], &v[1]), &|x| {
        vec![x[0].iter().zip(&x[1]).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / 15.0]
    });
    grad_check("pseudo_huber", &[(&[5, 3], -1.0, 1.0), (&[5, 3], -1.0, 1.0)], &|v| ad::pseudo_huber(&v[0], &v[1], 0.05), &|x| {
        vec![x[0].iter().zip(&x[1]).map(|(a, b)| ((a - b).powi(2) + 0.0025).sqrt() - 0.05).sum::<f64>() / 15.0]
    });
}

#[test]
fn matmul_linear_all_layouts() {
    let (m, k, n) = (5, 7, 3);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let sa: &[usize] = if ta { &[k, m] } else { &[m, k] };
        let sb: &[usize] = if tb { &[n, k] } else { &[k, n] };
        grad_check(
            &format!("matmul ta={ta} tb={tb}"),
            &[(sa, -1.0, 1.0), (sb, -1.0, 1.0), (&[n], -1.0, 1.0)],
            &|v| ad::matmul_ex(&v[0], &v[1], ta, tb, 0.6, Some(&v[2])),
            &|x| matmul_ref(&x[0], &x[1], m, k, n, ta, tb, 0.6, Some(&x[2])),
        );
    }
    // batched A with a shared B (its gradient sums over the batch)
    grad_check("batched shared", &[(&[2, 4, 3], -1.0, 1.0), (&[3, 5], -1.0, 1.0)], &|v| ad::matmul(&v[0], &v[1]), &|x| {
        (0..2).flat_map(|z| matmul_ref(&x[0][z * 12..z * 12 + 12], &x[1], 4, 3, 5, false, false, 1.0, None)).collect()
    });
    grad_check("linear", &[(&[2, 3, 5], -1.0, 1.0), (&[4, 5], -1.0, 1.0), (&[4], -1.0, 1.0)], &|v| ad::linear(&v[0], &v[1], Some(&v[2])), &|x| {
        matmul_ref(&x[0], &x[1], 6, 5, 4, false, true, 1.0, Some(&x[2]))
    });
}

#[test]
fn conv2d_and_temporal_conv() {
    let cases = [
        ([2, 3, 6, 7], [4, 3, 3, 3], Conv2d::new(1, 1)),
        ([1, 2, 7, 6], [3, 2, 3, 3], Conv2d { stride: (2, 2), padding: (0, 1, 0, 1) }),
        ([2, 5, 4, 3], [3, 5, 1, 1], Conv2d::new(1, 0)),
        ([1, 4, 5, 5], [17, 4, 3, 3], Conv2d::new(2, 1)), // K % 4 == 0, O >= 16: im2col path on CPU
    ];
    for (xs, ws, geo) in cases {
        grad_check(
            &format!("conv2d {xs:?} {ws:?} {geo:?}"),
            &[(&xs, -1.0, 1.0), (&ws, -1.0, 1.0), (&[ws[0]], -1.0, 1.0)],
            &|v| ad::conv2d(&v[0], &v[1], Some(&v[2]), geo),
            &|x| conv_ref(&x[0], xs, &x[1], ws, Some(&x[2]), geo).0,
        );
    }
    let [b, c, f, h, w, o] = [1, 2, 4, 2, 3, 3];
    grad_check("temporal_conv", &[(&[b, c, f, h, w], -1.0, 1.0), (&[o, c, 3, 1, 1], -1.0, 1.0), (&[o], -1.0, 1.0)], &|v| ad::temporal_conv(&v[0], &v[1], Some(&v[2])), &|x| {
        let mut out = vec![];
        for oc in 0..o { for ff in 0..f { for p in 0..h * w {
            let mut s = x[2][oc];
            for cc in 0..c { for t in 0..3 {
                let src = ff as isize + t as isize - 1;
                if (0..f as isize).contains(&src) {
                    s += x[1][(oc * c + cc) * 3 + t] * x[0][(cc * f + src as usize) * h * w + p];
                }
            } }
            out.push(s);
        } } }
        out
    });
}

#[test]
fn layer_and_group_norm() {
    grad_check("layer_norm affine", &[(&[3, 10], -2.0, 2.0), (&[10], 0.5, 1.5), (&[10], -1.0, 1.0)], &|v| ad::layer_norm(&v[0], Some(&v[1]), Some(&v[2]), 1e-5), &|x| {
        norm_ref(&x[0], 10, 1e-5, |_, j| j, Some((&x[1], &x[2])), false).0
    });
    grad_check("layer_norm plain", &[(&[4, 7], -2.0, 2.0)], &|v| ad::layer_norm(&v[0], None, None, 1e-5), &|x| norm_ref(&x[0], 7, 1e-5, |_, j| j, None::<(&[f64], &[f64])>, false).0);
    for silu in [false, true] {
        // (N, C, F, H, W) = (2, 6, 2, 3, 1), 3 groups
        let s = 6;
        grad_check(&format!("group_norm silu={silu}"), &[(&[2, 6, 2, 3, 1], -2.0, 2.0), (&[6], 0.5, 1.5), (&[6], -1.0, 1.0)], &|v| ad::group_norm(&v[0], 3, Some(&v[1]), Some(&v[2]), 1e-5, silu), &|x| {
            norm_ref(&x[0], 2 * s, 1e-5, |r, j| (r % 3) * 2 + j / s, Some((&x[1], &x[2])), silu).0
        });
    }
    // rows of 2 x 135 = 270 elements: the workgroup-per-row backward (short rows take one thread each)
    let s = 135;
    grad_check("group_norm long rows", &[(&[1, 4, 3, 5, 9], -2.0, 2.0), (&[4], 0.5, 1.5), (&[4], -1.0, 1.0)], &|v| ad::group_norm(&v[0], 2, Some(&v[1]), Some(&v[2]), 1e-5, true), &|x| {
        norm_ref(&x[0], 2 * s, 1e-5, |r, j| (r % 2) * 2 + j / s, Some((&x[1], &x[2])), true).0
    });
    // 128 rows of 2 x 75 = 150 elements: many long rows, one thread each on CPU adapters
    let s = 75;
    grad_check("group_norm many long rows", &[(&[2, 128, 3, 5, 5], -2.0, 2.0), (&[128], 0.5, 1.5), (&[128], -1.0, 1.0)], &|v| ad::group_norm(&v[0], 64, Some(&v[1]), Some(&v[2]), 1e-5, true), &|x| {
        norm_ref(&x[0], 2 * s, 1e-5, |r, j| (r % 64) * 2 + j / s, Some((&x[1], &x[2])), true).0
    });
    grad_check("layer_norm many long rows", &[(&[130, 132], -2.0, 2.0), (&[132], 0.5, 1.5), (&[132], -1.0, 1.0)], &|v| ad::layer_norm(&v[0], Some(&v[1]), Some(&v[2]), 1e-5), &|x| {
        norm_ref(&x[0], 132, 1e-5, |_, j| j, Some((&x[1], &x[2])), false).0
    });
}

#[test]
fn tape_semantics() {
    let g = gpu();
    let tape = Tape::new();
    let w = tape.leaf(Tensor::from_slice(g, &[3], &[1.0, 2.0, 3.0]).unwrap());
    let c = tape.constant(Tensor::from_slice(g, &[3], &[4.0, 5.0, 6.0]).unwrap());
    // constants and detached values record nothing and have no gradient
    let y = ad::mul(&c, &c).unwrap();
    assert!(!y.requires_grad());
    assert!(matches!(tape.backward(&ad::sum_all(&y).unwrap()).unwrap_err(), Error::Autograd(_)));
    let nog = tape.no_grad(|| ad::mul(&w, &c).unwrap());
    assert!(!nog.requires_grad());
    assert!(!ad::mul(&w.detach(), &c).unwrap().requires_grad());
    // d/dw sum(w * c + stop_grad(w) * w) = c + w (the detached factor is a constant)
    let loss = ad::sum_all(&ad::add(&ad::mul(&w, &c).unwrap(), &ad::mul(&w.detach(), &w).unwrap()).unwrap()).unwrap();
    let grads = tape.backward(&loss).unwrap();
    assert_eq!(grads.get(&w).unwrap().to_vec().unwrap(), vec![5.0, 7.0, 9.0]);
    assert!(grads.get(&c).is_none());
    // the tape is consumed
    let e = tape.backward(&loss).unwrap_err().to_string();
    assert!(e.contains("twice"), "{e}");
    assert!(ad::mul(&w, &c).is_err(), "recording on a consumed tape");
    // non-scalar loss without seed
    let t2 = Tape::new();
    let v = t2.leaf(Tensor::from_slice(g, &[2], &[1.0, 2.0]).unwrap());
    assert!(t2.backward(&ad::square(&v).unwrap()).unwrap_err().to_string().contains("scalar"));
    // values of different tapes do not mix
    let t3 = Tape::new();
    let u = t3.leaf(Tensor::from_slice(g, &[2], &[1.0, 2.0]).unwrap());
    assert!(ad::add(&v, &u).is_err());
}

#[test]
fn gradient_with_respect_to_an_input_through_conv_and_attention_like_stack() {
    // Motion guidance differentiates the energy w.r.t. the latent, not the weights.
    let g = gpu();
    let tape = Tape::new();
    let (xt, xv) = rand_tensor(&[1, 2, 5, 6], 5, -1.0, 1.0);
    let (wt, wv) = rand_tensor(&[4, 2, 3, 3], 6, -0.5, 0.5);
    let x = tape.leaf(xt);
    let w = tape.constant(wt);
    let h = ad::conv2d(&x, &w, None, Conv2d::new(1, 1)).unwrap(); // (1, 4, 5, 6)
    let tokens = ad::reshape(&ad::permute(&ad::reshape(&h, &[4, 30]).unwrap(), &[1, 0]).unwrap(), &[1, 30, 4]).unwrap();
    let scores = ad::matmul_ex(&tokens, &tokens, false, true, 0.5, None).unwrap();
    let p = ad::softmax(&scores).unwrap();
    let out = ad::matmul(&p, &tokens).unwrap();
    let loss = ad::mean_all(&ad::square(&out).unwrap()).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let gx = grads.get(&x).unwrap().to_vec().unwrap();
    assert!(grads.get(&w).is_none());
    // finite differences of the same stack on the CPU
    let f = |x: &[f64]| -> f64 {
        let (hc, _) = conv_ref(x, [1, 2, 5, 6], &to64(&wv), [4, 2, 3, 3], None, Conv2d::new(1, 1));
        let tok: Vec<Vec<f64>> = (0..30).map(|t| (0..4).map(|c| hc[c * 30 + t]).collect()).collect();
        let mut total = 0.0;
        for i in 0..30 {
            let s: Vec<f64> = (0..30).map(|j| 0.5 * (0..4).map(|c| tok[i][c] * tok[j][c]).sum::<f64>()).collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for c in 0..4 {
                let o: f64 = (0..30).map(|j| e[j] / z * tok[j][c]).sum();
                total += o * o;
            }
        }
        total / 120.0
    };
    let x64 = to64(&xv);
    for e in [0, 7, 29, 44, 59] {
        let mut p = x64.clone();
        p[e] += 1e-5;
        let mut m = x64.clone();
        m[e] -= 1e-5;
        let num = (f(&p) - f(&m)) / 2e-5;
        assert!((gx[e] as f64 - num).abs() <= 1e-3 * (1.0 + num.abs()), "dx[{e}]: {} vs {num}", gx[e]);
    }
    let _ = g;
}

#[test]
fn checkpointed_block_gives_the_same_gradients() {
    let block = |v: &[Var]| -> Result<Var> {
        let h = ad::group_norm(&v[0], 2, Some(&v[2]), Some(&v[3]), 1e-5, true)?;
        ad::add(&ad::conv2d(&h, &v[1], None, Conv2d::new(1, 1))?, &v[0])
    };
    let (xt, _) = rand_tensor(&[2, 4, 5, 3], 11, -1.0, 1.0);
    let (wt, _) = rand_tensor(&[4, 4, 3, 3], 12, -0.3, 0.3);
    let (gt, _) = rand_tensor(&[4], 13, 0.5, 1.5);
    let (bt, _) = rand_tensor(&[4], 14, -0.5, 0.5);
    let run = |checkpoint: bool| -> Vec<Vec<f32>> {
        let tape = Tape::new();
        let vars: Vec<Var> = [&xt, &wt, &gt, &bt].iter().map(|t| tape.leaf((*t).clone())).collect();
        let mut h = vars[0].clone();
        for _ in 0..2 {
            let ins = [&h, &vars[1], &vars[2], &vars[3]];
            h = if checkpoint { tape.checkpoint(&ins, block).unwrap() } else { block(&[h.clone(), vars[1].clone(), vars[2].clone(), vars[3].clone()]).unwrap() };
        }
        let loss = ad::mean_all(&ad::square(&h).unwrap()).unwrap();
        let grads = tape.backward(&loss).unwrap();
        vars.iter().map(|v| grads.get(v).unwrap().to_vec().unwrap()).collect()
    };
    let (plain, ckpt) = (run(false), run(true));
    for (i, (a, b)) in plain.iter().zip(&ckpt).enumerate() {
        assert_close(&format!("checkpointed grad {i}"), b, &to64(a), 1e-6, 1e-5);
    }
}

/// Blocks checkpointed with `checkpoint_params` on a tape with LoRA adapters attached: the
/// adapters of the weights a block reads (applied beside a linear layer, or merged for a
/// plain reader) get the gradients they get without recomputation, also through a block
/// whose inputs carry none; an adapter no block reads gets none.
#[test]
fn checkpointed_params_carry_lora_gradients() {
    use t2v_kernels::autograd::{linear_lora, Lora};
    let g = gpu();
    let (x, _) = rand_tensor(&[3, 5], 31, -1.0, 1.0);
    let (w1, _) = rand_tensor(&[5, 5], 32, -0.5, 0.5);
    let (w2, _) = rand_tensor(&[5, 5], 33, -0.5, 0.5);
    let (unread, _) = rand_tensor(&[4, 5], 34, -0.5, 0.5);
    let lora = |seed: u64, out: usize| {
        let mut l = Lora::linear(g, 5, out, 2, 3.0, seed).unwrap();
        l.up = Tensor::from_slice(g, &[out, 2], &Rng::new(seed + 100).uniform(out * 2, -0.5, 0.5)).unwrap();
        l
    };
    let (l1, l2, l3) = (lora(41, 5), lora(42, 5), lora(43, 4));
    // a layer that applies an attached adapter beside its weight (as the models' Linear
    // does), then a plain reader of an adapted weight (merged on demand)
    let block = {
        let (w1, w2) = (w1.clone(), w2.clone());
        move |v: &[Var]| -> Result<Var> {
            let tape = v[0].tape();
            let l = tape.lora_of(&w1).expect("w1 is adapted");
            let h = ad::gelu(&linear_lora(&v[0], &tape.constant(w1.clone()), None, &l)?)?;
            ad::linear(&h, &tape.param(&w2), None)
        }
    };
    let run = |checkpoint: bool| -> Vec<Option<Vec<f32>>> {
        let tape = Tape::new();
        let adapters: Vec<_> = [(&l1, &w1), (&l2, &w2), (&l3, &unread)].iter().map(|(l, w)| l.attach(&tape, w).unwrap()).collect();
        let mut h = tape.constant(x.clone());
        for _ in 0..2 {
            h = if checkpoint { tape.checkpoint_params(&[&h], block.clone()).unwrap() } else { block(&[h]).unwrap() };
        }
        let grads = tape.backward(&ad::mean_all(&ad::square(&h).unwrap()).unwrap()).unwrap();
        adapters.iter().flat_map(|a| [&a.down, &a.up]).map(|v| grads.get(v).map(|t| t.to_vec().unwrap())).collect()
    };
    let (plain, ckpt) = (run(false), run(true));
    for (i, (a, b)) in plain.iter().zip(&ckpt).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => assert_close(&format!("adapter tensor {i}"), b, &to64(a), 1e-5, 1e-5),
            (None, None) => assert!(i >= 4, "adapter tensor {i} of a read weight got no gradient"),
            _ => panic!("adapter tensor {i}: a gradient {} recomputation only", if a.is_some() { "without" } else { "with" }),
        }
    }
    assert!(ckpt[..4].iter().all(|v| v.as_ref().is_some_and(|v| v.iter().any(|&x| x != 0.0))));
}

/// softmax(scale q k^T) v on the host: q (bh, lq, d), k (bk, lk, d), v (bk, lk, dv).
fn attention_ref(x: &[Vec<f64>], bh: usize, bk: usize, lq: usize, lk: usize, d: usize, dv: usize, scale: f64) -> Vec<f64> {
    attention_ref_masked(x, bh, bk, lq, lk, d, dv, scale, false)
}

#[allow(clippy::too_many_arguments)]
fn attention_ref_masked(x: &[Vec<f64>], bh: usize, bk: usize, lq: usize, lk: usize, d: usize, dv: usize, scale: f64, causal: bool) -> Vec<f64> {
    let (q, k, v) = (&x[0], &x[1], &x[2]);
    let mut out = vec![];
    for z in 0..bh {
        let zk = z / (bh / bk);
        for i in 0..lq {
            let s: Vec<f64> = (0..lk).map(|j| scale * (0..d).map(|t| q[(z * lq + i) * d + t] * k[(zk * lk + j) * d + t]).sum::<f64>()).collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().enumerate().map(|(j, a)| if causal && j > i { 0.0 } else { (a - m).exp() }).collect();
            let sum: f64 = e.iter().sum();
            for t in 0..dv {
                out.push((0..lk).map(|j| e[j] / sum * v[(zk * lk + j) * dv + t]).sum());
            }
        }
    }
    out
}

#[test]
fn attention_fused_and_unfused_backward() {
    for path in [AttentionPath::Fused, AttentionPath::Materialised] {
        gpu().set_attention_path(path);
        attention_backward_cases(&format!("{path:?}"));
    }
    gpu().set_attention_path(AttentionPath::Auto);
}

fn attention_backward_cases(path: &str) {
    // (bh, bk, lq, lk, d, dv): shared K/V, head dims off the vec4 grid, long keys
    for (bh, bk, lq, lk, d, dv) in [(4, 2, 5, 7, 8, 12), (3, 3, 9, 4, 16, 8), (2, 1, 3, 5, 6, 5), (1, 1, 2, 2100, 64, 64)] {
        let scale = 1.0 / (d as f32).sqrt();
        grad_check(
            &format!("attention {:?} {path}", (bh, bk, lq, lk, d, dv)),
            &[(&[bh, lq, d], -1.0, 1.0), (&[bk, lk, d], -1.0, 1.0), (&[bk, lk, dv], -1.0, 1.0)],
            &|v| ad::attention(&v[0], &v[1], &v[2], scale),
            &|x| attention_ref(x, bh, bk, lq, lk, d, dv, scale as f64),
        );
    }
    for (bh, bk, l, d) in [(4, 2, 9, 8), (2, 2, 7, 6), (2, 1, 150, 8)] {
        grad_check(
            &format!("causal attention {:?} {path}", (bh, bk, l, d)),
            &[(&[bh, l, d], -1.0, 1.0), (&[bk, l, d], -1.0, 1.0), (&[bk, l, d], -1.0, 1.0)],
            &|v| ad::attention_masked(&v[0], &v[1], &v[2], 0.4, true),
            &|x| attention_ref_masked(x, bh, bk, l, l, d, d, 0.4, true),
        );
    }
    grad_check("attention_probs", &[(&[2, 4, 8], -1.0, 1.0), (&[2, 6, 8], -1.0, 1.0)], &|v| ad::attention_probs(&v[0], &v[1], 0.5), &|x| {
        let mut out = vec![];
        for z in 0..2 {
            for i in 0..4 {
                let s: Vec<f64> = (0..6).map(|j| 0.5 * (0..8).map(|t| x[0][(z * 4 + i) * 8 + t] * x[1][(z * 6 + j) * 8 + t]).sum::<f64>()).collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|a| (a - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                out.extend(e.iter().map(|a| a / sum));
            }
        }
        out
    });
}

#[test]
fn embedding_rows_sum_their_gradients() {
    let ids = [3u32, 0, 3, 6, 3];
    grad_check("embedding", &[(&[7, 5], -1.0, 1.0)], &|v| ad::embedding(&v[0], &ids), &|x| {
        ids.iter().flat_map(|&i| x[0][i as usize * 5..i as usize * 5 + 5].to_vec()).collect()
    });
    let g = Tensor::zeros(gpu(), &[2, 5]).unwrap();
    assert!(t2v_kernels::ops::embedding_backward(&g, &[1, 9], 7).is_err());
}

/// A table in row chunks (3, 2 and 4 rows of 5) gathers what the whole table does, ids in
/// any order and repeated; each chunk gets its rows' gradients (finite differences).
#[test]
fn embedding_over_row_chunks() {
    let ids = [8u32, 0, 4, 3, 8, 1, 5, 2];
    let whole = |x: &[Vec<f64>]| -> Vec<f64> {
        let table: Vec<f64> = x.iter().flatten().copied().collect();
        ids.iter().flat_map(|&i| table[i as usize * 5..i as usize * 5 + 5].to_vec()).collect()
    };
    grad_check("embedding_chunked", &[(&[3, 5], -1.0, 1.0), (&[2, 5], -1.0, 1.0), (&[4, 5], -1.0, 1.0)], &|v| ad::embedding_chunked(&[&v[0], &v[1], &v[2]], &ids), &whole);
    // exactly the rows of the whole table; one chunk is the plain embedding
    let tape = Tape::new();
    let (t, tv) = rand_tensor(&[9, 5], 3, -1.0, 1.0);
    let chunks: Vec<Var> = [(0, 3), (3, 2), (5, 4)].iter().map(|&(at, n)| tape.leaf(Tensor::from_slice(gpu(), &[n, 5], &tv[at * 5..(at + n) * 5]).unwrap())).collect();
    let refs: Vec<&Var> = chunks.iter().collect();
    let got = ad::embedding_chunked(&refs, &ids).unwrap().value().to_vec().unwrap();
    assert_eq!(got, ad::embedding(&tape.leaf(t), &ids).unwrap().value().to_vec().unwrap());
    // ids of one chunk only: the others get no gradient
    let y = ad::embedding_chunked(&refs, &[4, 3]).unwrap();
    let grads = tape.backward(&ad::sum_all(&y).unwrap()).unwrap();
    assert!(grads.get(&chunks[0]).is_none() && grads.get(&chunks[1]).is_some() && grads.get(&chunks[2]).is_none());
    assert!(ad::embedding_chunked(&refs, &[9]).unwrap_err().to_string().contains("id 9 out of range for a table of 9 rows"));
    let narrow = tape.leaf(Tensor::zeros(gpu(), &[2, 4]).unwrap());
    assert!(ad::embedding_chunked(&[&chunks[0], &narrow], &[0]).is_err());
}

#[test]
fn lora_trains_alone_and_merges() {
    use t2v_kernels::autograd::{conv2d_lora, linear_lora, Lora};
    use t2v_kernels::ops;
    let g = gpu();
    // linear: only the adapter gets gradients; merged weights reproduce the adapted output
    let (w, _) = rand_tensor(&[6, 5], 1, -0.5, 0.5);
    let (x, _) = rand_tensor(&[4, 5], 2, -1.0, 1.0);
    let mut lora = Lora::linear(g, 5, 6, 3, 6.0, 7).unwrap();
    assert_eq!(lora.up.to_vec().unwrap(), vec![0.0; 18], "B starts at zero");
    lora.up = Tensor::from_slice(g, &[6, 3], &Rng::new(3).uniform(18, -0.5, 0.5)).unwrap();
    let tape = Tape::new();
    let (xv, wv) = (tape.constant(x.clone()), tape.constant(w.clone()));
    let lv = lora.vars(&tape);
    let y = linear_lora(&xv, &wv, None, &lv).unwrap();
    let merged = ops::linear(&x, &lora.merge(&w).unwrap(), None).unwrap();
    assert_close("lora linear merge", &y.value().to_vec().unwrap(), &to64(&merged.to_vec().unwrap()), 1e-5, 1e-5);
    let grads = tape.backward(&ad::mean_all(&ad::square(&y).unwrap()).unwrap()).unwrap();
    assert!(grads.get(&lv.down).is_some() && grads.get(&lv.up).is_some() && grads.get(&wv).is_none());
    // conv: same, with stride and padding carried by the down projection
    let (wc, _) = rand_tensor(&[4, 3, 3, 3], 4, -0.5, 0.5);
    let (xc, _) = rand_tensor(&[2, 3, 6, 5], 5, -1.0, 1.0);
    let mut lc = Lora::conv(g, [4, 3, 3, 3], 2, 4.0, 8).unwrap();
    lc.up = Tensor::from_slice(g, &[4, 2, 1, 1], &Rng::new(6).uniform(8, -0.5, 0.5)).unwrap();
    let geo = Conv2d::new(2, 1);
    let tape = Tape::new();
    let lcv = lc.vars(&tape);
    let yc = conv2d_lora(&tape.constant(xc.clone()), &tape.constant(wc.clone()), None, geo, &lcv).unwrap();
    let mc = ops::conv2d(&xc, &lc.merge(&wc).unwrap(), None, geo).unwrap();
    assert_close("lora conv merge", &yc.value().to_vec().unwrap(), &to64(&mc.to_vec().unwrap()), 1e-5, 1e-5);
    assert!(Lora::linear(g, 5, 6, 0, 1.0, 1).is_err());
    assert!(lora.merge(&wc).is_err());
}

#[test]
fn an_attached_weight_carries_lora_gradients() {
    use t2v_kernels::autograd::{linear_lora, Lora};
    let g = gpu();
    // the merged-weight path (what readers of Tape::param get) must equal the adapter
    // applied beside the layer, in value and in the adapter's gradients
    let (w, _) = rand_tensor(&[6, 5], 11, -0.5, 0.5);
    let (x, _) = rand_tensor(&[3, 5], 12, -1.0, 1.0);
    let mut lora = Lora::linear(g, 5, 6, 2, 4.0, 13).unwrap();
    lora.up = Tensor::from_slice(g, &[6, 2], &Rng::new(14).uniform(12, -0.5, 0.5)).unwrap();
    let side = Tape::new();
    let sv = lora.vars(&side);
    let ys = linear_lora(&side.constant(x.clone()), &side.constant(w.clone()), None, &sv).unwrap();
    let gs = side.backward(&ad::mean_all(&ad::square(&ys).unwrap()).unwrap()).unwrap();

    // a weight the adapters of which were attached: layers that apply it find it
    // (lora_of), other readers get the merged weight from Tape::param (made once), with
    // the adapter's gradients
    let (other, _) = rand_tensor(&[4, 4], 15, -1.0, 1.0);
    let tape = Tape::new();
    let vars = lora.attach(&tape, &w).unwrap();
    assert!(tape.lora_of(&w).is_some() && tape.lora_of(&other).is_none());
    let xv = tape.constant(x.clone());
    let (w1, w2) = (tape.param(&w), tape.param(&w));
    assert_eq!(w1.value().to_vec().unwrap(), w2.value().to_vec().unwrap());
    assert_eq!(w1.value().to_vec().unwrap(), lora.merge(&w).unwrap().to_vec().unwrap(), "the merged weight");
    let y = ad::linear(&xv, &w1, None).unwrap();
    assert_close("merged on demand", &y.value().to_vec().unwrap(), &to64(&ys.value().to_vec().unwrap()), 1e-5, 1e-5);
    let gm = tape.backward(&ad::mean_all(&ad::square(&y).unwrap()).unwrap()).unwrap();
    for (a, b, name) in [(&vars.down, &sv.down, "down (attached)"), (&vars.up, &sv.up, "up (attached)")] {
        assert_close(name, &gm.get(a).unwrap().to_vec().unwrap(), &to64(&gs.get(b).unwrap().to_vec().unwrap()), 1e-5, 1e-4);
    }
    assert!(lora.attach(&Tape::new(), &other).is_err(), "an adapter that does not fit its weight");
}

/// A temporal conv's adapter applied beside it: the merged weight's output, and gradients
/// of the input and both adapter tensors by finite differences (2 channels -> 3, rank 2,
/// 4 frames of 2 x 3).
#[test]
fn temporal_conv_lora_is_the_merged_conv() {
    use t2v_kernels::autograd::{temporal_conv_lora, LoraVars};
    let (wt, wv) = rand_tensor(&[3, 2, 3, 1, 1], 21, -0.5, 0.5);
    let lora_of = |v: &[Var]| LoraVars { down: v[1].clone(), up: v[2].clone(), scale: 1.5 };
    // the merged weight W + 1.5 up @ down (up (3, 2), down (2, 6))
    let merged = |x: &[Vec<f64>]| -> Vec<f64> {
        (0..3).flat_map(|o| (0..6).map(move |j| (o, j))).map(|(o, j)| wv[o * 6 + j] as f64 + 1.5 * (0..2).map(|k| x[2][o * 2 + k] * x[1][k * 6 + j]).sum::<f64>()).collect()
    };
    // y[b, o, f, p] = sum over c, t of W'[o, c, t] x[b, c, f + t - 1, p] (zero outside the frames)
    let cpu = |x: &[Vec<f64>]| -> Vec<f64> {
        let w = merged(x);
        let (c, f, p) = (2, 4, 6);
        let mut y = vec![0.0; 3 * f * p];
        for o in 0..3 {
            for fi in 0..f {
                for pi in 0..p {
                    for ci in 0..c {
                        for t in 0..3 {
                            let ff = fi as isize + t as isize - 1;
                            if (0..f as isize).contains(&ff) {
                                y[(o * f + fi) * p + pi] += w[(o * c + ci) * 3 + t] * x[0][(ci * f + ff as usize) * p + pi];
                            }
                        }
                    }
                }
            }
        }
        y
    };
    grad_check("temporal_conv_lora", &[(&[1, 2, 4, 2, 3], -1.0, 1.0), (&[2, 6], -0.5, 0.5), (&[3, 2], -0.5, 0.5)], &|v| temporal_conv_lora(&v[0], &v[0].tape().constant(wt.clone()), None, &lora_of(v)), &cpu);
}

/// Frozen half-precision weights (`linear_half`, `conv2d_half`, `temporal_conv_half`): the
/// outputs and the input and bias gradients equal the f32 ops' on the widened weights bit
/// for bit, and between the forward and the backward no widened copy stays alive.
#[test]
fn half_weight_ops_match_f32_and_keep_no_widened_copy() {
    use t2v_kernels::{HalfKind, HalfTensor};
    let g = private_gpu();
    let bits = |t: &Tensor| t.to_vec().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    // (input shape, weight shape, op on (x, weight as f32 Var | half, bias))
    type F32Op = dyn Fn(&Var, &Var, &Var) -> Result<Var>;
    type HalfOp = dyn Fn(&Var, &HalfTensor, &Var) -> Result<Var>;
    let geo = Conv2d { stride: (1, 1), padding: (1, 1, 1, 1) };
    let cases: [(&str, Vec<usize>, Vec<usize>, Box<F32Op>, Box<HalfOp>); 3] = [
        ("linear", vec![3, 5, 37], vec![29, 37], Box::new(|x, w, b| ad::linear(x, w, Some(b))), Box::new(|x, w, b| ad::linear_half(x, w, Some(b)))),
        ("conv2d", vec![2, 5, 9, 11], vec![7, 5, 3, 3], Box::new(move |x, w, b| ad::conv2d(x, w, Some(b), geo)), Box::new(move |x, w, b| ad::conv2d_half(x, w, Some(b), geo))),
        ("temporal_conv", vec![1, 4, 5, 3, 7], vec![6, 4, 3, 1, 1], Box::new(|x, w, b| ad::temporal_conv(x, w, Some(b))), Box::new(|x, w, b| ad::temporal_conv_half(x, w, Some(b)))),
    ];
    for (k, (name, xs, ws, f32_op, half_op)) in cases.iter().enumerate() {
        let seed = 60 + 10 * k as u64;
        let (x, _) = rand_on(&g, xs, seed, -1.0, 1.0);
        let (_, wv) = rand_on(&g, ws, seed + 1, -0.5, 0.5);
        let (b, _) = rand_on(&g, &[ws[0]], seed + 2, -0.5, 0.5);
        for kind in [HalfKind::F16, HalfKind::BF16] {
            let h = HalfTensor::from_f32(&g, ws, kind, &wv).unwrap();
            let run = |half: bool| -> Vec<Vec<u32>> {
                let tape = Tape::new();
                let (xv, bv) = (tape.leaf(x.clone()), tape.leaf(b.clone()));
                let y = if half { half_op(&xv, &h, &bv) } else { f32_op(&xv, &tape.constant(h.to_f32().unwrap()), &bv) }.unwrap();
                let (cot, _) = rand_on(&g, y.shape(), seed + 3, -1.0, 1.0);
                let grads = tape.backward_with(&y, cot).unwrap();
                vec![bits(y.value()), bits(grads.get(&xv).unwrap()), bits(grads.get(&bv).unwrap())]
            };
            assert_eq!(run(true), run(false), "{name} {kind:?}: output, dx, dbias");
        }
    }
    // four 256x256 layers: after the forward, the f32 path holds each widened weight (256
    // KiB each) for its backward, the half path none
    let layers: Vec<HalfTensor> = (0..4).map(|i| HalfTensor::from_f32(&g, &[256, 256], HalfKind::F16, &rand_on(&g, &[256, 256], 90 + i, -0.06, 0.06).1).unwrap()).collect();
    let (x, _) = rand_on(&g, &[8, 256], 99, -1.0, 1.0);
    let held = |half: bool| -> (u64, Vec<u32>) {
        g.sync().unwrap();
        let before = g.memory().live_bytes;
        let tape = Tape::new();
        let xv = tape.leaf(x.clone());
        let mut h = xv.clone();
        for w in &layers {
            h = if half { ad::linear_half(&h, w, None) } else { ad::linear(&h, &tape.constant(w.to_f32().unwrap()), None) }.unwrap();
        }
        let after = g.memory().live_bytes;
        let grads = tape.backward(&ad::mean_all(&h).unwrap()).unwrap();
        (after - before, bits(grads.get(&xv).unwrap()))
    };
    let ((half_bytes, half_dx), (f32_bytes, f32_dx)) = (held(true), held(false));
    assert_eq!(half_dx, f32_dx);
    assert!(f32_bytes >= half_bytes + 4 * 256 * 256 * 4, "live after the forward: half {half_bytes} B, f32 {f32_bytes} B");
}
