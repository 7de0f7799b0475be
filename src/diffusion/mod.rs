//! The method's diffusion numerics (see reference/METHOD.md):
//! - the scaled-linear schedule of VideoCrafter2 (1000 steps, eps prediction);
//! - DDIM grids, the DDIM solver step on a grid and DDIM inversion;
//! - consistency boundary conditions (sigma_data 0.5, timestep scaling 10);
//! - the multistep consistency sampler of the student (LCM-style timesteps), and the cut
//!   grids of video-to-video runs (SDEdit).
//!
//! Elementwise updates run on autograd values (the distillation loss differentiates them).

pub mod distill;

use t2v_kernels::autograd::{self as ad, Tape, Var};
use t2v_kernels::{ops, Gpu, Tensor};

use crate::models::unet3d::{Unet3d, UnetInputs};
use crate::models::weights::Result;

/// alpha_bar_t for t = 0..n.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub alphas_cumprod: Vec<f32>,
}

impl Schedule {
    /// betas = linspace(sqrt(start), sqrt(end), n)^2 (in f64, stored as f32 like the reference).
    pub fn scaled_linear(n: usize, start: f64, end: f64) -> Schedule {
        let (a, b) = (start.sqrt(), end.sqrt());
        let mut prod = 1.0f64;
        let alphas_cumprod = (0..n)
            .map(|i| {
                let s = if n > 1 { a + (b - a) * i as f64 / (n - 1) as f64 } else { a };
                prod *= 1.0 - s * s;
                prod as f32
            })
            .collect();
        Schedule { alphas_cumprod }
    }

    /// VideoCrafter2's: 1000 steps from 0.00085 to 0.012.
    pub fn videocrafter() -> Schedule {
        Schedule::scaled_linear(1000, 0.00085, 0.012)
    }

    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }
    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }
    fn abar(&self, t: usize) -> f32 {
        self.alphas_cumprod[t]
    }

    /// x0 from eps: (z - sqrt(1 - abar_t) eps) / sqrt(abar_t).
    pub fn x0_from_eps(&self, z: &Var, eps: &Var, t: usize) -> Result<Var> {
        let a = self.abar(t);
        Ok(ad::axpby(z, 1.0 / a.sqrt(), eps, -(1.0 - a).sqrt() / a.sqrt())?)
    }

    /// Forward noising: sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.
    pub fn add_noise(&self, x0: &Var, noise: &Var, t: usize) -> Result<Var> {
        let a = self.abar(t);
        Ok(ad::axpby(x0, a.sqrt(), noise, (1.0 - a).sqrt())?)
    }

    /// One DDIM inversion step from p = max(t - skip, 0) to t (the reference's
    /// `ddim_reverse_step`):
    /// `(x_prev - sqrt(1 - abar[p]) eps) sqrt(abar[t] / abar[p]) + sqrt(1 - abar[t]) eps`.
    pub fn ddim_reverse(&self, x_prev: &Var, eps: &Var, t: usize, skip: usize) -> Result<Var> {
        let (ap, at) = (self.abar(t.saturating_sub(skip)), self.abar(t));
        let r = (at / ap).sqrt();
        // = r x_prev + (sqrt(1 - at) - r sqrt(1 - ap)) eps
        Ok(ad::axpby(x_prev, r, eps, (1.0 - at).sqrt() - r * (1.0 - ap).sqrt())?)
    }
}

/// DDIM inversion of a clean latent z0 up to `grid[index]` (Algorithm 1's reference latent):
/// for each grid timestep t up to it, the teacher predicts eps at t on the current latent
/// (text-conditioned), and one [`Schedule::ddim_reverse`] step moves the latent to t.
pub fn ddim_invert(unet: &Unet3d, sched: &Schedule, grid: &[usize], z0: &Var, context: &Var, fps: &[f32], index: usize) -> Result<Var> {
    let b = z0.shape()[0];
    let skip = sched.len() / grid.len();
    let mut x = z0.clone();
    for &t in &grid[..=index] {
        let ts = vec![t as f32; b];
        let eps = unet.forward(&UnetInputs { z: &x, t: &ts, context, fps, w_embedding: None, motion_embedding: None, record_attention: false })?.eps;
        x = sched.ddim_reverse(&x, &eps, t, skip)?;
    }
    Ok(x)
}

