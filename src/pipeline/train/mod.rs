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
use t2v_kernels::autograd::{self as ad, Lora, Tape, Var};
use t2v_kernels::optim::{AdamW, AdamWConfig, ParamGroup};
use t2v_kernels::{Gpu, Tensor};

use crate::diffusion::distill::Distance;
use crate::diffusion::{DdimSolver, Schedule};
use crate::models::clip::TextTower;
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet3d::Unet3d;
use crate::models::vae::Vae;
use crate::models::weights::{save_weights, save_weights_made, Result, SaveDtype, WeightFile, WeightsError};
use crate::pipeline::sample::Gaussian;
use crate::pipeline::shards::{dataset_fingerprint, Shard};
use crate::pipeline::validation::{self, Validation, ValidationRow};
use crate::reward::{ImageTextReward, VideoTextReward};

mod export;
mod lr_schedule;
mod parallel;
mod record;

pub use export::{export_checkpoint, resolve_checkpoint, Exported};

pub use lr_schedule::LrSchedule;

pub use parallel::Replica;
use parallel::data_parallel;
use record::{pick_frames, strided_frames, RecordDraws, RecordGrads, RecordValues, Recipe};

/// LoRA settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
}

/// Settings of a run (stored in every checkpoint; a resumed run must use the same).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub steps: u64,
    /// Records per optimizer step (gradients are averaged).
    pub batch_size: usize,
    /// The base learning rate (the schedule's multiplier applies to it).
    pub lr: f32,
    /// How the rate changes over the run (the reference: constant).
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Steps of linear warmup of schedules that have one.
    #[serde(default)]
    pub lr_warmup_steps: u64,
    /// Multiplies the rate of the temporal transformers' weights (the reference's
    /// `--temporal_lr_scale`, 1 there).
    #[serde(default = "one")]
    pub temporal_lr_scale: f32,
    pub weight_decay: f32,
    /// AdamW's beta1, beta2 and epsilon (the reference's `--adam_beta1`, `--adam_beta2`,
    /// `--adam_epsilon`: PyTorch's 0.9, 0.999, 1e-8).
    #[serde(default = "adam_betas")]
    pub adam_betas: (f32, f32),
    #[serde(default = "adam_eps")]
    pub adam_eps: f32,
    pub max_grad_norm: f32,
    /// The distance of the consistency loss (the reference: pseudo-Huber).
    #[serde(default)]
    pub loss: LossType,
    /// c of the pseudo-Huber distance.
    pub huber_c: f32,
    /// Targets from an exponential moving average of the student with this decay, updated
    /// after every step (the reference's `--use_target_unet` with `--ema_decay`, off there);
    /// None: the student itself under no_grad.
    #[serde(default)]
    pub ema_target: Option<f32>,
    /// Use the stored motion scores (the student then sees motion_gs).
    pub use_motion: bool,
    pub motion_gs: f32,
    pub motion_percentage: f32,
    pub noise_factor_paper: bool,
    pub beta_img: f32,
    pub beta_vid: f32,
    pub img_frames: usize,
    pub vid_frames: usize,
    /// At most this many records of a step get the image reward (drawn among those with a
    /// short caption; None: all of them). The reference rewards 1 of each process's 3.
    #[serde(default)]
    pub img_reward_records: Option<usize>,
    /// The same for the video reward (the reference: 1 record on each of its 2 video-reward
    /// processes).
    #[serde(default)]
    pub vid_reward_records: Option<usize>,
    /// Which records the rewards may score.
    #[serde(default)]
    pub reward_captions: RewardCaptions,
    /// Draw the guidance scale w ~ U[min, max] at every use of a record, as the reference
    /// code's training does (its `--w_min`, `--w_max`: 5, 15), instead of the w the record
    /// was preprocessed with (the paper's Algorithm 1). The teacher's conditional and
    /// unconditional outputs are stored apart, so either costs nothing.
    #[serde(default)]
    pub redraw_w: Option<(f32, f32)>,
    pub lora: Option<LoraConfig>,
    /// Train the conditioning text encoder too: its last `n` resblocks and its final layer
    /// norm, counted as the reference counts them (`--train_text_encoder` with
    /// `--unlocked_text_layers`, 4; off there): the very last block, which the UNet's
    /// penultimate-layer context does not read, is one of the `n` and gets no gradient, so
    /// `n - 1` blocks train. The student then reads the context its encoder makes of each
    /// record's caption instead of the stored one; these weights join the optimizer's
    /// default group, outside the gradient clipping (the reference clips the UNet's alone).
    /// Full fine-tuning only.
    #[serde(default)]
    pub text_layers: Option<usize>,
    /// What the rewards score (the reference: the consistency output on the data).
    #[serde(default)]
    pub reward_input: RewardInput,
    /// Sampler steps of [`RewardInput::Sample`].
    #[serde(default = "default_reward_sample_steps")]
    pub reward_sample_steps: usize,
    /// Recompute UNet blocks (also with LoRA), the reward frames' VAE decoding and the
    /// reward models' vision layers in the backward pass (less memory, ~1 more forward of
    /// time).
    #[serde(default)]
    pub recompute: bool,
    /// AdamW with 8-bit states (the reference's `--use_8bit_adam`, bitsandbytes'
    /// AdamW8bit): 2 bytes of optimizer state per weight instead of 8.
    #[serde(default)]
    pub adam8bit: bool,
    pub seed: u64,
    /// Dimension of the student's guidance-scale embeddings (256).
    pub cond_dim: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 8000,
            batch_size: 1,
            lr: 1e-5,
            lr_schedule: LrSchedule::Constant,
            lr_warmup_steps: 0,
            temporal_lr_scale: 1.0,
            weight_decay: 0.0,
            adam_betas: adam_betas(),
            adam_eps: adam_eps(),
            max_grad_norm: 1.0,
            loss: LossType::Huber,
            huber_c: 0.001,
            ema_target: None,
            use_motion: true,
            motion_gs: 0.05,
            motion_percentage: 0.5,
            noise_factor_paper: false,
            beta_img: 0.2,
            beta_vid: 0.5,
            img_frames: 2,
            vid_frames: 4,
            img_reward_records: None,
            vid_reward_records: None,
            reward_captions: RewardCaptions::Auto,
            redraw_w: None,
            lora: None,
            text_layers: None,
            reward_input: RewardInput::Data,
            reward_sample_steps: default_reward_sample_steps(),
            recompute: false,
            adam8bit: false,
            seed: 0,
            cond_dim: 256,
        }
    }
}

