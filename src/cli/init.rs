//! `t2v-turbo init`: a model folder of randomly initialised models (the tiny size of the
//! embedded default, or VideoCrafter2's for benchmarks and memory planning).

use std::path::PathBuf;

use t2v_kernels::Gpu;

use super::{ensure_new_dir, CliError, DeviceArgs};
use crate::models::weights::SaveDtype;
use crate::pipeline::model_dir::{init_random_with, Preset};

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Output folder (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Model sizes: `tiny` (the embedded default's) or `videocrafter2` (the real sizes).
    #[arg(long, value_enum, default_value_t = Preset::Tiny)]
    pub preset: Preset,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Store weights as f16 (half the size).
    #[arg(long)]
    pub f16: bool,
    /// Frames per token of the video reward (InternVideo2's `tubelet_size`, a divisor of
    /// its frame count; default: the preset's, 1). With 2 the tiny video reward can learn
    /// the direction of motion (`pretrain video-reward --reversed-pairs --direction-head`);
    /// with single-frame tokens it stayed blind to it.
    #[arg(long)]
    pub video_tubelet: Option<usize>,
}

pub fn run(dev: &DeviceArgs, a: &InitArgs) -> Result<(), CliError> {
    let mut iv2 = a.preset.video_reward_config();
    if let Some(t) = a.video_tubelet {
        let frames = iv2.vision.num_frames;
        if t == 0 || frames % t != 0 {
            return Err(CliError::Check(format!("--video-tubelet must divide the video reward's {frames} frames, got {t}")));
        }
        iv2.vision.tubelet_size = t;
    }
    ensure_new_dir(&a.out, false)?;
    let gpu = Gpu::new(&dev.gpu_options(true))?;
    let dir = init_random_with(&gpu, a.preset, &a.out, a.seed, if a.f16 { SaveDtype::F16 } else { SaveDtype::F32 }, iv2)?;
    println!("random {:?} models in {} (config: {})", a.preset, a.out.display(), dir.root.join("config.json").display());
    Ok(())
}
