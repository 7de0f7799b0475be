//! Algorithm 2 over preprocessed shards: consistency distillation of the student (the same
//! network as its own target, as the reference trains, or optionally an EMA copy of it)
//! with pseudo-Huber distance (or L2), plus reward feedback on
//! the consistency output `model_pred` for records that carry a short caption (or all,
//! `reward_captions`; at most `img_reward_records` / `vid_reward_records` a step):
//!   image rewards on `img_frames` random decoded frames against the short caption,
//!   weighted sum over the reward models, scaled by beta_img;
//!   the video reward on `vid_frames` evenly strided frames (random start) against the
//!   full caption, scaled by beta_vid.
//! loss = mean cd - beta_img * mean R_img - beta_vid * mean R_vid (each mean over the
//! step's records that have the term); AdamW with global-norm clipping, a
//! learning-rate schedule, and optionally another rate for the temporal transformers.
//! Full fine-tuning or LoRA adapters on every >= 2-D UNet weight; optionally the
//! conditioning text encoder's last layers too (the reference's `--train_text_encoder`).
//!
//! Everything a step draws comes from one seeded stream, and the data order from the seed
//! and the epoch, so a run resumed from a checkpoint (weights, optimizer, stream state,
//! data cursor) continues exactly like an uninterrupted one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use t2v_kernels::optim::{AdamW, AdamWConfig, ParamGroup};
use t2v_kernels::{Gpu, Tensor};

use crate::diffusion::{DdimSolver, Schedule};
use crate::models::weights::{Result, WeightsError};
use crate::pipeline::sample::Gaussian;
use crate::pipeline::shards::Shard;
use crate::pipeline::validation::{self, Validation, ValidationRow};

mod checkpoint;
mod config;
mod export;
mod lr_schedule;
mod parallel;
mod record;
mod student;

pub use checkpoint::{list_checkpoints, read_checkpoint, restore_student, CheckpointInfo};
pub use config::{LoraConfig, LossType, RewardCaptions, RewardInput, TrainConfig};
pub use export::{export_checkpoint, resolve_checkpoint, Exported};
pub use student::{load_run, load_student, write_student_model, EmaTarget, RewardModels, Student, TextStudent};
use student::TEXT_PREFIX;

pub use lr_schedule::LrSchedule;

pub use parallel::Replica;
use parallel::data_parallel;
use record::{pick_frames, strided_frames, RecordDraws, RecordGrads, RecordValues, Recipe};

/// Where the run is: written with every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub step: u64,
    pub epoch: u64,
    /// Position in the epoch's order.
    pub cursor: usize,
    /// State of the step stream (frame choices).
    pub rng: u64,
    /// The step from which the run recomputes because a step ran out of memory without
    /// ([`Trainer::recompute_when_out_of_memory`]; a resumed run keeps recomputing).
    #[serde(default)]
    pub recompute_since: Option<u64>,
}

/// The losses and rewards of one step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    pub loss: f32,
    pub cd_loss: f32,
    /// Mean weighted image reward of the records that had one (those with a short caption,
    /// or as many as `img_reward_records` of them; None: none had).
    pub image_reward: Option<f32>,
    pub video_reward: Option<f32>,
    /// How many of the step's records had an image / a video reward.
    #[serde(default)]
    pub image_reward_records: usize,
    #[serde(default)]
    pub video_reward_records: usize,
    /// The gradient norm of the UNet's trained tensors (or adapters) before clipping: what
    /// the clipping reads.
    pub grad_norm: f32,
    /// The trained text encoder's gradient norm (not clipped; None without
    /// [`TrainConfig::text_layers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_grad_norm: Option<f32>,
    pub lr: f32,
    pub seconds: f32,
    /// The step's peak of device memory: tensors and the pool of reusable buffers (the
    /// largest over the devices of a data-parallel run).
    pub peak_gpu_mib: f32,
    /// The step's peak of memory in tensors at once (what `--max-memory` must leave room
    /// for; 0 in metrics written before it was recorded).
    #[serde(default)]
    pub peak_live_mib: f32,
}

