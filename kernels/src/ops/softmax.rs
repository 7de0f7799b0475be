//! Softmax along the last axis (`shaders/softmax.wgsl`).

use bytemuck::{Pod, Zeroable};

use super::{check_f32, fold_groups, launch};
use crate::error::shape_err;
use crate::shaders::SOFTMAX;
use crate::{DType, Result, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    len: u32,
    scale: f32,
    _pad: u32,
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
    let p = Params { rows: rows as u32, len: len as u32, scale, _pad: 0 };
    let (entry, wg, groups) = if len <= 128 {
        ("softmax_thread", 64u32, fold_groups(gpu, rows, 64))
    } else {
        let wg = (len.next_power_of_two() as u32).clamp(32, 256);
        ("softmax_wg", wg, fold_groups(gpu, rows, 1))
    };
    launch(gpu, &SOFTMAX, entry, &[("WG", wg as f64)], bytemuck::bytes_of(&p), &[x, &y], groups)?;
    Ok(y)
}

/// softmax(x) over the last axis.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    softmax_scaled(x, 1.0)
}