fn default_reward_sample_steps() -> usize {
    4
}

fn one() -> f32 {
    1.0
}

fn adam_betas() -> (f32, f32) {
    (0.9, 0.999)
}

fn adam_eps() -> f32 {
    1e-8
}

impl TrainConfig {
    /// What makes these settings unusable, whatever the data and models (checked before
    /// anything is loaded).
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.batch_size == 0 || self.img_frames == 0 || self.vid_frames == 0 || self.img_reward_records == Some(0) || self.vid_reward_records == Some(0) {
            return Err("batch size, frame counts and rewarded records must be at least 1".into());
        }
        self.lr_schedule.check(self.lr)?;
        if !(self.temporal_lr_scale.is_finite() && self.temporal_lr_scale >= 0.0) {
            return Err(format!("the temporal learning-rate scale must be a finite number >= 0, got {}", self.temporal_lr_scale));
        }
        let (b1, b2) = self.adam_betas;
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2) && self.adam_eps > 0.0) {
            return Err(format!("AdamW needs betas in [0, 1) and epsilon > 0, got betas {b1}, {b2} and epsilon {:e}", self.adam_eps));
        }
        if let Some(d) = self.ema_target.filter(|d| !(0.0..1.0).contains(d)) {
            return Err(format!("the EMA target's decay must be in [0, 1), got {d}"));
        }
        if self.ema_target.is_some() && self.lora.is_some() {
            return Err(EMA_WITH_LORA.into());
        }
        if self.text_layers == Some(0) {
            return Err("--unlocked-text-layers must be at least 1".into());
        }
        if self.text_layers.is_some() && self.lora.is_some() {
            return Err(TEXT_WITH_LORA.into());
        }
        if let Some((lo, hi)) = self.redraw_w.filter(|(lo, hi)| !(lo.is_finite() && hi.is_finite() && lo <= hi)) {
            return Err(format!("the guidance-scale range must be finite with min <= max, got {lo}..{hi}"));
        }
        Ok(())
    }

    /// The learning rate of optimizer step `step` (0 = the first).
    pub fn lr_at(&self, step: u64) -> f32 {
        (self.lr as f64 * self.lr_schedule.factor(step, self.lr_warmup_steps, self.steps, self.lr)) as f32
    }

    /// The distance of the consistency loss.
    pub fn distance(&self) -> Distance {
        match self.loss {
            LossType::Huber => Distance::PseudoHuber(self.huber_c),
            LossType::L2 => Distance::L2,
        }
    }
}