/// Errors of training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] WeightsError),
    #[error(transparent)]
    Gpu(#[from] t2v_kernels::Error),
    #[error("step {step}: the loss is not finite ({what}); stopped. The last good checkpoint is kept: {checkpoint}. Lower --lr or check the data.")]
    NonFinite { step: u64, what: String, checkpoint: String },
    #[error("step {step}: writing its checkpoint failed ({msg}); stopped. The last good checkpoint is kept: {kept}. Free some space (or fix the folder) and continue with --resume.")]
    Checkpoint { step: u64, msg: String, kept: String },
    #[error("{0}")]
    Setup(String),
}

impl TrainError {
    /// Did a device run out of memory (or over its `--max-memory`)?
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            TrainError::Gpu(e) => e.is_out_of_memory(),
            TrainError::Model(e) => e.is_out_of_memory(),
            _ => false,
        }
    }
}

/// The optimizer's groups over [`Student::trainable`], in its order: runs of consecutive
/// tensors whose rate scale and clipping are the same: `temporal_lr_scale` for those of a
/// temporal transformer, 1 for the others (one group when the scale is 1); a trained text
/// encoder's tensors at 1, outside the clipping. A tensor is temporal as the
/// reference decides (`train_latent_t2v_turbo_v2.py`): its name starts with `init_attn.0`,
/// or its first three name parts are a TemporalTransformer's path — which leaves out the
/// middle block's (`middle_block.2.…`, whose first three parts name a layer inside it).
fn param_groups(student: &Student, temporal_lr_scale: f32) -> Vec<ParamGroup> {
    let tensors = student.trainable();
    let temporal = student.unet.temporal_transformer_paths();
    let is_temporal = |name: &str| {
        let parts: Vec<&str> = name.split('.').collect();
        name.starts_with("init_attn.0") || (parts.len() > 2 && temporal.contains(&parts[..3].join(".")))
    };
    let mut groups: Vec<ParamGroup> = Vec::new();
    for (name, t) in student.trainable_names().iter().zip(tensors) {
        let clipped = !name.starts_with(TEXT_PREFIX);
        let lr_scale = if clipped && is_temporal(name) { temporal_lr_scale } else { 1.0 };
        match groups.last_mut() {
            Some(g) if g.lr_scale == lr_scale && g.clipped == clipped => g.params.push(t),
            _ => groups.push(ParamGroup { params: vec![t], lr_scale, weight_decay: None, clipped }),
        }
    }
    groups
}

/// A record address: (shard, index in shard).
type Item = (usize, usize);

/// Algorithm 2.
pub struct Trainer<'a> {
    pub config: TrainConfig,
    pub student: Student,
    pub models: &'a RewardModels,
    shards: &'a [Shard],
    items: Vec<Item>,
    /// The order of one epoch (epoch, permutation of `items`), made when first needed.
    order: Option<(u64, Vec<usize>)>,
    opt: AdamW,
    /// Copies on other devices ([`Trainer::add_replicas`]).
    replicas: Vec<Replica>,
    pub state: TrainState,
    sched: Schedule,
    solver: DdimSolver,
    fps: f32,
    /// See [`Trainer::recompute_when_out_of_memory`].
    recompute_on_oom: bool,
    /// The rewards may score every record, not only those with a short caption
    /// ([`TrainConfig::reward_captions`] resolved on the data).
    rewards_any: bool,
    /// The model folder the run trains from, recorded in its checkpoints
    /// ([`Trainer::record_models_folder`]).
    models_folder: Option<PathBuf>,
}

/// The order of epoch `epoch`: a seeded Fisher-Yates shuffle.
fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = Gaussian::new(seed ^ 0x0E90_C400 ^ epoch.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = ((rng.uniform() * (i + 1) as f64) as usize).min(i);
        v.swap(i, j);
    }
    v
}

