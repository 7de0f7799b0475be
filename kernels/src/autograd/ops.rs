//! Differentiable ops: each computes its forward with `crate::ops` and records how to map
//! the output gradient back to its inputs.

use super::tape::{Backward, Var};
use crate::ops::{self as k, Conv2d, Matmul, UnaryOp};
use crate::{Error, HalfTensor, Result, Tensor};

fn record(value: Tensor, inputs: &[&Var], bw: Backward) -> Result<Var> {
    inputs[0].tape.record(value, inputs, bw)
}

/// Sums `g` down to `shape` (the inverse of NumPy broadcasting).
pub fn unbroadcast(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    let mut t = g.clone();
    while t.rank() > shape.len() {
        t = k::sum(&t, 0)?;
    }
    for d in 0..shape.len() {
        if shape[d] == 1 && t.shape()[d] != 1 {
            let mut keep = t.shape().to_vec();
            keep[d] = 1;
            t = k::sum(&t, d as isize)?.reshape(&keep)?;
        }
    }
    t.reshape(shape)
}

// ---- elementwise ------------------------------------------------------------------------

/// alpha * op(x) + beta.
pub fn unary_affine(x: &Var, op: UnaryOp, alpha: f32, beta: f32) -> Result<Var> {
    let y = k::unary_affine(&x.value, op, alpha, beta)?;
    let xv = x.value.clone();
    record(y, &[x], Box::new(move |g, _| Ok(vec![Some(k::unary_grad(&xv, g, op, alpha, 1.0)?)])))
}

pub fn unary(x: &Var, op: UnaryOp) -> Result<Var> {
    unary_affine(x, op, 1.0, 0.0)
}

macro_rules! unary_vars {
    ($($name:ident => $op:ident),* $(,)?) => {
        $( pub fn $name(x: &Var) -> Result<Var> { unary(x, UnaryOp::$op) } )*
    };
}
unary_vars! {
    neg => Neg, exp => Exp, log => Log, sqrt => Sqrt, rsqrt => Rsqrt, abs => Abs, sigmoid => Sigmoid,
    tanh => Tanh, relu => Relu, silu => Silu, gelu => Gelu, gelu_tanh => GeluTanh,
    quick_gelu => QuickGelu, square => Square, recip => Recip, sin => Sin, cos => Cos,
}

/// Gated activation over the last dimension (GEGLU with [`UnaryOp::Gelu`]): see
/// [`crate::ops::gated`].
pub fn gated(x: &Var, op: UnaryOp) -> Result<Var> {
    let y = k::gated(&x.value, op)?;
    let xv = x.value.clone();
    record(y, &[x], Box::new(move |g, _| Ok(vec![Some(k::gated_grad(&xv, g, op)?)])))
}

pub fn scale(x: &Var, s: f32) -> Result<Var> {
    unary_affine(x, UnaryOp::Identity, s, 0.0)
}

pub fn affine(x: &Var, s: f32, b: f32) -> Result<Var> {
    unary_affine(x, UnaryOp::Identity, s, b)
}

/// x^g.
pub fn powf(x: &Var, gm: f32) -> Result<Var> {
    let y = k::powf(&x.value, gm)?;
    let xv = x.value.clone();
    record(y, &[x], Box::new(move |g, _| Ok(vec![Some(k::unary_grad(&xv, g, UnaryOp::Powf, 1.0, gm)?)])))
}

/// alpha * a + beta * b (broadcasting).
pub fn axpby(a: &Var, alpha: f32, b: &Var, beta: f32) -> Result<Var> {
    let y = k::axpby(&a.value, alpha, &b.value, beta)?;
    let (sa, sb) = (a.shape().to_vec(), b.shape().to_vec());
    record(
        y,
        &[a, b],
        Box::new(move |g, need| {
            let ga = if need[0] { Some(unbroadcast(&k::scale(g, alpha)?, &sa)?) } else { None };
            let gb = if need[1] { Some(unbroadcast(&k::scale(g, beta)?, &sb)?) } else { None };
            Ok(vec![ga, gb])
        }),
    )
}