/// The consistency loss's distance (the reference's `--loss_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Pseudo-Huber with c = `huber_c` (the reference's default).
    #[default]
    Huber,
    /// Mean squared error.
    L2,
}

/// Which records reward feedback scores (the image rewards against the short caption, or
/// the caption where a record has none; the video reward against the caption).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RewardCaptions {
    /// `short` when some record of the data has a short caption, else `any`: the
    /// reference's two cases (its code scores the captions of data without short ones,
    /// unless the data's path names WebVid).
    #[default]
    Auto,
    /// Only records with a short caption (the paper: rewards on the WebVid part of the mix,
    /// whose captions the reward models read whole).
    Short,
    /// Every record.
    Any,
}

/// What reward feedback scores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum RewardInput {
    /// The reference: the consistency output `model_pred` from the record's noised data
    /// latent (one timestep per clip, fixed at preprocessing).
    #[default]
    Data,
    /// Not in the reference: the student's one-step generation from fresh pure noise at the
    /// top of the grid (the first step of the consistency sampler), with the record's prompt,
    /// w and the run's motion scale. Costs one more UNet forward and backward per rewarded
    /// record; scores what sampling starts from rather than noised training clips.
    Noise,
    /// Not in the reference: the student's whole multistep consistency sample from fresh
    /// noise (`reward_sample_steps` steps on the shards' grid, as `sample` draws them), with
    /// the gradient through every step. Costs that many UNet forwards and backwards per
    /// rewarded record; scores what a user gets, motion across the steps included.
    Sample,
}

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

/// The models a run uses besides the student.
pub struct RewardModels {
    pub vae: Vae,
    pub image: Vec<(ImageTextReward, f32)>,
    pub video: Option<Box<dyn VideoTextReward>>,
    pub tokenizer: ClipTokenizer,
}

/// The trainable state: the student and, with LoRA, its adapters.
pub struct Student {
    pub unet: Unet3d,
    /// Named UNet weights (checkpoint keys).
    pub params: Vec<(String, Tensor)>,
    /// With LoRA: (index into `params`, adapter) for every >= 2-D weight.
    pub adapters: Vec<(usize, Lora)>,
    /// The network of the consistency targets when it is not the student itself.
    pub target: Option<EmaTarget>,
    /// The conditioning text encoder when it trains too ([`TrainConfig::text_layers`]).
    pub text: Option<TextStudent>,
}

/// The conditioning text encoder of a run that trains it ([`TrainConfig::text_layers`]):
/// the whole tower in f32, of which `params` train.
pub struct TextStudent {
    pub tower: TextTower,
    /// The trained tensors (keys of the text file, without prefix).
    pub params: Vec<(String, Tensor)>,
    /// Every tensor of the tower (`params` among them), as its file is written.
    tensors: Vec<(String, Vec<usize>, Vec<Tensor>)>,
}

/// The prefix of the text encoder's weights among the student's trainable tensors (in
/// checkpoints): VideoCrafter2's key path of its conditioning tower.
const TEXT_PREFIX: &str = "cond_stage_model.model.";

impl TextStudent {
    /// The model folder's text tower in f32, its last `layers` resblocks (the reference's
    /// count: the last one, unread, included) and `ln_final` trainable.
    pub fn load(gpu: &Gpu, md: &crate::pipeline::model_dir::ModelDir, layers: usize) -> Result<TextStudent> {
        let (tower, tensors) = crate::pipeline::model_dir::load_text_file_tensors(gpu, &md.text.0, &md.text.1.text, crate::models::weights::WeightPrecision::F32)?;
        TextStudent::new(tower, tensors, layers).map_err(|msg| WeightsError::Data { path: md.text.0.display().to_string(), msg })
    }