impl<'a> Trainer<'a> {
    pub fn new(mut config: TrainConfig, student: Student, models: &'a RewardModels, shards: &'a [Shard]) -> std::result::Result<Trainer<'a>, TrainError> {
        let weights: Vec<f32> = models.image.iter().map(|r| r.1).collect();
        if config.image_reward_weights.as_ref().is_some_and(|w| *w != weights) {
            return Err(TrainError::Setup(format!("the settings name image-reward weights {:?}, the reward models have {weights:?}", config.image_reward_weights)));
        }
        config.image_reward_weights = Some(weights);
        let items: Vec<Item> = shards.iter().enumerate().flat_map(|(s, sh)| (0..sh.records.len()).map(move |j| (s, j))).collect();
        if items.is_empty() {
            return Err(TrainError::Setup("the shards hold no records".into()));
        }
        config.check().map_err(TrainError::Setup)?;
        let sc = &shards[0].config;
        if config.img_frames > sc.frames || config.vid_frames > sc.frames {
            return Err(TrainError::Setup(format!("reward frames ({} image, {} video) exceed the clips' {} frames", config.img_frames, config.vid_frames, sc.frames)));
        }
        if config.ema_target.is_some() != student.target.is_some() {
            return Err(TrainError::Setup("the student was not loaded for this run's EMA target setting (use load_run with the same config)".into()));
        }
        let sched = Schedule::videocrafter();
        let solver = DdimSolver::new(&sched, sc.ddim_steps);
        let opt = AdamW::new(
            AdamWConfig { lr: config.lr_at(0), beta1: config.adam_betas.0, beta2: config.adam_betas.1, eps: config.adam_eps, weight_decay: config.weight_decay, eight_bit: config.adam8bit },
            param_groups(&student, config.temporal_lr_scale),
        );
        let state = TrainState { step: 0, epoch: 0, cursor: 0, rng: Gaussian::new(config.seed ^ 0x7A11).state(), recompute_since: None };
        let any_short = shards.iter().flat_map(|s| &s.records).any(|r| r.short_caption.is_some());
        let rewards_any = match config.reward_captions {
            RewardCaptions::Auto => !any_short,
            RewardCaptions::Short => false,
            RewardCaptions::Any => true,
        };
        let mut trainer = Trainer { fps: sc.fps, config, student, models, shards, items, order: None, opt, replicas: vec![], state, sched, solver, recompute_on_oom: false, rewards_any, models_folder: None };
        // recomputation as the settings say, however the student and models were loaded
        trainer.set_recompute(trainer.config.recompute);
        Ok(trainer)
    }

    /// Records `dir`, the model folder the student was loaded from, in the checkpoints, so
    /// that `export` finds the rest of the models.
    pub fn record_models_folder(&mut self, dir: &Path) {
        self.models_folder = Some(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()));
    }

    /// Points of the data's DDIM grid (the origin a consistency sampler of this run uses).
    pub fn grid_points(&self) -> usize {
        self.solver.grid.len()
    }

    /// The diffusion schedule the student samples with.
    pub fn schedule(&self) -> &Schedule {
        &self.sched
    }

    fn next_item(&mut self) -> Item {
        let epoch = self.state.epoch;
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.order = Some((epoch, epoch_order(self.items.len(), self.config.seed, epoch)));
        }
        let item = self.items[self.order.as_ref().expect("made above").1[self.state.cursor]];
        self.state.cursor += 1;
        if self.state.cursor == self.items.len() {
            self.state.cursor = 0;
            self.state.epoch += 1;
        }
        item
    }

    /// The run's fixed parts a record's work reads (shared by the devices' threads).
    fn recipe(&self) -> Recipe<'_> {
        Recipe { config: &self.config, sched: &self.sched, solver: &self.solver, shards: self.shards, fps: self.fps }
    }

    /// Whether the rewards may score every record (not only those with a short caption).
    pub fn rewards_score_any_record(&self) -> bool {
        self.rewards_any
    }

    /// Which of a step's records get the image and which the video reward: those with a
    /// short caption (or all, [`Trainer::rewards_score_any_record`]) while the reward is
    /// on, at most `img_reward_records` /
    /// `vid_reward_records` of them, drawn at random from the step's stream (no draw
    /// without a limit or while they are fewer).
    fn rewarded(&self, rng: &mut Gaussian, items: &[Item]) -> [Vec<bool>; 2] {
        let c = &self.config;
        let eligible: Vec<bool> = items.iter().map(|&(s, j)| self.rewards_any || self.shards[s].records[j].short_caption.is_some()).collect();
        let mut pick = |on: bool, limit: Option<usize>| -> Vec<bool> {
            if !on {
                return vec![false; items.len()];
            }
            let mut chosen = eligible.clone();
            let mut candidates: Vec<usize> = (0..items.len()).filter(|&k| eligible[k]).collect();
            if let Some(limit) = limit.filter(|&l| l < candidates.len()) {
                // the first `limit` places of a partial Fisher-Yates shuffle
                for i in 0..limit {
                    let j = i + ((rng.uniform() * (candidates.len() - i) as f64) as usize).min(candidates.len() - i - 1);
                    candidates.swap(i, j);
                }
                for &k in &candidates[limit..] {
                    chosen[k] = false;
                }
            }
            chosen
        };
        let image = pick(c.beta_img > 0.0 && self.models.has_image_reward(), c.img_reward_records);
        let video = pick(c.beta_vid > 0.0 && self.models.video.is_some(), c.vid_reward_records);
        [image, video]
    }

    /// What record `item` draws from the step's stream, in the order the step draws it;
    /// `image` and `video`: whether it gets those rewards ([`Trainer::rewarded`]).
    fn draws(&self, rng: &mut Gaussian, item: Item, image: bool, video: bool) -> Result<RecordDraws> {
        let c = &self.config;
        let shard = &self.shards[item.0];
        // the reference code's w: drawn at every use of a record
        let w = c.redraw_w.map(|(lo, hi)| lo + (hi - lo) * rng.uniform() as f32);
        let mut d = RecordDraws { noise: vec![], image_frames: vec![], video: None, reward_weights: (0.0, 0.0), w };
        if !(image || video) {
            return Ok(d);
        }
        let shape = shard.latent_shape(item.1)?; // (1, C, F, h, w): the consistency output's
        let (f, numel) = (shape[2], shape.iter().product::<usize>());
        let generated = match c.reward_input {
            RewardInput::Data => 0,
            RewardInput::Noise => 1,
            RewardInput::Sample => c.reward_sample_steps,
        };
        // the start, then the noise before each later step
        d.noise = (0..generated).map(|_| rng.take(numel)).collect();
        if image {
            d.image_frames = pick_frames(rng, f, c.img_frames);
        }
        if video {
            let frames = strided_frames(rng, f, c.vid_frames);
            d.video = Some((frames, rng.uniform() as f32));
        }
        Ok(d)
    }

    /// Every device of the run: the student's, then the replicas'.
    fn devices(&self) -> Vec<Gpu> {
        std::iter::once(self.student.unet_gpu()).chain(self.replicas.iter().map(|r| r.student.unet_gpu())).collect()
    }

    /// Shares every step's records with copies of the run on other devices (data
    /// parallelism): record k of a step runs on device k mod n (the student's is device 0),
    /// and device 0 adds the records' gradients in record order, as one device would, then
    /// steps the optimizer and sends the new weights to the copies. The steps are the
    /// single-device steps — bit for bit on devices of one model, so the number of devices
    /// may change when a run resumes. Each replica must be loaded like the student
    /// ([`load_run`] on its device); its trainable weights are overwritten with the
    /// student's.
    pub fn add_replicas(&mut self, replicas: Vec<Replica>) -> std::result::Result<(), TrainError> {
        let shapes = |s: &Student| s.trainable_names().into_iter().zip(s.trainable().iter().map(|t| t.shape().to_vec())).collect::<Vec<_>>();
        let reward_weights = |m: &RewardModels| m.image.iter().map(|r| r.1).collect::<Vec<f32>>();
        for (i, r) in replicas.iter().enumerate() {
            if shapes(&r.student) != shapes(&self.student) || r.student.target.is_some() != self.student.target.is_some() {
                return Err(TrainError::Setup(format!("replica {} was not loaded like the student: its trainable weights differ", i + 1)));
            }
            if reward_weights(&r.models) != reward_weights(self.models) || r.models.video.is_some() != self.models.video.is_some() {
                return Err(TrainError::Setup(format!("replica {} was not loaded like the student: its reward models differ", i + 1)));
            }
        }
        self.replicas.extend(replicas);
        self.set_recompute(self.config.recompute);
        self.sync_replicas()?;
        Ok(())
    }

    /// The number of devices the steps run on.
    pub fn device_count(&self) -> usize {
        1 + self.replicas.len()
    }

    /// Copies the student's trainable weights (and its EMA target's) to every replica.
    fn sync_replicas(&self) -> Result<()> {
        if self.replicas.is_empty() {
            return Ok(());
        }
        let synced = |s: &Student| [s.trainable(), s.target_params()].concat();
        let dst: Vec<Vec<Tensor>> = self.replicas.iter().map(|r| synced(&r.student)).collect();
        Tensor::read_each(&synced(&self.student).iter().collect::<Vec<_>>(), |k, data| -> Result<()> {
            for d in &dst {
                d[k].write(&data)?;
            }
            Ok(())
        })
    }

    /// The records' forward, rewards and backward (on the replicas too): their gradients
    /// summed in record order, and their values.
    fn run_records(&self, jobs: &[(Item, RecordDraws)]) -> Result<(Vec<Tensor>, Vec<RecordValues>)> {
        let b = jobs.len();
        let recipe = self.recipe();
        let mut acc: Option<Vec<Tensor>> = None;
        let mut values = Vec::with_capacity(b);
        let mut add = |r: RecordGrads| -> Result<()> {
            match &mut acc {
                None => acc = Some(r.grads),
                // tensor by tensor, each sum replacing its addends at once: the sums and the
                // record's gradients are never all held next to the running sums
                Some(a) => {
                    for (x, y) in a.iter_mut().zip(r.grads) {
                        *x = t2v_kernels::ops::add(x, &y)?;
                    }
                }
            }
            values.push(r.values);
            Ok(())
        };
        if self.replicas.is_empty() {
            for (item, draws) in jobs {
                add(recipe.record(&self.student, self.models, *item, draws, b)?)?;
            }
        } else {
            data_parallel(&recipe, (&self.student, self.models), &self.replicas, jobs, &mut add)?;
        }
        Ok((acc.expect("batch of at least one"), values))
    }

    /// Recomputation on or off for the rest of the run (student, reward models, replicas):
    /// the one place that switches it.
    fn set_recompute(&mut self, on: bool) {
        self.config.recompute = on;
        self.student.unet.set_checkpointing(on);
        self.models.set_checkpointing(on);
        for r in &mut self.replicas {
            r.student.unet.set_checkpointing(on);
            r.models.set_checkpointing(on);
        }
    }

    /// Turns recomputation on (for the rest of the run, resumed runs included) when a step
    /// runs out of device memory without it, and runs that step again;
    /// [`Trainer::recompute_switched_at`] then says which step. Off by default: the error
    /// comes back.
    pub fn recompute_when_out_of_memory(&mut self, on: bool) {
        self.recompute_on_oom = on;
    }

    /// The step at which [`Trainer::recompute_when_out_of_memory`] turned recomputation on.
    pub fn recompute_switched_at(&self) -> Option<u64> {
        self.state.recompute_since
    }

    /// One optimizer step over `batch_size` records.
    pub fn step(&mut self) -> std::result::Result<StepMetrics, TrainError> {
        let t0 = Instant::now();
        let devices = self.devices();
        for d in &devices {
            d.reset_peak_memory();
        }
        let b = self.config.batch_size;
        let mut rng = Gaussian::from_state(self.state.rng);
        let items: Vec<Item> = (0..b).map(|_| self.next_item()).collect();
        let [image, video] = self.rewarded(&mut rng, &items);
        let mut jobs = Vec::with_capacity(b);
        for (k, &item) in items.iter().enumerate() {
            jobs.push((item, self.draws(&mut rng, item, image[k], video[k])?));
        }
        // each reward's term is the mean over the records that have it
        let weight = |n: usize| 1.0 / n.max(1) as f32;
        let (n_img, n_vid) = (jobs.iter().filter(|j| !j.1.image_frames.is_empty()).count(), jobs.iter().filter(|j| j.1.video.is_some()).count());
        for (_, d) in &mut jobs {
            d.reward_weights = (weight(n_img), weight(n_vid));
        }
        let (grads, values) = match self.run_records(&jobs) {
            // out of memory while keeping activations: again with recomputation, for this
            // step and the rest of the run (the same step up to rounding: the draws are made)
            Err(e) if self.recompute_on_oom && !self.config.recompute && e.is_out_of_memory() => {
                self.set_recompute(true);
                self.state.recompute_since = Some(self.state.step + 1);
                self.run_records(&jobs)?
            }
            r => r?,
        };
        let mean = |v: Vec<f32>| (!v.is_empty()).then(|| v.iter().sum::<f32>() / v.len() as f32);
        let image_reward = mean(values.iter().filter_map(|v| v.image_reward).collect());
        let video_reward = mean(values.iter().filter_map(|v| v.video_reward).collect());
        let cd_loss = values.iter().map(|v| v.cd).sum::<f32>() / b as f32;
        let loss = cd_loss - self.config.beta_img * image_reward.unwrap_or(0.0) - self.config.beta_vid * video_reward.unwrap_or(0.0);
        if !loss.is_finite() {
            return Err(TrainError::NonFinite { step: self.state.step + 1, what: format!("loss {loss}"), checkpoint: String::new() });
        }
        let lr = self.config.lr_at(self.state.step);
        self.opt.config.lr = lr;
        let info = self.opt.step(&grads, Some(self.config.max_grad_norm))?;
        // the global norms are finite iff every gradient element is (one read instead of a
        // check per tensor); on failure the in-memory weights are spoiled, but the run stops
        // and the last checkpoint was written before them
        let norms = match &info.unclipped_norm {
            Some(text) => t2v_kernels::ops::concat(&[&info.grad_norm, text], 0)?.to_vec()?,
            None => info.grad_norm.to_vec()?,
        };
        let (grad_norm, text_grad_norm) = (norms[0], norms.get(1).copied());
        if let Some(bad) = norms.iter().find(|n| !n.is_finite()) {
            return Err(TrainError::NonFinite { step: self.state.step + 1, what: format!("gradient norm {bad}"), checkpoint: String::new() });
        }
        if let Some(decay) = self.config.ema_target {
            self.student.update_target(decay)?;
        }
        self.sync_replicas()?;
        self.state.rng = rng.state();
        self.state.step += 1;
        let mib = |f: &dyn Fn(&t2v_kernels::PoolStats) -> u64| devices.iter().map(|d| f(&d.memory())).max().unwrap_or(0) as f32 / 1048576.0;
        let (peak_gpu_mib, peak_live_mib) = (mib(&|m| m.peak_total_bytes), mib(&|m| m.peak_live_bytes));
        Ok(StepMetrics { step: self.state.step, loss, cd_loss, image_reward, video_reward, image_reward_records: n_img, video_reward_records: n_vid, grad_norm, text_grad_norm, lr, seconds: t0.elapsed().as_secs_f32(), peak_gpu_mib, peak_live_mib })
    }
}