pub fn add(a: &Var, b: &Var) -> Result<Var> {
    axpby(a, 1.0, b, 1.0)
}

pub fn sub(a: &Var, b: &Var) -> Result<Var> {
    axpby(a, 1.0, b, -1.0)
}

pub fn mul(a: &Var, b: &Var) -> Result<Var> {
    let y = k::mul(&a.value, &b.value)?;
    let (av, bv) = (a.value.clone(), b.value.clone());
    record(
        y,
        &[a, b],
        Box::new(move |g, need| {
            let ga = if need[0] { Some(unbroadcast(&k::mul(g, &bv)?, av.shape())?) } else { None };
            let gb = if need[1] { Some(unbroadcast(&k::mul(g, &av)?, bv.shape())?) } else { None };
            Ok(vec![ga, gb])
        }),
    )
}

pub fn div(a: &Var, b: &Var) -> Result<Var> {
    let y = k::div(&a.value, &b.value)?;
    let (av, bv, yv) = (a.value.clone(), b.value.clone(), y.clone());
    record(
        y,
        &[a, b],
        Box::new(move |g, need| {
            let gdb = k::div(g, &bv)?;
            let ga = if need[0] { Some(unbroadcast(&gdb, av.shape())?) } else { None };
            // d(a/b)/db = -(a/b)/b
            let gb = if need[1] { Some(unbroadcast(&k::neg(&k::mul(&gdb, &yv)?)?, bv.shape())?) } else { None };
            Ok(vec![ga, gb])
        }),
    )
}

// ---- layout -----------------------------------------------------------------------------

pub fn reshape(x: &Var, shape: &[usize]) -> Result<Var> {
    let y = x.value.reshape(shape)?;
    let s = x.shape().to_vec();
    record(y, &[x], Box::new(move |g, _| Ok(vec![Some(g.reshape(&s)?)])))
}

pub fn permute(x: &Var, perm: &[usize]) -> Result<Var> {
    let y = k::permute(&x.value, perm)?;
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    record(y, &[x], Box::new(move |g, _| Ok(vec![Some(k::permute(g, &inv)?)])))
}

pub fn transpose(x: &Var, d0: isize, d1: isize) -> Result<Var> {
    let r = x.value.rank() as isize;
    let (a, b) = ((d0 + r) % r.max(1), (d1 + r) % r.max(1));
    let mut perm: Vec<usize> = (0..x.value.rank()).collect();
    perm.swap(a as usize, b as usize);
    permute(x, &perm)
}

pub fn slice(x: &Var, ax: isize, start: usize, len: usize) -> Result<Var> {
    let y = k::slice(&x.value, ax, start, len)?;
    let s = x.shape().to_vec();
    let a = crate::ops::axis_index(&s, ax)?;
    record(
        y,
        &[x],
        Box::new(move |g, _| Ok(vec![Some(k::unslice(g, &s, a as isize, start)?)])),
    )
}

pub fn concat(xs: &[&Var], ax: isize) -> Result<Var> {
    let vals: Vec<&Tensor> = xs.iter().map(|v| &v.value).collect();
    let y = k::concat(&vals, ax)?;
    let a = crate::ops::axis_index(xs[0].shape(), ax)?;
    let sizes: Vec<usize> = xs.iter().map(|v| v.shape()[a]).collect();
    record(
        y,
        xs,
        Box::new(move |g, need| {
            let mut at = 0;
            let mut out = vec![];
            for (i, &n) in sizes.iter().enumerate() {
                out.push(if need[i] { Some(k::slice(g, a as isize, at, n)?) } else { None });
                at += n;
            }
            Ok(out)
        }),
    )
}