/// [`ddim_invert`] of several clips at once, each to its own grid index: z0 (B, ...), its
/// text contexts (B, L, D) and fps (B values); returns each clip's latent at `grid[indices[i]]`
/// (1, ...), in order. The clips share the UNet calls (on CPU adapters a batch-1 call of a
/// small model costs mostly per-dispatch overhead); a clip leaves the batch once it reaches
/// its index. No gradient is recorded. A clip's result matches its own inversion up to the
/// kernels' rounding (batch sizes can select other kernel variants).
pub fn ddim_invert_batch(unet: &Unet3d, sched: &Schedule, grid: &[usize], z0: &Tensor, context: &Tensor, fps: &[f32], indices: &[usize]) -> Result<Vec<Tensor>> {
    let b = z0.shape()[0];
    if indices.len() != b || context.shape()[0] != b || fps.len() != b || indices.iter().any(|&i| i >= grid.len()) {
        return Err(crate::models::weights::WeightsError::Gpu(t2v_kernels::Error::Shape {
            op: "ddim_invert_batch",
            msg: format!("{b} latents, {} contexts, {} fps, indices {indices:?} on a {}-point grid", context.shape()[0], fps.len(), grid.len()),
        }));
    }
    let skip = sched.len() / grid.len();
    let tape = Tape::new();
    tape.no_grad(|| -> Result<Vec<Tensor>> {
        let mut out: Vec<Option<Tensor>> = vec![None; b];
        // the clips still inverting (positions in the inputs) and their batch
        let mut active: Vec<usize> = (0..b).collect();
        let (mut x, mut ctx, mut fps_a) = (tape.constant(z0.clone()), tape.constant(context.clone()), fps.to_vec());
        for (k, &t) in grid.iter().enumerate().take(indices.iter().max().map_or(0, |m| m + 1)) {
            let ts = vec![t as f32; active.len()];
            let eps = unet.forward(&UnetInputs { z: &x, t: &ts, context: &ctx, fps: &fps_a, w_embedding: None, motion_embedding: None, record_attention: false })?.eps;
            x = sched.ddim_reverse(&x, &eps, t, skip)?;
            if active.iter().any(|&i| indices[i] == k) {
                for (j, &i) in active.iter().enumerate() {
                    if indices[i] == k {
                        out[i] = Some(ops::slice(x.value(), 0, j, 1)?);
                    }
                }
                let keep: Vec<usize> = (0..active.len()).filter(|&j| indices[active[j]] > k).collect();
                if !keep.is_empty() {
                    let pick = |v: &Var| -> Result<Var> {
                        let parts = keep.iter().map(|&j| ops::slice(v.value(), 0, j, 1)).collect::<t2v_kernels::Result<Vec<_>>>()?;
                        Ok(tape.constant(ops::concat(&parts.iter().collect::<Vec<_>>(), 0)?))
                    };
                    (x, ctx) = (pick(&x)?, pick(&ctx)?);
                    fps_a = keep.iter().map(|&j| fps_a[j]).collect();
                }
                active = keep.iter().map(|&j| active[j]).collect();
            }
        }
        Ok(out.into_iter().map(|o| o.expect("every index lies on the grid")).collect())
    })
}

/// DDIM grid of `n` points: (arange(1, n+1) * (n_train // n)) - 1.
pub fn ddim_timesteps(n_train: usize, n: usize) -> Vec<usize> {
    (1..=n).map(|i| i * (n_train / n) - 1).collect()
}

/// The student's inference timesteps: `steps` points of the `origin`-point grid, from the
/// top, every len/steps-th (LCM's set_timesteps): origin 200 -> 4 steps 999, 749, 499, 249.
pub fn consistency_timesteps(n_train: usize, origin: usize, steps: usize) -> Vec<usize> {
    lcm_timesteps(&ddim_timesteps(n_train, origin), steps)
}

/// `steps` points of an ascending grid, from the top, every len/steps-th.
fn lcm_timesteps(grid: &[usize], steps: usize) -> Vec<usize> {
    let skip = (grid.len() / steps.max(1)).max(1);
    grid.iter().rev().step_by(skip).take(steps).copied().collect()
}

/// How many of a grid's `points` a video-to-video run of `strength` (0 < s <= 1) covers:
/// the lowest floor(points * s), as diffusers' img2img pipelines (the f32 rounding of s
/// forgiven: 0.7 of 200 points is 140).
pub fn strength_points(points: usize, strength: f32) -> usize {
    ((points as f64 * strength as f64 + 1e-3).floor().max(0.0) as usize).min(points)
}

/// The student's timesteps of a video-to-video run (SDEdit; diffusers' LCMScheduler with
/// `strength`): the `origin`-point grid cut to its lowest [`strength_points`], then `steps`
/// points of it as in [`consistency_timesteps`] (origin 200, 4 steps, strength 0.5 ->
/// 499, 374, 249, 124; strength 1 is [`consistency_timesteps`]). None when the cut grid
/// has fewer points than steps.
pub fn partial_consistency_timesteps(n_train: usize, origin: usize, steps: usize, strength: f32) -> Option<Vec<usize>> {
    let grid = ddim_timesteps(n_train, origin);
    let k = strength_points(grid.len(), strength);
    (k >= steps.max(1)).then(|| lcm_timesteps(&grid[..k], steps))
}