/// Where a run writes: `checkpoints/step-*/`, `metrics.jsonl`, `metrics.png`, and the final
/// student model folder `model/`.
pub struct RunOptions {
    pub out: PathBuf,
    /// Sample and score held-out prompts during the run (OUT/validation.jsonl).
    pub validation: Option<Validation>,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    /// Stop after this step even if `steps` is larger (an interrupted run, for tests).
    pub stop_after: Option<u64>,
    pub quiet: bool,
}

/// Runs (or resumes, when `out/checkpoints` has a checkpoint) to `config.steps`. Returns
/// the metrics of the steps run now.
pub fn run(trainer: &mut Trainer, o: &RunOptions) -> std::result::Result<Vec<StepMetrics>, TrainError> {
    std::fs::create_dir_all(&o.out).map_err(|e| WeightsError::Write { path: o.out.display().to_string(), msg: e.to_string() })?;
    let ckpt_dir = o.out.join("checkpoints");
    if let Some(last) = list_checkpoints(&ckpt_dir).pop() {
        let was = trainer.load_checkpoint(&last)?;
        if !o.quiet {
            eprintln!("resuming from {} (step {})", last.display(), trainer.state.step);
            if was.steps != trainer.config.steps && trainer.config.lr_schedule.decays() {
                let name = clap::ValueEnum::to_possible_value(&trainer.config.lr_schedule).map(|v| v.get_name().to_string()).unwrap_or_default();
                eprintln!("note: the {name} learning-rate schedule now ends at step {} (it ended at {}): the later steps' rates change", trainer.config.steps, was.steps);
            }
        }
    }
    let metrics_path = o.out.join("metrics.jsonl");
    let mut history: Vec<StepMetrics> = read_jsonl(&metrics_path);
    history.retain(|m| m.step <= trainer.state.step);
    let end = o.stop_after.map_or(trainer.config.steps, |s| s.min(trainer.config.steps));
    let validation_path = o.out.join("validation.jsonl");
    let mut validations: Vec<ValidationRow> = read_jsonl(&validation_path);
    validations.retain(|r| r.step <= trainer.state.step);
    let validate = |trainer: &Trainer, validations: &mut Vec<ValidationRow>| -> Result<()> {
        let Some(v) = &o.validation else { return Ok(()) };
        if validations.last().is_some_and(|r| r.step == trainer.state.step) {
            return Ok(());
        }
        let row = validation::validate(trainer, v, &o.out)?;
        if !o.quiet {
            eprintln!("{}", validation::describe(&row));
        }
        validations.push(row);
        write_jsonl(&validation_path, validations)?;
        validation::plot(&o.out.join("validation.png"), validations)
    };
    if trainer.state.step < end {
        validate(trainer, &mut validations)?; // the starting point
    }
    let mut progress = crate::pipeline::progress::Progress::new("train", end.saturating_sub(trainer.state.step) as usize).quiet(o.quiet);
    let mut now = Vec::new();
    let mut last_good = list_checkpoints(&ckpt_dir).pop().map(|p| p.display().to_string()).unwrap_or_else(|| "none (no checkpoint written yet)".into());
    while trainer.state.step < end {
        let m = match trainer.step() {
            Ok(m) => m,
            Err(TrainError::NonFinite { step, what, .. }) => {
                write_jsonl(&metrics_path, &history)?;
                return Err(TrainError::NonFinite { step, what, checkpoint: last_good });
            }
            Err(e) => return Err(e),
        };
        if trainer.recompute_switched_at() == Some(m.step) && !o.quiet {
            eprintln!("\nstep {}: out of device memory keeping the activations; recomputing them from now on, as with --recompute (the same steps up to rounding)", m.step);
        }
        let mem = if m.peak_live_mib >= 1024.0 { format!("{:.1} GiB", m.peak_live_mib / 1024.0) } else { format!("{:.0} MiB", m.peak_live_mib) };
        let note = format!(
            "loss {:.4} cd {:.4}{}{} mem {mem}",
            m.loss,
            m.cd_loss,
            m.image_reward.map(|r| format!(" img {r:.3}")).unwrap_or_default(),
            m.video_reward.map(|r| format!(" vid {r:.3}")).unwrap_or_default()
        );
        history.push(m.clone());
        now.push(m);
        progress.advance(1, &note);
        let s = trainer.state.step;
        if s % o.checkpoint_every.max(1) == 0 || s == end {
            write_jsonl(&metrics_path, &history)?;
            last_good = match trainer.save_checkpoint(&ckpt_dir, o.keep_checkpoints) {
                Ok(p) => p.display().to_string(),
                Err(e) => return Err(TrainError::Checkpoint { step: s, msg: e.to_string(), kept: last_good }),
            };
            crate::pipeline::plot::plot_metrics(&o.out.join("metrics.png"), &history)?;
        }
        if o.validation.as_ref().is_some_and(|v| s % v.every.max(1) == 0 || s == end) {
            validate(trainer, &mut validations)?;
        }
    }
    Ok(now)
}

/// The rows of a JSON-lines file a run writes (`metrics.jsonl`, `validation.jsonl`); none
/// when it is missing, unreadable rows skipped.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path).map(|s| s.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()).unwrap_or_default()
}

fn write_jsonl<T: Serialize>(path: &Path, ms: &[T]) -> Result<()> {
    let text: String = ms.iter().map(|m| serde_json::to_string(m).expect("json") + "\n").collect();
    t2v_kernels::io::write_atomic(path, text.as_bytes())?;
    Ok(())
}