pub fn broadcast_to(x: &Var, shape: &[usize]) -> Result<Var> {
    let y = k::broadcast_to(&x.value, shape)?;
    let s = x.shape().to_vec();
    record(y, &[x], Box::new(move |g, _| Ok(vec![Some(unbroadcast(g, &s)?)])))
}

/// Nearest 2x upsampling of the last two dims.
pub fn upsample_nearest2x(x: &Var) -> Result<Var> {
    let y = k::upsample_nearest2x(&x.value)?;
    let s = x.shape().to_vec();
    record(
        y,
        &[x],
        Box::new(move |g, _| {
            let r = s.len();
            let lead: usize = s[..r - 2].iter().product();
            let g5 = g.reshape(&[lead, s[r - 2], 2, s[r - 1], 2])?;
            Ok(vec![Some(k::sum(&k::sum(&g5, 4)?, 2)?.reshape(&s)?)])
        }),
    )
}

// ---- reductions and losses --------------------------------------------------------------

fn reduce_like(x: &Var, ax: isize, mean: bool) -> Result<Var> {
    let a = crate::ops::axis_index(x.shape(), ax)?;
    let y = if mean { k::mean(&x.value, ax)? } else { k::sum(&x.value, ax)? };
    let s = x.shape().to_vec();
    let n = s[a] as f32;
    record(
        y,
        &[x],
        Box::new(move |g, _| {
            let mut keep = s.clone();
            keep[a] = 1;
            let gb = k::broadcast_to(&g.reshape(&keep)?, &s)?;
            Ok(vec![Some(if mean { k::scale(&gb, 1.0 / n)? } else { gb })])
        }),
    )
}

pub fn sum(x: &Var, ax: isize) -> Result<Var> {
    reduce_like(x, ax, false)
}

pub fn mean(x: &Var, ax: isize) -> Result<Var> {
    reduce_like(x, ax, true)
}

/// Maximum along `ax` (torch.amax): the gradient is split evenly among tied maxima.
pub fn max(x: &Var, ax: isize) -> Result<Var> {
    extreme(x, ax, k::Reduce::Max)
}

/// Minimum along `ax` (torch.amin): the gradient is split evenly among tied minima.
pub fn min(x: &Var, ax: isize) -> Result<Var> {
    extreme(x, ax, k::Reduce::Min)
}

fn extreme(x: &Var, ax: isize, kind: k::Reduce) -> Result<Var> {
    let a = crate::ops::axis_index(x.shape(), ax)?;
    let y = k::reduce(&x.value, ax, kind)?;
    let (xv, yv, s) = (x.value.clone(), y.clone(), x.shape().to_vec());
    record(
        y,
        &[x],
        Box::new(move |g, _| {
            let mut keep = s.clone();
            keep[a] = 1;
            let mask = k::eq(&xv, &yv.reshape(&keep)?)?;
            let count = k::sum(&mask, a as isize)?.reshape(&keep)?;
            Ok(vec![Some(k::div(&k::mul(&mask, &g.reshape(&keep)?)?, &count)?)])
        }),
    )
}

/// Sum of all elements (shape `[1]`).
pub fn sum_all(x: &Var) -> Result<Var> {
    reshape(&sum(&reshape(x, &[x.value.numel()])?, 0)?, &[1])
}

/// Mean of all elements (shape `[1]`).
pub fn mean_all(x: &Var) -> Result<Var> {
    reshape(&mean(&reshape(x, &[x.value.numel()])?, 0)?, &[1])
}

/// mean((a - b)^2).
pub fn mse(a: &Var, b: &Var) -> Result<Var> {
    mean_all(&square(&sub(a, b)?)?)
}

/// mean(sqrt((a - b)^2 + c^2) - c): the pseudo-Huber loss of consistency distillation
/// (c = 0.001 in T2V-Turbo).
pub fn pseudo_huber(a: &Var, b: &Var, c: f32) -> Result<Var> {
    if c <= 0.0 {
        return Err(Error::Autograd(format!("pseudo_huber needs c > 0, got {c}")));
    }
    let d2 = square(&sub(a, b)?)?;
    mean_all(&affine(&sqrt(&affine(&d2, 1.0, c * c)?)?, 1.0, -c)?)
}

