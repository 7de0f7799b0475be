//! `t2v-turbo init`: a model folder at the tiny size of the embedded default or at
//! VideoCrafter2's: of the weight files given (converted checkpoints), and random weights
//! for the models not given (for benchmarks and memory planning).

use std::path::PathBuf;

use t2v_kernels::Gpu;

use super::{ensure_new_dir, CliError, DeviceArgs, ModelFiles};
use crate::models::weights::SaveDtype;
use crate::pipeline::model_dir::{init_folder, GivenFiles, ModelDir, Preset};
use crate::pipeline::train::RewardModels;

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
    /// The models' weight files (models given no file get random weights).
    #[command(flatten)]
    pub files: ModelFiles,
    /// HPS-style image reward (open_clip ViT-H-14 weights, e.g. HPS v2.1's).
    #[arg(long)]
    pub hps: Option<PathBuf>,
    /// CLIP-score image reward (open_clip ViT-H-14 weights, laion2B-s32B-b79K).
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Video reward: InternVideo2-stage2 weights (with --video-vocab).
    #[arg(long, requires = "video_vocab")]
    pub video_reward: Option<PathBuf>,
    /// The video reward's BERT vocabulary (bert-large-uncased's vocab.txt or tokenizer.json).
    #[arg(long, requires = "video_reward")]
    pub video_vocab: Option<PathBuf>,
    /// Do not load the given files to check them against the folder's configs (a
    /// VideoCrafter2-size check reads every file once).
    #[arg(long)]
    pub no_check: bool,
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
    let [unet, vae, text] = a.files.resolved();
    let given = GivenFiles {
        unet,
        vae,
        text,
        hps: a.hps.clone(),
        clip: a.clip.clone(),
        video_reward: a.video_reward.clone().zip(a.video_vocab.clone()),
    };
    for p in [&given.unet, &given.vae, &given.text, &given.hps, &given.clip, &a.video_reward, &a.video_vocab].into_iter().flatten() {
        if !p.is_file() {
            return Err(CliError::Check(format!("{}: no such file", p.display())));
        }
    }
    ensure_new_dir(&a.out, false)?;
    let gpu = Gpu::new(&dev.gpu_options(true))?;
    let dir = init_folder(&gpu, a.preset, &a.out, a.seed, if a.f16 { SaveDtype::F16 } else { SaveDtype::F32 }, iv2, &given)?;
    let models = [("unet", given.unet.is_none()), ("vae", given.vae.is_none()), ("text", given.text.is_none()), ("hps", given.hps.is_none()), ("clip", given.clip.is_none()), ("video reward", given.video_reward.is_none())];
    let random: Vec<&str> = models.iter().filter_map(|&(name, random)| random.then_some(name)).collect();
    if !a.no_check && random.len() < models.len() {
        // every model of the folder loads (the given files against the preset's configs);
        // if not, the folder is left empty again
        let check = || -> Result<(), CliError> {
            let md = ModelDir::read(&dir.root)?;
            md.load_unet(&gpu)?;
            md.load_vae(&gpu)?;
            md.load_text(&gpu)?;
            RewardModels::load(&gpu, &md, None).map_err(|e| CliError::Check(e.to_string()))?;
            Ok(())
        };
        if let Err(e) = check() {
            let _ = std::fs::remove_dir_all(&a.out);
            let _ = std::fs::create_dir_all(&a.out);
            return Err(CliError::Check(format!("the given files do not fit the {:?} preset's models (nothing kept in {}): {e}", a.preset, a.out.display())));
        }
    }
    let kind = if dir.is_student() { "student" } else { "teacher" };
    println!(
        "{:?} models ({kind} UNet) in {} (config: {}); random weights: {}",
        a.preset,
        a.out.display(),
        dir.root.join("config.json").display(),
        if random.is_empty() { "none".to_string() } else { random.join(", ") }
    );
    Ok(())
}
