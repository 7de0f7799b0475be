//! Algorithm 1 for one clip, on top of the verified pieces: draw a grid index n and a
//! guidance scale w, noise the clean latent to `t = grid[n]`, store the teacher's conditional
//! and unconditional eps there, and for motion-guided samples (upper half of the grid)
//! DDIM-invert the clean latent to the same t and store dG/dz_t (with the conditional eps
//! of that gradient's own forward, as the reference's `get_motion_prior_score` gives it). The record is what
//! `diffusion::distill::consistency_loss` consumes. Over a data set, the motion-guided
//! clips of a shard are inverted a group at a time (`inversion_batch`), sharing UNet calls.

use serde::{Deserialize, Serialize};
use t2v_kernels::autograd::Tape;
use t2v_kernels::{ops, Tensor};

use crate::diffusion::{ddim_invert, ddim_invert_batch, DdimSolver, Schedule};
use crate::guidance::{motion_guidance, MotionScales};
use crate::models::fitting::in_fitting_parts;
use crate::models::unet3d::{Unet3d, UnetInputs};
use crate::models::weights::{Result, WeightsError};
use crate::pipeline::sample::Gaussian;
use crate::pipeline::shards::{manifest_name, shard_name, write_shard, RecordMeta, RecordTensors, Shard, ShardConfig};

/// One preprocessed clip.
pub struct Record {
    pub index: usize,
    pub w: f32,
    pub z_t: Tensor,
    pub cond_eps: Tensor,
    pub uncond_eps: Tensor,
    /// dG/dz_t for motion-guided samples.
    pub score: Option<Tensor>,
    /// The motion energy G(z_t) for motion-guided samples.
    pub energy: Option<f32>,
}

/// Settings of preprocessing.
#[derive(Clone, Debug)]
pub struct PreprocessConfig {
    /// Range of w (the method: 5 to 15).
    pub w_range: (f32, f32),
    /// Compute motion guidance for samples in the upper half of the grid.
    pub motion: bool,
    pub scales: MotionScales,
    /// Fractions of the grid n is drawn from (the reference's motion pass: 0.5..1, its
    /// no-motion pass: 0..0.5; default: the whole grid).
    pub index_range: (f32, f32),
    /// Motion-guided clips whose DDIM inversions share UNet calls in
    /// [`preprocess_dataset`] (peak memory grows with it; 1: one clip at a time).
    pub inversion_batch: usize,
    /// Where the reference attention comes from.
    pub reference: MotionReference,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig { w_range: (5.0, 15.0), motion: true, scales: MotionScales::default(), index_range: (0.0, 1.0), inversion_batch: 8, reference: MotionReference::Inversion }
    }
}

/// The latent whose temporal attention is the motion reference of a clip.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MotionReference {
    /// T2V-Turbo-v2's: the clean latent DDIM-inverted with its caption to the record's t
    /// (n + 1 teacher calls per motion-guided clip, 101-200 on the 200-point grid).
    #[default]
    Inversion,
    /// Not T2V-Turbo-v2's: MotionClone's current way, the clean latent noised forward to
    /// timestep `t` with fresh noise (MotionClone: 400) in one step; no inversion, so one
    /// teacher call for the reference instead of n + 1.
    Noised { t: usize },
}

impl MotionReference {
    pub fn is_inversion(&self) -> bool {
        *self == MotionReference::Inversion
    }
}

/// Preprocesses one clip's clean latent `z0` (B, C, F, h, w) with its text context and the
/// empty prompt's; `rng` draws n, w and the noise (deterministic for a seeded generator).
#[allow(clippy::too_many_arguments)]
pub fn preprocess_clip(
    unet: &Unet3d,
    sched: &Schedule,
    solver: &DdimSolver,
    z0: &Tensor,
    context: &Tensor,
    uncond: &Tensor,
    fps: &[f32],
    cfg: &PreprocessConfig,
    rng: &mut Gaussian,
) -> Result<Record> {
    let drawn = draw_teacher(unet, sched, solver, z0, context, uncond, fps, cfg, rng)?;
    if drawn.cond_eps.is_some() {
        return Ok(drawn.without_motion());
    }
    let z_ref = match cfg.reference {
        MotionReference::Inversion => {
            let tape = Tape::new();
            tape.no_grad(|| ddim_invert(unet, sched, &solver.grid, &tape.constant(z0.clone()), &tape.constant(context.clone()), fps, drawn.index))?.value().clone()
        }
        MotionReference::Noised { t } => noised_reference(sched, z0, t, rng)?,
    };
    drawn.with_motion(unet, solver, &z_ref, context, fps, cfg)
}

