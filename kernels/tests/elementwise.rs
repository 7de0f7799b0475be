//! Elementwise, broadcasting and layout kernels against f64 CPU references.
mod common;
use common::*;
use t2v_kernels::ops::{self, BinaryOp, UnaryOp};
use t2v_kernels::{Error, Tensor};

const SHAPE: [usize; 3] = [7, 13, 29];

fn unary_ref(op: UnaryOp, x: f64, gamma: f64) -> f64 {
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    match op {
        UnaryOp::Identity => x,
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sigmoid => sig(x),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::Silu => x * sig(x),
        UnaryOp::Gelu => 0.5 * x * (1.0 + erf(x / 2f64.sqrt())),
        UnaryOp::GeluTanh => 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh()),
        UnaryOp::QuickGelu => x * sig(1.702 * x),
        UnaryOp::Square => x * x,
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Powf => x.powf(gamma),
    }
}

#[test]
fn unary_ops_match_reference() {
    use UnaryOp::*;
    let all = [Identity, Neg, Exp, Log, Sqrt, Rsqrt, Abs, Sigmoid, Tanh, Relu, Silu, Gelu, GeluTanh, QuickGelu, Square, Recip, Sin, Cos];
    let (xt, xv) = rand_tensor(&SHAPE, 1, -4.0, 4.0);
    let (pt, pv) = rand_tensor(&SHAPE, 2, 0.05, 5.0); // positive domain
    for op in all {
        let positive = matches!(op, Log | Sqrt | Rsqrt | Recip);
        let (t, v) = if positive { (&pt, &pv) } else { (&xt, &xv) };
        let got = ops::unary(t, op).unwrap().to_vec().unwrap();
        let want: Vec<f64> = v.iter().map(|&x| unary_ref(op, x as f64, 1.0)).collect();
        let atol = if matches!(op, Sin | Cos) { 1e-5 } else { 3e-6 };
        assert_close(&format!("{op:?}"), &got, &want, atol, 3e-6);
    }
    let got = ops::powf(&pt, 1.7).unwrap().to_vec().unwrap();
    assert_close("powf", &got, &pv.iter().map(|&x| (x as f64).powf(1.7)).collect::<Vec<_>>(), 1e-5, 3e-6);
    let got = ops::affine(&xt, -2.5, 0.75).unwrap().to_vec().unwrap();
    assert_close("affine", &got, &xv.iter().map(|&x| -2.5 * x as f64 + 0.75).collect::<Vec<_>>(), 1e-6, 1e-6);
    let got = ops::unary_affine(&xt, Silu, 3.0, -1.0).unwrap().to_vec().unwrap();
    assert_close("3*silu-1", &got, &xv.iter().map(|&x| 3.0 * unary_ref(Silu, x as f64, 0.0) - 1.0).collect::<Vec<_>>(), 1e-5, 3e-6);
}

#[test]
fn unary_edge_values_stay_finite() {
    let t = Tensor::from_slice(gpu(), &[6], &[-1e4, -90.0, 0.0, 1e-30, 90.0, 1e4]).unwrap();
    for op in [UnaryOp::Tanh, UnaryOp::Sigmoid, UnaryOp::Silu, UnaryOp::Gelu, UnaryOp::GeluTanh, UnaryOp::QuickGelu] {
        let v = ops::unary(&t, op).unwrap().to_vec().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{op:?}: {v:?}");
    }
    let th = ops::tanh(&t).unwrap().to_vec().unwrap();
    assert_eq!((th[0], th[5]), (-1.0, 1.0));
}

