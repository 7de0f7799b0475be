//! Softmax along the last axis (`shaders/softmax.wgsl`).

use bytemuck::{Pod, Zeroable};

use super::texture::launch_reading;
use super::{check_f32, fold_groups, launch, row_kernel};
use crate::error::shape_err;
use crate::shaders::SOFTMAX;
use crate::{DType, Result, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    len: u32,
    scale: f32,
    causal: u32,
}

/// softmax(scale * x) over the last axis.
pub fn softmax_scaled(x: &Tensor, scale: f32) -> Result<Tensor> {
    check_f32("softmax", &[x])?;
    if x.rank() == 0 {
        return shape_err("softmax", "needs at least one dimension");
    }
    let len = x.dim(-1);
    let rows = x.numel() / len.max(1);
    let y = Tensor::empty(x.gpu(), x.shape(), DType::F32, "softmax output")?;
    if x.numel() == 0 {
        return Ok(y);
    }
    let gpu = x.gpu();
    let p = Params { rows: rows as u32, len: len as u32, scale, causal: 0 };
    let (entry, wg, groups) = row_kernel(gpu, rows, len, 3, ["softmax_thread", "softmax_wg"]);
    row_launch(gpu, entry, wg, &p, &[x, &y], groups)?;
    Ok(y)
}

/// Launches a softmax row kernel; the thread-per-row ones read their input (the first
/// tensor) through a texture on CPU adapters (texture.rs).
fn row_launch(gpu: &crate::Gpu, entry: &'static str, wg: u32, p: &Params, tensors: &[&Tensor], groups: [u32; 3]) -> Result<()> {
    if !entry.contains("_thread") {
        return launch(gpu, &SOFTMAX, entry, &[("WG", wg as f64)], bytemuck::bytes_of(p), tensors, groups);
    }
    launch_reading(gpu, &SOFTMAX, entry, &[("WG", wg as f64)], bytemuck::bytes_of(p), 1, tensors, &[Some(tensors[0])], groups)
}

/// softmax(x) over the last axis.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    softmax_scaled(x, 1.0)
}

// In-place row kernels of attention over materialised scores (`attention.rs`). They
// overwrite their first argument, so callers pass only tensors they made and hold alone.
// `causal` = Lq of a causal mask over (BH, Lq, Lk) rows, 0 for none.

fn row_params(s: &Tensor, causal: usize) -> (Params, usize) {
    let len = s.dim(-1);
    let rows = s.numel() / len.max(1);
    (Params { rows: rows as u32, len: len as u32, scale: 1.0, causal: causal as u32 }, rows)
}

/// Threads of the one-workgroup-per-row kernels: enough to cover short rows once.
fn row_wg(len: u32) -> u32 {
    len.next_power_of_two().clamp(8, 256)
}

/// s <- softmax(s) along the last axis, in place; returns the log-sum-exp of each row
/// (shape `s.shape()[..rank - 1]`).
pub(crate) fn softmax_lse_in_place(s: &Tensor, causal: usize) -> Result<Tensor> {
    let (p, rows) = row_params(s, causal);
    let lse = Tensor::empty(s.gpu(), &s.shape()[..s.rank() - 1], DType::F32, "softmax lse")?;
    if s.numel() == 0 {
        return Ok(lse);
    }
    let gpu = s.gpu();
    let (mut entry, wg, groups) = row_kernel(gpu, rows, p.len as usize, 3, ["softmax_lse_thread", "softmax_lse_wg"]);
    if entry == "softmax_lse_thread" && p.len % 4 == 0 && causal == 0 {
        entry = "softmax_lse_thread4";
    }
    row_launch(gpu, entry, wg, &p, &[s, &lse], groups)?;
    Ok(lse)
}

/// s <- exp(s - lse[row]) in place (0 where the causal mask hides a key).
pub(crate) fn exp_sub_rows_in_place(s: &Tensor, lse: &Tensor, causal: usize) -> Result<()> {
    let (p, rows) = row_params(s, causal);
    if lse.numel() != rows {
        return shape_err("exp_sub_rows", format!("{} row values for {rows} rows of {:?}", lse.numel(), s.shape()));
    }
    let gpu = s.gpu();
    launch(gpu, &SOFTMAX, "exp_sub_rows", &[("WG", row_wg(p.len) as f64)], bytemuck::bytes_of(&p), &[s, lse], fold_groups(gpu, rows, 1))
}

/// dp <- p * (dp - d[row]) in place: the softmax backward dS from dP and D = rowsum(dO * O).
pub(crate) fn ds_rows_in_place(p: &Tensor, dp: &Tensor, d: &Tensor) -> Result<()> {
    let (params, rows) = row_params(dp, 0);
    if p.shape() != dp.shape() || d.numel() != rows {
        return shape_err("ds_rows", format!("p {:?}, dp {:?}, d {:?}", p.shape(), dp.shape(), d.shape()));
    }
    let gpu = p.gpu();
    launch(gpu, &SOFTMAX, "ds_rows", &[("WG", row_wg(params.len) as f64)], bytemuck::bytes_of(&params), &[p, d, dp], fold_groups(gpu, rows, 1))
}