/// softmax(scale * x) over the last axis.
pub fn softmax_scaled(x: &Var, scale: f32) -> Result<Var> {
    let y = k::softmax_scaled(&x.value, scale)?;
    let yv = y.clone();
    record(
        y,
        &[x],
        Box::new(move |g, _| {
            // dx = scale * y * (g - sum(g * y))
            let gy = k::mul(g, &yv)?;
            let mut keep = yv.shape().to_vec();
            *keep.last_mut().expect("rank >= 1") = 1;
            let s = k::sum(&gy, -1)?.reshape(&keep)?;
            Ok(vec![Some(k::scale(&k::mul(&yv, &k::sub(g, &s)?)?, scale)?)])
        }),
    )
}

pub fn softmax(x: &Var) -> Result<Var> {
    softmax_scaled(x, 1.0)
}

// ---- matmul, linear, convolution --------------------------------------------------------

fn opt_bias(bias: Option<&Var>) -> Vec<&Var> {
    bias.into_iter().collect()
}

/// Batched matmul with transposes, scale and bias (see [`crate::ops::matmul_ex`]).
pub fn matmul_ex(a: &Var, b: &Var, trans_a: bool, trans_b: bool, alpha: f32, bias: Option<&Var>) -> Result<Var> {
    let o = Matmul { trans_a, trans_b, alpha, bias: bias.map(|v| &v.value) };
    let y = k::matmul_ex(&a.value, &b.value, o)?;
    let (av, bv) = (a.value.clone(), b.value.clone());
    let mut inputs = vec![a, b];
    inputs.extend(opt_bias(bias));
    let n = *y.shape().last().expect("matrix");
    record(
        y,
        &inputs,
        Box::new(move |g, need| {
            let mm = |x: &Tensor, y: &Tensor, ta: bool, tb: bool| k::matmul_ex(x, y, Matmul { trans_a: ta, trans_b: tb, alpha, bias: None });
            let ga = if need[0] {
                let d = if trans_a { mm(&bv, g, trans_b, true)? } else { mm(g, &bv, false, !trans_b)? };
                Some(unbroadcast(&d, av.shape())?)
            } else {
                None
            };
            let gb = if need[1] {
                let d = if trans_b { mm(g, &av, true, trans_a)? } else { mm(&av, g, !trans_a, false)? };
                Some(unbroadcast(&d, bv.shape())?)
            } else {
                None
            };
            let mut out = vec![ga, gb];
            if need.len() > 2 {
                out.push(if need[2] { Some(k::sum(&g.reshape(&[g.numel() / n.max(1), n])?, 0)?) } else { None });
            }
            Ok(out)
        }),
    )
}

pub fn matmul(a: &Var, b: &Var) -> Result<Var> {
    matmul_ex(a, b, false, false, 1.0, None)
}

/// x (..., in) W^T + bias, W (out, in).
pub fn linear(x: &Var, w: &Var, bias: Option<&Var>) -> Result<Var> {
    if w.value.rank() != 2 || x.value.rank() == 0 || x.value.dim(-1) != w.shape()[1] {
        return Err(Error::Shape { op: "linear", msg: format!("input {:?} does not match weight {:?} (out, in)", x.shape(), w.shape()) });
    }
    let rows = x.value.numel() / w.shape()[1].max(1);
    let x2 = reshape(x, &[rows, w.shape()[1]])?;
    let y = matmul_ex(&x2, w, false, true, 1.0, bias)?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("rank >= 1") = w.shape()[0];
    reshape(&y, &shape)
}

