//! `t2v-turbo preprocess`: Algorithm 1 over a video data set, into safetensors shards.

use std::path::PathBuf;
use std::time::Instant;

use t2v_kernels::Gpu;

use super::{CliError, DeviceArgs, WeightsDtype};
use crate::guidance::MotionScales;
use crate::models::tokenizer::ClipTokenizer;
use crate::pipeline::model_dir::ModelDir;
use crate::pipeline::preprocess::{preprocess_dataset_on, MotionReference, PreprocessConfig, PreprocessJob, PreprocessModels};
use crate::pipeline::shards::ShardConfig;

#[derive(clap::Args, Debug)]
pub struct PreprocessArgs {
    /// Model folder (config.json + weights) with the teacher UNet, VAE and text encoder.
    #[arg(long)]
    pub models: PathBuf,
    /// How the teacher UNet, VAE and text encoder keep their linear and conv weights on the GPU.
    #[arg(long, value_enum, default_value_t = WeightsDtype::Auto)]
    pub weights_dtype: WeightsDtype,
    /// Captions file: CSV with a header or JSONL; columns path, caption, optional
    /// short_caption. Paths are frame folders (PNG/JPEG) or video files (read by ffmpeg),
    /// relative to the captions file.
    #[arg(long)]
    pub captions: PathBuf,
    /// Output folder of shards. Re-running with the same settings resumes: finished
    /// shards are kept and skipped.
    #[arg(long)]
    pub out: PathBuf,
    /// This machine's part, "i/n" (0-based): rows with row % n == i.
    #[arg(long, default_value = "0/1")]
    pub shard: String,
    /// Records per shard file.
    #[arg(long, default_value_t = 64)]
    pub shard_size: usize,
    /// Preprocess on several GPUs at once: adapters as `--adapter` takes them,
    /// comma-separated, e.g. `0,1` (see `t2v-turbo info`). Each loads the models and takes
    /// the next shard file not yet done; the files are those one GPU writes. Replaces
    /// --adapter; --max-memory applies to each. (Across machines: --shard.)
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub devices: Vec<String>,
    /// Frames per clip (default: the model folder's).
    #[arg(long)]
    pub frames: Option<usize>,
    /// Clip height and width after resize + center crop (default: the model folder's).
    #[arg(long)]
    pub height: Option<usize>,
    /// Clip width (see --height).
    #[arg(long)]
    pub width: Option<usize>,
    /// Frame rate of the clips (videos are decoded at it; the UNet's fps conditioning).
    #[arg(long)]
    pub fps: Option<f32>,
    /// Frame rate of frame folders (every round(source_fps / fps)-th frame is used);
    /// default: use consecutive frames.
    #[arg(long)]
    pub source_fps: Option<f32>,
    /// Points of the DDIM grid (200: T2V-Turbo-v2, skip 5).
    #[arg(long, default_value_t = 200)]
    pub ddim_steps: usize,
    /// Range of the guidance scale w drawn per clip.
    #[arg(long, default_value_t = 5.0)]
    pub w_min: f32,
    /// Upper end of the range of w (see --w-min).
    #[arg(long, default_value_t = 15.0)]
    pub w_max: f32,
    /// Fractions of the DDIM grid the noise level n is drawn from, "lo,hi" (the reference
    /// runs two passes: 0.5,1 with motion guidance and 0,0.5 without).
    #[arg(long, value_delimiter = ',', num_args = 2, default_values_t = [0.0, 1.0])]
    pub index_range: Vec<f32>,
    /// Skip motion guidance (no DDIM inversion, no backward): faster, no motion prior.
    #[arg(long)]
    pub no_motion: bool,
    /// Scale of the motion energy (the reference's temp_loss_scale).
    #[arg(long, default_value_t = 100.0)]
    pub temp_loss_scale: f32,
    /// Motion-guided clips whose DDIM inversions share UNet calls (within a shard): faster
    /// where small batches are overhead-bound (CPU adapters, small models); peak memory
    /// grows with it, and a group that runs out of device memory is halved for the rest of
    /// the run. 1: one clip at a time.
    #[arg(long, default_value_t = 8)]
    pub inversion_batch: usize,
    /// Where the motion reference comes from: `inversion` (T2V-Turbo-v2's: DDIM inversion of
    /// the clip to its t, n + 1 teacher calls) or `noised` (not T2V-Turbo-v2's: MotionClone's
    /// current way, the clip noised forward to --reference-t in one step; one teacher call,
    /// so motion-guided preprocessing costs about as much as the rest).
    #[arg(long, value_enum, default_value_t = ReferenceKind::Inversion)]
    pub motion_reference: ReferenceKind,
    /// --motion-reference noised: the timestep the clip is noised to (default 400, MotionClone's).
    #[arg(long)]
    pub reference_t: Option<usize>,
    /// Seed of the draws of n, w and the noise (each clip's draws depend only on the seed
    /// and the clip's position, so shards and resumed runs match a single run).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The text of the teacher's unconditional outputs, which classifier-free guidance
    /// steers away from (the reference's `--negative_prompt`; empty there), e.g. "blurry,
    /// low quality, static". The shards record it; a student trained on them learns that
    /// guidance.
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Records per clip: K independent draws of n and w, each with its own teacher outputs
    /// (and motion guidance where n falls in the upper half), from one decoding and VAE
    /// encoding of the clip — K timesteps of each clip for training, where the reference
    /// stores one (T2V-Turbo v1 draws afresh at every step). Draw 0 is the one-draw run's.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub draws: u64,
}