/// [`MotionReference::Noised`]: z0 noised forward to `t` with noise drawn from `rng`
/// (after the clip's other draws).
fn noised_reference(sched: &Schedule, z0: &Tensor, t: usize, rng: &mut Gaussian) -> Result<Tensor> {
    let tape = Tape::new();
    tape.no_grad(|| {
        let noise = tape.constant(Tensor::from_slice(z0.gpu(), z0.shape(), &rng.take(z0.numel()))?);
        Ok(sched.add_noise(&tape.constant(z0.clone()), &noise, t)?.value().clone())
    })
}

/// Whether a record at grid index `index` gets motion guidance: the upper half of the grid.
pub fn needs_motion(cfg: &PreprocessConfig, solver: &DdimSolver, index: usize) -> bool {
    cfg.motion && index >= solver.grid.len() / 2
}

/// A clip's draws (n, w, noise) and the teacher outputs that need no motion guidance: the
/// unconditional eps, and the conditional one unless the clip is motion-guided — then it
/// comes from the guidance's own forward on z_t, as the reference's
/// `get_motion_prior_score` returns it (one UNet call fewer per motion-guided clip).
struct Drawn {
    index: usize,
    w: f32,
    z_t: Tensor,
    uncond_eps: Tensor,
    /// None for a motion-guided clip.
    cond_eps: Option<Tensor>,
}

impl Drawn {
    /// The record of a clip without motion guidance.
    fn without_motion(self) -> Record {
        let cond_eps = self.cond_eps.expect("a clip without motion guidance has its conditional eps");
        Record { index: self.index, w: self.w, z_t: self.z_t, cond_eps, uncond_eps: self.uncond_eps, score: None, energy: None }
    }

    /// The record of a motion-guided clip, given its DDIM-inverted reference latent at the
    /// same t: dG/dz_t, G and the conditional eps of the same forward.
    fn with_motion(self, unet: &Unet3d, solver: &DdimSolver, z_ref: &Tensor, context: &Tensor, fps: &[f32], cfg: &PreprocessConfig) -> Result<Record> {
        let t = solver.grid[self.index] as f32;
        let g = motion_guidance(unet, z_ref, &self.z_t, &vec![t; self.z_t.shape()[0]], context, fps, cfg.scales)?;
        Ok(Record { index: self.index, w: self.w, z_t: self.z_t, cond_eps: g.teacher_eps, uncond_eps: self.uncond_eps, score: Some(g.grad), energy: Some(g.energy) })
    }
}

/// Draws n, w and the noise, and runs the teacher calls of [`Drawn`].
#[allow(clippy::too_many_arguments)]
fn draw_teacher(
    unet: &Unet3d,
    sched: &Schedule,
    solver: &DdimSolver,
    z0: &Tensor,
    context: &Tensor,
    uncond: &Tensor,
    fps: &[f32],
    cfg: &PreprocessConfig,
    rng: &mut Gaussian,
) -> Result<Drawn> {
    let gpu = z0.gpu();
    let b = z0.shape()[0];
    let n = solver.grid.len() as f64;
    let (lo, hi) = ((cfg.index_range.0.clamp(0.0, 1.0) as f64 * n) as usize, (cfg.index_range.1.clamp(0.0, 1.0) as f64 * n) as usize);
    let index = (lo + (rng.uniform() * hi.saturating_sub(lo) as f64) as usize).min(solver.grid.len() - 1);
    let w = cfg.w_range.0 + (cfg.w_range.1 - cfg.w_range.0) * rng.uniform() as f32;
    let t = solver.grid[index];
    let motion = needs_motion(cfg, solver, index);
    let tape = Tape::new();
    let (z_t, cond_eps, uncond_eps) = tape.no_grad(|| -> Result<(Tensor, Option<Tensor>, Tensor)> {
        let noise = tape.constant(Tensor::from_slice(gpu, z0.shape(), &rng.take(z0.numel()))?);
        let z_t = sched.add_noise(&tape.constant(z0.clone()), &noise, t)?;
        let ts = vec![t as f32; b];
        let call = |ctx: &Tensor| -> Result<Tensor> {
            let c = tape.constant(ctx.clone());
            Ok(unet.forward(&UnetInputs { z: &z_t, t: &ts, context: &c, fps, w_embedding: None, motion_embedding: None, record_attention: false })?.eps.value().clone())
        };
        let cond = if motion { None } else { Some(call(context)?) };
        Ok((z_t.value().clone(), cond, call(uncond)?))
    })?;
    Ok(Drawn { index, w, z_t, uncond_eps, cond_eps })
}