/// conv2d (see [`crate::ops::conv2d`]).
pub fn conv2d(x: &Var, w: &Var, bias: Option<&Var>, geo: Conv2d) -> Result<Var> {
    let y = k::conv2d(&x.value, &w.value, bias.map(|v| &v.value), geo)?;
    let (xv, wv) = (x.value.clone(), w.value.clone());
    let mut inputs = vec![x, w];
    inputs.extend(opt_bias(bias));
    record(
        y,
        &inputs,
        Box::new(move |g, need| {
            let (dx, dw, db) = k::conv2d_backward(&xv, &wv, g, geo, (need[0], need[1], need.get(2).copied().unwrap_or(false)))?;
            let mut out = vec![dx, dw];
            if need.len() > 2 {
                out.push(db);
            }
            Ok(out)
        }),
    )
}

// ---- frozen weights kept in half precision ---------------------------------------------
// The weight is widened to f32 for the forward and again in the backward (which needs it
// for the input gradient), so no f32 copy lives from one to the other; it gets no gradient.
// Same kernels as the f32 ops, so the same results bit for bit.

/// [`linear`] with a frozen half-precision weight (out, in).
pub fn linear_half(x: &Var, w: &HalfTensor, bias: Option<&Var>) -> Result<Var> {
    if w.shape().len() != 2 || x.value.rank() == 0 || x.value.dim(-1) != w.shape()[1] {
        return Err(Error::Shape { op: "linear_half", msg: format!("input {:?} does not match weight {:?} (out, in)", x.shape(), w.shape()) });
    }
    let (o, i) = (w.shape()[0], w.shape()[1]);
    let rows = x.value.numel() / i.max(1);
    let x2 = x.value.reshape(&[rows, i])?;
    let y = k::matmul_ex(&x2, &w.to_f32()?, Matmul { trans_a: false, trans_b: true, alpha: 1.0, bias: bias.map(|v| &v.value) })?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("rank >= 1") = o;
    let (wh, x_shape) = (w.clone(), x.shape().to_vec());
    let mut inputs = vec![x];
    inputs.extend(opt_bias(bias));
    record(
        y.reshape(&shape)?,
        &inputs,
        Box::new(move |g, need| {
            let g2 = g.reshape(&[rows, o])?;
            let dx = if need[0] { Some(k::matmul_ex(&g2, &wh.to_f32()?, Matmul { trans_a: false, trans_b: false, alpha: 1.0, bias: None })?.reshape(&x_shape)?) } else { None };
            let mut out = vec![dx];
            if need.len() > 1 {
                out.push(if need[1] { Some(k::sum(&g2, 0)?) } else { None });
            }
            Ok(out)
        }),
    )
}

/// [`conv2d`] with a frozen half-precision weight.
pub fn conv2d_half(x: &Var, w: &HalfTensor, bias: Option<&Var>, geo: Conv2d) -> Result<Var> {
    let y = k::conv2d(&x.value, &w.to_f32()?, bias.map(|v| &v.value), geo)?;
    let (xv, wh) = (x.value.clone(), w.clone());
    let mut inputs = vec![x];
    inputs.extend(opt_bias(bias));
    record(
        y,
        &inputs,
        Box::new(move |g, need| {
            let need_b = need.get(1).copied().unwrap_or(false);
            let (dx, _, db) = k::conv2d_backward(&xv, &wh.to_f32()?, g, geo, (need[0], false, need_b))?;
            let mut out = vec![dx];
            if need.len() > 1 {
                out.push(db);
            }
            Ok(out)
        }),
    )
}

/// [`temporal_conv`] with a frozen half-precision weight (O, C, 3, 1, 1).
pub fn temporal_conv_half(x: &Var, w: &HalfTensor, bias: Option<&Var>) -> Result<Var> {
    as_conv3x1("temporal_conv_half", x, w.shape(), |x4, w4, geo| conv2d_half(x4, &w.reshape(w4)?, bias, geo))
}

