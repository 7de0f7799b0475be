//! Algorithm 1 for one clip, on top of the verified pieces: draw a grid index n and a
//! guidance scale w, noise the clean latent to t = grid[n], store the teacher's conditional
//! and unconditional eps there, and for motion-guided samples (upper half of the grid)
//! DDIM-invert the clean latent to the same t and store dG/dz_t. The record is what
//! `diffusion::distill::consistency_loss` consumes.

use t2v_kernels::autograd::Tape;
use t2v_kernels::Tensor;

use crate::diffusion::{ddim_invert, DdimSolver, Schedule};
use crate::guidance::{motion_guidance, MotionScales};
use crate::models::unet3d::{Unet3d, UnetInputs};
use crate::models::weights::Result;
use crate::pipeline::sample::Gaussian;

/// One preprocessed clip.
pub struct Record {
    pub index: usize,
    pub w: f32,
    pub z_t: Tensor,
    pub cond_eps: Tensor,
    pub uncond_eps: Tensor,
    /// dG/dz_t for motion-guided samples.
    pub score: Option<Tensor>,
}

/// Settings of preprocessing.
#[derive(Clone, Debug)]
pub struct PreprocessConfig {
    /// Range of w (the method: 5 to 15).
    pub w_range: (f32, f32),
    /// Compute motion guidance for samples in the upper half of the grid.
    pub motion: bool,
    pub scales: MotionScales,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig { w_range: (5.0, 15.0), motion: true, scales: MotionScales::default() }
    }
}

/// Preprocesses one clip's clean latent `z0` (B, C, F, h, w) with its text context and the
/// empty prompt's; `rng` draws n, w and the noise (deterministic for a seeded generator).
#[allow(clippy::too_many_arguments)]
pub fn preprocess_clip(
    unet: &Unet3d,
    sched: &Schedule,
    solver: &DdimSolver,
    z0: &Tensor,
    context: &Tensor,
    uncond: &Tensor,
    fps: &[f32],
    cfg: &PreprocessConfig,
    rng: &mut Gaussian,
) -> Result<Record> {
    let gpu = z0.gpu();
    let b = z0.shape()[0];
    let index = ((rng.uniform() * solver.grid.len() as f64) as usize).min(solver.grid.len() - 1);
    let w = cfg.w_range.0 + (cfg.w_range.1 - cfg.w_range.0) * rng.uniform() as f32;
    let t = solver.grid[index];
    let tape = Tape::new();
    let (z_t, cond_eps, uncond_eps) = tape.no_grad(|| -> Result<(Tensor, Tensor, Tensor)> {
        let noise = tape.constant(Tensor::from_slice(gpu, z0.shape(), &rng.take(z0.numel()))?);
        let z_t = sched.add_noise(&tape.constant(z0.clone()), &noise, t)?;
        let ts = vec![t as f32; b];
        let call = |ctx: &Tensor| -> Result<Tensor> {
            let c = tape.constant(ctx.clone());
            Ok(unet.forward(&UnetInputs { z: &z_t, t: &ts, context: &c, fps, w_embedding: None, motion_embedding: None, record_attention: false })?.eps.value().clone())
        };
        Ok((z_t.value().clone(), call(context)?, call(uncond)?))
    })?;
    let score = if cfg.motion && index >= solver.grid.len() / 2 {
        let z_ref = tape.no_grad(|| ddim_invert(unet, sched, &solver.grid, &tape.constant(z0.clone()), &tape.constant(context.clone()), fps, index))?;
        Some(motion_guidance(unet, z_ref.value(), &z_t, &vec![t as f32; b], context, fps, cfg.scales)?.grad)
    } else {
        None
    };
    Ok(Record { index, w, z_t, cond_eps, uncond_eps, score })
}