    /// A loaded f32 tower and all its tensors (the loader's `all_tensors`), its last
    /// `layers` resblocks and `ln_final` trainable.
    pub fn new(tower: TextTower, tensors: Vec<(String, Vec<usize>, Vec<Tensor>)>, layers: usize) -> std::result::Result<TextStudent, String> {
        let total = tower.config.layers;
        if layers > total {
            return Err(format!("--unlocked-text-layers {layers}: the text encoder has {total} resblocks"));
        }
        // blocks [total - layers, total - 1): the penultimate-layer context reads them
        let trained = |key: &str| key.starts_with("ln_final.") || (total - layers..total.saturating_sub(1)).any(|i| key.starts_with(&format!("transformer.resblocks.{i}.")));
        let params = tensors.iter().filter(|(k, _, parts)| trained(k) && parts.len() == 1).map(|(k, _, parts)| (k.clone(), parts[0].clone())).collect();
        Ok(TextStudent { tower, params, tensors })
    }

    /// Every tensor of the tower (key, shape, row chunks), the trained ones among them.
    pub fn tensors(&self) -> &[(String, Vec<usize>, Vec<Tensor>)] {
        &self.tensors
    }

    /// Writes the whole tower (trained weights included) as a text file `load_text_file`
    /// reads.
    pub fn save(&self, path: &Path, dtype: SaveDtype, steps: u64) -> Result<()> {
        crate::models::weights::save_weight_parts(path, &self.tensors, dtype, &[("model", "t2v-turbo student text encoder".into()), ("steps", steps.to_string())])
    }
}

/// An exponential moving average of the student's weights that the consistency targets
/// come from ([`TrainConfig::ema_target`]); full fine-tuning only.
pub struct EmaTarget {
    pub unet: Unet3d,
    /// Its weights, in the order of [`Student::params`].
    pub params: Vec<Tensor>,
}

impl Student {
    /// Adds LoRA adapters (deterministic in `seed`) to every >= 2-D weight.
    pub fn with_lora(mut self, cfg: LoraConfig, seed: u64) -> Result<Student> {
        let gpu = self.unet_gpu();
        for (i, (_, w)) in self.params.iter().enumerate() {
            if w.shape().len() >= 2 {
                let o = w.shape()[0];
                self.adapters.push((i, Lora::linear(&gpu, w.numel() / o, o, cfg.rank, cfg.alpha, seed ^ (i as u64).wrapping_mul(0x9E37_79B9))?));
            }
        }
        Ok(self)
    }

    fn unet_gpu(&self) -> Gpu {
        self.params[0].1.gpu().clone()
    }

    /// Takes targets from `unet` (a copy of the student: the same checkpoint keys and
    /// shapes), whose weights [`Student::update_target`] then moves towards the student's.
    pub fn with_ema_target(mut self, unet: Unet3d, params: Vec<(String, Tensor)>) -> Result<Student> {
        let bad = |msg: String| Err(WeightsError::Data { path: "EMA target".into(), msg });
        if !self.adapters.is_empty() {
            return bad("an EMA target needs full fine-tuning (LoRA adapters train only part of each weight)".into());
        }
        if params.len() != self.params.len() {
            return bad(format!("{} weights, the student has {}", params.len(), self.params.len()));
        }
        for ((n, t), (m, s)) in params.iter().zip(&self.params) {
            if n != m || t.shape() != s.shape() {
                return bad(format!("{n} {:?} where the student has {m} {:?}", t.shape(), s.shape()));
            }
        }
        self.target = Some(EmaTarget { unet, params: params.into_iter().map(|(_, t)| t).collect() });
        Ok(self)
    }

    /// The network the consistency targets come from, when not the student itself.
    pub fn target_unet(&self) -> Option<&Unet3d> {
        self.target.as_ref().map(|t| &t.unet)
    }