/// VideoCrafter's temporal conv over (B, C, F, H, W) with weight (O, C, 3, 1, 1).
pub fn temporal_conv(x: &Var, w: &Var, bias: Option<&Var>) -> Result<Var> {
    as_conv3x1("temporal_conv", x, w.shape(), |x4, w4, geo| conv2d(x4, &reshape(w, w4)?, bias, geo))
}

/// A temporal conv of x (B, C, F, H, W) by a weight of shape `ws` (O, C, 3, 1, 1) as the
/// (3, 1) conv2d `conv` of x viewed (B, C, F, H*W) by the weight viewed `w4` = (O, C, 3, 1).
pub(crate) fn as_conv3x1(op: &'static str, x: &Var, ws: &[usize], conv: impl FnOnce(&Var, &[usize], Conv2d) -> Result<Var>) -> Result<Var> {
    let s = x.shape().to_vec();
    if s.len() != 5 || ws.len() != 5 || ws[2..] != [3, 1, 1] {
        return Err(Error::Shape { op, msg: format!("input {s:?} / weight {ws:?}") });
    }
    let o = ws[0];
    let x4 = reshape(x, &[s[0], s[1], s[2], s[3] * s[4]])?;
    let y = conv(&x4, &[o, s[1], 3, 1], Conv2d { stride: (1, 1), padding: (1, 1, 0, 0) })?;
    reshape(&y, &[s[0], o, s[2], s[3], s[4]])
}

// ---- normalisation ----------------------------------------------------------------------

/// Records a normalisation: `n` is the kernel's forward, `bw` its backward given
/// (x, gamma, beta, stats, dy). Gradients come back as [dx] or [dx, dgamma, dbeta], the
/// order of the inputs.
fn record_norm(
    x: &Var,
    gamma: Option<&Var>,
    beta: Option<&Var>,
    n: k::Norm,
    bw: impl FnOnce(&Tensor, Option<&Tensor>, Option<&Tensor>, &Tensor, &Tensor) -> Result<k::NormGrad> + Send + 'static,
) -> Result<Var> {
    let (xv, st) = (x.value.clone(), n.stats);
    let (gv, bv) = (gamma.map(|v| v.value.clone()), beta.map(|v| v.value.clone()));
    let mut inputs = vec![x];
    inputs.extend(gamma);
    inputs.extend(beta);
    record(
        n.y,
        &inputs,
        Box::new(move |g, _| {
            let r = bw(&xv, gv.as_ref(), bv.as_ref(), &st, g)?;
            let mut out = vec![Some(r.dx)];
            if gv.is_some() {
                out.extend([r.dgamma, r.dbeta]);
            }
            Ok(out)
        }),
    )
}

/// Layer norm over the last axis with optional weight and bias.
pub fn layer_norm(x: &Var, gamma: Option<&Var>, beta: Option<&Var>, eps: f32) -> Result<Var> {
    let n = k::layer_norm(&x.value, gamma.map(|v| &v.value), beta.map(|v| &v.value), eps)?;
    record_norm(x, gamma, beta, n, move |x, g, b, st, dy| k::layer_norm_backward(x, g, b, st, dy, eps))
}

/// Group norm of (N, C, ...) with optional per-channel weight/bias and fused SiLU.
pub fn group_norm(x: &Var, groups: usize, gamma: Option<&Var>, beta: Option<&Var>, eps: f32, silu: bool) -> Result<Var> {
    let n = k::group_norm(&x.value, groups, gamma.map(|v| &v.value), beta.map(|v| &v.value), eps, silu)?;
    record_norm(x, gamma, beta, n, move |x, g, b, st, dy| k::group_norm_backward(x, groups, g, b, st, dy, eps, silu))
}

// ---- attention --------------------------------------------------------------------------

/// softmax(scale q k^T) v with q (BH, Lq, D), k/v (BH/r, Lk, *): fused forward and backward.
pub fn attention(q: &Var, k: &Var, v: &Var, scale: f32) -> Result<Var> {
    attention_masked(q, k, v, scale, false)
}