/// Algorithm 1 over a data set: the models it needs.
pub struct PreprocessModels<'a> {
    pub unet: &'a Unet3d,
    pub vae: &'a crate::models::vae::Vae,
    pub text: &'a crate::models::clip::TextTower,
    pub tokenizer: &'a crate::models::tokenizer::ClipTokenizer,
}

/// What to preprocess and where.
pub struct PreprocessJob {
    pub captions: std::path::PathBuf,
    pub out: std::path::PathBuf,
    /// Machine i of n: rows with row % n == i.
    pub shard: (usize, usize),
    /// Records per shard file.
    pub shard_size: usize,
    pub config: ShardConfig,
    /// Frame rate of frame folders (every round(source_fps / fps)-th frame is used);
    /// None: use consecutive frames.
    pub source_fps: Option<f32>,
    pub settings: PreprocessConfig,
    pub quiet: bool,
}

/// Outcome of a run.
#[derive(Debug, Default)]
pub struct PreprocessReport {
    pub shards_written: usize,
    /// Shards found finished from an earlier run.
    pub shards_skipped: usize,
    pub records: usize,
    pub motion_records: usize,
    /// Videos that could not be read, with the reason.
    pub skipped_videos: Vec<(String, String)>,
    /// Peak GPU memory of one clip (of one group of DDIM inversions, if larger), bytes:
    /// tensors and the pool of reusable buffers.
    pub peak_bytes: u64,
    /// The same, of memory in tensors at once (what `--max-memory` must leave room for).
    pub peak_live_bytes: u64,
}

/// Runs Algorithm 1 over machine `shard.0`'s part of the captions file. Each row draws from
/// its own random stream (seeded by the data set seed and the row), so results do not
/// depend on sharding or on resuming; finished shards are skipped.
pub fn preprocess_dataset(m: &PreprocessModels, job: &PreprocessJob) -> std::result::Result<PreprocessReport, PreprocessError> {
    preprocess_dataset_on(std::slice::from_ref(m), job)
}

/// [`preprocess_dataset`] on several devices at once, `models` holding one set per device:
/// each shard file goes to the next free device, and is the file one device writes (its
/// records depend only on their rows). A device that fails stops the others after their
/// current shard; the shards written are kept for the next run.
pub fn preprocess_dataset_on(models: &[PreprocessModels], job: &PreprocessJob) -> std::result::Result<PreprocessReport, PreprocessError> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let rows = crate::pipeline::captions::read_captions(&job.captions)?;
    let (i, n) = job.shard;
    let mine: Vec<usize> = (0..rows.len()).filter(|r| r % n == i).collect();
    let chunks: Vec<&[usize]> = mine.chunks(job.shard_size.max(1)).collect();
    // one unit per record: a clip's draws each
    let draws = job.config.draws.max(1);
    let progress = crate::pipeline::progress::Progress::new("preprocess", mine.len() * draws).quiet(job.quiet);
    // the videos an earlier run into this folder skipped, with its reasons (its shards'
    // rows that have no record)
    let earlier_skips = crate::pipeline::shards::manifest_skipped_videos(&job.out.join(manifest_name(job.shard))).unwrap_or_default().into_iter().collect();
    let shared = std::sync::Mutex::new(Tally { report: PreprocessReport::default(), done: Vec::new(), skipped_rows: Vec::new(), earlier_skips, progress });
    let (next, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
    let work = |m: &PreprocessModels| -> std::result::Result<(), PreprocessError> {
        let device = DeviceRun::new(m, job)?;
        while !stop.load(Relaxed) {
            let k = next.fetch_add(1, Relaxed);
            let Some(chunk) = chunks.get(k) else { break };
            if let Err(e) = device.shard(k, chunk, &rows, &shared) {
                stop.store(true, Relaxed);
                return Err(e);
            }
        }
        Ok(())
    };
    match models {
        [] => return Err(PreprocessError::Model(WeightsError::Data { path: "preprocess".into(), msg: "no device given".into() })),
        [m] => work(m)?,
        _ => {
            let results: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = models.iter().map(|m| s.spawn(|| work(m))).collect();
                handles.into_iter().map(|h| h.join().expect("a preprocessing thread panicked")).collect()
            });
            // the first device's error first
            results.into_iter().collect::<std::result::Result<Vec<()>, _>>()?;
        }
    }
    let tally = shared.into_inner().expect("no thread panicked holding the tally");
    write_manifest(job, &tally.done, &tally.report)?;
    Ok(tally.report)
}

