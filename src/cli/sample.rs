//! `t2v-turbo sample`: prompts -> videos (GIF + PNG frames) with the distilled student (or the
//! teacher), from noise or from a given video (`--init-video`).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use t2v_kernels::Gpu;

use super::sample_jobs::{check_file_name, Job, Jobs};
use super::{CliError, DeviceArgs, ModelFiles, WeightsDtype};
use crate::models::clip::{ClipConfig, TextConfig};
use crate::models::unet3d::UnetConfig;
use crate::models::vae::VaeConfig;
use crate::pipeline::sample::{Generator, GeneratorFiles, InitVideo, SampleOptions};
use crate::pipeline::captions::{read_captions, CaptionRow};
use crate::pipeline::model_dir::{ModelDir, VideoShape};
use crate::pipeline::progress::Progress;
use crate::pipeline::video_io::{read_image, read_video, write_frames, write_gif, write_mp4, Frames};

#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    /// A model folder (config.json + weights, e.g. `train`'s `OUT/model`); replaces the
    /// file and config options below, and gives the default clip size.
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// How the UNet, VAE and text encoder keep their linear and conv weights on the GPU.
    #[arg(long, value_enum, default_value_t = WeightsDtype::Auto)]
    pub weights_dtype: WeightsDtype,
    #[command(flatten)]
    pub files: ModelFiles,
    /// UNet config JSON (UNetModel arguments; default: VideoCrafter2 + T2V-Turbo-v2).
    #[arg(long)]
    pub unet_config: Option<PathBuf>,
    /// VAE config JSON ({"ddconfig": {...}, "embed_dim": 4}; default: VideoCrafter2's).
    #[arg(long)]
    pub vae_config: Option<PathBuf>,
    /// Text-encoder config JSON (open_clip layout with a "text" section; default: ViT-H-14).
    #[arg(long)]
    pub text_config: Option<PathBuf>,
    /// A prompt (repeat for several videos).
    #[arg(long)]
    pub prompt: Vec<String>,
    /// A file with one prompt per line, or a captions file (`.jsonl` / `.csv`, e.g. another
    /// run's `captions.jsonl`: its captions, in order); `-` reads them from standard input as they arrive
    /// (the models stay loaded: each video — each --batch of lines — is generated and its
    /// line printed as soon as its prompts are read; ends at the end of the input).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Consistency steps (4, 8 or 16 are the method's).
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    /// Points of the DDIM grid the steps are taken from (200 for v2, 50 for v1).
    #[arg(long, default_value_t = 200)]
    pub origin: usize,
    /// Guidance scale given to the student.
    #[arg(long, default_value_t = 7.5)]
    pub w: f32,
    /// Motion-guidance scale given to the student in the first part of the trajectory.
    #[arg(long, default_value_t = 0.05)]
    pub motion_scale: f32,
    /// Fraction of the trajectory (from t = 999 down) that gets the motion scale.
    #[arg(long, default_value_t = 0.5)]
    pub motion_percentage: f32,
    /// Seed of the first video's noise; video i (in output order) uses seed + i, whatever the
    /// batch.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Videos of each prompt (each with its own seed), written one after another.
    #[arg(long, default_value_t = 1)]
    pub videos_per_prompt: usize,
    /// How the videos' files are named: `index` (`007_a_red_fox.gif`: the video's number
    /// and the prompt's first words) or `vbench` (`a red fox-2.mp4`: the whole prompt and
    /// its video's number among that prompt's, as VBench's evaluation reads them; with
    /// --videos-per-prompt 5 and VBench's prompt file, its protocol; it reads MP4, so
    /// install ffmpeg).
    #[arg(long, value_enum, default_value_t = FileNames::Index)]
    pub names: FileNames,
    /// Videos generated together in one batch (more use the device better and need more
    /// memory; a video does not depend on the batch it is in). A batch that runs out of
    /// device memory is halved for the rest of the run.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Frames (default: the model folder's, else 16).
    #[arg(long)]
    pub frames: Option<usize>,
    /// Height (default: the model folder's, else 320).
    #[arg(long)]
    pub height: Option<usize>,
    /// Width (default: the model folder's, else 512).
    #[arg(long)]
    pub width: Option<usize>,
    /// fps conditioning and GIF frame rate (default: the model folder's, else 8).
    #[arg(long)]
    pub fps: Option<f32>,
    /// Do not write MP4 files (written only when ffmpeg is installed).
    #[arg(long)]
    pub no_mp4: bool,
    /// Output folder (must not exist or be empty, unless --overwrite).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace files in a non-empty output folder.
    #[arg(long)]
    pub overwrite: bool,
    /// Continue an interrupted run in --out with the same options: the videos its
    /// captions.jsonl lists are kept, the others generated (each video's noise depends only
    /// on its number, so the result is the uninterrupted run's; --batch may change). Refused
    /// when options that change the videos differ (listed in OUT/sample.json).
    #[arg(long)]
    pub resume: bool,
    /// A LoRA file of `t2v-turbo train --lora-rank` (its `OUT/model/lora.safetensors`),
    /// added to the UNet of --models: with a teacher's folder it makes the student that run
    /// trained. The UNet is then kept in f32.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// --lora: how much of the adapters is added (1: as trained; 0: none).
    #[arg(long, default_value_t = 1.0, requires = "lora")]
    pub lora_strength: f32,
    /// Frames the VAE decodes (and --init-video encodes) at once: fewer take less GPU memory
    /// (1: the least; at 320x512 the decoder's activations of one frame instead of up to 12)
    /// and may keep a large GPU less busy. Default: as many as one GPU binding holds, fewer
    /// (halved) where a pass runs out of memory.
    #[arg(long)]
    pub vae_frames_per_pass: Option<usize>,
    /// Sample on several GPUs at once: adapters as `--adapter` takes them, comma-separated,
    /// e.g. `0,1` (see `t2v-turbo info`). Each loads the models and generates every n-th
    /// batch; the videos are the one-GPU run's (each depends only on its number). Prompts
    /// read from standard input use the first. Replaces --adapter.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub devices: Vec<String>,
    /// Print a table of GPU time per kernel (all batches) at the end.
    #[arg(long)]
    pub profile: bool,
    /// Sample with the teacher's DDIM and classifier-free guidance (for comparison).
    #[arg(long)]
    pub teacher: bool,
    /// --teacher: DDIM steps.
    #[arg(long, default_value_t = 50)]
    pub teacher_steps: usize,
    /// --teacher: classifier-free guidance scale.
    #[arg(long, default_value_t = 12.0)]
    pub cfg: f32,
    /// --teacher: DDIM eta (0 deterministic, 1 stochastic like VideoCrafter2's default).
    #[arg(long, default_value_t = 1.0)]
    pub eta: f32,
    /// --teacher: classifier-free guidance steers away from this prompt instead of the empty
    /// one (e.g. "blurry, low quality, static"). The student has none (its guidance is
    /// distilled into one call).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Video-to-video: every prompt re-generates this video (a folder of PNG/JPEG frames,
    /// or a video file read through ffmpeg) instead of starting from noise: its first
    /// --frames frames, resized and center-cropped to the clip size, are encoded and noised
    /// part of the way (SDEdit). A PNG/JPEG image is a still on every frame (image-to-video:
    /// a high --strength, ~0.9, lets it move). The prepared input is written as `input.gif`.
    #[arg(long)]
    pub init_video: Option<PathBuf>,
    /// --init-video: how much of the trajectory is re-generated, in (0, 1]. The student's
    /// --steps are spread over the lowest part of its grid (0.5 on the 200-point grid, 4
    /// steps: t = 499, 374, 249, 124); the teacher runs that share of its DDIM steps. Lower
    /// keeps more of the video; 1 keeps only a trace of it.
    #[arg(long, default_value_t = 0.6, requires = "init_video", value_parser = parse_strength)]
    pub strength: f32,
    /// --init-video given as a frame folder: its frame rate (every round(source_fps / fps)-th
    /// frame is used; default: every frame).
    #[arg(long, requires = "init_video")]
    pub source_fps: Option<f32>,
}

