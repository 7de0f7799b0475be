//! One record's work in a training step: what it draws from the step's stream, then its
//! forward (consistency loss, rewards) and backward on the device of the student copy it is
//! given.

use t2v_kernels::autograd::{self as ad, Tape, Var};
use t2v_kernels::Tensor;

use super::{Item, RewardModels, Student, TrainConfig};
use crate::diffusion::distill::{consistency_loss, CdSample, NoiseFactor};
use crate::diffusion::{consistency_sample, consistency_timesteps, DdimSolver, SamplerConfig, Schedule};
use crate::models::weights::{Result, WeightsError};
use crate::pipeline::sample::Gaussian;
use crate::pipeline::shards::Shard;

/// What one record of a step draws from the run's stream. The step draws them for all its
/// records, in record order, before any record runs, so that a record's work depends on
/// nothing but its inputs, whichever device runs it.
pub(super) struct RecordDraws {
    /// The noise of the student's generation ([`RewardInput::Noise`], [`RewardInput::Sample`]):
    /// the start, then the noise before each later step; empty otherwise.
    pub(super) noise: Vec<Vec<f32>>,
    /// Decoded frames for the image rewards (empty: no image reward).
    pub(super) image_frames: Vec<usize>,
    /// Frames for the video reward and where its crop goes.
    pub(super) video: Option<(Vec<usize>, f32)>,
    /// What this record's image and video rewards weigh in the step's loss: one over the
    /// number of the step's records that have that reward (each reward term of a step is
    /// the mean over its rewarded records, as in the reference).
    pub(super) reward_weights: (f32, f32),
    /// The guidance scale this use of the record trains with, when drawn afresh
    /// ([`TrainConfig::redraw_w`]); else the record's own.
    pub(super) w: Option<f32>,
}

/// The losses one record adds to a step.
pub(super) struct RecordValues {
    pub(super) cd: f32,
    pub(super) image_reward: Option<f32>,
    pub(super) video_reward: Option<f32>,
}

/// One record's gradients of the trainable tensors (already weighted for the step's loss) and values.
pub(super) struct RecordGrads {
    pub(super) grads: Vec<Tensor>,
    pub(super) values: RecordValues,
}

/// The parts of a run a record's work reads besides the models.
pub(super) struct Recipe<'t> {
    pub(super) config: &'t TrainConfig,
    pub(super) sched: &'t Schedule,
    pub(super) solver: &'t DdimSolver,
    pub(super) shards: &'t [Shard],
    pub(super) fps: f32,
}