    /// target <- decay * target + (1 - decay) * student, weight by weight (the reference's
    /// `update_ema` after every optimizer step); nothing without a target.
    pub fn update_target(&self, decay: f32) -> Result<()> {
        let Some(target) = &self.target else { return Ok(()) };
        for (t, (_, s)) in target.params.iter().zip(&self.params) {
            t2v_kernels::ops::axpby_assign(t, decay, s, 1.0 - decay)?;
        }
        Ok(())
    }

    /// The EMA target's weights (empty without one), in the order of [`Student::params`].
    fn target_params(&self) -> Vec<Tensor> {
        self.target.as_ref().map(|t| t.params.clone()).unwrap_or_default()
    }

    /// The tensors the optimizer updates: the UNet's (or its adapters), then the text
    /// encoder's when it trains.
    pub fn trainable(&self) -> Vec<Tensor> {
        let unet: Vec<Tensor> = if self.adapters.is_empty() {
            self.params.iter().map(|(_, t)| t.clone()).collect()
        } else {
            self.adapters.iter().flat_map(|(_, l)| [l.down.clone(), l.up.clone()]).collect()
        };
        unet.into_iter().chain(self.text_params().map(|(_, t)| t.clone())).collect()
    }

    /// Names of [`Student::trainable`] in checkpoints (the text encoder's under
    /// VideoCrafter2's `cond_stage_model.model.`).
    pub fn trainable_names(&self) -> Vec<String> {
        let unet: Vec<String> = if self.adapters.is_empty() {
            self.params.iter().map(|(n, _)| n.clone()).collect()
        } else {
            self.adapters.iter().flat_map(|(i, _)| [format!("{}.lora_down", self.params[*i].0), format!("{}.lora_up", self.params[*i].0)]).collect()
        };
        unet.into_iter().chain(self.text_params().map(|(n, _)| format!("{TEXT_PREFIX}{n}"))).collect()
    }

    /// The trained text encoder's tensors (none when it does not train).
    fn text_params(&self) -> impl Iterator<Item = &(String, Tensor)> {
        self.text.iter().flat_map(|t| &t.params)
    }

    /// Puts the student on `tape`: trainable weights, or frozen weights with their
    /// adapters attached (tracked through the adapters).
    fn attach(&self, tape: &Tape) -> Result<Vec<Var>> {
        if self.adapters.is_empty() {
            tape.train_only(&self.trainable());
            return Ok(vec![]);
        }
        let mut leaves = Vec::new();
        for (i, l) in &self.adapters {
            // linear and conv layers apply it next to the weight, others read it merged
            let vars = l.attach(tape, &self.params[*i].1)?;
            leaves.push(vars.down);
            leaves.push(vars.up);
        }
        Ok(leaves)
    }

    /// Puts the student on a tape for sampling: with LoRA, the adapters merged into the
    /// weights it reads, untracked (nothing to do without adapters).
    pub(crate) fn attach_for_sampling(&self, tape: &Tape) -> Result<()> {
        if !self.adapters.is_empty() {
            tape.no_grad(|| self.attach(tape))?;
        }
        Ok(())
    }

    /// Gradients of [`Student::trainable`] (zeros where none).
    fn grads(&self, tape: &Tape, grads: &ad::Grads, leaves: &[Var]) -> Result<Vec<Tensor>> {
        let zero = |t: &Tensor| Tensor::zeros(t.gpu(), t.shape());
        let param = |p: &Tensor| Ok(match tape.param_grad(grads, p)? { Some(g) => g, None => zero(p)? });
        if self.adapters.is_empty() {
            return self.trainable().iter().map(param).collect();
        }
        leaves.iter().map(|v| Ok(match grads.get(v) { Some(g) => g.reshape(v.shape())?, None => zero(v.value())? })).collect()
    }

    /// The UNet weights with adapters merged (what a sampler loads).
    pub fn merged_params(&self) -> Result<Vec<(String, Tensor)>> {
        (0..self.params.len()).map(|i| Ok((self.params[i].0.clone(), self.merged_param(i)?))).collect()
    }

    /// UNet weight `i` with its adapter merged (the weight itself without one).
    fn merged_param(&self, i: usize) -> Result<Tensor> {
        let w = &self.params[i].1;
        Ok(match self.adapters.iter().find(|(k, _)| *k == i) {
            Some((_, l)) => l.merge(w)?,
            None => w.clone(),
        })
    }
}

