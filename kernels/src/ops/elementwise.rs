//! Unary math, broadcasting binary ops, fills, and the strided copy behind the layout ops
//! (`shaders/elementwise.wgsl`).

use bytemuck::{Pod, Zeroable};

use super::texture::launch_reading;
use super::{check_f32, fold_groups, launch};
use crate::error::shape_err;
use crate::shaders::ELEMENTWISE;
use crate::tensor::numel;
use crate::{DType, Gpu, Result, Tensor};

/// Highest rank the elementwise kernels address.
pub const MAX_RANK: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct EwParams {
    n: u32,
    rank: u32,
    flags: u32,
    x_off: u32,
    out_off: u32,
    alpha: f32,
    beta: f32,
    gamma: f32,
    shape: [u32; 8],
    xs: [u32; 8],
    bs: [u32; 8],
    os: [u32; 8],
}

/// Elements per thread of the strided `unary_runs` kernel (RUN in elementwise.wgsl), and the
/// shortest last dimension that takes it.
const STRIDED_RUN: usize = 32;
const STRIDED_RUN_MIN: usize = 4;
/// Last dimensions up to this length are copied by `unary_rows4`, STRIDED_ROWS rows per
/// thread (ROWS in elementwise.wgsl).
const SHORT_RUN_MAX: usize = 32;
const STRIDED_ROWS: usize = 8;

/// Unary ops; codes match `unary_op` in elementwise.wgsl.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Identity = 0,
    Neg = 1,
    Exp = 2,
    Log = 3,
    Sqrt = 4,
    Rsqrt = 5,
    Abs = 6,
    Sigmoid = 7,
    Tanh = 8,
    Relu = 9,
    Silu = 10,
    /// Exact GELU, x * Phi(x) (erf form; PyTorch's default).
    Gelu = 11,
    /// GELU, tanh approximation.
    GeluTanh = 12,
    /// x * sigmoid(1.702 x) (OpenAI CLIP).
    QuickGelu = 13,
    Square = 14,
    Recip = 15,
    Sin = 16,
    Cos = 17,
    /// x^gamma (see [`powf`]).
    Powf = 18,
}

/// Binary ops; codes match `binary_op` in elementwise.wgsl.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add = 0,
    Sub = 1,
    Mul = 2,
    Div = 3,
    Max = 4,
    Min = 5,
    Pow = 6,
    /// alpha * a + beta * b (see [`axpby`]).
    Axpby = 7,
    /// 1.0 where a == b, else 0.0.
    Eq = 8,
}

fn pad8(v: &[usize]) -> [u32; 8] {
    let mut o = [0u32; 8];
    for (i, x) in v.iter().enumerate() {
        o[i] = *x as u32;
    }
    o
}

fn is_contiguous(shape: &[usize], strides: &[usize]) -> bool {
    strides == contiguous(shape).as_slice()
}

pub(crate) fn contiguous(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// Merges dimensions that every operand walks as one (stride[d] == stride[d+1] * size[d+1]
/// in all of them) and drops size-1 dimensions: the same element order with fewer index
/// steps per element in the kernel (a 5-D permute often becomes 2-D or 3-D).
pub(crate) fn coalesce(shape: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_shape: Vec<usize> = Vec::with_capacity(shape.len());
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::with_capacity(shape.len()); strides.len()];
    for d in 0..shape.len() {
        if shape[d] == 1 {
            continue;
        }
        let mergeable = !out_shape.is_empty() && strides.iter().zip(&out_strides).all(|(s, o)| *o.last().expect("same length") == s[d] * shape[d]);
        if mergeable {
            *out_shape.last_mut().expect("non-empty") *= shape[d];
            for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                *o.last_mut().expect("non-empty") = s[d];
            }
        } else {
            out_shape.push(shape[d]);
            for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                o.push(s[d]);
            }
        }
    }
    if out_shape.is_empty() {
        out_shape.push(1);
        for o in out_strides.iter_mut() {
            o.push(1);
        }
    }
    (out_shape, out_strides)
}

