//! Layer norm and group norm (optionally fused with SiLU) — one kernel, `shaders/norm.wgsl`.

use bytemuck::{Pod, Zeroable};

use super::{check_f32, fold_groups, launch};
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
    _pad: u32,
}

impl Params {
    #[allow(clippy::too_many_arguments)]
    fn new(rows: usize, len: usize, groups: usize, cpg: usize, inner: usize, eps: f32, affine: bool) -> Params {
        let u = |v: usize| v as u32;
        Params { rows: u(rows), len: u(len), groups: u(groups), cpg: u(cpg), inner: u(inner), eps, affine: affine as u32, _pad: 0 }
    }
}

/// A normalisation result: the output and per-row (mean, rstd), shape (rows, 2).
#[derive(Debug)]
pub struct Norm {
    pub y: Tensor,
    pub stats: Tensor,
}

#[allow(clippy::too_many_arguments)]
fn norm_rows(
    x: &Tensor,
    rows: usize,
    len: usize,
    groups: usize,
    cpg: usize,
    inner: usize,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f32,
    silu: bool,
) -> Result<Norm> {
    let gpu = x.gpu();
    let y = Tensor::empty(gpu, x.shape(), DType::F32, "norm output")?;
    let stats = Tensor::empty(gpu, &[rows, 2], DType::F32, "norm stats")?;
    if rows == 0 || len == 0 {
        return Ok(Norm { y, stats });
    }
    let p = Params::new(rows, len, groups, cpg, inner, eps, affine.is_some());
    let (g, b) = affine.unwrap_or((x, x)); // unread when affine == 0
    let vec4 = len % 4 == 0;
    let per_thread = if vec4 { len / 4 } else { len };
    let wg = (per_thread.next_power_of_two() as u32).clamp(32, 256);
    launch(
        gpu,
        &NORM,
        if vec4 { "norm_rows4" } else { "norm_rows" },
        &[("WG", wg as f64), ("ACT", silu as u32 as f64)],
        bytemuck::bytes_of(&p),
        &[x, g, b, &y, &stats],
        fold_groups(gpu, rows, 1),
    )?;
    Ok(Norm { y, stats })
}

fn check_affine(op: &'static str, x: &Tensor, gamma: Option<&Tensor>, beta: Option<&Tensor>, n: usize) -> Result<Option<(Tensor, Tensor)>> {
    match (gamma, beta) {
        (None, None) => Ok(None),
        (Some(g), Some(b)) => {
            check_f32(op, &[x, g, b])?;
            if g.shape() != [n] || b.shape() != [n] {
                return shape_err(op, format!("weight {:?} and bias {:?} must both be [{n}]", g.shape(), b.shape()));
            }
            Ok(Some((g.clone(), b.clone())))
        }
        _ => shape_err(op, "give both weight and bias, or neither"),
    }
}

/// Layer norm over the last axis with optional weight/bias of shape [D].
pub fn layer_norm(x: &Tensor, gamma: Option<&Tensor>, beta: Option<&Tensor>, eps: f32) -> Result<Norm> {
    check_f32("layer_norm", &[x])?;
    if x.rank() == 0 {
        return shape_err("layer_norm", "needs at least one dimension");
    }
    let d = x.dim(-1);
    let aff = check_affine("layer_norm", x, gamma, beta, d)?;
    let rows = x.numel() / d.max(1);
    norm_rows(x, rows, d, 1, 0, 1, aff.as_ref().map(|(g, b)| (g, b)), eps, false)
}

/// Group norm of x (N, C, ...) with `groups` groups over C and everything after it, with
/// optional per-channel weight/bias [C]; `silu` fuses SiLU on the output.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
    silu: bool,
) -> Result<Norm> {
    check_f32("group_norm", &[x])?;
    if x.rank() < 2 {
        return shape_err("group_norm", format!("needs (N, C, ...), got {:?}", x.shape()));
    }
    let (n, c) = (x.shape()[0], x.shape()[1]);
    if groups == 0 || c % groups != 0 {
        return shape_err("group_norm", format!("{c} channels do not split into {groups} groups"));
    }
    let aff = check_affine("group_norm", x, gamma, beta, c)?;
    let s: usize = x.shape()[2..].iter().product();
    let cpg = c / groups;
    norm_rows(x, n * groups, cpg * s, groups, cpg, s, aff.as_ref().map(|(g, b)| (g, b)), eps, silu)
}