/// Loads what a run needs from a model folder: the student (from the folder's UNet: a
/// teacher gets the student's new layers, deterministic in the seed; with LoRA, adapters),
/// the VAE, reward models (image-reward weights overridden by `reward_weights`) and the
/// tokenizer.
pub fn load_run(gpu: &Gpu, md: &crate::pipeline::model_dir::ModelDir, config: &TrainConfig, reward_weights: Option<&[f32]>) -> std::result::Result<(Student, RewardModels), TrainError> {
    let student = load_student(gpu, md, config)?;
    let models = RewardModels::load(gpu, md, reward_weights)?;
    models.set_checkpointing(config.recompute);
    Ok((student, models))
}

/// The trainable part of [`load_run`]: the student (with its LoRA adapters, trained text
/// encoder and EMA target as `config` asks), without the reward models.
pub fn load_student(gpu: &Gpu, md: &crate::pipeline::model_dir::ModelDir, config: &TrainConfig) -> std::result::Result<Student, TrainError> {
    config.check().map_err(TrainError::Setup)?;
    let init = (!md.is_student()).then_some((config.cond_dim, config.seed));
    let load = || crate::pipeline::model_dir::load_unet_file(gpu, &md.unet.0, &md.unet.1, init, crate::models::weights::WeightPrecision::F32);
    let (mut unet, params) = load()?;
    unet.set_checkpointing(config.recompute);
    let mut student = Student { unet, params, adapters: vec![], target: None, text: None };
    if let Some(l) = config.lora {
        student = student.with_lora(l, config.seed)?;
    }
    if let Some(layers) = config.text_layers {
        student.text = Some(TextStudent::load(gpu, md, layers)?);
    }
    if config.ema_target.is_some() {
        // the same file and initialisation: the target starts as the student
        let (unet, params) = load()?;
        student = student.with_ema_target(unet, params)?;
    }
    Ok(student)
}

impl RewardModels {
    /// The VAE, reward models (image-reward weights overridden by `reward_weights`) and
    /// tokenizer of a model folder.
    pub fn load(gpu: &Gpu, md: &crate::pipeline::model_dir::ModelDir, reward_weights: Option<&[f32]>) -> std::result::Result<RewardModels, TrainError> {
        let mut image = md.load_image_rewards(gpu)?;
        if let Some(ws) = reward_weights {
            if ws.len() != image.len() {
                return Err(TrainError::Setup(format!("{} reward weights given, the model folder has {} image rewards", ws.len(), image.len())));
            }
            for (r, w) in image.iter_mut().zip(ws) {
                r.1 = *w;
            }
        }
        let tokenizer = ClipTokenizer::new().map_err(|e| TrainError::Setup(e.to_string()))?;
        Ok(RewardModels { vae: md.load_vae(gpu)?, image, video: md.load_video_reward(gpu)?, tokenizer })
    }

    /// Recompute the reward models' vision layers in the backward pass instead of keeping
    /// their activations (`train --recompute`; the reward frames' VAE decoding follows
    /// [`TrainConfig::recompute`]).
    pub fn set_checkpointing(&self, on: bool) {
        for (r, _) in &self.image {
            r.clip.vision.set_checkpointing(on);
        }
        if let Some(v) = &self.video {
            v.set_checkpointing(on);
        }
    }

