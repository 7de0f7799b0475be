//! Sum / mean / max / min along one axis (`shaders/reduce.wgsl`).

use bytemuck::{Pod, Zeroable};

use super::{axis, check_f32, fold_groups, launch};
use crate::shaders::REDUCE;
use crate::{DType, Result, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    _pad: u32,
}

/// Reduction kinds; codes match reduce.wgsl.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum = 0,
    Mean = 1,
    Max = 2,
    Min = 3,
}

/// Reduces dimension `ax` away: (..., n, ...) -> (..., ...).
pub fn reduce(x: &Tensor, ax: isize, kind: Reduce) -> Result<Tensor> {
    check_f32("reduce", &[x])?;
    let a = axis("reduce", x.shape(), ax)?;
    let s = x.shape();
    let (outer, len, inner) = (s[..a].iter().product::<usize>(), s[a], s[a + 1..].iter().product::<usize>());
    let mut out_shape = s.to_vec();
    out_shape.remove(a);
    let outputs = outer * inner;
    if outputs == 0 || len == 0 {
        // an empty axis sums to 0 (PyTorch's convention)
        return crate::ops::fill(x.gpu(), &out_shape, 0.0);
    }
    let y = Tensor::empty(x.gpu(), &out_shape, DType::F32, "reduce output")?;
    let gpu = x.gpu();
    let p = Params { outer: outer as u32, len: len as u32, inner: inner as u32, _pad: 0 };
    // Short axes or many outputs: a thread per output. Long axes: a workgroup per output.
    let (entry, wg, groups) = if len <= 64 || (outputs >= 4096 && len <= 4096) {
        ("reduce_thread", 64u32, fold_groups(gpu, outputs, 64))
    } else {
        let wg = (len.next_power_of_two() as u32).clamp(32, 256);
        ("reduce_wg", wg, fold_groups(gpu, outputs, 1))
    };
    launch(gpu, &REDUCE, entry, &[("OP", kind as u32 as f64), ("WG", wg as f64)], bytemuck::bytes_of(&p), &[x, &y], groups)?;
    Ok(y)
}

pub fn sum(x: &Tensor, ax: isize) -> Result<Tensor> {
    reduce(x, ax, Reduce::Sum)
}
pub fn mean(x: &Tensor, ax: isize) -> Result<Tensor> {
    reduce(x, ax, Reduce::Mean)
}
pub fn max(x: &Tensor, ax: isize) -> Result<Tensor> {
    reduce(x, ax, Reduce::Max)
}
pub fn min(x: &Tensor, ax: isize) -> Result<Tensor> {
    reduce(x, ax, Reduce::Min)
}