impl PreprocessReport {
    /// Takes a device's peaks since its last reset into the run's.
    fn peak(&mut self, m: &t2v_kernels::PoolStats) {
        self.peak_bytes = self.peak_bytes.max(m.peak_total_bytes);
        self.peak_live_bytes = self.peak_live_bytes.max(m.peak_live_bytes);
    }
}

/// A run's counts, shared by its devices; the manifest lists shards and skipped videos in
/// row order, whichever device finished them first.
struct Tally {
    report: PreprocessReport,
    /// (shard number, file name) of the shards finished.
    done: Vec<(usize, String)>,
    /// The rows of `report.skipped_videos` (in shards done earlier too), ascending.
    skipped_rows: Vec<usize>,
    /// path -> reason, from the folder's manifest of an earlier run.
    earlier_skips: std::collections::HashMap<String, String>,
    progress: crate::pipeline::progress::Progress,
}

impl Tally {
    fn skip(&mut self, row: usize, path: &str, why: String) {
        let at = self.skipped_rows.partition_point(|&r| r < row);
        self.skipped_rows.insert(at, row);
        self.report.skipped_videos.insert(at, (path.to_string(), why));
    }
    fn finished(&mut self, k: usize, name: String) {
        let at = self.done.partition_point(|d| d.0 < k);
        self.done.insert(at, (k, name));
    }
    fn advance(&mut self, n: usize) {
        let note = skipped_note(&self.report);
        self.progress.advance(n, &note);
    }
}

/// The text encoder's penultimate features of a caption (the UNet's context).
fn encode_caption(m: &PreprocessModels, tape: &Tape, text: &str) -> Result<Tensor> {
    let ids = vec![m.tokenizer.encode_warn(text).map_err(|e| WeightsError::Data { path: "caption".into(), msg: e.to_string() })?.ids];
    tape.no_grad(|| Ok(m.text.penultimate(tape, &ids)?.value().clone()))
}

/// One device's part of a run: its models and what every shard needs.
struct DeviceRun<'a, 'm> {
    m: &'a PreprocessModels<'m>,
    job: &'a PreprocessJob,
    gpu: t2v_kernels::Gpu,
    sched: Schedule,
    solver: DdimSolver,
    tape: Tape,
    uncond: Tensor,
    /// Frame-folder stride (`source_fps / fps`).
    stride: usize,
    /// Inversions run together: `--inversion-batch`, halved where a group ran out of memory.
    inversion_batch: std::sync::atomic::AtomicUsize,
}

impl<'a, 'm> DeviceRun<'a, 'm> {
    fn new(m: &'a PreprocessModels<'m>, job: &'a PreprocessJob) -> std::result::Result<Self, PreprocessError> {
        let cfg = &job.config;
        let sched = Schedule::videocrafter();
        let solver = DdimSolver::new(&sched, cfg.ddim_steps);
        let stride = job.source_fps.map(|s| (s / cfg.fps).round().max(1.0) as usize).unwrap_or(1);
        let tape = Tape::new();
        let uncond = encode_caption(m, &tape, &job.config.negative_prompt)?;
        Ok(DeviceRun { m, job, gpu: m.vae.gpu().clone(), sched, solver, tape, uncond, stride, inversion_batch: std::sync::atomic::AtomicUsize::new(job.settings.inversion_batch.max(1)) })
    }

    fn encode_text(&self, text: &str) -> Result<Tensor> {
        encode_caption(self.m, &self.tape, text)
    }