/// out[idx] = f(a[bcast idx], b[bcast idx]) on the host.
fn broadcast_ref(a: &[f32], ash: &[usize], b: &[f32], bsh: &[usize], out: &[usize], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    let r = out.len();
    let idx = |sh: &[usize], coord: &[usize]| -> usize {
        let off = r - sh.len();
        let st = strides(sh);
        (0..sh.len()).map(|d| if sh[d] == 1 { 0 } else { coord[d + off] * st[d] }).sum()
    };
    let os = strides(out);
    (0..numel(out))
        .map(|i| {
            let coord: Vec<usize> = (0..r).map(|d| (i / os[d]) % out[d]).collect();
            f(a[idx(ash, &coord)] as f64, b[idx(bsh, &coord)] as f64)
        })
        .collect()
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    let cases: [(&[usize], &[usize], &[usize]); 5] = [
        (&[7, 13, 29], &[7, 13, 29], &[7, 13, 29]),
        (&[7, 1, 29], &[13, 1], &[7, 13, 29]),
        (&[1], &[5, 3], &[5, 3]),
        (&[3, 1, 5, 1, 2], &[4, 1], &[3, 1, 5, 4, 2]),
        (&[2, 1, 3, 1, 2, 1, 1, 3], &[3, 1, 1, 4, 1], &[2, 1, 3, 3, 2, 1, 4, 3]),
    ];
    for (k, (ash, bsh, out)) in cases.iter().enumerate() {
        let (a, av) = rand_tensor(ash, 10 + k as u64, -3.0, 3.0);
        let (b, bv) = rand_tensor(bsh, 20 + k as u64, 0.5, 3.0);
        let ops_: [(BinaryOp, fn(f64, f64) -> f64); 6] = [
            (BinaryOp::Add, |x, y| x + y),
            (BinaryOp::Sub, |x, y| x - y),
            (BinaryOp::Mul, |x, y| x * y),
            (BinaryOp::Div, |x, y| x / y),
            (BinaryOp::Max, f64::max),
            (BinaryOp::Min, f64::min),
        ];
        for (op, f) in ops_ {
            let c = ops::binary(&a, &b, op).unwrap();
            assert_eq!(c.shape(), *out, "{op:?} shape");
            assert_close(&format!("{op:?} {ash:?}x{bsh:?}"), &c.to_vec().unwrap(), &broadcast_ref(&av, ash, &bv, bsh, out, f), 1e-6, 1e-6);
        }
        let c = ops::axpby(&a, 1.5, &b, -0.25).unwrap().to_vec().unwrap();
        assert_close("axpby", &c, &broadcast_ref(&av, ash, &bv, bsh, out, |x, y| 1.5 * x - 0.25 * y), 1e-6, 1e-6);
        let c = ops::binary(&b, &b, BinaryOp::Pow).unwrap().to_vec().unwrap();
        assert_close("pow", &c, &bv.iter().map(|&x| (x as f64).powf(x as f64)).collect::<Vec<_>>(), 1e-5, 1e-5);
    }
}

#[test]
fn bad_broadcast_and_rank_are_errors() {
    let (a, _) = rand_tensor(&[3, 4], 1, 0.0, 1.0);
    let (b, _) = rand_tensor(&[5], 1, 0.0, 1.0);
    let e = ops::add(&a, &b).unwrap_err();
    assert!(matches!(e, Error::Shape { op: "add", .. }), "{e}");
    assert!(e.to_string().contains("[3, 4]") && e.to_string().contains("[5]"), "{e}");
    let (big, _) = rand_tensor(&[1; 9], 1, 0.0, 1.0);
    assert!(ops::add(&big, &big).unwrap_err().to_string().contains("rank 9"));
}

#[test]
fn fill_zeros_and_huge_grids() {
    let z = Tensor::zeros(gpu(), &[3, 5]).unwrap().to_vec().unwrap();
    assert!(z.iter().all(|&v| v == 0.0));
    let f = Tensor::full(gpu(), &[4, 7], -2.5).unwrap().to_vec().unwrap();
    assert!(f.iter().all(|&v| v == -2.5));
    // More than 65535 * 256 elements: the grid folds into two dimensions.
    let n = 65535 * 256 + 1000;
    let big = Tensor::full(gpu(), &[n], 1.25).unwrap();
    let y = ops::affine(&big, 2.0, 0.5).unwrap();
    for i in [0, 65535 * 256 - 1, 65535 * 256, n - 1] {
        assert_eq!(y.item_at(i).unwrap(), 3.0, "element {i}");
    }
    // empty tensors are fine
    let e = Tensor::zeros(gpu(), &[0, 3]).unwrap();
    assert_eq!(ops::exp(&e).unwrap().to_vec().unwrap().len(), 0);
}