/// Consistency boundary conditions at timestep t: (c_skip, c_out), sigma_data 0.5 and
/// timestep scaling 10.
pub fn boundary(t: f32) -> (f32, f32) {
    let (sd2, s) = (0.25f32, 10.0 * t);
    (sd2 / (s * s + sd2), s / (s * s + sd2).sqrt())
}

/// The DDIM solver on a grid (the teacher's ODE step of consistency distillation).
#[derive(Clone, Debug)]
pub struct DdimSolver {
    pub grid: Vec<usize>,
    /// abar of the previous grid point: `[abar_0] + abar[grid[:-1]]`
    pub abar_prev: Vec<f32>,
}

impl DdimSolver {
    pub fn new(s: &Schedule, points: usize) -> DdimSolver {
        let grid = ddim_timesteps(s.len(), points);
        let abar_prev = std::iter::once(s.abar(0)).chain(grid[..grid.len() - 1].iter().map(|&t| s.abar(t))).collect();
        DdimSolver { grid, abar_prev }
    }
    /// `sqrt(abar_prev[index]) x0 + sqrt(1 - abar_prev[index]) eps`.
    pub fn step(&self, x0: &Var, eps: &Var, index: usize) -> Result<Var> {
        let a = self.abar_prev[index];
        Ok(ad::axpby(x0, a.sqrt(), eps, (1.0 - a).sqrt())?)
    }
}

/// guidance_scale_embedding of diffusers' LCM (the student's w and motion-scale inputs):
/// [sin, cos] of (s * 1000) * exp(-ln(10000) * i / (half - 1)), computed with float32
/// arguments like the reference. Returns (N, dim).
pub fn guidance_scale_embedding(gpu: &Gpu, scales: &[f32], dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let step = ((10000f64).ln() / (half as f64 - 1.0)) as f32;
    let mut out = Vec::with_capacity(scales.len() * dim);
    for &w in scales {
        let ws = w * 1000.0;
        let args: Vec<f32> = (0..half).map(|i| ws * (i as f32 * -step).exp()).collect();
        out.extend(args.iter().map(|&a| (a as f64).sin() as f32));
        out.extend(args.iter().map(|&a| (a as f64).cos() as f32));
        out.extend(std::iter::repeat_n(0.0, dim - 2 * half));
    }
    Ok(Tensor::from_slice(gpu, &[scales.len(), dim], &out)?)
}

/// Settings of the multistep consistency sampler.
#[derive(Clone, Debug)]
pub struct SamplerConfig {
    pub timesteps: Vec<usize>,
    /// CFG scale given to the student (no CFG at inference).
    pub w: f32,
    /// Motion-guidance scale given to the student while t >= n_train (1 - percentage).
    pub motion_scale: f32,
    pub motion_percentage: f32,
}

/// Multistep consistency sampling: at each timestep the student predicts eps, the
/// boundary conditions give `denoised`, and (but for the last step) the latent is
/// re-noised to the next timestep with `noise(i)`. Returns every step's `denoised`.
/// `on_step` runs after each step is recorded (a progress bar may sync the device there).
#[allow(clippy::too_many_arguments)]
pub fn consistency_sample(
    unet: &Unet3d,
    sched: &Schedule,
    init: &Var,
    context: &Var,
    fps: &[f32],
    cfg: &SamplerConfig,
    mut noise: impl FnMut(usize) -> Result<Tensor>,
    mut on_step: impl FnMut() -> Result<()>,
) -> Result<Vec<Var>> {
    let gpu = init.value().gpu().clone();
    let tape = init.tape().clone();
    let b = init.shape()[0];
    let w_dim = unet.config.time_cond_proj_dim.unwrap_or(256);
    let m_dim = unet.config.motion_cond_proj_dim.unwrap_or(256);
    let w_emb = tape.constant(guidance_scale_embedding(&gpu, &vec![cfg.w; b], w_dim)?);
    let mut z = init.clone();
    let mut out = Vec::new();
    let n = cfg.timesteps.len();
    for (i, &t) in cfg.timesteps.iter().enumerate() {
        let m = if (t as f32) >= sched.len() as f32 * (1.0 - cfg.motion_percentage) { cfg.motion_scale } else { 0.0 };
        let m_emb = tape.constant(guidance_scale_embedding(&gpu, &vec![m; b], m_dim)?);
        let motion = unet.config.motion_cond_proj_dim.map(|_| &m_emb);
        let ts = vec![t as f32; b];
        let eps = unet.forward(&UnetInputs { z: &z, t: &ts, context, fps, w_embedding: Some(&w_emb), motion_embedding: motion, record_attention: false })?.eps;
        let x0 = sched.x0_from_eps(&z, &eps, t)?;
        let (c_skip, c_out) = boundary(t as f32);
        let denoised = ad::axpby(&x0, c_out, &z, c_skip)?;
        if i + 1 < n {
            let nz = tape.constant(noise(i)?);
            z = sched.add_noise(&denoised, &nz, cfg.timesteps[i + 1])?;
        }
        out.push(denoised);
        on_step()?;
    }
    Ok(out)
}