fn parse_shard(s: &str) -> Result<(usize, usize), CliError> {
    let bad = || CliError::Check(format!("--shard {s:?}: expected i/n with 0 <= i < n, e.g. 0/4"));
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n) = (i.trim().parse::<usize>().map_err(|_| bad())?, n.trim().parse::<usize>().map_err(|_| bad())?);
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// The values of --motion-reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReferenceKind {
    Inversion,
    Noised,
}

/// MotionClone's noising timestep of its motion reference.
pub const MOTIONCLONE_REFERENCE_T: usize = 400;

/// The motion reference of the options (checked: a timestep of the 1000-step schedule, and
/// --reference-t only with `noised`).
pub fn motion_reference(kind: ReferenceKind, t: Option<usize>) -> Result<MotionReference, CliError> {
    match (kind, t) {
        (ReferenceKind::Inversion, None) => Ok(MotionReference::Inversion),
        (ReferenceKind::Inversion, Some(_)) => Err(CliError::Check("--reference-t applies to --motion-reference noised only".into())),
        (ReferenceKind::Noised, t) => match t.unwrap_or(MOTIONCLONE_REFERENCE_T) {
            t if t < 1000 => Ok(MotionReference::Noised { t }),
            t => Err(CliError::Check(format!("--reference-t {t} is not a timestep: use 0..=999 (MotionClone: 400)"))),
        },
    }
}

