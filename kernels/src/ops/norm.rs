//! Layer norm and group norm (optionally fused with SiLU) — one kernel, `shaders/norm.wgsl`.

use bytemuck::{Pod, Zeroable};

use super::texture::launch_reading;
use super::{check_f32, fold_groups, launch, row_kernel, thread_per_row};
use crate::error::shape_err;
use crate::shaders::NORM;
use crate::{DType, Result, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    len: u32,
    groups: u32,
    cpg: u32,
    inner: u32,
    eps: f32,
    affine: u32,
    /// Elements of a channel per invocation of norm_affine_bwd.
    slice: u32,
}

/// How a tensor is cut into normalised rows (see norm.wgsl): `rows` rows of `len`
/// elements; the affine channel of element j of row r is (r % groups) * cpg + j / inner.
/// As a whole the tensor is (outer, channels, inner), which is how the per-channel
/// weight/bias gradients are summed.
#[derive(Clone, Copy, Debug)]
struct Rows {
    rows: usize,
    len: usize,
    groups: usize,
    cpg: usize,
    inner: usize,
    outer: usize,
    channels: usize,
}

impl Rows {
    /// Layer norm over the last axis D: rows of D, channel j.
    fn layer(op: &'static str, x: &Tensor) -> Result<Rows> {
        check_f32(op, &[x])?;
        if x.rank() == 0 {
            return shape_err(op, "needs at least one dimension");
        }
        let d = x.dim(-1);
        let rows = x.numel() / d.max(1);
        Ok(Rows { rows, len: d, groups: 1, cpg: 0, inner: 1, outer: rows, channels: d })
    }

    /// Group norm of (N, C, ...) with G groups: rows of (C/G) * S, S = product of the rest.
    fn group(op: &'static str, x: &Tensor, groups: usize) -> Result<Rows> {
        check_f32(op, &[x])?;
        if x.rank() < 2 {
            return shape_err(op, format!("needs (N, C, ...), got {:?}", x.shape()));
        }
        let (n, c) = (x.shape()[0], x.shape()[1]);
        if groups == 0 || c % groups != 0 {
            return shape_err(op, format!("{c} channels do not split into {groups} groups"));
        }
        let s: usize = x.shape()[2..].iter().product();
        let cpg = c / groups;
        Ok(Rows { rows: n * groups, len: cpg * s, groups, cpg, inner: s, outer: n, channels: c })
    }

    fn params(&self, eps: f32, affine: bool) -> Params {
        let u = |v: usize| v as u32;
        Params { rows: u(self.rows), len: u(self.len), groups: u(self.groups), cpg: u(self.cpg), inner: u(self.inner), eps, affine: affine as u32, slice: 0 }
    }

    fn workgroup(&self) -> u32 {
        let per_thread = if self.len % 4 == 0 { self.len / 4 } else { self.len };
        (per_thread.next_power_of_two() as u32).clamp(32, 256)
    }
}

/// A normalisation result: the output and per-row (mean, rstd), shape (rows, 2).
#[derive(Debug)]
pub struct Norm {
    pub y: Tensor,
    pub stats: Tensor,
}

/// Gradients of a normalisation: input, and weight/bias when it has them.
#[derive(Debug)]
pub struct NormGrad {
    pub dx: Tensor,
    pub dgamma: Option<Tensor>,
    pub dbeta: Option<Tensor>,
}

fn check_affine<'a>(op: &'static str, r: &Rows, gamma: Option<&'a Tensor>, beta: Option<&'a Tensor>) -> Result<Option<(&'a Tensor, &'a Tensor)>> {
    let n = r.channels;
    match (gamma, beta) {
        (None, None) => Ok(None),
        (Some(g), Some(b)) => {
            check_f32(op, &[g, b])?;
            if g.shape() != [n] || b.shape() != [n] {
                return shape_err(op, format!("weight {:?} and bias {:?} must both be [{n}]", g.shape(), b.shape()));
            }
            Ok(Some((g, b)))
        }
        _ => shape_err(op, "give both weight and bias, or neither"),
    }
}

fn forward(x: &Tensor, r: Rows, affine: Option<(&Tensor, &Tensor)>, eps: f32, silu: bool) -> Result<Norm> {
    let gpu = x.gpu();
    let y = Tensor::empty(gpu, x.shape(), DType::F32, "norm output")?;
    let stats = Tensor::empty(gpu, &[r.rows, 2], DType::F32, "norm stats")?;
    if r.rows == 0 || r.len == 0 {
        return Ok(Norm { y, stats });
    }
    let (g, b) = affine.unwrap_or((x, x)); // unread when affine == 0
    let (entry, wg, groups) = match r.len % 4 == 0 {
        true if thread_per_row(gpu, r.rows, r.len, 3 * r.len / 4) => ("norm_thread4", 64, fold_groups(gpu, r.rows, 64)),
        true => ("norm_rows4", r.workgroup(), fold_groups(gpu, r.rows, 1)),
        false => ("norm_rows", r.workgroup(), fold_groups(gpu, r.rows, 1)),
    };
    let params = r.params(eps, affine.is_some());
    let params = bytemuck::bytes_of(&params);
    let constants = [("WG", wg as f64), ("ACT", silu as u32 as f64)];
    if entry == "norm_rows" {
        launch(gpu, &NORM, entry, &constants, params, &[x, g, b, &y, &stats], groups)?;
    } else {
        // x, gamma and beta through textures on CPU adapters (texture.rs)
        launch_reading(gpu, &NORM, entry, &constants, params, 1, &[x, g, b, &y, &stats], &[Some(x), affine.map(|a| a.0), affine.map(|a| a.1)], groups)?;
    }
    Ok(Norm { y, stats })
}

