//! Sum / mean / max / min along one axis (`shaders/reduce.wgsl`).

use bytemuck::{Pod, Zeroable};

use super::texture::launch_reading;
use super::{axis, barrier_free, check_f32, fold_groups, launch};
use crate::shaders::REDUCE;
use crate::{DType, Result, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    /// > 0: partial results over chunks of this length (reduce_thread only).
    chunk: u32,
}

/// Axis chunk of the barrier-free long-axis reduction: each thread reduces this many
/// elements, and the partial results are reduced again until one remains per output.
const CHUNK: usize = 64;

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
    let gpu = x.gpu();
    let short = len <= CHUNK || (outputs >= 4096 && len <= 4096);
    // Long axes on CPU adapters (or when barrier-free kernels are asked for): partial
    // results over chunks, then the same reduction of those (a mean sums, then scales).
    if !short && barrier_free(gpu) {
        let chunks = len.div_ceil(CHUNK);
        let partial_kind = if kind == Reduce::Mean { Reduce::Sum } else { kind };
        let partial = Tensor::empty(gpu, &[chunks, outer, inner], DType::F32, "reduce partials")?;
        let p = Params { outer: outer as u32, len: len as u32, inner: inner as u32, chunk: CHUNK as u32 };
        let groups = fold_groups(gpu, outputs * chunks, 64);
        launch_thread(gpu, partial_kind, &p, x, &partial, groups)?;
        let y = reduce(&partial, 0, partial_kind)?.reshape(&out_shape)?;
        return if kind == Reduce::Mean { crate::ops::scale(&y, 1.0 / len as f32) } else { Ok(y) };
    }
    let y = Tensor::empty(gpu, &out_shape, DType::F32, "reduce output")?;
    let p = Params { outer: outer as u32, len: len as u32, inner: inner as u32, chunk: 0 };
    // Short axes or many outputs: a thread per output. Long axes: a workgroup per output.
    let (entry, wg, groups) = if short {
        ("reduce_thread", 64u32, fold_groups(gpu, outputs, 64))
    } else {
        let wg = (len.next_power_of_two() as u32).clamp(32, 256);
        ("reduce_wg", wg, fold_groups(gpu, outputs, 1))
    };
    if short {
        launch_thread(gpu, kind, &p, x, &y, groups)?;
    } else {
        launch(gpu, &REDUCE, entry, &[("OP", kind as u32 as f64), ("WG", wg as f64)], bytemuck::bytes_of(&p), &[x, &y], groups)?;
    }
    Ok(y)
}

/// Records reduce_thread, x read through a texture on CPU adapters (texture.rs).
fn launch_thread(gpu: &crate::Gpu, kind: Reduce, p: &Params, x: &Tensor, y: &Tensor, groups: [u32; 3]) -> Result<()> {
    launch_reading(gpu, &REDUCE, "reduce_thread", &[("OP", kind as u32 as f64), ("WG", 64.0)], bytemuck::bytes_of(p), 1, &[x, y], &[Some(x)], groups)
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
