//! `t2v-turbo train`: Algorithm 2 on preprocessed shards.

use std::path::PathBuf;

use clap::ValueEnum;
use t2v_kernels::optim::state_bytes;
use t2v_kernels::Gpu;

use super::{CliError, DeviceArgs, WeightsDtype};
use crate::diffusion::distill::NoiseFactor;
use crate::models::weights::SaveDtype;
use crate::pipeline::model_dir::ModelDir;
use crate::pipeline::shards::{open_datasets, ShardConfig};
use crate::pipeline::sample::SampleOptions;
use crate::pipeline::train::{list_checkpoints, load_run, write_student_model, run as run_training, LoraConfig, LossType, LrSchedule, Replica, RewardCaptions, RewardInput, RunOptions, TrainConfig, TrainError, Trainer};
use crate::pipeline::validation::Validation;
use crate::world::{held_out_prompts, WorldConfig};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Model folder with the teacher UNet (the student starts from it), the VAE and the
    /// reward models (config.json's image_rewards and video_reward).
    #[arg(long)]
    pub models: PathBuf,
    /// How the frozen models (VAE, reward models, the validation's text encoder) keep their
    /// linear and conv weights on the GPU; the student is always f32.
    #[arg(long, value_enum, default_value_t = WeightsDtype::Auto)]
    pub weights_dtype: WeightsDtype,
    /// Folder of shards written by `t2v-turbo preprocess`; repeat for several (e.g. the
    /// reference's two passes: `--no-motion --index-range 0,0.5` and `--index-range 0.5,1`
    /// into two folders). A resumed run must read the same folders in the same order.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Output folder: checkpoints/, metrics.jsonl, metrics.png and the student model
    /// folder model/ at the end.
    #[arg(long)]
    pub out: PathBuf,
    /// Train on several GPUs at once (data parallelism): adapters as `--adapter` takes them,
    /// comma-separated, e.g. `0,1,2,3` (see `t2v-turbo info`). Each holds a copy of the
    /// models; record k of a step runs on the k-th mod n, and the first adds the records'
    /// gradients in record order, steps the optimizer and sends the new weights to the
    /// others. The run is the one-GPU run with the same --batch-size (bit for bit on GPUs of
    /// one model), n times faster at best: use a batch that is a multiple of n, and any
    /// number of GPUs when resuming. Replaces --adapter; --max-memory applies to each.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub devices: Vec<String>,
    /// Storage of the student model folder's UNet (and a trained text encoder) written at
    /// the end (checkpoints stay f32, for exact resumption): f16 / bf16 files are half the
    /// size, and `sample` keeps them 16-bit on GPUs (--weights-dtype).
    #[arg(long, value_enum, default_value_t = SaveDtype::F32)]
    pub model_dtype: SaveDtype,
    /// Continue the run in --out from its newest checkpoint (same settings; --steps may grow).
    #[arg(long)]
    pub resume: bool,
    /// Optimizer steps of the whole run (8000 in the reference's v2 script).
    #[arg(long, default_value_t = 8000)]
    pub steps: u64,
    /// Records per optimizer step. Each record runs (forward, rewards, backward) on its own and
    /// their gradients are averaged: a larger batch costs time, not memory, so it also
    /// plays the part of the reference's `--gradient_accumulation_steps` (its 8-GPU run
    /// averages 3 records on each of its 6 distillation processes: 18).
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// AdamW learning rate (after the warmup, before any decay of --lr-scheduler).
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f32,
    /// How the learning rate changes over the run, as the reference's `--lr_scheduler`
    /// (diffusers' schedules; the reference trains with `constant`). The decaying ones
    /// (linear, cosine, cosine-with-restarts: one cycle, polynomial: power 1 down to 1e-7)
    /// reach their end at --steps, so a run resumed with another --steps changes the rates
    /// of its later steps. metrics.jsonl records each step's rate.
    #[arg(long, value_enum, default_value_t = LrSchedule::Constant)]
    pub lr_scheduler: LrSchedule,
    /// Steps of linear warmup from 0 (every schedule but `constant`; the reference's
    /// default of 500 is unused by its `constant`).
    #[arg(long, default_value_t = 0)]
    pub lr_warmup_steps: u64,
    /// Multiplies the learning rate of the temporal transformers' weights (the reference's
    /// `--temporal_lr_scale`, chosen as it chooses them: those of `init_attn` and of the
    /// input and output blocks, not the middle block's).
    #[arg(long, default_value_t = 1.0)]
    pub temporal_lr_scale: f32,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// AdamW's beta1 (the reference's `--adam_beta1`).
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f32,
    /// AdamW's beta2 (the reference's `--adam_beta2`).
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f32,
    /// AdamW's epsilon (the reference's `--adam_epsilon`).
    #[arg(long, default_value_t = 1e-8)]
    pub adam_epsilon: f32,
    /// Global gradient-norm clipping.
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
    /// The consistency loss's distance (the reference's `--loss_type`): pseudo-Huber
    /// (`huber`, with --huber-c) or the mean squared error (`l2`).
    #[arg(long, value_enum, default_value_t = LossType::Huber)]
    pub loss: LossType,
    /// c of the pseudo-Huber distance.
    #[arg(long, default_value_t = 0.001)]
    pub huber_c: f32,
    /// Take the consistency targets from an exponential moving average of the student with
    /// this decay (the reference's `--use_target_unet` with `--ema_decay`; 0.95 when given
    /// without a value), updated after every step, instead of from the student itself (the
    /// reference's default). Holds a second UNet on each device; checkpoints keep it.
    /// Full fine-tuning only.
    #[arg(long, num_args = 0..=1, default_missing_value = "0.95")]
    pub ema_target: Option<f32>,
    /// Ignore the stored motion scores (plain consistency distillation).
    #[arg(long)]
    pub no_motion: bool,
    /// Make the student from a teacher's UNet without the motion-scale embedding: T2V-Turbo
    /// (v1)'s student, conditioned on w alone (v2's also reads the motion scale λ).
    #[arg(long)]
    pub no_motion_cond: bool,
    /// Motion-guidance strength lambda (the student sees it as a condition).
    #[arg(long, default_value_t = 0.05)]
    pub motion_gs: f32,
    /// Fraction of the trajectory (high noise) with motion guidance.
    #[arg(long, default_value_t = 0.5)]
    pub motion_percentage: f32,
    /// Factor of the motion score: the reference code's sqrt(1 - sqrt(abar)) or the paper's
    /// sqrt(1 - abar).
    #[arg(long, value_enum, default_value_t = NoiseFactor::Code)]
    pub noise_factor: NoiseFactor,
    /// Scale of the image rewards (0 disables them).
    #[arg(long, default_value_t = 0.2)]
    pub beta_img: f32,
    /// Scale of the video reward (0 disables it).
    #[arg(long, default_value_t = 0.5)]
    pub beta_vid: f32,
    /// Decoded frames per clip for the image rewards.
    #[arg(long, default_value_t = 2)]
    pub img_frames: usize,
    /// Strided frames per clip for the video reward.
    #[arg(long, default_value_t = 4)]
    pub vid_frames: usize,
    /// At most this many records of a step get the image rewards, drawn among those the
    /// rewards may score (--reward-captions; default: all of them); each reward term is the
    /// mean over the records that have it. The reference rewards 1 record of each process's
    /// 3 (its 8-GPU run: `--batch-size 18 --img-reward-records 6`).
    #[arg(long)]
    pub img_reward_records: Option<usize>,
    /// The same for the video reward (the reference: 2 records a step, on processes of their
    /// own, whose gradients are averaged with the 6 distillation processes': relative to
    /// the consistency loss its video reward weighs 2/6 of --beta-vid; `--vid-reward-records
    /// 2 --beta-vid 0.1667` reproduces that balance).
    #[arg(long)]
    pub vid_reward_records: Option<usize>,
    /// Which records the rewards score: `short` (those with a short caption, as the paper
    /// trains: rewards on the WebVid part of its mix), `any` (every record: the image rewards
    /// read the short caption, or the caption where there is none, truncated to 77 tokens),
    /// `auto` (`short` when the data has short captions, else `any`, as the reference code
    /// does).
    #[arg(long, value_enum, default_value_t = RewardCaptions::Auto)]
    pub reward_captions: RewardCaptions,
    /// Draw the guidance scale w ~ U[--w-min, --w-max] at every use of a record, as the
    /// reference code trains, instead of the w drawn at preprocessing (the paper's
    /// Algorithm 1; the default).
    #[arg(long)]
    pub redraw_w: bool,
    /// --redraw-w: the range's low end (the reference's `--w_min`; default 5).
    #[arg(long)]
    pub w_min: Option<f32>,
    /// --redraw-w: the range's high end (the reference's `--w_max`; default 15).
    #[arg(long)]
    pub w_max: Option<f32>,
    /// Weights of the image rewards, in config.json order (default: the config's); a model
    /// of weight 0 is not run (`--reward-weights 1,0`: HPSv2.1 alone, T2V-Turbo v1's).
    #[arg(long, value_delimiter = ',')]
    pub reward_weights: Vec<f32>,
    /// What the rewards score: `data` (the reference: the consistency output from the
    /// record's noised clip) or `noise` (not in the reference: the student's one-step
    /// generation from fresh pure noise, the sampler's first step; one more UNet pass per
    /// rewarded record) or `sample` (not in the reference: the student's whole
    /// `--reward-sample-steps` consistency sample from fresh noise, gradients through every
    /// step; that many more UNet passes per rewarded record).
    #[arg(long, value_enum, default_value_t = RewardInput::Data)]
    pub reward_input: RewardInput,
    /// Sampler steps of `--reward-input sample` (on the shards' grid, as `sample --steps`;
    /// default 4).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub reward_sample_steps: Option<u64>,
    /// Train LoRA adapters of this rank on every UNet weight instead of all weights.
    #[arg(long, default_value_t = 0)]
    pub lora_rank: usize,
    /// LoRA scale numerator: the adapters' product is scaled by alpha / rank.
    #[arg(long, default_value_t = 64.0)]
    pub lora_alpha: f32,
    /// Train the conditioning text encoder too (the reference's `--train_text_encoder`):
    /// its last --unlocked-text-layers resblocks and its final layer norm, at the UNet's
    /// rate, outside the gradient clipping (the reference clips the UNet's gradients alone);
    /// the student reads the trained encoder's context of each caption instead of the
    /// stored one. The student model folder then holds the trained text.safetensors. Full
    /// fine-tuning only.
    #[arg(long)]
    pub train_text_encoder: bool,
    /// --train-text-encoder: how many of the last resblocks are unlocked, counted as the
    /// reference counts (`--unlocked_text_layers`, 4): the very last, which the UNet's
    /// penultimate-layer context does not read, is one of them, so N - 1 blocks learn.
    #[arg(long, default_value_t = 4, requires = "train_text_encoder")]
    pub unlocked_text_layers: usize,
    /// Recompute each UNet block, each reward frame's VAE decoding and the reward models'
    /// vision layers during the backward pass instead of keeping their activations (much
    /// less memory at full size, about one more forward of time; with LoRA too). Without
    /// it, a step that runs out of device memory is run again recomputing, and the rest of
    /// the run recomputes too.
    #[arg(long)]
    pub recompute: bool,
    /// AdamW with 8-bit states, as the reference trains (`--use_8bit_adam`: bitsandbytes'
    /// block-wise AdamW8bit): 2 bytes of optimizer state per weight instead of 8 (weights
    /// under 4096 elements keep f32 states).
    #[arg(long)]
    pub adam8bit: bool,
    /// Write a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// Checkpoints to keep.
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Seed of the data order, LoRA initialisation and the frame and noise draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Every N steps (and at the start and the end) sample held-out prompts with the
    /// student and score them: the analyser's accuracy (prompts of the moving-shapes world)
    /// and the reward models; GIFs in OUT/validation/, scores in OUT/validation.jsonl and
    /// validation.png. 0: never.
    #[arg(long, default_value_t = 0)]
    pub validate_every: u64,
    /// Prompts of the validation, one per line (default: 8 prompts of the moving-shapes world).
    #[arg(long)]
    pub validate_prompts: Option<PathBuf>,
    /// Consistency steps of the validation samples.
    #[arg(long, default_value_t = 4)]
    pub validate_steps: usize,
}