fn json(path: &Path) -> Result<serde_json::Value, CliError> {
    let s = std::fs::read_to_string(path).map_err(|e| CliError::Check(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&s).map_err(|e| CliError::Check(format!("{}: {e}", path.display())))
}

/// The values of --names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FileNames {
    Index,
    Vbench,
}

pub fn run(dev: &DeviceArgs, a: &SampleArgs) -> Result<(), CliError> {
    let mut prompts = a.prompt.clone();
    let streamed = a.prompts.as_deref() == Some(Path::new("-"));
    if let Some(p) = a.prompts.as_ref().filter(|_| !streamed) {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        if matches!(ext.as_str(), "jsonl" | "csv") {
            // a captions file (another run's captions.jsonl, a data set's CSV): its captions
            prompts.extend(read_captions(p).map_err(|e| CliError::Check(e.to_string()))?.into_iter().map(|r| r.caption));
        } else {
            prompts.extend(super::read_prompt_lines(p, "")?);
        }
    }
    if prompts.is_empty() && !streamed {
        return Err(CliError::Check("no prompt: give --prompt TEXT or --prompts FILE (or --prompts - to read them from standard input)".into()));
    }
    for p in &prompts {
        check_file_name(a.names, p)?;
    }
    if a.resume && a.overwrite {
        return Err(CliError::Check("--resume continues the run in --out, --overwrite replaces it: give one".into()));
    }
    if a.batch == 0 || a.videos_per_prompt == 0 || a.vae_frames_per_pass == Some(0) {
        return Err(CliError::Check("--batch, --videos-per-prompt and --vae-frames-per-pass must be at least 1".into()));
    }
    if a.negative_prompt.is_some() && !a.teacher {
        return Err(CliError::Check(format!("--negative-prompt without --teacher: {}", crate::pipeline::sample::NO_STUDENT_NEGATIVE)));
    }
    if !a.resume {
        super::ensure_new_dir(&a.out, a.overwrite).map_err(|e| CliError::Check(format!("{e}, or pass --overwrite (or --resume to continue the run there)")))?;
    }
    let gpus = dev.gpus(&a.devices)?;
    let gpu = &gpus[0];
    // what the videos depend on, checked against an interrupted run's before continuing it
    let settings = run_settings(a, gpu);
    let earlier = earlier_run(&a.out, &settings, a.resume)?;
    let t0 = Instant::now();
    let mut generators = Vec::with_capacity(gpus.len());
    let mut shape = None;
    for gpu in &gpus {
        let (generator, s) = load_generator(gpu, a).map_err(|e| with_memory_hint(e, a, gpu))?;
        shape = s;
        generators.push(match a.vae_frames_per_pass {
            Some(n) => Generator { vae: generator.vae.with_images_per_pass(n), ..generator },
            None => generator,
        });
    }
    let generator = &generators[0];
    eprintln!("loaded models in {:.1} s", t0.elapsed().as_secs_f64());
    let frames_n = a.frames.or(shape.map(|s| s.frames)).unwrap_or(16);
    let height = a.height.or(shape.map(|s| s.height)).unwrap_or(320);
    let width = a.width.or(shape.map(|s| s.width)).unwrap_or(512);
    let fps = a.fps.or(shape.map(|s| s.fps)).unwrap_or(8.0);
    let opts = SampleOptions {
        steps: a.steps,
        origin: a.origin,
        w: a.w,
        motion_scale: a.motion_scale,
        motion_percentage: a.motion_percentage,
        seed: a.seed,
        frames: frames_n,
        height,
        width,
        fps,
        teacher: a.teacher.then_some(crate::diffusion::DdimConfig { steps: a.teacher_steps, cfg: a.cfg, eta: a.eta }),
        negative_prompt: a.negative_prompt.clone(),
        init: None,
    };
    let opts = match &a.init_video {
        Some(path) => {
            let init = read_init_video(path, a, &opts)?;
            SampleOptions { init: Some(InitVideo::new(init, a.strength)), ..opts }
        }
        None => opts,
    };
    // refuse steps (or a strength) that run nothing before any sampling
    let n_train = generator.schedule.len();
    match &opts.teacher {
        Some(tc) => drop(opts.teacher_grid(n_train, tc)?),
        None => drop(opts.consistency_timesteps(n_train)?),
    }
    record_settings(&a.out, &settings)?;
    if let Some(iv) = &opts.init {
        write_gif(&a.out.join("input.gif"), &Frames::from_chw(&iv.pixels, frames_n, height, width), fps).map_err(|e| CliError::Check(e.to_string()))?;
    }
    if a.profile {
        for g in &gpus {
            g.set_profiling(true)?;
        }
    }
    let mut jobs = Jobs::new(a, &prompts, streamed, earlier);
    // the largest batch that fits: --batch, halved where one runs out of memory
    let max_batch = std::sync::atomic::AtomicUsize::new(a.batch);
    if jobs.kept() > 0 {
        eprintln!("resuming: {} videos of the earlier run kept, {} to generate", jobs.kept(), jobs.pending());
    }
    // the whole run's steps when the prompts are known, else each batch's
    let mut progress = (!streamed).then(|| Progress::new("sample", jobs.pending().div_ceil(a.batch) * opts.sampling_steps()));
    let mut generated = 0;
    let mp4 = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(!a.no_mp4));
    let mut writing: Option<Writing> = None;
    // what every video's line says besides its round's numbers
    let report = Report {
        steps: opts.sampling_steps(),
        kind: if a.teacher { "teacher DDIM" } else { "consistency" },
        from_input: if opts.init.is_some() { format!(" from the input video, strength {}", a.strength) } else { String::new() },
    };
    loop {
        // a batch for each device (streamed prompts: one batch, written as soon as it is done)
        let mut round = Vec::new();
        while round.len() < generators.len() {
            match jobs.next_batch()? {
                Some(batch) => round.push(batch),
                None => break,
            }
            if streamed {
                break;
            }
        }
        if round.is_empty() {
            break;
        }
        for g in &gpus {
            g.reset_peak_memory();
        }
        let t = Instant::now();
        let bar = std::sync::Mutex::new(progress.take().unwrap_or_else(|| Progress::new("sample", opts.sampling_steps())));
        let results: Vec<Result<(Vec<Vec<f32>>, usize), CliError>> = std::thread::scope(|s| {
            let handles: Vec<_> = round
                .iter()
                .zip(&generators)
                .map(|(batch, generator)| {
                    let (bar, opts, max_batch) = (&bar, &opts, &max_batch);
                    s.spawn(move || {
                        let items: Vec<(&str, u64)> = batch.iter().map(|j| (j.prompt.as_str(), a.seed + j.index as u64)).collect();
                        generate_fitting(generator, &items, opts, max_batch, bar)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("a generation thread panicked")).collect()
        });
        progress = (!streamed).then(|| bar.into_inner().expect("progress"));
        let in_round: usize = round.iter().map(Vec::len).sum();
        let (peak, at_once) = gpus.iter().map(|g| g.memory()).fold((0f64, 0f64), |(p, o), m| (p.max(m.peak_total_bytes as f64 / 1048576.0), o.max(m.peak_live_bytes as f64 / 1048576.0)));
        let info = RoundInfo { secs: t.elapsed().as_secs_f64() / in_round as f64, batches: round.len(), peak, at_once };
        // the videos of the batches that succeeded, up to the first that failed
        let (mut done, mut videos, mut failure) = (Vec::new(), Vec::new(), None);
        for (batch, result) in round.into_iter().zip(results) {
            match result {
                Ok((vs, n)) => {
                    for (job, video) in batch.into_iter().zip(vs) {
                        videos.push((job.name.clone(), video));
                        done.push((job, n));
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // a round's files are written on a thread while the next round generates; its
        // lines are printed and captions.jsonl rewritten once they are (streamed prompts:
        // at once, so that each video is out as soon as it can be)
        if let Some(w) = writing.take() {
            generated += w.finish(&mut jobs, &report)?;
        }
        let w = Writing::start(&a.out, videos, (frames_n, height, width, fps), &mp4, a.names == FileNames::Vbench, done, info);
        if streamed || failure.is_some() {
            generated += w.finish(&mut jobs, &report)?;
        } else {
            writing = Some(w);
        }
        if let Some(e) = failure {
            return Err(with_memory_hint(e, a, gpu));
        }
    }
    if let Some(w) = writing.take() {
        generated += w.finish(&mut jobs, &report)?;
    }
    if generated == 0 {
        eprintln!("{}", if jobs.any() { "every video was there already: nothing generated" } else { "no prompt read from standard input: nothing generated" });
        jobs.write_captions(&a.out)?;
    }
    if a.profile {
        for (i, g) in gpus.iter().enumerate() {
            if gpus.len() > 1 {
                eprintln!("device {i}:");
            }
            eprintln!("{}", g.profile_table()?);
        }
    }
    Ok(())
}

/// The parts of a video's line that every video of the run shares.
struct Report {
    steps: usize,
    kind: &'static str,
    from_input: String,
}

/// A round's numbers: generation time per video, batches at once (one per device), memory.
struct RoundInfo {
    secs: f64,
    batches: usize,
    peak: f64,
    at_once: f64,
}

/// A round's videos being written (frames, GIF, MP4) on their own thread.
struct Writing {
    handle: std::thread::JoinHandle<Result<(), CliError>>,
    /// The round's videos and the size of each one's batch.
    done: Vec<(Job, usize)>,
    info: RoundInfo,
    out: PathBuf,
}

impl Writing {
    /// Starts writing `videos` (name, (3, F, H, W) in [-1, 1]) into `out`; MP4 files while
    /// `mp4` holds (cleared, with a note, when ffmpeg fails).
    fn start(out: &Path, videos: Vec<(String, Vec<f32>)>, (f, h, w, fps): (usize, usize, usize, f32), mp4: &std::sync::Arc<std::sync::atomic::AtomicBool>, vbench: bool, done: Vec<(Job, usize)>, info: RoundInfo) -> Writing {
        use std::sync::atomic::Ordering;
        let (dir, mp4) = (out.to_path_buf(), mp4.clone());
        let handle = std::thread::spawn(move || {
            for (name, video) in videos {
                let frames = Frames::from_chw(&video, f, h, w);
                let frames_dir = dir.join(&name);
                write_frames(&frames_dir, &frames).map_err(|e| CliError::Check(e.to_string()))?;
                write_gif(&dir.join(format!("{name}.gif")), &frames, fps).map_err(|e| CliError::Check(e.to_string()))?;
                if mp4.load(Ordering::Relaxed) {
                    if let Err(e) = write_mp4(&dir.join(format!("{name}.mp4")), &frames_dir, fps) {
                        if mp4.swap(false, Ordering::Relaxed) {
                            let hint = if vbench { "; VBench reads MP4 files: install ffmpeg, or convert the GIFs" } else { "" };
                            eprintln!("note: no MP4 files ({e}){hint}");
                        }
                    }
                }
            }
            Ok(())
        });
        Writing { handle, done, info, out: out.to_path_buf() }
    }

    /// Waits for the files, then prints each video's line and lists the videos in
    /// `captions.jsonl` (what `t2v-turbo eval` reads; a resumed run keeps them). Returns the
    /// number of videos.
    fn finish(self, jobs: &mut Jobs, r: &Report) -> Result<usize, CliError> {
        self.handle.join().expect("the video-writing thread panicked")?;
        let i = &self.info;
        for (job, batch) in &self.done {
            jobs.finished(job);
            println!(
                "{} ({} {} steps{}, {:.2} s per video in a batch of {batch}{}, peak GPU memory {:.0} MiB, {:.0} MiB of it in tensors at once): {:?}",
                self.out.join(format!("{}.gif", job.name)).display(),
                r.steps,
                r.kind,
                r.from_input,
                i.secs,
                if i.batches > 1 { format!(", {} batches on {} devices at once", i.batches, i.batches) } else { String::new() },
                i.peak,
                i.at_once,
                job.prompt
            );
        }
        jobs.write_captions(&self.out)?;
        Ok(self.done.len())
    }
}

/// Generates `items` in batches of at most `max_batch` videos; a batch of several that runs
/// out of device memory is halved (for this run: `max_batch` is shared) and generated again
/// — the same videos, since none depends on its batch. Returns the videos and the batch
/// size they were made in; `bar` counts sampling steps (its total grows by the steps a
/// split adds).
fn generate_fitting(generator: &Generator, items: &[(&str, u64)], opts: &SampleOptions, max_batch: &std::sync::atomic::AtomicUsize, bar: &std::sync::Mutex<Progress>) -> Result<(Vec<Vec<f32>>, usize), CliError> {
    let steps = opts.sampling_steps();
    // the bar planned `steps` for these items; the steps of a failed batch and of the
    // batches a split makes are added
    let (mut allotted, mut consumed) = (steps, 0);
    let mut halve = |from: usize, to: usize| eprintln!("a batch of {from} videos ran out of device memory: batches of {to} from now on (the same videos)");
    let batches = crate::models::fitting::in_fitting_parts(items.len(), max_batch, &|| true, &mut halve, |r| {
        // what is left in batches of this size, after what was done
        let need = consumed + (items.len() - r.start).div_ceil(r.len()) * steps;
        if need > allotted {
            bar.lock().expect("progress").grow(need - allotted);
            allotted = need;
        }
        let len = r.len();
        let videos = generator.generate_batch_observed(&items[r], opts, &mut |_| {
            consumed += 1;
            bar.lock().expect("progress").advance(1, "steps");
            ControlFlow::Continue(())
        })?;
        Ok((videos, len))
    })?;
    let used = batches.iter().map(|b| b.1).min().unwrap_or(items.len());
    Ok((batches.into_iter().flat_map(|b| b.0).collect(), used))
}

/// A sampling error; when a device ran out of memory, followed by the options this run
/// does not use that would make it need less (batches and VAE passes are split already).
fn with_memory_hint(e: CliError, a: &SampleArgs, gpu: &Gpu) -> CliError {
    if !e.is_out_of_memory() {
        return e;
    }
    let mut options = Vec::new();
    if a.weights_dtype.precision(gpu) == crate::models::weights::WeightPrecision::F32 {
        options.push("--weights-dtype stored (16-bit files stay 16-bit on the device)");
    }
    CliError::Check(super::memory_advice(&e, &options, a.devices.len() > 1, "sample fewer --frames or a smaller --height / --width, or use a device with more memory"))
}

fn parse_strength(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("{v} is outside (0, 1]"))
    }
}

/// What a run's videos depend on besides their prompts: the models, the options of the
/// sampler and of the input video, the naming, and whether matrix cores compute (not the
/// batch: a video does not depend on it; not the adapter).
fn run_settings(a: &SampleArgs, gpu: &Gpu) -> serde_json::Value {
    // f32 options as written (0.05, not 0.05000000074505806)
    let f = |x: f32| serde_json::json!(x.to_string().parse::<f64>().ok());
    let mut v = serde_json::json!({
        "models": a.models, "checkpoint": a.files.checkpoint, "unet": a.files.unet, "vae": a.files.vae, "text": a.files.text,
        "unet_config": a.unet_config, "vae_config": a.vae_config, "text_config": a.text_config,
        "weights_dtype": format!("{:?}", a.weights_dtype), "matrix_cores": gpu.matrix_tile().is_some(),
        "seed": a.seed, "frames": a.frames, "height": a.height, "width": a.width, "fps": a.fps.map(f),
        "videos_per_prompt": a.videos_per_prompt, "names": format!("{:?}", a.names), "teacher": a.teacher,
    });
    if a.teacher {
        v["teacher_steps"] = a.teacher_steps.into();
        v["cfg"] = f(a.cfg);
        v["eta"] = f(a.eta);
        v["negative_prompt"] = serde_json::json!(a.negative_prompt);
    } else {
        v["steps"] = a.steps.into();
        v["origin"] = a.origin.into();
        v["w"] = f(a.w);
        v["motion_scale"] = f(a.motion_scale);
        v["motion_percentage"] = f(a.motion_percentage);
    }
    if let Some(lora) = &a.lora {
        v["lora"] = serde_json::json!(lora);
        v["lora_strength"] = f(a.lora_strength);
    }
    if let Some(iv) = &a.init_video {
        v["init_video"] = serde_json::json!(iv);
        v["strength"] = f(a.strength);
        v["source_fps"] = serde_json::json!(a.source_fps.map(f));
    }
    v
}

/// With `resume`, the videos the run in `out` finished (its `captions.jsonl`'s rows), after
/// checking that its settings (`sample.json`) equal these; else none.
fn earlier_run(out: &Path, settings: &serde_json::Value, resume: bool) -> Result<Vec<CaptionRow>, CliError> {
    if !(resume && super::holds_files(out)) {
        return Ok(Vec::new());
    }
    let file = out.join("sample.json");
    let text = std::fs::read_to_string(&file).map_err(|e| CliError::Check(format!("--resume: {}: {e} (not a `t2v-turbo sample` run's folder?)", file.display())))?;
    let was: serde_json::Value = serde_json::from_str(&text).map_err(|e| CliError::Check(format!("--resume: {}: {e}", file.display())))?;
    let null = serde_json::Value::Null;
    let at = |v: &serde_json::Value, k: &str| v.get(k).unwrap_or(&null).clone();
    let keys: std::collections::BTreeSet<&String> = was.as_object().into_iter().chain(settings.as_object()).flat_map(|m| m.keys()).collect();
    let differ: Vec<String> = keys.into_iter().filter(|k| at(&was, k) != at(settings, k)).map(|k| format!("{k}: {} then, {} now", at(&was, k), at(settings, k))).collect();
    if !differ.is_empty() {
        return Err(CliError::Check(format!("--resume: the run in {} was made with other options, so its videos would not match this run's: {}. Resume with its options, or choose another --out", out.display(), differ.join("; "))));
    }
    // (the run may have stopped before its first batch was written)
    let captions = out.join("captions.jsonl");
    if std::fs::read_to_string(&captions).is_ok_and(|t| !t.trim().is_empty()) {
        return read_captions(&captions).map_err(|e| CliError::Check(format!("--resume: {e}")));
    }
    Ok(Vec::new())
}

/// Writes the run's settings as `out/sample.json` (what `--resume` compares).
fn record_settings(out: &Path, settings: &serde_json::Value) -> Result<(), CliError> {
    std::fs::create_dir_all(out).map_err(|e| CliError::Check(format!("{}: {e}", out.display())))?;
    let text = serde_json::to_string_pretty(settings).expect("json");
    Ok(t2v_kernels::io::write_atomic(&out.join("sample.json"), text.as_bytes())?)
}

/// `--init-video` as the model's input: (3, F, H, W) in [-1, 1].
fn read_init_video(path: &Path, a: &SampleArgs, o: &SampleOptions) -> Result<Vec<f32>, CliError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let video = if path.is_file() && matches!(ext.as_str(), "png" | "jpg" | "jpeg") {
        // image-to-video: the still on every frame
        let (width, height, rgb) = read_image(path).map_err(|e| CliError::Check(format!("--init-video: {e}")))?;
        Frames { width, height, frames: vec![rgb; o.frames] }
    } else {
        let stride = a.source_fps.map(|s| (s / o.fps).round().max(1.0) as usize).unwrap_or(1);
        read_video(path, o.fps, stride, o.frames).map_err(|e| CliError::Check(format!("--init-video: {e}")))?
    };
    if video.frames.len() < o.frames {
        return Err(CliError::Check(format!("--init-video {}: {} frames, {} needed (lower --frames, or give a longer video)", path.display(), video.frames.len(), o.frames)));
    }
    Ok(video.to_model_input(o.height, o.width))
}

/// The generator of the models the options name, on `gpu`, and the video shape of a model
/// folder.
fn load_generator(gpu: &Gpu, a: &SampleArgs) -> Result<(Generator, Option<VideoShape>), CliError> {
    Ok(match &a.models {
        Some(dir) => {
            let md = ModelDir::read(dir)?.with_precision(a.weights_dtype.precision(gpu));
            // teacher or student: known from the folder, or with a LoRA once it is added
            let refuse = |student: bool| -> Result<(), CliError> {
                if a.teacher != student {
                    return Ok(());
                }
                let with = if a.lora.is_some() { " with the --lora file" } else { "" };
                Err(CliError::Check(if a.teacher {
                    format!("--teacher needs a teacher UNet; the one in {}{with} is a distilled student (drop --teacher)", dir.display())
                } else {
                    format!("the UNet in {}{with} is a teacher (no guidance-scale conditioning); sample it with --teacher, or distill a student with `t2v-turbo train`", dir.display())
                }))
            };
            let generator = match &a.lora {
                Some(lora) => Generator::from_model_dir_with_lora(gpu, &md, lora, a.lora_strength)?,
                None => {
                    refuse(md.is_student())?;
                    Generator::from_model_dir(gpu, &md)?
                }
            };
            refuse(generator.is_student())?;
            (generator, Some(md.video))
        }
        None if a.lora.is_some() => return Err(CliError::Check("--lora needs --models (the folder of the model the LoRA run trained)".into())),
        None => (load_from_files(gpu, a)?, None),
    })
}

fn load_from_files(gpu: &Gpu, a: &SampleArgs) -> Result<Generator, CliError> {
    let [unet, vae, text] = a.files.resolved();
    let pick = |x: Option<PathBuf>, what: &str| -> Result<PathBuf, CliError> {
        x.ok_or_else(|| CliError::Check(format!("no {what} weights: give --models DIR, --checkpoint or --{what}")))
    };
    let (unet, vae, text) = (pick(unet, "unet")?, pick(vae, "vae")?, pick(text, "text")?);
    let bad = |what: &str, p: &Path| CliError::Check(format!("{}: not a {what} config", p.display()));
    let unet_config = match &a.unet_config {
        Some(p) => UnetConfig::from_json(&json(p)?).ok_or_else(|| bad("UNet", p))?,
        None => UnetConfig::default(),
    };
    let vae_config = match &a.vae_config {
        Some(p) => VaeConfig::from_json(&json(p)?).ok_or_else(|| bad("VAE", p))?,
        None => VaeConfig::default(),
    };
    let text_config: TextConfig = match &a.text_config {
        Some(p) => ClipConfig::from_json(&json(p)?).ok_or_else(|| bad("text encoder", p))?.text,
        None => ClipConfig::default().text,
    };
    Ok(Generator::load(gpu, &GeneratorFiles { unet: &unet, vae: &vae, text: &text, unet_config, vae_config, text_config, precision: a.weights_dtype.precision(gpu) })?)
}