/// A strided view used as a kernel operand: (offset, strides) over a logical shape.
pub(crate) struct View<'a> {
    pub t: &'a Tensor,
    pub offset: usize,
    pub strides: Vec<usize>,
}

impl<'a> View<'a> {
    pub fn whole(t: &'a Tensor) -> View<'a> {
        View { t, offset: 0, strides: contiguous(t.shape()) }
    }
}

/// The one strided-copy/unary dispatch: out_view = alpha * op(x_view) + beta over `shape`.
pub(crate) fn unary_into(
    op_name: &'static str,
    shape: &[usize],
    x: View,
    out: View,
    op: UnaryOp,
    alpha: f32,
    beta: f32,
    gamma: f32,
) -> Result<()> {
    if shape.len() > MAX_RANK {
        return shape_err(op_name, format!("rank {} exceeds {MAX_RANK}", shape.len()));
    }
    let n = numel(shape);
    if n == 0 {
        return Ok(());
    }
    let (cshape, cs) = coalesce(shape, &[&x.strides, &out.strides]);
    let mut flags = 2u32;
    if is_contiguous(&cshape, &cs[0]) {
        flags |= 1;
    }
    if is_contiguous(&cshape, &cs[1]) {
        flags |= 4;
    }
    let mut p = EwParams {
        n: n as u32,
        rank: cshape.len() as u32,
        flags,
        x_off: x.offset as u32,
        out_off: out.offset as u32,
        alpha,
        beta,
        gamma,
        shape: pad8(&cshape),
        xs: pad8(&cs[0]),
        bs: [0; 8],
        os: pad8(&cs[1]),
    };
    let gpu = x.t.gpu();
    // Whole contiguous tensors go 4 elements per thread; strided ones by runs along the
    // last dimension when that is long enough to pay for it, in vec4s where the layout
    // allows (see `vec4_layout`; short vec4 runs several rows per thread).
    let whole = flags == 7 && x.offset == 0 && out.offset == 0;
    let last = *cshape.last().expect("coalesce keeps one dimension");
    let (entry, threads) = if whole {
        ("unary4", n.div_ceil(4))
    } else if let Some(layout) = vec4_layout(&cshape, &cs[0], &cs[1], x.offset, out.offset) {
        let (entry, threads) = match layout {
            Vec4Layout::Runs if cshape.len() >= 2 && last <= SHORT_RUN_MAX => {
                let rows = cshape[cshape.len() - 2];
                ("unary_rows4", n / last / rows * rows.div_ceil(STRIDED_ROWS))
            }
            Vec4Layout::Runs => ("unary_runs4", n / last * last.div_ceil(STRIDED_RUN)),
            Vec4Layout::Transpose => ("unary_transpose4", n / 16),
        };
        p.n = threads as u32;
        (entry, threads)
    } else if flags != 7 && last >= STRIDED_RUN_MIN {
        p.n = (n / last * last.div_ceil(STRIDED_RUN)) as u32;
        ("unary_runs", p.n as usize)
    } else {
        ("unary", n)
    };
    launch_ew(gpu, entry, op as u32, &p, &[x.t], out.t, threads)
}

/// Records an elementwise entry over `threads` threads that reads `inputs` (x, then b)
/// and writes `out`; the inputs through textures on CPU adapters (texture.rs).
fn launch_ew(gpu: &Gpu, entry: &'static str, op: u32, p: &EwParams, inputs: &[&Tensor], out: &Tensor, threads: usize) -> Result<()> {
    let mut tensors = inputs.to_vec();
    tensors.push(out);
    let reads: Vec<_> = inputs.iter().map(|t| Some(*t)).collect();
    launch_reading(gpu, &ELEMENTWISE, entry, &[("OP", op as f64)], bytemuck::bytes_of(p), 1, &tensors, &reads, fold_groups(gpu, threads, 256))
}

/// Layouts the vec4 strided kernels take (elementwise.wgsl: unary_runs4, unary_transpose4).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Vec4Layout {
    /// The last dimension is contiguous in x and out.
    Runs,
    /// The last two dimensions (R, C) are transposed: x contiguous along R, out along C.
    Transpose,
}

