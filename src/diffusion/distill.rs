//! One consistency-distillation loss of Algorithm 2 (the consistency part; rewards are
//! added by the pipeline), as in the T2V-Turbo-v2 reference:
//! ```text
//!   start_t = grid[n], t_prev = start_t - k
//!   model_pred = c_skip(start_t) z_t + c_out(start_t) x0(student(z_t, start_t))
//!   teacher: x0 = x0_c + w (x0_c - x0_u), eps = eps_c + w (eps_c - eps_u),
//!            eps -= motion_gs sqrt(1 - sqrt(abar[start_t])) score   (motion-guided samples)
//!   x_prev = DDIM step (x0, eps) on the grid
//!   target = c_skip(t_prev) x_prev + c_out(t_prev) x0(target_net(x_prev, t_prev))  (no grad;
//!            target_net: the student itself, as the reference trains, or an EMA copy of it,
//!            its `--use_target_unet`)
//!   loss = pseudo_huber(model_pred, target, c)   (or the mean squared error)
//! ```
//! The student sees w and the motion scale (motion_gs on motion-guided samples with
//! index >= (1 - motion_percentage) * grid, else 0) through their guidance-scale embeddings.
//! The factor of the motion score is the reference code's sqrt(1 - sqrt(abar)) by default;
//! the paper's sigma_t = sqrt(1 - abar) is an option ([`NoiseFactor`]).

use t2v_kernels::autograd::{self as ad, Tape, Var};
use t2v_kernels::Tensor;

use super::{boundary, guidance_scale_embedding, DdimSolver, Schedule};
use crate::models::unet3d::{Unet3d, UnetInputs};
use crate::models::weights::Result;

/// The factor s_t of the motion score in the teacher's eps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NoiseFactor {
    /// The reference code: sqrt(1 - alpha) with alpha = sqrt(abar_t).
    #[default]
    Code,
    /// The paper (and MotionClone): sigma_t = sqrt(1 - abar_t).
    Paper,
}

impl NoiseFactor {
    pub fn at(self, abar: f64) -> f32 {
        match self {
            NoiseFactor::Code => (1.0 - abar.sqrt()).sqrt() as f32,
            NoiseFactor::Paper => (1.0 - abar).sqrt() as f32,
        }
    }
}

/// The distance of the consistency loss (the reference's `--loss_type`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distance {
    /// mean(sqrt((a - b)^2 + c^2) - c): the reference's default, c = 0.001.
    PseudoHuber(f32),
    /// mean((a - b)^2).
    L2,
}

/// One preprocessed sample (Algorithm 1's record).
pub struct CdSample<'a> {
    pub z_t: &'a Tensor,
    /// Grid index n (z_t is at `grid[n]`).
    pub index: usize,
    pub cond_eps: &'a Tensor,
    pub uncond_eps: &'a Tensor,
    /// d G / d z_t of motion guidance (motion-guided samples).
    pub score: Option<&'a Tensor>,
    pub use_motion: bool,
    pub w: f32,
    pub motion_gs: f32,
    /// Fraction of the trajectory (high noise) where motion guidance applies (0.5).
    pub motion_percentage: f32,
    pub noise_factor: NoiseFactor,
    /// The UNet's text context (tracked when the text encoder trains).
    pub context: &'a Var,
    pub fps: &'a [f32],
}

pub struct CdOutput {
    pub loss: Var,
    pub model_pred: Var,
    pub target: Tensor,
    pub x_prev: Tensor,
    pub start_t: usize,
    pub t_prev: usize,
    /// Motion scale given to the student.
    pub motion_scale: f32,
}

/// The loss on `tape` (whose parameters the caller made trainable, or not); the target
/// comes from `target` (untracked) or, without one, from `unet` itself.
pub fn consistency_loss(unet: &Unet3d, target: Option<&Unet3d>, sched: &Schedule, solver: &DdimSolver, tape: &Tape, s: &CdSample, distance: Distance) -> Result<CdOutput> {
    let gpu = s.z_t.gpu();
    let b = s.z_t.shape()[0];
    let start_t = solver.grid[s.index];
    let k = sched.len() / solver.grid.len();
    let t_prev = start_t.saturating_sub(k);
    let first = ((1.0 - s.motion_percentage as f64) * solver.grid.len() as f64).round() as usize;
    let guided = s.use_motion && s.index >= first && s.score.is_some();
    let m = if guided { s.motion_gs } else { 0.0 };
    let w_emb = tape.constant(guidance_scale_embedding(gpu, &vec![s.w; b], unet.config.time_cond_proj_dim.unwrap_or(256))?);
    let m_emb = tape.constant(guidance_scale_embedding(gpu, &vec![m; b], unet.config.motion_cond_proj_dim.unwrap_or(256))?);
    let motion = unet.config.motion_cond_proj_dim.map(|_| &m_emb);
    let context = s.context;
    let run = |unet: &Unet3d, z: &Var, t: usize| -> Result<Var> {
        let ts = vec![t as f32; b];
        let eps = unet.forward(&UnetInputs { z, t: &ts, context, fps: s.fps, w_embedding: Some(&w_emb), motion_embedding: motion, record_attention: false })?.eps;
        sched.x0_from_eps(z, &eps, t)
    };
    let z = tape.constant(s.z_t.clone());
    let (cs, co) = boundary(start_t as f32);
    let model_pred = ad::axpby(&z, cs, &run(unet, &z, start_t)?, co)?;

    let (target, x_prev) = tape.no_grad(|| -> Result<(Tensor, Tensor)> {
        let (ec, eu) = (tape.constant(s.cond_eps.clone()), tape.constant(s.uncond_eps.clone()));
        let x0c = sched.x0_from_eps(&z, &ec, start_t)?;
        let x0u = sched.x0_from_eps(&z, &eu, start_t)?;
        let x0 = ad::axpby(&x0c, 1.0 + s.w, &x0u, -s.w)?;
        let mut eps = ad::axpby(&ec, 1.0 + s.w, &eu, -s.w)?;
        if let (true, Some(score)) = (guided, s.score) {
            let f = s.motion_gs * s.noise_factor.at(sched.alphas_cumprod[start_t] as f64);
            eps = ad::axpby(&eps, 1.0, &tape.constant(score.clone()), -f)?;
        }
        let x_prev = solver.step(&x0, &eps, s.index)?;
        let (cs, co) = boundary(t_prev as f32);
        let target = ad::axpby(&x_prev, cs, &run(target.unwrap_or(unet), &x_prev, t_prev)?, co)?;
        Ok((target.value().clone(), x_prev.value().clone()))
    })?;
    let loss = match distance {
        Distance::PseudoHuber(c) => ad::pseudo_huber(&model_pred, &tape.constant(target.clone()), c)?,
        Distance::L2 => ad::mse(&model_pred, &tape.constant(target.clone()))?,
    };
    Ok(CdOutput { loss, model_pred, target, x_prev, start_t, t_prev, motion_scale: m })
}