/// The validation of a run, if asked for: prompts, the model folder's text tower (unless
/// the run trains its own), and the sampler settings of the demo (guidance 7.5, the run's
/// motion scale; the data's grid, clip size and fps, which the student learns).
fn validation(gpu: &Gpu, md: &ModelDir, a: &TrainArgs, grid_points: usize, data: &ShardConfig) -> Result<Option<Validation>, CliError> {
    if a.validate_every == 0 {
        return Ok(None);
    }
    if a.validate_steps == 0 {
        return Err(CliError::Check("--validate-steps must be at least 1".into()));
    }
    let v = data;
    let prompts: Vec<String> = match &a.validate_prompts {
        Some(p) => super::read_prompt_lines(p, "--validate-prompts ")?,
        None => held_out_prompts(a.seed, 8, &WorldConfig { frames: v.frames, size: v.height, short_fraction: 0.5 }),
    };
    if prompts.is_empty() {
        return Err(CliError::Check("--validate-prompts: the file holds no prompt".into()));
    }
    let options = SampleOptions {
        steps: a.validate_steps,
        origin: grid_points,
        w: 7.5,
        motion_scale: if a.no_motion { 0.0 } else { a.motion_gs },
        motion_percentage: a.motion_percentage,
        seed: a.seed,
        frames: v.frames,
        height: v.height,
        width: v.width,
        fps: v.fps,
        teacher: None,
        negative_prompt: None,
        init: None,
    };
    // a run that trains the text encoder samples with its own
    let text = if a.train_text_encoder { None } else { Some(md.load_text(gpu)?) };
    Ok(Some(Validation { every: a.validate_every, prompts, options, batch: 8, text }))
}