impl Recipe<'_> {
    /// The forward, rewards and backward of record `item` of a `b`-record step, on the
    /// device of `student` and `models`.
    pub(super) fn record(&self, student: &Student, models: &RewardModels, item: Item, draws: &RecordDraws, b: usize) -> Result<RecordGrads> {
        let gpu = student.unet_gpu();
        let c = self.config;
        let shard = &self.shards[item.0];
        let meta = &shard.records[item.1];
        let rec = shard.tensors(&gpu, item.1)?;
        let tape = Tape::new();
        let leaves = student.attach(&tape)?;
        let context = match &student.text {
            // the trained encoder's context of the caption (tracked), the stored one's equal
            // before training
            Some(text) => text.tower.penultimate(&tape, &[models.tokenizer.encode_warn(&meta.caption).map_err(|e| WeightsError::Data { path: "caption".into(), msg: e.to_string() })?.ids])?,
            None => tape.constant(rec.context.clone()),
        };
        let sample = CdSample {
            z_t: &rec.z_t,
            index: meta.index,
            cond_eps: &rec.cond_eps,
            uncond_eps: &rec.uncond_eps,
            score: rec.score.as_ref(),
            use_motion: c.use_motion,
            w: draws.w.unwrap_or(meta.w),
            motion_gs: c.motion_gs,
            motion_percentage: c.motion_percentage,
            noise_factor: if c.noise_factor_paper { NoiseFactor::Paper } else { NoiseFactor::Code },
            context: &context,
            fps: &[self.fps],
        };
        let out = consistency_loss(&student.unet, student.target_unet(), self.sched, self.solver, &tape, &sample, c.distance())?;
        // the step's loss: the mean consistency loss over its records, minus each reward's
        // mean over the records that have it
        let mut total = ad::scale(&out.loss, 1.0 / b as f32)?;
        let mut probes = vec![out.loss.value().clone()];
        let (mut img_k, mut vid_k) = (None, None);
        if !draws.image_frames.is_empty() || draws.video.is_some() {
            // the image rewards read the short caption (77 tokens), or the caption without one
            let short = meta.short_caption.as_deref().unwrap_or(&meta.caption);
            let pred = match draws.noise.len() {
                0 => out.model_pred.clone(),
                _ => self.generation_from_noise(student, &tape, &draws.noise, &rec.z_t, &context, draws.w.unwrap_or(meta.w))?,
            };
            if !draws.image_frames.is_empty() {
                let images = self.decode_frames(models, &pred, &draws.image_frames)?; // (M, 3, H, W)
                let ids = vec![models.tokenizer.encode_warn(short).map_err(|e| WeightsError::Data { path: "caption".into(), msg: e.to_string() })?.ids; draws.image_frames.len()];
                let r = models.image_reward(&images, &ids)?.expect("at least one image reward");
                total = ad::axpby(&total, 1.0, &r, -c.beta_img * draws.reward_weights.0)?;
                probes.push(r.value().clone());
                img_k = Some(probes.len() - 1);
            }
            if let (Some((frames, crop_at)), Some(model)) = (&draws.video, &models.video) {
                let images = self.decode_frames(models, &pred, frames)?; // (n, 3, H, W)
                let s = images.shape().to_vec();
                let video = ad::permute(&ad::reshape(&images, &[1, s[0], s[1], s[2], s[3]])?, &[0, 2, 1, 3, 4])?;
                let r = ad::mean_all(&model.score(&video, &[meta.caption.as_str()], *crop_at)?)?;
                total = ad::axpby(&total, 1.0, &r, -c.beta_vid * draws.reward_weights.1)?;
                probes.push(r.value().clone());
                vid_k = Some(probes.len() - 1);
            }
        }
        let grads = tape.backward(&total)?;
        let grads = student.grads(&tape, &grads, &leaves)?;
        // one readback per record: the loss and the rewards
        let vals = t2v_kernels::ops::concat(&probes.iter().map(|p| p.reshape(&[1])).collect::<t2v_kernels::Result<Vec<_>>>()?.iter().collect::<Vec<_>>(), 0)?.to_vec()?;
        Ok(RecordGrads { grads, values: RecordValues { cd: vals[0], image_reward: img_k.map(|k| vals[k]), video_reward: vid_k.map(|k| vals[k]) } })
    }

    /// The student's consistency sample from `noise` (the start, then one per later step;
    /// 1 step: the sampler's first), shaped like `like`, from the top of the grid, on
    /// `tape` — gradients flow through every step (for [`RewardInput::Noise`] and
    /// [`RewardInput::Sample`]).
    fn generation_from_noise(&self, student: &Student, tape: &Tape, noise: &[Vec<f32>], like: &Tensor, context: &Var, w: f32) -> Result<Var> {
        let upload = |i: usize| Tensor::from_slice(like.gpu(), like.shape(), &noise[i]);
        let cfg = SamplerConfig {
            timesteps: consistency_timesteps(self.sched.len(), self.solver.grid.len(), noise.len()),
            w,
            motion_scale: if self.config.use_motion { self.config.motion_gs } else { 0.0 },
            motion_percentage: self.config.motion_percentage,
        };
        let out = consistency_sample(&student.unet, self.sched, &tape.constant(upload(0)?), context, &[self.fps], &cfg, |i| Ok(upload(i + 1)?), || Ok(()))?;
        Ok(out.into_iter().last().expect("at least one step"))
    }

    /// Decodes frames `idx` of the consistency output (1, C, F, h, w) -> (n, 3, H, W).
    fn decode_frames(&self, models: &RewardModels, pred: &Var, idx: &[usize]) -> Result<Var> {
        let parts = idx.iter().map(|&i| ad::slice(pred, 2, i, 1)).collect::<t2v_kernels::Result<Vec<_>>>()?;
        let refs: Vec<&Var> = parts.iter().collect();
        let sel = ad::concat(&refs, 2)?; // (1, C, n, h, w)
        let s = sel.shape().to_vec();
        let lat = ad::reshape(&ad::permute(&sel, &[0, 2, 1, 3, 4])?, &[s[2], s[1], s[3], s[4]])?;
        if self.config.recompute {
            return models.vae.decode_checkpointed(&lat);
        }
        models.vae.decode(&lat)
    }
}

/// `m` distinct random frames of `f`, ascending.
pub(super) fn pick_frames(rng: &mut Gaussian, f: usize, m: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..f).collect();
    for i in 0..m.min(f) {
        let j = i + ((rng.uniform() * (f - i) as f64) as usize).min(f - i - 1);
        all.swap(i, j);
    }
    let mut v = all[..m.min(f)].to_vec();
    v.sort_unstable();
    v
}

/// `n` evenly strided frames `start, start + f/n, ...` with a random start in [0, f/n)
/// (the reference's `arange(start, F, F // n)[:n]`).
pub(super) fn strided_frames(rng: &mut Gaussian, f: usize, n: usize) -> Vec<usize> {
    let stride = (f / n).max(1);
    let start = ((rng.uniform() * stride as f64) as usize).min(stride - 1);
    (0..n).map(|i| (start + i * stride).min(f - 1)).collect()
}