pub fn run(dev: &DeviceArgs, a: &PreprocessArgs) -> Result<(), CliError> {
    let shard = parse_shard(&a.shard)?;
    let reference = motion_reference(a.motion_reference, a.reference_t)?;
    let md = ModelDir::read(&a.models)?;
    let config = ShardConfig {
        ddim_steps: a.ddim_steps,
        frames: a.frames.unwrap_or(md.video.frames),
        height: a.height.unwrap_or(md.video.height),
        width: a.width.unwrap_or(md.video.width),
        fps: a.fps.unwrap_or(md.video.fps),
        seed: a.seed,
        motion: !a.no_motion,
        motion_reference: reference,
        negative_prompt: a.negative_prompt.clone(),
        draws: a.draws as usize,
    };
    if a.ddim_steps == 0 || 1000 % a.ddim_steps != 0 {
        return Err(CliError::Check(format!("--ddim-steps {} must divide 1000", a.ddim_steps)));
    }
    if a.index_range.len() != 2 || !(0.0..=1.0).contains(&a.index_range[0]) || !(a.index_range[0] < a.index_range[1] && a.index_range[1] <= 1.0) {
        return Err(CliError::Check("--index-range lo,hi needs 0 <= lo < hi <= 1".into()));
    }
    if a.w_min.is_nan() || a.w_max.is_nan() || a.w_min > a.w_max {
        return Err(CliError::Check("--w-min must not exceed --w-max".into()));
    }
    if a.inversion_batch == 0 {
        return Err(CliError::Check("--inversion-batch must be at least 1".into()));
    }
    std::fs::create_dir_all(&a.out).map_err(|e| CliError::Check(format!("{}: {e}", a.out.display())))?;
    let gpus = dev.gpus(&a.devices)?;
    let gpu = &gpus[0];
    let t0 = Instant::now();
    // the teacher UNet, VAE and text encoder on each device
    let loaded = gpus
        .iter()
        .map(|g| {
            let md = md.clone().with_precision(a.weights_dtype.precision(g));
            let load = || -> Result<_, CliError> { Ok((md.load_unet(g)?, md.load_vae(g)?, md.load_text(g)?)) };
            load().map_err(|e| {
                let oom = e.is_out_of_memory();
                CliError::Check(with_memory_hint(&e, oom, a, g))
            })
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let tokenizer = ClipTokenizer::new().map_err(|e| CliError::Check(e.to_string()))?;
    eprintln!("loaded models in {:.1} s", t0.elapsed().as_secs_f64());
    let job = PreprocessJob {
        captions: a.captions.clone(),
        out: a.out.clone(),
        shard,
        shard_size: a.shard_size,
        config: config.clone(),
        source_fps: a.source_fps,
        settings: PreprocessConfig {
            w_range: (a.w_min, a.w_max),
            motion: !a.no_motion,
            scales: MotionScales { temp_loss_scale: a.temp_loss_scale, ..MotionScales::default() },
            index_range: (a.index_range[0], a.index_range[1]),
            inversion_batch: a.inversion_batch,
            reference,
        },
        quiet: false,
    };
    let t = Instant::now();
    let models: Vec<PreprocessModels> = loaded.iter().map(|(unet, vae, text)| PreprocessModels { unet, vae, text, tokenizer: &tokenizer }).collect();
    if gpus.len() > 1 {
        eprintln!("preprocessing on {} devices, a shard file at a time each", gpus.len());
    }
    let rep = preprocess_dataset_on(&models, &job).map_err(|e| {
        let oom = e.is_out_of_memory();
        CliError::Check(with_memory_hint(&e, oom, a, gpu))
    })?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{} records ({} motion-guided) in {} new shards, {} shards done earlier, {} videos skipped; {:.2} s per clip, peak GPU memory {:.0} MiB, {:.0} MiB of it in tensors at once (one clip, or one group of inversions)",
        rep.records,
        rep.motion_records,
        rep.shards_written,
        rep.shards_skipped,
        rep.skipped_videos.len(),
        secs / rep.records.max(1) as f64,
        rep.peak_bytes as f64 / 1048576.0,
        rep.peak_live_bytes as f64 / 1048576.0
    );
    Ok(())
}

/// An error; when the device ran out of memory (`oom`), followed by the options this run
/// does not use that would make it need less.
fn with_memory_hint(e: &dyn std::fmt::Display, oom: bool, a: &PreprocessArgs, gpu: &Gpu) -> String {
    if !oom {
        return e.to_string();
    }
    let mut options = Vec::new();
    if a.weights_dtype.precision(gpu) == crate::models::weights::WeightPrecision::F32 {
        options.push("--weights-dtype stored (16-bit files stay 16-bit on the device)");
    }
    super::memory_advice(e, &options, a.devices.len() > 1, "preprocess fewer --frames or a smaller --height / --width, or use a device with more memory (the shards written are kept: the same command continues)")
}