pub fn run(dev: &DeviceArgs, a: &TrainArgs) -> Result<(), CliError> {
    if a.reward_sample_steps.is_some() && a.reward_input != RewardInput::Sample {
        return Err(CliError::Check("--reward-sample-steps applies to --reward-input sample only".into()));
    }
    if (a.w_min.is_some() || a.w_max.is_some()) && !a.redraw_w {
        return Err(CliError::Check("--w-min and --w-max apply to --redraw-w only (without it, each record trains with the w it was preprocessed with: preprocess --w-min/--w-max)".into()));
    }
    let has_ckpt = !list_checkpoints(&a.out.join("checkpoints")).is_empty();
    let non_empty = super::holds_files(&a.out);
    match (a.resume, has_ckpt, non_empty) {
        (false, true, _) => return Err(CliError::Check(format!("{} holds a run's checkpoints; pass --resume to continue it, or choose another --out", a.out.display()))),
        (false, false, true) => return Err(CliError::Check(format!("{} exists and is not empty; choose another --out (nothing was overwritten)", a.out.display()))),
        (true, false, _) => return Err(CliError::Check(format!("--resume: no checkpoint in {}", a.out.join("checkpoints").display()))),
        _ => {}
    }
    let config = TrainConfig {
        steps: a.steps,
        batch_size: a.batch_size,
        lr: a.lr,
        lr_schedule: a.lr_scheduler,
        lr_warmup_steps: a.lr_warmup_steps,
        temporal_lr_scale: a.temporal_lr_scale,
        weight_decay: a.weight_decay,
        adam_betas: (a.adam_beta1, a.adam_beta2),
        adam_eps: a.adam_epsilon,
        max_grad_norm: a.max_grad_norm,
        loss: a.loss,
        huber_c: a.huber_c,
        ema_target: a.ema_target,
        use_motion: !a.no_motion,
        motion_gs: a.motion_gs,
        motion_percentage: a.motion_percentage,
        noise_factor_paper: a.noise_factor == NoiseFactor::Paper,
        beta_img: a.beta_img,
        beta_vid: a.beta_vid,
        img_frames: a.img_frames,
        vid_frames: a.vid_frames,
        img_reward_records: a.img_reward_records,
        vid_reward_records: a.vid_reward_records,
        reward_captions: a.reward_captions,
        redraw_w: a.redraw_w.then_some((a.w_min.unwrap_or(5.0), a.w_max.unwrap_or(15.0))),
        lora: (a.lora_rank > 0).then_some(LoraConfig { rank: a.lora_rank, alpha: a.lora_alpha }),
        text_layers: a.train_text_encoder.then_some(a.unlocked_text_layers),
        reward_input: a.reward_input,
        reward_sample_steps: a.reward_sample_steps.map_or(TrainConfig::default().reward_sample_steps, |n| n as usize),
        recompute: a.recompute,
        adam8bit: a.adam8bit,
        seed: a.seed,
        cond_dim: 256,
        motion_cond: !a.no_motion_cond,
        image_reward_weights: None,
    };
    config.check().map_err(CliError::Check)?;
    std::fs::create_dir_all(&a.out).map_err(|e| CliError::Check(format!("{}: {e}", a.out.display())))?;
    let md = ModelDir::read(&a.models)?;
    let shards = open_datasets(&a.data)?;
    let gpus = dev.gpus(&a.devices)?;
    let gpu = gpus[0].clone();
    super::warn_matrix_cores_in_training(&gpu);
    let md = md.with_precision(a.weights_dtype.precision(&gpu));
    let weights = (!a.reward_weights.is_empty()).then_some(a.reward_weights.as_slice());
    let failed = |e: TrainError| CliError::Check(with_memory_hint(e, a, &gpu, a.recompute));
    let (student, models) = load_run(&gpu, &md, &config, weights).map_err(failed)?;
    // copies for the other devices, loaded the same way
    let replicas = gpus[1..]
        .iter()
        .map(|g| {
            let (student, models) = load_run(g, &md.clone().with_precision(a.weights_dtype.precision(g)), &config, weights)?;
            Ok(Replica { student, models })
        })
        .collect::<Result<Vec<_>, TrainError>>()
        .map_err(failed)?;
    let records: usize = shards.iter().map(|s| s.records.len()).sum();
    let short = shards.iter().flat_map(|s| &s.records).filter(|r| r.short_caption.is_some()).count();
    eprintln!(
        "{records} records in {} shards, {short} with a short caption; student: {} parameters{}",
        shards.len(),
        student.params.iter().map(|(_, t)| t.numel()).sum::<usize>(),
        if student.adapters.is_empty() { String::new() } else { format!(", LoRA rank {} on {} weights", a.lora_rank, student.adapters.len()) }
    );
    if let Some(text) = &student.text {
        let layers = text.tower.config.layers;
        let blocks = match a.unlocked_text_layers {
            1 => "no resblock".to_string(),
            2 => format!("resblock {}", layers - 2),
            n => format!("resblocks {}-{}", layers - n, layers - 2),
        };
        eprintln!(
            "text encoder: {} parameters train ({blocks} of {layers} and ln_final; the last block, unread by the context, stays)",
            text.params.iter().map(|(_, t)| t.numel()).sum::<usize>()
        );
    }
    // what stays on the device through the run, before any activation
    let trained: Vec<usize> = student.trainable().iter().map(|t| t.numel()).collect();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    eprintln!(
        "GPU memory held through the run: models {:.2} GiB (--weights-dtype {}), gradients {:.2} GiB, optimizer state {:.2} GiB ({})",
        gib(gpu.memory().live_bytes),
        a.weights_dtype.to_possible_value().map_or(String::new(), |v| v.get_name().to_string()),
        gib(4 * trained.iter().sum::<usize>() as u64),
        gib(trained.iter().map(|&n| state_bytes(n, a.adam8bit)).sum()),
        if a.adam8bit { "8-bit moments" } else { "f32 moments; --adam8bit: a quarter" }
    );
    if gpus.len() > 1 {
        eprintln!(
            "data parallel on {} devices (the others hold the models, no optimizer state){}",
            gpus.len(),
            if a.batch_size % gpus.len() == 0 { String::new() } else { format!("; warning: --batch-size {} is not a multiple of {}, some devices wait every step", a.batch_size, gpus.len()) }
        );
    }
    let mut trainer = Trainer::new(config, student, &models, &shards).map_err(failed)?;
    trainer.record_models_folder(&a.models);
    let rewarded = (a.beta_img > 0.0 && models.has_image_reward()) || (a.beta_vid > 0.0 && models.video.is_some());
    match (rewarded, trainer.rewards_score_any_record(), short) {
        (true, true, 0) => eprintln!("no record has a short caption: the rewards score every record against its caption (--reward-captions {})", if a.reward_captions == RewardCaptions::Any { "any" } else { "auto" }),
        (true, true, _) => eprintln!("the rewards score every record (--reward-captions any): the image rewards read the short caption, or the caption"),
        (true, false, 0) => eprintln!("warning: no record has a short caption and --reward-captions short: the rewards score nothing (preprocess captions with a short_caption column, or use --reward-captions any)"),
        _ => {}
    }
    trainer.add_replicas(replicas).map_err(failed)?;
    trainer.recompute_when_out_of_memory(true);
    let validation = validation(&gpu, &md, a, trainer.grid_points(), &shards[0].config)?;
    let opts = RunOptions { out: a.out.clone(), validation, checkpoint_every: a.checkpoint_every, keep_checkpoints: a.keep_checkpoints, stop_after: None, quiet: false };
    let ms = run_training(&mut trainer, &opts).map_err(|e| CliError::Check(with_memory_hint(e, a, &gpu, trainer.config.recompute)))?;
    let model = a.out.join("model");
    write_student_model(&model, &md, &trainer.student, trainer.state.step, a.model_dtype)?;
    if let Some(m) = ms.last() {
        println!("step {}: loss {:.5} (consistency {:.5}); student model folder: {}", m.step, m.loss, m.cd_loss, model.display());
    } else {
        println!("nothing to do (already at step {}); student model folder: {}", trainer.state.step, model.display());
    }
    Ok(())
}