#[test]
fn permute_transpose_slice_concat_broadcast() {
    let sh = [2, 3, 5, 7];
    let (x, xv) = rand_tensor(&sh, 3, -1.0, 1.0);
    let st = strides(&sh);
    let at = |c: [usize; 4]| xv[c[0] * st[0] + c[1] * st[1] + c[2] * st[2] + c[3] * st[3]];

    let p = ops::permute(&x, &[3, 1, 0, 2]).unwrap();
    assert_eq!(p.shape(), [7, 3, 2, 5]);
    let pv = p.to_vec().unwrap();
    let mut want = vec![];
    for a in 0..7 { for b in 0..3 { for c in 0..2 { for d in 0..5 { want.push(at([c, b, d, a])); } } } }
    assert_eq!(pv, want);

    let t = ops::transpose(&x, -1, -2).unwrap();
    assert_eq!(t.shape(), [2, 3, 7, 5]);
    assert_eq!(t.to_vec().unwrap()[1], at([0, 0, 1, 0]));

    let s = ops::slice(&x, 2, 1, 3).unwrap();
    let mut want = vec![];
    for a in 0..2 { for b in 0..3 { for c in 1..4 { for d in 0..7 { want.push(at([a, b, c, d])); } } } }
    assert_eq!(s.to_vec().unwrap(), want);
    assert!(ops::slice(&x, 2, 3, 3).is_err());

    let (y, yv) = rand_tensor(&[2, 1, 5, 7], 4, -1.0, 1.0);
    let c = ops::concat(&[&x, &y, &x], 1).unwrap();
    assert_eq!(c.shape(), [2, 7, 5, 7]);
    let cv = c.to_vec().unwrap();
    let cs = strides(&[2, 7, 5, 7]);
    for a in 0..2 { for b in 0..7 { for d2 in 0..5 { for e in 0..7 {
        let w = match b { 0..=2 => at([a, b, d2, e]), 3 => yv[a * 35 + d2 * 7 + e], _ => at([a, b - 4, d2, e]) };
        assert_eq!(cv[a * cs[0] + b * cs[1] + d2 * cs[2] + e], w);
    } } } }
    assert!(ops::concat(&[&x, &ops::slice(&y, 2, 0, 4).unwrap()], 1).is_err());

    let b = ops::broadcast_to(&y, &[3, 2, 4, 5, 7]).unwrap().to_vec().unwrap();
    assert_eq!(b.len(), 3 * 2 * 4 * 35);
    assert_eq!(b[(2 * 2 + 1) * 4 * 35 + 3 * 35 + 9], yv[35 + 9]);
    assert!(ops::broadcast_to(&y, &[2, 3, 4, 7]).is_err());
}

#[test]
fn strided_copies_over_several_runs() {
    // last dims longer than one run of the strided kernel (32), not a multiple of it,
    // read contiguously (heads-style permute) and with a stride (transpose)
    let (x, xv) = rand_tensor(&[2, 3, 5, 75], 6, -1.0, 1.0);
    let p = ops::permute(&x, &[0, 2, 1, 3]).unwrap().to_vec().unwrap();
    let mut want = vec![];
    for a in 0..2 { for c in 0..5 { for b in 0..3 { for d in 0..75 { want.push(xv[((a * 3 + b) * 5 + c) * 75 + d]); } } } }
    assert_eq!(p, want);
    let (y, yv) = rand_tensor(&[9, 70], 7, -1.0, 1.0);
    let t = ops::transpose(&y, 0, 1).unwrap();
    assert_eq!(t.shape(), [70, 9]);
    let tt = ops::transpose(&t, 0, 1).unwrap().to_vec().unwrap();
    assert_eq!(tt, yv, "transposing twice (each read strided along the output's last dim)");
    let tv = t.to_vec().unwrap();
    for i in 0..70 { for j in 0..9 { assert_eq!(tv[i * 9 + j], yv[j * 70 + i]); } }
}

