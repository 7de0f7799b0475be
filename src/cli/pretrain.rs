//! `t2v-turbo pretrain vae|text|teacher|reward`: trains the embedded default's tiny models on
//! the moving-shapes world.

use std::path::PathBuf;

use t2v_kernels::Gpu;

use super::{CliError, DeviceArgs};
use crate::models::weights::SaveDtype;
use crate::pipeline::model_dir::ModelDir;
use crate::pretrain::{pretrain, PretrainConfig, What};

#[derive(clap::Args, Debug)]
pub struct PretrainArgs {
    /// What to train: the VAE, the teacher UNet, the teacher's text encoder (contrastively,
    /// before the teacher), or the reward models (all of them, only the image towers, or
    /// only the video reward).
    #[arg(value_enum)]
    pub what: What,
    /// Source model folder (e.g. from `t2v-turbo init`, or the previous stage's output).
    #[arg(long)]
    pub models: PathBuf,
    /// Output model folder: a copy of the source with the trained weights; training
    /// checkpoints and curves go to OUT/pretrain-{what}/.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue an interrupted run in --out from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Steps in all (a resumed run continues to this). 0 trains nothing: with `teacher` it
    /// runs only the caption check on the source folder's teacher, with the reward stages
    /// only the reward check (which attributes each reward model sees), with `text` only the
    /// text check (how far each word moves the teacher's context).
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Clips (teacher, rewards) or frames (VAE) per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// Teacher only: every other step trains on this many single frames (1-frame videos
    /// from as many fresh clips) instead of --batch clips: joint image-video training, as
    /// VideoCrafter2 trains on images and videos (many more independent image-caption pairs
    /// per step for the spatial layers). 0 = videos only.
    #[arg(long, default_value_t = 0)]
    pub image_batch: usize,
    /// Text and reward models: every other step the second half of the batch is the first
    /// half played backwards (the same path in the opposite direction), hard negatives that
    /// only the direction of motion tells apart (for the towers that see motion); their
    /// retrieval accuracy is logged apart (`*_retrieval_pairs`), with the share of clips whose
    /// own caption scores above its twin's (`*_direction`; 0.5 = blind to direction).
    #[arg(long)]
    pub reversed_pairs: bool,
    /// Text only: frames of each clip the temporary vision tower sees against the caption.
    /// 1 = one random frame (colors and shapes only); n > 1 = n strided frames (their mean
    /// feature) plus a linear map of the difference image (last frame minus first), so that
    /// the direction of motion counts too (best with --reversed-pairs).
    #[arg(long, default_value_t = 1)]
    pub frames: usize,
    /// Video reward (`video-reward`, `reward`): also train a temporary linear head (not
    /// saved) that classifies each clip's direction of motion from the video features, so
    /// that the features carry it (logged as `video_direction_head`; best with
    /// --reversed-pairs, whose `video_direction` then shows the captions follow). Needs
    /// tokens that see several frames: a video reward from `init --video-tubelet 2`
    #[arg(long)]
    pub direction_head: bool,
    /// Seed of the batches' clips, the noise and frame draws, and of the parts the run
    /// initialises (temporary heads).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seed of the world the clips are drawn from.
    #[arg(long, default_value_t = 1000)]
    pub world_seed: u64,
    /// Write a checkpoint every N steps (and at the end); --resume continues from the newest.
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: u64,
    /// Store the trained weights as f16 (half the size; how the shipped models are stored).
    #[arg(long)]
    pub f16: bool,
}

pub fn run(dev: &DeviceArgs, a: &PretrainArgs) -> Result<(), CliError> {
    let stage = a.out.join(format!("pretrain-{}", format!("{:?}", a.what).to_lowercase()));
    let non_empty = super::holds_files(&a.out);
    if non_empty && !a.resume {
        return Err(CliError::Check(format!("{} exists and is not empty; choose another --out, or pass --resume to continue its run", a.out.display())));
    }
    if a.resume && !stage.join("checkpoints").exists() {
        return Err(CliError::Check(format!("--resume: no checkpoints in {}", stage.display())));
    }
    if a.image_batch > 0 && a.what != What::Teacher {
        return Err(CliError::Check("--image-batch applies to `pretrain teacher` only".into()));
    }
    if a.reversed_pairs && !a.what.is_contrastive() {
        return Err(CliError::Check("--reversed-pairs applies to the contrastive stages (text and the reward models) only".into()));
    }
    if a.frames != 1 && a.what != What::Text {
        return Err(CliError::Check("--frames applies to `pretrain text` only".into()));
    }
    if a.direction_head && !matches!(a.what, What::VideoReward | What::Reward) {
        return Err(CliError::Check("--direction-head applies to `pretrain video-reward` and `pretrain reward` only".into()));
    }
    if a.batch < 2 && a.what.is_contrastive() {
        return Err(CliError::Check("the contrastive loss (text, reward models) needs --batch of at least 2".into()));
    }
    let src = ModelDir::read(&a.models)?;
    let gpu = Gpu::new(&dev.gpu_options(false))?;
    super::warn_matrix_cores_in_training(&gpu);
    let cfg = PretrainConfig { steps: a.steps, batch: a.batch.max(1), lr: a.lr, seed: a.seed, world_seed: a.world_seed, image_batch: a.image_batch, reversed_pairs: a.reversed_pairs, text_frames: a.frames, direction_head: a.direction_head };
    let dtype = if a.f16 { SaveDtype::F16 } else { SaveDtype::F32 };
    let t = std::time::Instant::now();
    let (md, ms) = pretrain(&gpu, a.what, &src, &a.out, &cfg, a.checkpoint_every, dtype, false)?;
    let last = ms.last().map(|m| format!("loss {:.4}{}", m.loss, m.logs.iter().map(|(n, v)| format!(", {n} {v:.3}")).collect::<String>())).unwrap_or_else(|| "nothing to do".into());
    println!("{:?} trained to step {} in {:.0} s ({last}); model folder: {}", a.what, a.steps, t.elapsed().as_secs_f64(), md.root.display());
    Ok(())
}