/// Which vec4 kernel copies a coalesced view (shape, x strides xs, out strides os), if
/// any: every offset and every stride but the unit ones must be a multiple of 4, and so
/// must the dimensions read or written as vec4s.
fn vec4_layout(shape: &[usize], xs: &[usize], os: &[usize], x_off: usize, o_off: usize) -> Option<Vec4Layout> {
    let r = shape.len();
    let m4 = |v: usize| v % 4 == 0;
    if !m4(x_off) || !m4(o_off) || !m4(shape[r - 1]) {
        return None;
    }
    let all4 = |s: &[usize], skip: usize| s.iter().enumerate().all(|(d, &v)| d == skip || m4(v));
    if xs[r - 1] == 1 && os[r - 1] == 1 && all4(&xs[..r - 1], r) && all4(&os[..r - 1], r) {
        return Some(Vec4Layout::Runs);
    }
    if r >= 2 && m4(shape[r - 2]) && xs[r - 2] == 1 && os[r - 1] == 1 && all4(xs, r - 2) && all4(os, r - 1) {
        return Some(Vec4Layout::Transpose);
    }
    None
}

/// y = alpha * op(x) + beta, elementwise.
pub fn unary_affine(x: &Tensor, op: UnaryOp, alpha: f32, beta: f32) -> Result<Tensor> {
    check_f32("unary", &[x])?;
    let y = Tensor::empty(x.gpu(), x.shape(), DType::F32, "unary output")?;
    unary_into("unary", x.shape(), View::whole(x), View::whole(&y), op, alpha, beta, 1.0)?;
    Ok(y)
}

/// dx = alpha * dy * op'(x) for `y = alpha * op(x) + beta` (the backward of
/// [`unary_affine`] and [`powf`]); `gamma` is the exponent of [`UnaryOp::Powf`].
pub fn unary_grad(x: &Tensor, dy: &Tensor, op: UnaryOp, alpha: f32, gamma: f32) -> Result<Tensor> {
    check_f32("unary_grad", &[x, dy])?;
    if x.shape() != dy.shape() {
        return shape_err("unary_grad", format!("x {:?} and dy {:?} differ", x.shape(), dy.shape()));
    }
    let n = x.numel();
    let y = Tensor::empty(x.gpu(), x.shape(), DType::F32, "unary_grad output")?;
    if n == 0 {
        return Ok(y);
    }
    let p = EwParams { n: n as u32, flags: 7, alpha, gamma, ..Zeroable::zeroed() };
    let gpu = x.gpu();
    launch_ew(gpu, "unary_grad", op as u32, &p, &[x, dy], &y, n)?;
    Ok(y)
}

/// Gated activation over the last dimension (GEGLU with [`UnaryOp::Gelu`], SwiGLU with
/// [`UnaryOp::Silu`]): x (..., 2H) -> (..., H), `value * op(gate)` with the value the first
/// half of each row and the gate the second (`torch.chunk(2, -1)`'s order). One pass
/// instead of two slices, the activation and a product.
pub fn gated(x: &Tensor, op: UnaryOp) -> Result<Tensor> {
    let (rows, h) = gated_shape("gated", x)?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("rank >= 1") = h;
    let y = Tensor::empty(x.gpu(), &shape, DType::F32, "gated output")?;
    launch_gated(x, None, &y, op, rows, h)?;
    Ok(y)
}

/// The gradient of [`gated`] with respect to x for the output gradient `dy`.
pub fn gated_grad(x: &Tensor, dy: &Tensor, op: UnaryOp) -> Result<Tensor> {
    let (rows, h) = gated_shape("gated_grad", x)?;
    check_f32("gated_grad", &[dy])?;
    let r = x.rank();
    if dy.shape()[..] != [&x.shape()[..r - 1], &[h]].concat()[..] {
        return shape_err("gated_grad", format!("dy {:?} must be x {:?} with half the last dimension", dy.shape(), x.shape()));
    }
    let dx = Tensor::empty(x.gpu(), x.shape(), DType::F32, "gated_grad output")?;
    launch_gated(x, Some(dy), &dx, op, rows, h)?;
    Ok(dx)
}