    /// Shard file `k` (rows `chunk`): skipped when an earlier run finished it, else its
    /// clips' draws and teacher outputs one by one, then the motion-guided ones' DDIM
    /// inversions a group at a time (shared UNet calls), their guidance gradients one by one.
    fn shard(&self, k: usize, chunk: &[usize], rows: &[crate::pipeline::captions::CaptionRow], tally: &std::sync::Mutex<Tally>) -> std::result::Result<(), PreprocessError> {
        let (m, job, gpu, cfg) = (self.m, self.job, &self.gpu, &self.job.config);
        let tally = || tally.lock().expect("no thread panicked holding the tally");
        let draws = cfg.draws.max(1);
        let name = shard_name(job.shard, k);
        let path = job.out.join(&name);
        if path.exists() {
            match Shard::open(&path) {
                Ok(s) if s.config == *cfg && s.records.iter().all(|r| chunk.contains(&r.row)) => {
                    let mut t = tally();
                    for &r in chunk.iter().filter(|&&r| !s.records.iter().any(|rec| rec.row == r)) {
                        let why = t.earlier_skips.get(&rows[r].path).cloned().unwrap_or_else(|| "skipped by an earlier run".into());
                        t.skip(r, &rows[r].path, why);
                    }
                    t.report.shards_skipped += 1;
                    t.finished(k, name);
                    t.progress.advance(chunk.len() * draws, "(done earlier)");
                    return Ok(());
                }
                Ok(s) => {
                    return Err(PreprocessError::Exists(format!(
                        "{} was written with other settings ({:?}, now {cfg:?}) or another --shard/--shard-size or captions file; use another output folder (nothing was overwritten)",
                        path.display(),
                        s.config
                    )))
                }
                // a broken file (e.g. an interrupted copy) is redone
                Err(_) => {}
            }
        }
        let mut clips: Vec<Pending> = Vec::new();
        for &r in chunk {
            let row = &rows[r];
            let video = crate::pipeline::video_io::read_video(&row.resolve(&job.captions), cfg.fps, self.stride, cfg.frames).and_then(|v| {
                if v.frames.len() < cfg.frames {
                    Err(crate::pipeline::video_io::VideoIoError { path: row.path.clone(), msg: format!("{} frames, {} needed", v.frames.len(), cfg.frames) })
                } else {
                    Ok(v)
                }
            });
            let video = match video {
                Ok(v) => v,
                Err(e) => {
                    if !job.quiet {
                        eprintln!("skipping {}: {e}", row.path);
                    }
                    let mut t = tally();
                    t.skip(r, &row.path, e.to_string());
                    t.advance(draws);
                    continue;
                }
            };
            gpu.reset_peak_memory();
            let x = Tensor::from_slice(gpu, &[1, 3, cfg.frames, cfg.height, cfg.width], &video.to_model_input(cfg.height, cfg.width))?;
            let z0 = self.tape.no_grad(|| -> Result<Tensor> { Ok(m.vae.encode_video(&self.tape.constant(x))?.value().clone()) })?;
            let context = self.encode_text(&row.caption)?;
            for d in 0..draws {
                let mut rng = Gaussian::new(draw_seed(cfg.seed, r, d));
                let rec = draw_teacher(m.unet, &self.sched, &self.solver, &z0, &context, &self.uncond, &[cfg.fps], &job.settings, &mut rng)?;
                // a noised reference now, from the draw's own stream (inversions come below,
                // a group at a time)
                let z_ref = match job.settings.reference {
                    MotionReference::Noised { t } if rec.cond_eps.is_none() => Some(noised_reference(&self.sched, &z0, t, &mut rng)?),
                    _ => None,
                };
                let mut t = tally();
                t.report.peak(&gpu.memory());
                if rec.cond_eps.is_some() {
                    t.advance(1);
                }
                drop(t);
                let meta = RecordMeta { row: r, path: row.path.clone(), caption: row.caption.clone(), short_caption: row.short_caption.clone(), index: rec.index, w: rec.w, motion_energy: None };
                clips.push(Pending { meta, drawn: Some(rec), done: None, z0: z0.clone(), context: context.clone(), z_ref });
            }
        }
        let motion: Vec<usize> = (0..clips.len()).filter(|&i| clips[i].drawn.as_ref().is_some_and(|d| d.cond_eps.is_none())).collect();
        // the motion-guided clips' reference latents: noised above, or DDIM-inverted here a
        // group at a time (shared UNet calls); a group whose inversion runs out of memory is
        // halved (for this device's rest), one whose guidance does is not (its clips moved on)
        let inverted = job.settings.reference.is_inversion();
        let one = std::sync::atomic::AtomicUsize::new(1);
        let guiding = std::cell::Cell::new(false);
        let mut halve = |from: usize, to: usize| {
            if !job.quiet {
                eprintln!("DDIM inversion of {from} clips at once ran out of device memory: {to} at a time from now on (--inversion-batch)");
            }
        };
        in_fitting_parts(motion.len(), if inverted { &self.inversion_batch } else { &one }, &|| !guiding.get(), &mut halve, |r| {
            let group = &motion[r];
            guiding.set(false);
            gpu.reset_peak_memory();
            let refs = if inverted {
                let z0s = ops::concat(&group.iter().map(|&i| &clips[i].z0).collect::<Vec<_>>(), 0)?;
                let contexts = ops::concat(&group.iter().map(|&i| &clips[i].context).collect::<Vec<_>>(), 0)?;
                let indices: Vec<usize> = group.iter().map(|&i| clips[i].drawn.as_ref().expect("not finished yet").index).collect();
                ddim_invert_batch(m.unet, &self.sched, &self.solver.grid, &z0s, &contexts, &vec![cfg.fps; group.len()], &indices)?
            } else {
                group.iter().map(|&i| clips[i].z_ref.take().expect("noised when drawn")).collect()
            };
            guiding.set(true);
            for (&i, z_ref) in group.iter().zip(&refs) {
                let c = &mut clips[i];
                let rec = c.drawn.take().expect("not finished yet").with_motion(m.unet, &self.solver, z_ref, &c.context, &[cfg.fps], &job.settings)?;
                c.meta.motion_energy = rec.energy;
                c.done = Some(rec);
                let mut t = tally();
                t.report.motion_records += 1;
                t.advance(1);
            }
            tally().report.peak(&gpu.memory());
            Ok(())
        })?;
        let records: Vec<_> = clips
            .into_iter()
            .map(|c| {
                let rec = c.done.unwrap_or_else(|| c.drawn.expect("every clip is drawn").without_motion());
                (c.meta, RecordTensors { z_t: rec.z_t, cond_eps: rec.cond_eps, uncond_eps: rec.uncond_eps, context: c.context, score: rec.score })
            })
            .collect();
        let n = records.len();
        write_shard(&path, cfg, &records)?;
        let mut t = tally();
        t.report.records += n;
        t.report.shards_written += 1;
        t.finished(k, name);
        write_manifest(job, &t.done, &t.report)?;
        Ok(())
    }
}