/// Settings of the teacher's DDIM sampler (VideoCrafter2's: 50 steps, cfg 12, eta 1).
#[derive(Clone, Debug)]
pub struct DdimConfig {
    pub steps: usize,
    /// Classifier-free guidance: eps = eps_u + cfg (eps_c - eps_u).
    pub cfg: f32,
    /// 0: deterministic DDIM; 1: DDPM-like stochastic steps.
    pub eta: f32,
}

impl Default for DdimConfig {
    /// VideoCrafter2's sampling settings.
    fn default() -> DdimConfig {
        DdimConfig { steps: 50, cfg: 12.0, eta: 1.0 }
    }
}

/// The teacher's DDIM sampling with classifier-free guidance (lvdm's DDIMSampler):
/// on the `steps`-point grid from the top, x0 = (z - sqrt(1 - abar) eps) / sqrt(abar),
/// sigma = eta sqrt((1 - abar_prev)/(1 - abar) (1 - abar/abar_prev)),
/// z = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma noise(i).
/// The conditional and unconditional predictions of a step come from one UNet call on a
/// doubled batch (rows 0..B conditional, B..2B unconditional). `uncond` holds B contexts, or
/// one shared by the batch. Returns the final x0 (the last step lands on abar_0).
/// `on_step` runs after each step is recorded.
#[allow(clippy::too_many_arguments)]
pub fn ddim_sample(
    unet: &Unet3d,
    sched: &Schedule,
    init: &Var,
    context: &Var,
    uncond: &Var,
    fps: &[f32],
    cfg: &DdimConfig,
    noise: impl FnMut(usize) -> Result<Tensor>,
    on_step: impl FnMut() -> Result<()>,
) -> Result<Var> {
    ddim_sample_on(unet, sched, &ddim_timesteps(sched.len(), cfg.steps), init, context, uncond, fps, cfg, noise, on_step)
}

/// [`ddim_sample`] on the points of an ascending `grid` (`init` at its top): a
/// video-to-video run takes the lowest points of the full grid (SDEdit).
#[allow(clippy::too_many_arguments)]
pub fn ddim_sample_on(
    unet: &Unet3d,
    sched: &Schedule,
    grid: &[usize],
    init: &Var,
    context: &Var,
    uncond: &Var,
    fps: &[f32],
    cfg: &DdimConfig,
    mut noise: impl FnMut(usize) -> Result<Tensor>,
    mut on_step: impl FnMut() -> Result<()>,
) -> Result<Var> {
    let tape = init.tape().clone();
    let b = init.shape()[0];
    let uncond = if uncond.shape()[0] == 1 && b > 1 { ad::concat(&vec![uncond; b], 0)? } else { uncond.clone() };
    let contexts = ad::concat(&[context, &uncond], 0)?;
    let fps2: Vec<f32> = fps.iter().chain(fps).copied().collect();
    let mut z = init.clone();
    let mut x0 = init.clone();
    for (i, &t) in grid.iter().enumerate().rev() {
        let ts = vec![t as f32; 2 * b];
        let both = unet.forward(&UnetInputs { z: &ad::concat(&[&z, &z], 0)?, t: &ts, context: &contexts, fps: &fps2, w_embedding: None, motion_embedding: None, record_attention: false })?.eps;
        let (ec, eu) = (ad::slice(&both, 0, 0, b)?, ad::slice(&both, 0, b, b)?);
        let eps = ad::axpby(&eu, 1.0 - cfg.cfg, &ec, cfg.cfg)?;
        x0 = sched.x0_from_eps(&z, &eps, t)?;
        let a = sched.abar(t);
        let ap = if i == 0 { sched.abar(0) } else { sched.abar(grid[i - 1]) };
        let sigma = cfg.eta * ((1.0 - ap) / (1.0 - a) * (1.0 - a / ap)).max(0.0).sqrt();
        let dir = (1.0 - ap - sigma * sigma).max(0.0).sqrt();
        z = ad::axpby(&x0, ap.sqrt(), &eps, dir)?;
        if sigma > 0.0 && i > 0 {
            z = ad::axpby(&z, 1.0, &tape.constant(noise(grid.len() - 1 - i)?), sigma)?;
        }
        on_step()?;
    }
    Ok(x0)
}