/// [`attention`] with an optional causal mask (query i sees keys 0..=i).
pub fn attention_masked(q: &Var, k: &Var, v: &Var, scale: f32, causal: bool) -> Result<Var> {
    let a = k::attention_masked(&q.value, &k.value, &v.value, scale, false, causal)?;
    let (qv, kv, vv, ov, lse) = (q.value.clone(), k.value.clone(), v.value.clone(), a.out.clone(), a.lse);
    record(
        a.out,
        &[q, k, v],
        Box::new(move |g, need| {
            let (dq, dk, dv) = k::attention_backward(&qv, &kv, &vv, &ov, &lse, g, scale, causal, (need[0], need[1], need[2]))?;
            Ok(vec![dq, dk, dv])
        }),
    )
}

/// The attention probabilities softmax(scale q k^T), differentiable (motion guidance's
/// temporal attention maps).
pub fn attention_probs(q: &Var, k: &Var, scale: f32) -> Result<Var> {
    softmax_scaled(&matmul_ex(q, k, false, true, 1.0, None)?, scale)
}

// ---- embeddings -------------------------------------------------------------------------

/// Rows `ids` of `table` (V, D) -> (N, D); the table gets the summed row gradients.
pub fn embedding(table: &Var, ids: &[u32]) -> Result<Var> {
    let y = k::embedding(&table.value, ids)?;
    let (ids, vocab) = (ids.to_vec(), table.shape()[0]);
    record(y, &[table], Box::new(move |g, _| Ok(vec![Some(k::embedding_backward(g, &ids, vocab)?)])))
}

/// [`embedding`] of a table held as row chunks (`tables[0]` rows 0..V_0, `tables[1]` the
/// next V_1, ...; each (V_c, D)) — a table larger than one storage binding (CLIP's 49408 x
/// 1024 vocabulary on lavapipe's 128 MiB). Each chunk gathers the ids that fall in it, and
/// one more gather puts the rows back in the order of `ids`. A chunk gets its rows'
/// gradients; a chunk no id falls in, none.
pub fn embedding_chunked(tables: &[&Var], ids: &[u32]) -> Result<Var> {
    let Some(first) = tables.first() else { return Err(Error::Shape { op: "embedding_chunked", msg: "no table chunks".into() }) };
    if tables.len() == 1 || ids.is_empty() {
        return embedding(first, ids);
    }
    let d = first.shape().get(1).copied();
    if let Some(bad) = tables.iter().find(|t| t.shape().len() != 2 || t.shape().get(1).copied() != d) {
        return Err(Error::Shape { op: "embedding_chunked", msg: format!("chunks must be (V_c, {d:?}), got {:?}", bad.shape()) });
    }
    let total: usize = tables.iter().map(|t| t.shape()[0]).sum();
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= total) {
        return Err(Error::Shape { op: "embedding_chunked", msg: format!("id {bad} out of range for a table of {total} rows") });
    }
    // position p's row lands at inv[p] of the chunk-grouped rows
    let (mut parts, mut inv, mut start, mut at) = (Vec::new(), vec![0u32; ids.len()], 0u32, 0u32);
    for t in tables {
        let rows = t.shape()[0] as u32;
        let mine: Vec<usize> = (0..ids.len()).filter(|&p| (start..start + rows).contains(&ids[p])).collect();
        if !mine.is_empty() {
            parts.push(embedding(t, &mine.iter().map(|&p| ids[p] - start).collect::<Vec<_>>())?);
            for &p in &mine {
                inv[p] = at;
                at += 1;
            }
        }
        start += rows;
    }
    let grouped = match parts.as_slice() {
        [one] => one.clone(),
        _ => concat(&parts.iter().collect::<Vec<_>>(), 0)?,
    };
    embedding(&grouped, &inv)
}