/// The seed of draw `d` of row `r`'s clip: draw 0's is the clip's stream of a one-draw run,
/// so adding draws keeps the first records.
fn draw_seed(seed: u64, r: usize, d: usize) -> u64 {
    seed ^ (r as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F) ^ (d as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// A draw of a shard's clip on its way to a record.
struct Pending {
    meta: RecordMeta,
    /// Until finished.
    drawn: Option<Drawn>,
    /// Once finished (motion-guided clips).
    done: Option<Record>,
    z0: Tensor,
    context: Tensor,
    /// A noised motion reference, drawn with the clip.
    z_ref: Option<Tensor>,
}

/// The progress line's note: how many videos were skipped, if any.
fn skipped_note(report: &PreprocessReport) -> String {
    if report.skipped_videos.is_empty() {
        String::new()
    } else {
        format!("skipped {}", report.skipped_videos.len())
    }
}

fn write_manifest(job: &PreprocessJob, shards: &[(usize, String)], report: &PreprocessReport) -> Result<()> {
    let (cfg, shards): (&ShardConfig, Vec<&String>) = (&job.config, shards.iter().map(|(_, name)| name).collect());
    let v = serde_json::json!({
        "format": "t2v-turbo shards",
        "captions": job.captions.display().to_string(),
        "machine": [job.shard.0, job.shard.1],
        "config": cfg,
        "shards": shards,
        "skipped_videos": report.skipped_videos.iter().map(|(p, e)| serde_json::json!({"path": p, "error": e})).collect::<Vec<_>>(),
    });
    t2v_kernels::io::write_atomic(&job.out.join(manifest_name(job.shard)), serde_json::to_string_pretty(&v).expect("json").as_bytes())?;
    Ok(())
}

/// Errors of a preprocessing run.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error(transparent)]
    Captions(#[from] crate::pipeline::captions::CaptionsError),
    #[error(transparent)]
    Model(#[from] WeightsError),
    #[error(transparent)]
    Gpu(#[from] t2v_kernels::Error),
    #[error("{0}")]
    Exists(String),
}

impl PreprocessError {
    /// Did the device run out of memory (or over its `--max-memory`)?
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            PreprocessError::Gpu(e) => e.is_out_of_memory(),
            PreprocessError::Model(e) => e.is_out_of_memory(),
            _ => false,
        }
    }
}