/// A training error; when a device ran out of memory, followed by the options this run
/// does not use that would make it need less (`recomputing`: whether it recomputes by now).
fn with_memory_hint(e: TrainError, a: &TrainArgs, gpu: &t2v_kernels::Gpu, recomputing: bool) -> String {
    if !e.is_out_of_memory() {
        return e.to_string();
    }
    let mut options = Vec::new();
    if a.weights_dtype.precision(gpu) == crate::models::weights::WeightPrecision::F32 {
        options.push("--weights-dtype stored (16-bit files of the frozen models stay 16-bit on the device: VAE, text encoder, reward models)");
    }
    if !recomputing {
        options.push("--recompute (activations recomputed in the backward pass: UNet blocks, reward frames' decoding, reward models' layers)");
    }
    if a.ema_target.is_some() {
        options.push("drop --ema-target (it holds a second UNet; the targets then come from the student, as the reference trains)");
    }
    if a.lora_rank == 0 {
        options.push("--lora-rank 64 (gradients and optimizer state for the adapters only)");
    }
    if !a.adam8bit {
        options.push("--adam8bit (a quarter of the optimizer state)");
    }
    if a.beta_vid > 0.0 {
        options.push("--beta-vid 0 (no video reward: its model's backward is the largest reward cost)");
    }
    if a.img_frames > 1 && a.beta_img > 0.0 {
        options.push("--img-frames 1 (one decoded frame per image reward)");
    }
    let advice = super::memory_advice(&e, &options, a.devices.len() > 1, "preprocess shorter or smaller clips (--frames, --height, --width), or use a device with more memory");
    // the checkpoints written are kept; --recompute is the option a resumed run may change
    format!("{advice}\nA run with checkpoints continues with --resume (and may add --recompute; the other settings must stay).")
}