    /// R_img: the weighted sum over the image rewards of their mean score of `images`
    /// (N, 3, H, W) in [-1, 1] against `ids` (one per image); None without image rewards.
    pub fn image_reward(&self, images: &Var, ids: &[Vec<u32>]) -> Result<Option<Var>> {
        let mut r: Option<Var> = None;
        for (model, weight) in &self.image {
            let s = ad::scale(&ad::mean_all(&model.score(images, ids)?)?, *weight)?;
            r = Some(match r {
                Some(r) => ad::add(&r, &s)?,
                None => s,
            });
        }
        Ok(r)
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
    pub fn new(config: TrainConfig, student: Student, models: &'a RewardModels, shards: &'a [Shard]) -> std::result::Result<Trainer<'a>, TrainError> {
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
        let image = pick(c.beta_img > 0.0 && !self.models.image.is_empty(), c.img_reward_records);
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

impl Trainer<'_> {
    /// Writes a checkpoint folder `dir/step-{step:06}` atomically (written under a
    /// temporary name, then renamed), then drops all but the newest `keep`.
    pub fn save_checkpoint(&self, dir: &Path, keep: usize) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|e| WeightsError::Write { path: dir.display().to_string(), msg: e.to_string() })?;
        let fin = dir.join(format!("step-{:06}", self.state.step));
        t2v_kernels::io::write_atomic_dir(&fin, |tmp| -> Result<()> {
            let named: Vec<(String, Tensor)> = self.student.trainable_names().into_iter().zip(self.student.trainable()).collect();
            save_weights(&tmp.join("student.safetensors"), &named, SaveDtype::F32, &[("format", "t2v-turbo student".into())])?;
            if let Some(target) = &self.student.target {
                let named: Vec<(String, Tensor)> = self.student.params.iter().map(|(n, _)| n.clone()).zip(target.params.iter().cloned()).collect();
                save_weights(&tmp.join(EMA_TARGET_FILE), &named, SaveDtype::F32, &[("format", "t2v-turbo ema target".into())])?;
            }
            self.opt.save(&tmp.join("optimizer.safetensors"))?;
            let mut state = serde_json::json!({ "state": self.state, "config": self.config, "data": dataset_fingerprint(self.shards) });
            if let Some(models) = &self.models_folder {
                state["models"] = serde_json::json!(models.display().to_string());
            }
            Ok(t2v_kernels::io::write_atomic(&tmp.join("state.json"), serde_json::to_string_pretty(&state).expect("json").as_bytes())?)
        })?;
        let mut all = list_checkpoints(dir);
        while all.len() > keep.max(1) {
            let old = all.remove(0);
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(fin)
    }

    /// Restores weights, optimizer, stream and cursor from a checkpoint folder. The run's
    /// settings must equal the checkpoint's but for the length and recomputation; returns
    /// the checkpoint's.
    pub fn load_checkpoint(&mut self, ckpt: &Path) -> std::result::Result<TrainConfig, TrainError> {
        let CheckpointInfo { config, state, data, .. } = read_checkpoint(ckpt)?;
        // what may change: the length, and recomputation (the same steps up to rounding: a
        // run stopped out of memory continues with --recompute)
        let same = TrainConfig { steps: self.config.steps, recompute: self.config.recompute, ..config.clone() };
        if same != self.config {
            return Err(TrainError::Setup(format!(
                "{} was written with other settings; resume with the same ones (only --steps and --recompute may change).\n  checkpoint: {config:?}\n  now:        {:?}",
                ckpt.display(),
                self.config
            )));
        }
        // the order of records (the cursor's meaning) depends on the data; checkpoints
        // of earlier versions do not record it
        let now = dataset_fingerprint(self.shards);
        if let Some(was) = data.filter(|was| *was != now) {
            return Err(TrainError::Setup(format!(
                "{} was trained on other data ({was}; now {now}): resume with the same --data folders, in the same order",
                ckpt.display()
            )));
        }
        restore_student(ckpt, &self.student)?;
        self.opt.load(&ckpt.join("optimizer.safetensors"))?;
        self.sync_replicas()?;
        // a run that switched to recomputation when out of memory keeps it
        if state.recompute_since.is_some() && !self.config.recompute {
            self.set_recompute(true);
        }
        self.state = state;
        Ok(config)
    }
}

/// What a checkpoint's `state.json` holds.
pub struct CheckpointInfo {
    /// The run's settings.
    pub config: TrainConfig,
    /// Where the run was.
    pub state: TrainState,
    /// The fingerprint of the data it trained on (None: written before it was recorded).
    pub data: Option<serde_json::Value>,
    /// The model folder it trained from (None: not recorded, e.g. a run made through the
    /// library without [`Trainer::record_models_folder`]).
    pub models: Option<PathBuf>,
}