/// dx and, with affine, dgamma/dbeta from the forward's saved stats.
fn backward(x: &Tensor, r: Rows, affine: Option<(&Tensor, &Tensor)>, stats: &Tensor, dy: &Tensor, eps: f32, silu: bool) -> Result<NormGrad> {
    check_f32("norm backward", &[x, stats, dy])?;
    if dy.shape() != x.shape() || stats.shape() != [r.rows, 2] {
        return shape_err("norm backward", format!("dy {:?} / stats {:?} do not match x {:?}", dy.shape(), stats.shape(), x.shape()));
    }
    let gpu = x.gpu();
    let dx = Tensor::empty(gpu, x.shape(), DType::F32, "norm dx")?;
    if r.rows > 0 && r.len > 0 {
        let (g, b) = affine.unwrap_or((x, x));
        let (entry, wg, groups) = row_kernel(gpu, r.rows, r.len, 2, ["norm_bwd_thread", "norm_bwd"]);
        let constants = [("WG", wg as f64), ("ACT", silu as u32 as f64)];
        let reads = [Some(x), affine.map(|a| a.0), affine.map(|a| a.1), Some(dy)];
        launch_reading(gpu, &NORM, entry, &constants, bytemuck::bytes_of(&r.params(eps, affine.is_some())), 1, &[x, g, b, &dx, stats, dy], &reads, groups)?;
    }
    let (dgamma, dbeta) = match affine {
        Some((g, b)) => {
            let (dg, db) = affine_grads(x, r, (g, b), stats, dy, eps, silu)?;
            (Some(dg), Some(db))
        }
        None => (None, None),
    };
    Ok(NormGrad { dx, dgamma, dbeta })
}

/// Elements of a channel one invocation of norm_affine_bwd sums: within llvmpipe's loop
/// budget on CPU adapters (fewer, longer sums: no second pass for the tiny models' norms);
/// 4096 elsewhere, so that big tensors spread over many invocations.
fn affine_slice(gpu: &crate::Gpu) -> usize {
    gpu.loop_limit().map_or(4096, |l| l as usize)
}

/// (dgamma, dbeta) of an affine normalisation: norm_affine_bwd's partial sums per slice of
/// each channel, added up when a channel spans several slices.
fn affine_grads(x: &Tensor, r: Rows, (g, b): (&Tensor, &Tensor), stats: &Tensor, dy: &Tensor, eps: f32, silu: bool) -> Result<(Tensor, Tensor)> {
    let gpu = x.gpu();
    let total = r.outer * r.inner;
    if total == 0 {
        return Ok((super::fill(gpu, &[r.channels], 0.0)?, super::fill(gpu, &[r.channels], 0.0)?));
    }
    let per = affine_slice(gpu).min(total);
    let slices = total.div_ceil(per);
    let shape = [slices, r.channels];
    let (dg, db) = (Tensor::empty(gpu, &shape, DType::F32, "norm dgamma")?, Tensor::empty(gpu, &shape, DType::F32, "norm dbeta")?);
    let p = Params { slice: per as u32, ..r.params(eps, true) };
    let reads = [Some(x), Some(g), Some(b), Some(dy)];
    let groups = fold_groups(gpu, slices * r.channels, 64);
    launch_reading(gpu, &NORM, "norm_affine_bwd", &[("ACT", silu as u32 as f64)], bytemuck::bytes_of(&p), 1, &[x, g, b, &dg, stats, dy, &db], &reads, groups)?;
    if slices == 1 {
        return Ok((dg.reshape(&[r.channels])?, db.reshape(&[r.channels])?));
    }
    Ok((super::sum(&dg, 0)?, super::sum(&db, 0)?))
}

/// Layer norm over the last axis with optional weight/bias of shape `[D]`.
pub fn layer_norm(x: &Tensor, gamma: Option<&Tensor>, beta: Option<&Tensor>, eps: f32) -> Result<Norm> {
    let r = Rows::layer("layer_norm", x)?;
    forward(x, r, check_affine("layer_norm", &r, gamma, beta)?, eps, false)
}

/// Group norm of x (N, C, ...) with `groups` groups over C and everything after it, with
/// optional per-channel weight/bias `[C]`; `silu` fuses SiLU on the output.
pub fn group_norm(x: &Tensor, groups: usize, gamma: Option<&Tensor>, beta: Option<&Tensor>, eps: f32, silu: bool) -> Result<Norm> {
    let r = Rows::group("group_norm", x, groups)?;
    forward(x, r, check_affine("group_norm", &r, gamma, beta)?, eps, silu)
}

/// Backward of [`layer_norm`] from its saved stats.
pub fn layer_norm_backward(x: &Tensor, gamma: Option<&Tensor>, beta: Option<&Tensor>, stats: &Tensor, dy: &Tensor, eps: f32) -> Result<NormGrad> {
    let r = Rows::layer("layer_norm_backward", x)?;
    backward(x, r, check_affine("layer_norm_backward", &r, gamma, beta)?, stats, dy, eps, false)
}

/// Backward of [`group_norm`] (with its `silu` flag) from its saved stats.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward(
    x: &Tensor,
    groups: usize,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    stats: &Tensor,
    dy: &Tensor,
    eps: f32,
    silu: bool,
) -> Result<NormGrad> {
    let r = Rows::group("group_norm_backward", x, groups)?;
    backward(x, r, check_affine("group_norm_backward", &r, gamma, beta)?, stats, dy, eps, silu)
}
