//! The settings of a training run (stored in every checkpoint) and their checks.

use serde::{Deserialize, Serialize};

use super::LrSchedule;
use crate::diffusion::distill::Distance;

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
    /// The weights of the image rewards the run trains with: filled in by `Trainer::new`
    /// from its reward models, so that a checkpoint records them and a resume with others
    /// is refused (None: not yet, or a checkpoint written before they were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_reward_weights: Option<Vec<f32>>,
    pub seed: u64,
    /// Dimension of the student's guidance-scale embeddings (256).
    pub cond_dim: usize,
    /// A student made from a teacher's UNet gets the motion-scale embedding too
    /// (T2V-Turbo-v2's; false: T2V-Turbo (v1)'s student, conditioned on w alone). A model
    /// folder whose UNet is a student already keeps its own layers.
    #[serde(default = "yes")]
    pub motion_cond: bool,
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
            motion_cond: true,
            image_reward_weights: None,
        }
    }
}

fn yes() -> bool {
    true
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

const TEXT_WITH_LORA: &str = "--train-text-encoder needs full fine-tuning of the UNet: a LoRA run's adapters file would not carry the text encoder (leave out --lora-rank or --train-text-encoder)";

const EMA_WITH_LORA: &str = "--ema-target needs full fine-tuning: it averages whole UNet weights, which LoRA adapters do not train (leave out --lora-rank or --ema-target)";