/// Gradients of a normalisation: input, and weight/bias when it has them.
#[derive(Debug)]
pub struct NormGrad {
    pub dx: Tensor,
    pub dgamma: Option<Tensor>,
    pub dbeta: Option<Tensor>,
}

/// Backward of norm_rows: dx and, with affine, per-element weight/bias terms.
#[allow(clippy::too_many_arguments)]
fn norm_rows_bwd(
    x: &Tensor,
    stats: &Tensor,
    dy: &Tensor,
    rows: usize,
    len: usize,
    groups: usize,
    cpg: usize,
    inner: usize,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f32,
    silu: bool,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    check_f32("norm backward", &[x, stats, dy])?;
    if dy.shape() != x.shape() || stats.shape() != [rows, 2] {
        return shape_err("norm backward", format!("dy {:?} / stats {:?} do not match x {:?}", dy.shape(), stats.shape(), x.shape()));
    }
    let gpu = x.gpu();
    let dx = Tensor::empty(gpu, x.shape(), DType::F32, "norm dx")?;
    let terms = match affine {
        Some(_) => Some((
            Tensor::empty(gpu, x.shape(), DType::F32, "norm dgamma terms")?,
            Tensor::empty(gpu, x.shape(), DType::F32, "norm dbeta terms")?,
        )),
        None => None,
    };
    if rows == 0 || len == 0 {
        return Ok((dx, terms));
    }
    let p = Params::new(rows, len, groups, cpg, inner, eps, affine.is_some());
    let (g, b) = affine.unwrap_or((x, x));
    let (gw, gb) = terms.as_ref().map(|(a, b)| (a, b)).unwrap_or((&dx, &dx)); // unwritten without affine
    let wg = (len.next_power_of_two() as u32).clamp(32, 256);
    launch(
        gpu,
        &NORM,
        "norm_bwd",
        &[("WG", wg as f64), ("ACT", silu as u32 as f64)],
        bytemuck::bytes_of(&p),
        &[x, g, b, &dx, stats, dy, gw, gb],
        fold_groups(gpu, rows, 1),
    )?;
    Ok((dx, terms))
}

/// Backward of [`layer_norm`] from its saved stats.
pub fn layer_norm_backward(x: &Tensor, gamma: Option<&Tensor>, beta: Option<&Tensor>, stats: &Tensor, dy: &Tensor, eps: f32) -> Result<NormGrad> {
    let d = x.dim(-1);
    let aff = check_affine("layer_norm_backward", x, gamma, beta, d)?;
    let rows = x.numel() / d.max(1);
    let (dx, terms) = norm_rows_bwd(x, stats, dy, rows, d, 1, 0, 1, aff.as_ref().map(|(g, b)| (g, b)), eps, false)?;
    let (dgamma, dbeta) = match terms {
        Some((gw, gb)) => (Some(super::sum(&gw.reshape(&[rows, d])?, 0)?), Some(super::sum(&gb.reshape(&[rows, d])?, 0)?)),
        None => (None, None),
    };
    Ok(NormGrad { dx, dgamma, dbeta })
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
    if x.rank() < 2 || groups == 0 || x.shape()[1] % groups != 0 {
        return shape_err("group_norm_backward", format!("x {:?} with {groups} groups", x.shape()));
    }
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let aff = check_affine("group_norm_backward", x, gamma, beta, c)?;
    let s: usize = x.shape()[2..].iter().product();
    let cpg = c / groups;
    let (dx, terms) = norm_rows_bwd(x, stats, dy, n * groups, cpg * s, groups, cpg, s, aff.as_ref().map(|(g, b)| (g, b)), eps, silu)?;
    let per_channel = |t: Tensor| -> Result<Tensor> { super::sum(&super::sum(&t.reshape(&[n, c, s])?, 2)?, 0) };
    let (dgamma, dbeta) = match terms {
        Some((gw, gb)) => (Some(per_channel(gw)?), Some(per_channel(gb)?)),
        None => (None, None),
    };
    Ok(NormGrad { dx, dgamma, dbeta })
}