/// x permuted by `perm`, on the CPU.
fn permute_ref(xv: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
    let st = strides(shape);
    let out: Vec<usize> = perm.iter().map(|&d| shape[d]).collect();
    (0..numel(&out))
        .map(|i| {
            let (mut rem, mut src) = (i, 0);
            for d in (0..out.len()).rev() {
                src += (rem % out[d]) * st[perm[d]];
                rem /= out[d];
            }
            xv[src]
        })
        .collect()
}

#[test]
fn vec4_strided_copies_match_the_scalar_ones() {
    // Layouts the vec4 kernels take (offsets and strides multiples of 4): a contiguous last
    // dimension over several runs with a part-filled one (76), transposes of the last two
    // dimensions with and without outer dimensions; and near misses that must fall back
    // (odd sizes, a last dimension of 6).
    for (shape, perm) in [
        (vec![3, 5, 2, 76], vec![0, 2, 1, 3]),
        // short last dimensions (unary_rows4): 13 rows = one full and one partial group
        // of 8, the longest short run (32) and one past it (36, by runs)
        (vec![3, 13, 2, 16], vec![0, 2, 1, 3]),
        (vec![2, 3, 13, 4], vec![1, 0, 2, 3]),
        (vec![5, 3, 32], vec![1, 0, 2]),
        (vec![5, 3, 36], vec![1, 0, 2]),
        (vec![3, 12, 20], vec![0, 2, 1]),
        (vec![2, 3, 8, 12], vec![1, 0, 3, 2]),
        (vec![36, 8], vec![1, 0]),
        (vec![5, 7, 12], vec![0, 2, 1]),
        (vec![4, 8, 6], vec![0, 2, 1]),
        (vec![2, 4, 3, 6], vec![0, 2, 1, 3]),
    ] {
        let (x, xv) = rand_tensor(&shape, 11, -1.0, 1.0);
        let got = ops::permute(&x, &perm).unwrap().to_vec().unwrap();
        assert_eq!(got, permute_ref(&xv, &shape, &perm), "permute {shape:?} by {perm:?}");
    }
    // slices: offset 8 (vec4 runs) and offset 1 (scalar)
    let (x, xv) = rand_tensor(&[4, 6, 8], 12, -1.0, 1.0);
    for (dim, start, len) in [(1usize, 1, 3), (2, 1, 4), (2, 4, 4)] {
        let got = ops::slice(&x, dim as isize, start, len).unwrap().to_vec().unwrap();
        let mut want = vec![];
        for a in 0..4 { for b in 0..6 { for c in 0..8 {
            let i = [a, b, c][dim];
            if i >= start && i < start + len { want.push(xv[(a * 6 + b) * 8 + c]); }
        } } }
        assert_eq!(got, want, "slice dim {dim} from {start} length {len}");
    }
}