/// (rows, H) of a gated activation's input (..., 2H).
fn gated_shape(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    check_f32(op, &[x])?;
    match x.shape().last() {
        Some(&last) if last % 2 == 0 => Ok((x.numel() / last.max(1), last / 2)),
        _ => shape_err(op, format!("x {:?} needs an even last dimension (value and gate halves)", x.shape())),
    }
}

/// Forward (`dy` None: x -> out) or backward (x, dy -> out) of the gated activation,
/// in vec4s when H % 4 == 0.
fn launch_gated(x: &Tensor, dy: Option<&Tensor>, out: &Tensor, op: UnaryOp, rows: usize, h: usize) -> Result<()> {
    let n = rows * h;
    if n == 0 {
        return Ok(());
    }
    let vec4 = h % 4 == 0;
    let threads = if vec4 { n / 4 } else { n };
    let entry = match (dy.is_some(), vec4) {
        (false, false) => "gated",
        (false, true) => "gated4",
        (true, false) => "gated_grad",
        (true, true) => "gated_grad4",
    };
    let mut shape = [0u32; 8];
    shape[0] = h as u32;
    let p = EwParams { n: threads as u32, flags: 7, shape, ..Zeroable::zeroed() };
    let inputs: Vec<&Tensor> = std::iter::once(x).chain(dy).collect();
    launch_ew(x.gpu(), entry, op as u32, &p, &inputs, out, threads)
}

/// y = op(x), elementwise.
pub fn unary(x: &Tensor, op: UnaryOp) -> Result<Tensor> {
    unary_affine(x, op, 1.0, 0.0)
}

macro_rules! unary_fns {
    ($($(#[$doc:meta])* $name:ident => $op:ident),* $(,)?) => {
        $( $(#[$doc])* pub fn $name(x: &Tensor) -> Result<Tensor> { unary(x, UnaryOp::$op) } )*
    };
}
unary_fns! {
    neg => Neg, exp => Exp, log => Log, sqrt => Sqrt, rsqrt => Rsqrt, abs => Abs,
    sigmoid => Sigmoid, tanh => Tanh, relu => Relu, silu => Silu,
    /// Exact (erf) GELU.
    gelu => Gelu,
    gelu_tanh => GeluTanh, quick_gelu => QuickGelu, square => Square, recip => Recip,
    sin => Sin, cos => Cos,
}

/// x * s.
pub fn scale(x: &Tensor, s: f32) -> Result<Tensor> {
    unary_affine(x, UnaryOp::Identity, s, 0.0)
}

/// x * s + b.
pub fn affine(x: &Tensor, s: f32, b: f32) -> Result<Tensor> {
    unary_affine(x, UnaryOp::Identity, s, b)
}

/// x^g (x > 0; NaN elsewhere, like C's powf).
pub fn powf(x: &Tensor, g: f32) -> Result<Tensor> {
    check_f32("powf", &[x])?;
    let y = Tensor::empty(x.gpu(), x.shape(), DType::F32, "powf output")?;
    unary_into("powf", x.shape(), View::whole(x), View::whole(&y), UnaryOp::Powf, 1.0, 0.0, g)?;
    Ok(y)
}

/// A tensor of `shape` filled with `value`.
pub fn fill(gpu: &Gpu, shape: &[usize], value: f32) -> Result<Tensor> {
    let y = Tensor::empty(gpu, shape, DType::F32, "fill")?;
    let n = numel(shape);
    if n > 0 {
        let p = EwParams { n: n as u32, alpha: value, ..Zeroable::zeroed() };
        launch(gpu, &ELEMENTWISE, "fill", &[], bytemuck::bytes_of(&p), &[&y], fold_groups(gpu, n, 256))?;
    }
    Ok(y)
}

/// The NumPy broadcast of two shapes.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
        let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return shape_err(op, format!("shapes {a:?} and {b:?} do not broadcast")),
        };
    }
    Ok(out)
}

/// Strides that read `shape` as if broadcast to `out` (0 on broadcast dimensions).
pub(crate) fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let cs = contiguous(shape);
    let off = out.len() - shape.len();
    (0..out.len())
        .map(|i| if i < off || shape[i - off] == 1 && out[i] != 1 { 0 } else { cs[i - off] })
        .collect()
}