/// Reads a checkpoint folder's `state.json`.
pub fn read_checkpoint(ckpt: &Path) -> std::result::Result<CheckpointInfo, TrainError> {
    let file = ckpt.join("state.json");
    let bad = |e: &dyn std::fmt::Display| TrainError::Setup(format!("{}: {e} (not a checkpoint folder of `train`?)", file.display()));
    let text = std::fs::read_to_string(&file).map_err(|e| bad(&e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e))?;
    let config: TrainConfig = serde_json::from_value(v["config"].clone()).map_err(|e| bad(&e))?;
    let state: TrainState = serde_json::from_value(v["state"].clone()).map_err(|e| bad(&e))?;
    let models = v.get("models").and_then(|m| m.as_str()).map(PathBuf::from);
    Ok(CheckpointInfo { config, state, data: v.get("data").cloned(), models })
}

/// Writes a checkpoint's weights into `student` (loaded with the checkpoint's settings):
/// its trainable tensors and, with one, its EMA target.
pub fn restore_student(ckpt: &Path, student: &Student) -> std::result::Result<(), TrainError> {
    let restore = |file: &str, named: Vec<(String, Tensor)>| -> std::result::Result<(), TrainError> {
        let f = WeightFile::open(&ckpt.join(file))?;
        for (name, t) in named {
            let (shape, data) = f.host_f32(&name)?;
            if shape != t.shape() {
                return Err(TrainError::Setup(format!("{}: {name} is {shape:?}, the student has {:?}", ckpt.join(file).display(), t.shape())));
            }
            t.write(&data)?;
        }
        Ok(())
    };
    restore("student.safetensors", student.trainable_names().into_iter().zip(student.trainable()).collect())?;
    if let Some(target) = &student.target {
        restore(EMA_TARGET_FILE, student.params.iter().map(|(n, _)| n.clone()).zip(target.params.iter().cloned()).collect())?;
    }
    Ok(())
}

const TEXT_WITH_LORA: &str = "--train-text-encoder needs full fine-tuning of the UNet: a LoRA run's adapters file would not carry the text encoder (leave out --lora-rank or --train-text-encoder)";

const EMA_WITH_LORA: &str = "--ema-target needs full fine-tuning: it averages whole UNet weights, which LoRA adapters do not train (leave out --lora-rank or --ema-target)";

/// A checkpoint's EMA target weights (runs with [`TrainConfig::ema_target`]).
const EMA_TARGET_FILE: &str = "ema_target.safetensors";

/// Checkpoint folders in `dir`, oldest first.
pub fn list_checkpoints(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-"))).collect())
        .unwrap_or_default();
    v.sort();
    v
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

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path).map(|s| s.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()).unwrap_or_default()
}

fn write_jsonl<T: Serialize>(path: &Path, ms: &[T]) -> Result<()> {
    let text: String = ms.iter().map(|m| serde_json::to_string(m).expect("json") + "\n").collect();
    t2v_kernels::io::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Writes the student as a model folder the sampler reads: its UNet (adapters merged) and
/// a config.json whose other models are the source folder's files (absolute paths).
pub fn write_student_model(dir: &Path, source: &crate::pipeline::model_dir::ModelDir, student: &Student, steps: u64, dtype: SaveDtype) -> Result<crate::pipeline::model_dir::ModelDir> {
    std::fs::create_dir_all(dir).map_err(|e| WeightsError::Write { path: dir.display().to_string(), msg: e.to_string() })?;
    let unet = dir.join("unet.safetensors");
    // each weight merged with its adapter as it is written: never the whole merged UNet
    // next to the student on the device
    let named: Vec<(String, Vec<usize>)> = student.params.iter().map(|(n, t)| (n.clone(), t.shape().to_vec())).collect();
    save_weights_made(&unet, &named, dtype, &[("model", "t2v-turbo student unet3d".into()), ("steps", steps.to_string())], |i| student.merged_param(i))?;
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut md = source.clone();
    md.root = dir.to_path_buf();
    for f in md.files_mut() {
        *f = abs(f);
    }
    md.unet = (unet, student.unet.config.clone());
    if let Some(text) = &student.text {
        let file = dir.join("text.safetensors");
        text.save(&file, dtype, steps)?;
        md.text.0 = file;
    }
    md.write_config()?;
    // a LoRA run's adapters also on their own: a small file that makes the student from
    // the teacher's folder
    if !student.adapters.is_empty() {
        crate::pipeline::lora_file::write_lora(&dir.join("lora.safetensors"), student, dtype)?;
    }
    Ok(md)
}
