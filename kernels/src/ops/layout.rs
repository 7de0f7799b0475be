//! Layout ops, all through the strided copy of elementwise.wgsl: permute, transpose,
//! slice and its transpose, concat, broadcast, nearest 2x upsampling.

use super::elementwise::{broadcast_strides, contiguous, unary_into, UnaryOp, View, MAX_RANK};
use super::{axis, check_f32};
use crate::error::shape_err;
use crate::{DType, Result, Tensor};

/// Row-major strides of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    contiguous(shape)
}

fn copy(op: &'static str, shape: &[usize], x: View, out: View) -> Result<()> {
    unary_into(op, shape, x, out, UnaryOp::Identity, 1.0, 0.0, 1.0)
}

/// Reorders dimensions: `out.shape[i] = x.shape[perm[i]]`.
pub fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    check_f32("permute", &[x])?;
    let r = x.rank();
    let mut seen = vec![false; r];
    if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
        return shape_err("permute", format!("{perm:?} is not a permutation of the {r} dims of {:?}", x.shape()));
    }
    let xs = contiguous(x.shape());
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let strides: Vec<usize> = perm.iter().map(|&p| xs[p]).collect();
    let y = Tensor::empty(x.gpu(), &shape, DType::F32, "permute output")?;
    copy("permute", &shape, View { t: x, offset: 0, strides }, View::whole(&y))?;
    Ok(y)
}

/// Swaps two dimensions.
pub fn transpose(x: &Tensor, d0: isize, d1: isize) -> Result<Tensor> {
    let (a, b) = (axis("transpose", x.shape(), d0)?, axis("transpose", x.shape(), d1)?);
    let mut perm: Vec<usize> = (0..x.rank()).collect();
    perm.swap(a, b);
    permute(x, &perm)
}

/// `len` entries of dimension `ax` from `start`.
pub fn slice(x: &Tensor, ax: isize, start: usize, len: usize) -> Result<Tensor> {
    check_f32("slice", &[x])?;
    let a = axis("slice", x.shape(), ax)?;
    if start + len > x.shape()[a] {
        return shape_err("slice", format!("[{start}, {}) exceeds dim {a} of {:?}", start + len, x.shape()));
    }
    let mut shape = x.shape().to_vec();
    shape[a] = len;
    let xs = contiguous(x.shape());
    let y = Tensor::empty(x.gpu(), &shape, DType::F32, "slice output")?;
    copy("slice", &shape, View { t: x, offset: start * xs[a], strides: xs }, View::whole(&y))?;
    Ok(y)
}

/// The transpose of [`slice`](fn@slice): a zero tensor of `shape` with `x` written at
/// `[start, start + len)` of axis `ax` (the gradient of a slice; one allocation).
pub fn unslice(x: &Tensor, shape: &[usize], ax: isize, start: usize) -> Result<Tensor> {
    check_f32("unslice", &[x])?;
    let a = axis("unslice", shape, ax)?;
    let fits = x.rank() == shape.len() && x.shape().iter().zip(shape).enumerate().all(|(d, (p, q))| if d == a { start + p <= *q } else { p == q });
    if !fits {
        return shape_err("unslice", format!("{:?} at {start} of axis {a} does not fit in {shape:?}", x.shape()));
    }
    let y = super::fill(x.gpu(), shape, 0.0)?;
    let ys = contiguous(shape);
    copy("unslice", x.shape(), View::whole(x), View { t: &y, offset: start * ys[a], strides: ys })?;
    Ok(y)
}

/// Joins tensors along `ax`; all other dimensions must agree.
pub fn concat(xs: &[&Tensor], ax: isize) -> Result<Tensor> {
    let Some(first) = xs.first() else {
        return shape_err("concat", "no tensors to concatenate");
    };
    check_f32("concat", xs)?;
    let a = axis("concat", first.shape(), ax)?;
    for t in xs {
        let same = t.rank() == first.rank()
            && t.shape().iter().zip(first.shape()).enumerate().all(|(d, (p, q))| d == a || p == q);
        if !same {
            return shape_err("concat", format!("{:?} and {:?} differ outside axis {a}", first.shape(), t.shape()));
        }
    }
    let mut shape = first.shape().to_vec();
    shape[a] = xs.iter().map(|t| t.shape()[a]).sum();
    let y = Tensor::empty(first.gpu(), &shape, DType::F32, "concat output")?;
    let os = contiguous(&shape);
    let mut at = 0;
    for t in xs {
        copy("concat", t.shape(), View::whole(t), View { t: &y, offset: at * os[a], strides: os.clone() })?;
        at += t.shape()[a];
    }
    Ok(y)
}

/// Materialises `x` broadcast (NumPy rules) to `shape`.
pub fn broadcast_to(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    check_f32("broadcast_to", &[x])?;
    let b = super::elementwise::broadcast_shapes("broadcast_to", x.shape(), shape)?;
    if b != shape {
        return shape_err("broadcast_to", format!("{:?} does not broadcast to {shape:?}", x.shape()));
    }
    let y = Tensor::empty(x.gpu(), shape, DType::F32, "broadcast output")?;
    copy("broadcast_to", shape, View { t: x, offset: 0, strides: broadcast_strides(x.shape(), shape) }, View::whole(&y))?;
    Ok(y)
}

/// Nearest-neighbour 2x upsampling of the last two dims: (..., H, W) -> (..., 2H, 2W).
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    check_f32("upsample_nearest2x", &[x])?;
    if x.rank() < 2 || x.rank() + 2 > MAX_RANK + 1 {
        return shape_err("upsample_nearest2x", format!("needs (..., H, W) of rank 2..7, got {:?}", x.shape()));
    }
    let r = x.rank();
    let (h, w) = (x.shape()[r - 2], x.shape()[r - 1]);
    let lead: usize = x.shape()[..r - 2].iter().product();
    // Output viewed as (lead, H, 2, W, 2) reads input (lead, H, W) with stride 0 on the 2s.
    let view = [lead, h, 2, w, 2];
    let strides = vec![h * w, w, 0, 1, 0];
    let mut shape = x.shape().to_vec();
    shape[r - 2] *= 2;
    shape[r - 1] *= 2;
    let y = Tensor::empty(x.gpu(), &shape, DType::F32, "upsample output")?;
    copy("upsample_nearest2x", &view, View { t: x, offset: 0, strides }, View { t: &y, offset: 0, strides: contiguous(&view) })?;
    Ok(y)
}