fn binary_impl(op_name: &'static str, a: &Tensor, b: &Tensor, op: BinaryOp, alpha: f32, beta: f32) -> Result<Tensor> {
    check_f32(op_name, &[a, b])?;
    let shape = broadcast_shapes(op_name, a.shape(), b.shape())?;
    if shape.len() > MAX_RANK {
        return shape_err(op_name, format!("rank {} exceeds {MAX_RANK}", shape.len()));
    }
    let y = Tensor::empty(a.gpu(), &shape, DType::F32, "binary output")?;
    let n = numel(&shape);
    if n == 0 {
        return Ok(y);
    }
    let (xs, bs, os) = (broadcast_strides(a.shape(), &shape), broadcast_strides(b.shape(), &shape), contiguous(&shape));
    let (cshape, cs) = coalesce(&shape, &[&xs, &bs, &os]);
    let flags = is_contiguous(&cshape, &cs[0]) as u32 | (is_contiguous(&cshape, &cs[1]) as u32) << 1 | 4;
    let p = EwParams {
        n: n as u32,
        rank: cshape.len() as u32,
        flags,
        x_off: 0,
        out_off: 0,
        alpha,
        beta,
        gamma: 0.0,
        shape: pad8(&cshape),
        xs: pad8(&cs[0]),
        bs: pad8(&cs[1]),
        os: pad8(&cs[2]),
    };
    let gpu = a.gpu();
    let (entry, threads) = if flags == 7 { ("binary4", n.div_ceil(4)) } else { ("binary", n) };
    launch_ew(gpu, entry, op as u32, &p, &[a, b], &y, threads)?;
    Ok(y)
}

/// acc += b in place (same number of elements). `acc` must not share its buffer with a
/// tensor that is read later (e.g. a gradient accumulator the caller owns alone).
pub fn add_assign(acc: &Tensor, b: &Tensor) -> Result<()> {
    axpby_assign(acc, 1.0, b, 1.0)
}

/// acc = alpha * acc + beta * b in place (same number of elements; e.g. an exponential
/// moving average), with [`add_assign`]'s caveat.
pub fn axpby_assign(acc: &Tensor, alpha: f32, b: &Tensor, beta: f32) -> Result<()> {
    check_f32("add_assign", &[acc, b])?;
    if acc.numel() != b.numel() {
        return shape_err("add_assign", format!("{:?} += {:?}: sizes differ", acc.shape(), b.shape()));
    }
    let n = acc.numel();
    if n == 0 {
        return Ok(());
    }
    let p = EwParams { n: n as u32, rank: 1, flags: 7, x_off: 0, out_off: 0, alpha, beta, gamma: 0.0, shape: pad8(&[n]), xs: pad8(&[1]), bs: pad8(&[1]), os: pad8(&[1]) };
    let gpu = acc.gpu();
    super::launch_at(gpu, &ELEMENTWISE, "add_assign4", &[], bytemuck::bytes_of(&p), 4, &[acc, b], fold_groups(gpu, n.div_ceil(4), 256))
}

/// op(a, b) with NumPy broadcasting.
pub fn binary(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    binary_impl("binary", a, b, op, 1.0, 1.0)
}

/// alpha * a + beta * b with broadcasting (e.g. classifier-free guidance in one kernel).
pub fn axpby(a: &Tensor, alpha: f32, b: &Tensor, beta: f32) -> Result<Tensor> {
    binary_impl("axpby", a, b, BinaryOp::Axpby, alpha, beta)
}

macro_rules! binary_fns {
    ($($name:ident => $op:ident),* $(,)?) => {
        $( pub fn $name(a: &Tensor, b: &Tensor) -> Result<Tensor> { binary_impl(stringify!($name), a, b, BinaryOp::$op, 1.0, 1.0) } )*
    };
}
binary_fns! { add => Add, sub => Sub, mul => Mul, div => Div, maximum => Max, minimum => Min, pow => Pow, eq => Eq }