#[test]
fn gated_activations_match_the_cpu() {
    // GEGLU and SwiGLU, forward and gradient: half widths 7 (scalar kernels) and 12 (vec4)
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let gelu = |v: f64| 0.5 * v * (1.0 + erf(v / 2f64.sqrt()));
    let gelu_d = |v: f64| 0.5 * (1.0 + erf(v / 2f64.sqrt())) + v * (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let silu = move |v: f64| v * sig(v);
    let silu_d = move |v: f64| sig(v) * (1.0 + v * (1.0 - sig(v)));
    let ops_: [(UnaryOp, &dyn Fn(f64) -> f64, &dyn Fn(f64) -> f64); 2] = [(UnaryOp::Gelu, &gelu, &gelu_d), (UnaryOp::Silu, &silu, &silu_d)];
    for shape in [vec![3usize, 5, 14], vec![2, 3, 24], vec![1, 8]] {
        let (x, xv) = rand_tensor(&shape, 21, -3.0, 3.0);
        let two_h = *shape.last().unwrap();
        let (h, rows) = (two_h / 2, xv.len() / two_h);
        let mut half = shape.clone();
        *half.last_mut().unwrap() = h;
        let (dy, dyv) = rand_tensor(&half, 22, -1.0, 1.0);
        for (op, f, df) in ops_ {
            let y = ops::gated(&x, op).unwrap();
            assert_eq!(y.shape(), &half[..]);
            let dx = ops::gated_grad(&x, &dy, op).unwrap().to_vec().unwrap();
            let (mut want_y, mut want_dx) = (vec![], vec![0.0; xv.len()]);
            for r in 0..rows {
                for j in 0..h {
                    let (a, g, d) = (xv[r * two_h + j] as f64, xv[r * two_h + h + j] as f64, dyv[r * h + j] as f64);
                    want_y.push(a * f(g));
                    want_dx[r * two_h + j] = d * f(g);
                    want_dx[r * two_h + h + j] = d * a * df(g);
                }
            }
            assert_close(&format!("gated {op:?} {shape:?}"), &y.to_vec().unwrap(), &want_y, 1e-5, 1e-5);
            assert_close(&format!("gated_grad {op:?} {shape:?}"), &dx, &want_dx, 1e-5, 1e-5);
        }
    }
    let (odd, _) = rand_tensor(&[2, 5], 23, -1.0, 1.0);
    assert!(ops::gated(&odd, UnaryOp::Gelu).unwrap_err().to_string().contains("even last dimension"));
    let (x, _) = rand_tensor(&[2, 6], 24, -1.0, 1.0);
    let (dy, _) = rand_tensor(&[2, 6], 25, -1.0, 1.0);
    assert!(ops::gated_grad(&x, &dy, UnaryOp::Gelu).unwrap_err().to_string().contains("half the last dimension"));
}

#[test]
fn nearest_upsample_doubles_each_pixel() {
    let (x, xv) = rand_tensor(&[2, 3, 5, 7], 5, -1.0, 1.0);
    let y = ops::upsample_nearest2x(&x).unwrap();
    assert_eq!(y.shape(), [2, 3, 10, 14]);
    let yv = y.to_vec().unwrap();
    for r in 0..6 { for i in 0..10 { for j in 0..14 {
        assert_eq!(yv[(r * 10 + i) * 14 + j], xv[(r * 5 + i / 2) * 7 + j / 2]);
    } } }
}

#[test]
fn sinusoidal_embedding_matches_ldm() {
    let ts = [0.0f32, 1.0, 17.5, 249.0, 999.0, 7531.25];
    let t = Tensor::from_slice(gpu(), &[ts.len()], &ts).unwrap();
    for dim in [320usize, 7, 2] {
        let got = ops::sinusoidal_embedding(&t, dim, 10000.0).unwrap().to_vec().unwrap();
        let half = dim / 2;
        let mut want = vec![];
        let mut tol = vec![];
        for &tv in &ts {
            for j in 0..dim {
                if j >= 2 * half {
                    want.push(0.0);
                    tol.push(0.0);
                    continue;
                }
                let f = (-(10000f64).ln() * (j % half) as f64 / half as f64).exp();
                let arg = tv as f64 * f;
                want.push(if j < half { arg.cos() } else { arg.sin() });
                // f32 rounding of the frequency's exponent and of the product (as in PyTorch)
                tol.push(arg.abs() * (f.ln().abs() + 4.0) * f32::EPSILON as f64);
            }
        }
        for i in 0..want.len() {
            assert!((got[i] as f64 - want[i]).abs() <= 2e-6 + tol[i], "dim {dim} elem {i}: {} vs {}", got[i], want[i]);
        }
    }
}

#[test]
fn gather_and_embedding() {
    let (table, tv) = rand_tensor(&[11, 7], 6, -1.0, 1.0);
    let ids = [3u32, 0, 10, 3, 5];
    let y = ops::embedding(&table, &ids).unwrap();
    assert_eq!(y.shape(), [5, 7]);
    let yv = y.to_vec().unwrap();
    for (r, &i) in ids.iter().enumerate() {
        assert_eq!(&yv[r * 7..r * 7 + 7], &tv[i as usize * 7..i as usize * 7 + 7]);
    }
    let e = ops::embedding(&table, &[11]).unwrap_err();
    assert!(e.to_string().contains("id 11 out of range"), "{e}");
    let idx = Tensor::from_u32(gpu(), &[2], &[1, 99]).unwrap();
    let g = ops::gather_rows(&table, &idx).unwrap().to_vec().unwrap();
    assert_eq!(&g[..7], &tv[7..14]);
    assert!(g[7..].iter().all(|&v| v == 0.0));
    assert!(ops::gather_rows(&table, &table).is_err(), "f32 indices are a dtype error");
}

#[test]
fn add_assign_accumulates_in_place_and_checks_sizes() {
    // odd sizes: the vec4 kernel's last vector covers padding
    for n in [1usize, 3, 7 * 13 * 29, 4096 + 5] {
        let (acc, av) = rand_tensor(&[n], 40 + n as u64, -2.0, 2.0);
        let (b, bv) = rand_tensor(&[n], 41 + n as u64, -2.0, 2.0);
        ops::add_assign(&acc, &b).unwrap();
        let want: Vec<f64> = av.iter().zip(&bv).map(|(x, y)| *x as f64 + *y as f64).collect();
        assert_close(&format!("add_assign {n}"), &acc.to_vec().unwrap(), &want, 1e-6, 1e-6);
        // b is untouched
        assert_close(&format!("add_assign {n} b"), &b.to_vec().unwrap(), &bv.iter().map(|&x| x as f64).collect::<Vec<_>>(), 0.0, 0.0);
        // alpha acc + beta b (a moving average's update)
        let (acc, av) = rand_tensor(&[n], 60 + n as u64, -2.0, 2.0);
        ops::axpby_assign(&acc, 0.9, &b, 0.1).unwrap();
        let want: Vec<f64> = av.iter().zip(&bv).map(|(x, y)| 0.9 * *x as f64 + 0.1 * *y as f64).collect();
        assert_close(&format!("axpby_assign {n}"), &acc.to_vec().unwrap(), &want, 1e-6, 1e-6);
    }
    let (a, _) = rand_tensor(&[2, 3], 50, -1.0, 1.0);
    let (b, _) = rand_tensor(&[7], 51, -1.0, 1.0);
    assert!(ops::add_assign(&a, &b).unwrap_err().to_string().contains("add_assign"));
}

/// The elementwise kernels give the same bits reading textures (CPU adapters) as reading
/// buffers: contiguous and strided unary ops (runs, transposes, scalar strides), same-shape
/// and broadcasting binary ops, and unary_grad.
#[test]
fn elementwise_kernels_read_textures_like_buffers() {
    let entries = [
        "elementwise::unary4",
        "elementwise::unary_runs4",
        "elementwise::unary_rows4",
        "elementwise::unary_transpose4",
        "elementwise::unary_runs",
        "elementwise::unary",
        "elementwise::binary4",
        "elementwise::binary",
        "elementwise::unary_grad",
        "elementwise::gated",
        "elementwise::gated4",
        "elementwise::gated_grad",
        "elementwise::gated_grad4",
    ];
    texel_reads_agree("elementwise", &entries, |g| {
        let (x, _) = rand_on(g, &SHAPE, 1, -2.0, 2.0);
        let (y, _) = rand_on(g, &SHAPE, 2, -2.0, 2.0);
        let (b, _) = rand_on(g, &[13, 1], 3, -2.0, 2.0);
        let (q, _) = rand_on(g, &[3, 8, 12], 4, -2.0, 2.0);
        let (r, _) = rand_on(g, &[3, 7], 5, -2.0, 2.0); // out (7, 3): runs of 3, the scalar kernel
        let (long, _) = rand_on(g, &[3, 5, 40], 6, -2.0, 2.0); // runs of 40: unary_runs4
        vec![
            ops::permute(&r, &[1, 0]).unwrap().to_vec().unwrap(),
            ops::unary(&x, UnaryOp::Gelu).unwrap().to_vec().unwrap(),
            ops::permute(&q, &[1, 0, 2]).unwrap().to_vec().unwrap(),
            ops::permute(&long, &[1, 0, 2]).unwrap().to_vec().unwrap(),
            ops::permute(&q, &[0, 2, 1]).unwrap().to_vec().unwrap(),
            ops::permute(&x, &[2, 0, 1]).unwrap().to_vec().unwrap(),
            ops::binary(&x, &y, BinaryOp::Mul).unwrap().to_vec().unwrap(),
            ops::binary(&x, &b, BinaryOp::Sub).unwrap().to_vec().unwrap(),
            ops::unary_grad(&x, &y, UnaryOp::Silu, 1.5, 0.0).unwrap().to_vec().unwrap(),
            ops::gated(&q, UnaryOp::Gelu).unwrap().to_vec().unwrap(),
            ops::gated(&long, UnaryOp::Gelu).unwrap().to_vec().unwrap(), // half width 20: vec4
            ops::gated_grad(&q, &ops::slice(&q, 2, 0, 6).unwrap(), UnaryOp::Gelu).unwrap().to_vec().unwrap(),
            ops::gated_grad(&long, &ops::slice(&long, 2, 0, 20).unwrap(), UnaryOp::Gelu).unwrap().to_vec().unwrap(),
        ]
    });
}

/// Every one of the 65536 f16 and bf16 bit patterns (zeros, subnormals, infinities, NaNs)
/// widens on the device to the f32 the half crate gives, bit for bit; an odd element count
/// checks the last word's unused half; the stored bits read back unchanged.
#[test]
fn half_storage_widens_every_bit_pattern_exactly() {
    use t2v_kernels::{HalfKind, HalfTensor};
    let g = gpu();
    for kind in [HalfKind::F16, HalfKind::BF16] {
        for shape in [vec![256, 256], vec![3, 85, 257], vec![1]] {
            // a permutation of all patterns (40503 is odd), not in order
            let n = numel(&shape);
            let bits: Vec<u16> = (0..n).map(|i| (i as u32 * 40503 % 65536) as u16).collect();
            let h = HalfTensor::from_bits(g, &shape, kind, &bits).unwrap();
            assert_eq!(h.to_bits().unwrap(), bits, "{kind:?}: stored bits");
            let f = h.to_f32().unwrap();
            assert_eq!(f.shape(), &shape[..]);
            let got: Vec<u32> = f.to_vec().unwrap().iter().map(|x| x.to_bits()).collect();
            for (i, (&b, &y)) in bits.iter().zip(&got).enumerate() {
                let want = kind.widen(b).to_bits();
                // a NaN stays a NaN of its sign and payload (quieted or not, as the CPU does)
                let nan = |x: u32| f32::from_bits(x).is_nan();
                let same = y == want || (nan(y) && nan(want) && (y | 0x40_0000) == (want | 0x40_0000));
                assert!(same, "{kind:?} element {i}: bits {b:#06x} -> {y:#010x}, want {want:#010x}");
            }
        }
    }
    // rounding on upload: ties to even, f16 overflow to infinity, bf16 keeps the range
    let x = [1.0f32 + 1.0 / 2048.0, 65520.0, 1e-8, -3.0e38, 0.1];
    let h = HalfTensor::from_f32(g, &[5], HalfKind::F16, &x).unwrap();
    let y = h.to_f32().unwrap().to_vec().unwrap();
    assert_eq!(y[0], 1.0, "tie rounds to even");
    assert!(y[1].is_infinite() && y[3].is_infinite(), "{y:?}");
    assert_eq!(y[2], half::f16::from_f32(1e-8).to_f32());
    assert!((y[4] - 0.1).abs() < 1e-4);
    let b = HalfTensor::from_f32(g, &[5], HalfKind::BF16, &x).unwrap().to_f32().unwrap().to_vec().unwrap();
    assert!((b[3] / -3.0e38 - 1.0).abs() < 1e-2 && (b[4] / 0.1 - 1.0).abs() < 1e-2, "{b:?}");
    // shapes are checked before anything is uploaded
    assert!(HalfTensor::from_bits(g, &[3, 3], HalfKind::F16, &[0; 8]).is_err());
    assert!(h.reshape(&[2, 3]).is_err());
    assert_eq!(h.reshape(&[1, 5]).unwrap().to_f32().unwrap().to_vec().unwrap(), y);
}
