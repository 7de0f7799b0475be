//! Training the embedded default's tiny models on the moving-shapes world (drawn fresh
//! every step, deterministic in the seed):
//! - `vae`: the autoencoder, frame reconstruction (MSE); afterwards the latent scale factor
//!   is set to 1 / std of the latents, as ldm does;
//! - `teacher`: the text-to-video UNet, the standard eps-prediction loss at uniform
//!   timesteps, long or short captions, the empty prompt 10% of the time (for CFG);
//!   optionally every other step on single frames as 1-frame videos (joint image-video
//!   training, `image_batch`);
//! - `text`: the teacher's conditioning text encoder, contrastively against single frames
//!   or strided frames with a motion map (`text_frames`; long or short captions)
//!   through a temporary vision tower that is not saved;
//! - `reward`: the HPS-style and CLIP-style image towers (frames vs short captions) and the
//!   video tower (strided frames vs long captions), symmetric contrastive loss; optionally
//!   every other step with reversed pairs as hard negatives (`reversed_pairs`).
//!
//! Checks: `teacher` ends with [`caption_check`] (does it read its captions?), `text` with
//! [`text_check`] (does its context tell the words apart?), the reward stages with
//! [`reward_check`] (which attributes each reward model sees).
//! Each writes a new model folder (a copy of the source with the trained file replaced),
//! with checkpoints every N steps in `OUT/pretrain-{what}/` and exact resume.

pub mod caption_check;
pub mod reward_check;
pub mod text_check;
mod objectives;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use t2v_kernels::autograd::{Tape, Var};
use t2v_kernels::optim::{AdamW, AdamWConfig, ParamGroup};
use t2v_kernels::{Gpu, Tensor};

pub use objectives::{motion_features, pretrain, What};

use crate::models::weights::{save_weights, Result, SaveDtype, WeightFile, WeightsError};
use crate::pipeline::model_dir::ModelDir;
use crate::pipeline::sample::Gaussian;
use crate::world::{clip_spec, render, ClipSpec, WorldConfig};

/// Settings of a pretraining run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    pub steps: u64,
    pub batch: usize,
    pub lr: f32,
    pub seed: u64,
    /// World seed of the training clips.
    pub world_seed: u64,
    /// Teacher only: when > 0, every other step trains on this many single frames (one
    /// from each of as many fresh clips, as 1-frame videos) instead of `batch` clips —
    /// joint image-video training, which shows the spatial layers many more independent
    /// image-caption pairs per unit of compute.
    #[serde(default)]
    pub image_batch: usize,
    /// Contrastive objectives only: every other step the second half of the batch is the
    /// first half played backwards (`ClipSpec::reversed`), hard negatives that only the
    /// direction of motion tells apart.
    #[serde(default)]
    pub reversed_pairs: bool,
    /// Text only: frames of each clip the temporary vision tower sees. 1: one random frame;
    /// n > 1: n strided frames and a linear map of their difference image
    /// (`motion_features`), so that the direction of motion counts.
    #[serde(default = "one")]
    pub text_frames: usize,
    /// Video reward only: a temporary head that classifies the direction of motion from
    /// the video features (cross-entropy on the clips' directions, beside the contrastive
    /// loss; not saved).
    #[serde(default)]
    pub direction_head: bool,
}

fn one() -> usize {
    1
}

/// One step's loss and named values for the log.
pub struct StepOut {
    pub loss: Var,
    pub logs: Vec<(&'static str, Var)>,
}

#[derive(Serialize, Deserialize)]
struct LoopState {
    step: u64,
    rng: u64,
    config: PretrainConfig,
}

/// Line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoopMetrics {
    pub step: u64,
    pub loss: f32,
    pub logs: Vec<(String, f32)>,
    pub seconds: f32,
}

/// Runs `step` to `cfg.steps` with AdamW (clip 1.0) on `params`, resuming from the newest
/// checkpoint in `dir/checkpoints`; checkpoints every `every` steps and at the end.
pub fn run_loop(
    dir: &Path,
    params: &[(String, Tensor)],
    cfg: &PretrainConfig,
    every: u64,
    quiet: bool,
    mut step: impl FnMut(&Tape, &mut Gaussian, u64) -> Result<StepOut>,
) -> Result<Vec<LoopMetrics>> {
    let io = |p: &Path, e: std::io::Error| WeightsError::Io { path: p.display().to_string(), msg: e.to_string() };
    let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
    let mut opt = AdamW::new(AdamWConfig { lr: cfg.lr, weight_decay: 0.0, ..Default::default() }, vec![ParamGroup { params: tensors.clone(), lr_scale: 1.0, weight_decay: None, clipped: true }]);
    let ckpts = dir.join("checkpoints");
    let mut rng = Gaussian::new(cfg.seed ^ 0x009E_7A1A);
    let mut at = 0u64;
    if let Some(last) = crate::pipeline::train::list_checkpoints(&ckpts).pop() {
        let s: LoopState = serde_json::from_str(&std::fs::read_to_string(last.join("state.json")).map_err(|e| io(&last, e))?)
            .map_err(|e| WeightsError::Data { path: last.display().to_string(), msg: e.to_string() })?;
        if s.config != (PretrainConfig { steps: s.config.steps, ..cfg.clone() }) {
            return Err(WeightsError::Data { path: last.display().to_string(), msg: format!("written with other settings {:?}; resume with the same ones (only --steps may change)", s.config) });
        }
        let f = WeightFile::open(&last.join("weights.safetensors"))?;
        for (name, t) in params {
            t.write(&f.host_f32(name)?.1)?;
        }
        opt.load(&last.join("optimizer.safetensors"))?;
        (at, rng) = (s.step, Gaussian::from_state(s.rng));
        if !quiet {
            eprintln!("resuming from {} (step {at})", last.display());
        }
    }
    let metrics_path = dir.join("metrics.jsonl");
    let mut history: Vec<LoopMetrics> = std::fs::read_to_string(&metrics_path)
        .map(|s| s.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default();
    history.retain(|m| m.step <= at);
    let mut progress = crate::pipeline::progress::Progress::new("pretrain", cfg.steps.saturating_sub(at) as usize).quiet(quiet);
    let mut now = Vec::new();
    while at < cfg.steps {
        let t0 = std::time::Instant::now();
        // T2V_PROFILE=1: per-kernel GPU times of one step (the second one run now)
        let profile = std::env::var("T2V_PROFILE").is_ok_and(|v| v == "1") && now.len() == 1;
        if profile {
            tensors[0].gpu().set_profiling(true)?;
        }
        let tape = Tape::new();
        tape.train_only(&tensors);
        let out = step(&tape, &mut rng, at)?;
        let grads = tape.backward(&out.loss)?;
        let gs = tensors.iter().map(|p| Ok(match tape.param_grad(&grads, p)? { Some(g) => g, None => Tensor::zeros(p.gpu(), p.shape())? })).collect::<Result<Vec<_>>>()?;
        let mut vals = vec![out.loss.value().clone()];
        vals.extend(out.logs.iter().map(|(_, v)| v.value().clone()));
        let vals = t2v_kernels::ops::concat(&vals.iter().map(|v| v.reshape(&[1])).collect::<t2v_kernels::Result<Vec<_>>>()?.iter().collect::<Vec<_>>(), 0)?.to_vec()?;
        if !vals[0].is_finite() {
            return Err(WeightsError::Data { path: dir.display().to_string(), msg: format!("step {}: loss {} is not finite; the last checkpoint is kept; lower --lr", at + 1, vals[0]) });
        }
        let norm = opt.step(&gs, Some(1.0))?.grad_norm.to_vec()?[0];
        if !norm.is_finite() {
            return Err(WeightsError::Data { path: dir.display().to_string(), msg: format!("step {}: gradient norm {norm} is not finite; the last checkpoint is kept; lower --lr", at + 1) });
        }
        if profile {
            eprintln!("{}", tensors[0].gpu().profile_table()?);
            tensors[0].gpu().set_profiling(false)?;
        }
        at += 1;
        let m = LoopMetrics { step: at, loss: vals[0], logs: out.logs.iter().zip(&vals[1..]).map(|((n, _), v)| (n.to_string(), *v)).collect(), seconds: t0.elapsed().as_secs_f32() };
        progress.advance(1, &format!("loss {:.4}", m.loss));
        history.push(m.clone());
        now.push(m);
        if at % every.max(1) == 0 || at == cfg.steps {
            let fin = ckpts.join(format!("step-{at:06}"));
            let written = t2v_kernels::io::write_atomic_dir(&fin, |tmp| -> Result<()> {
                save_weights(&tmp.join("weights.safetensors"), params, SaveDtype::F32, &[])?;
                opt.save(&tmp.join("optimizer.safetensors"))?;
                let st = LoopState { step: at, rng: rng.state(), config: cfg.clone() };
                Ok(t2v_kernels::io::write_atomic(&tmp.join("state.json"), serde_json::to_string(&st).expect("json").as_bytes())?)
            });
            if let Err(e) = written {
                let kept = crate::pipeline::train::list_checkpoints(&ckpts).pop().map_or_else(|| "none yet".into(), |p| p.display().to_string());
                return Err(WeightsError::Data { path: fin.display().to_string(), msg: format!("writing the checkpoint of step {at} failed ({e}); stopped. The last good checkpoint is kept: {kept}. Free some space (or fix the folder) and continue with --resume") });
            }
            for old in crate::pipeline::train::list_checkpoints(&ckpts).iter().rev().skip(2) {
                let _ = std::fs::remove_dir_all(old);
            }
            let text: String = history.iter().map(|m| serde_json::to_string(m).expect("json") + "\n").collect();
            t2v_kernels::io::write_atomic(&metrics_path, text.as_bytes())?;
            let mut series = vec![("LOSS".to_string(), history.iter().map(|m| (m.step as f32, m.loss)).collect::<Vec<_>>())];
            // one series per logged name (steps may log different values, e.g. reversed-pair steps)
            let mut names: Vec<&str> = Vec::new();
            for (n, _) in history.iter().flat_map(|m| &m.logs) {
                if !names.contains(&n.as_str()) {
                    names.push(n);
                }
            }
            for n in names {
                series.push((n.to_uppercase().replace('_', " "), history.iter().filter_map(|m| m.logs.iter().find(|(k, _)| k == n).map(|v| (m.step as f32, v.1))).collect()));
            }
            let refs: Vec<(&str, Vec<(f32, f32)>)> = series.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
            crate::pipeline::plot::plot_series(&dir.join("metrics.png"), &refs)?;
        }
    }
    Ok(now)
}

/// `n` random clips of the world (indices drawn from a large range: fresh data each step).
pub fn draw_clips(rng: &mut Gaussian, world_seed: u64, n: usize, cfg: &WorldConfig) -> Vec<ClipSpec> {
    (0..n).map(|_| clip_spec(world_seed, (rng.uniform() * 1e12) as u64, cfg)).collect()
}

/// `n` clips: `n / 2` random ones, the same reversed (`ClipSpec::reversed`), and with an
/// odd `n` one more random clip.
pub fn draw_reversed_pairs(rng: &mut Gaussian, world_seed: u64, n: usize, cfg: &WorldConfig) -> Vec<ClipSpec> {
    let mut specs = draw_clips(rng, world_seed, n / 2, cfg);
    specs.extend(specs.iter().map(|s| s.reversed(cfg)).collect::<Vec<_>>());
    specs.extend(draw_clips(rng, world_seed, n % 2, cfg));
    specs
}

/// Clips as (B, 3, F, H, W) in [-1, 1].
pub fn clips_tensor(gpu: &Gpu, specs: &[ClipSpec], cfg: &WorldConfig) -> Result<Tensor> {
    let mut data = Vec::new();
    for s in specs {
        data.extend(render(s, cfg).to_model_input(cfg.size, cfg.size));
    }
    Ok(Tensor::from_slice(gpu, &[specs.len(), 3, cfg.frames, cfg.size, cfg.size], &data)?)
}

/// Copies a model folder's files into `out` (a new folder) and returns it parsed there.
pub fn copy_model_dir(src: &ModelDir, out: &Path) -> Result<ModelDir> {
    let io = |p: &Path, e: std::io::Error| WeightsError::Write { path: p.display().to_string(), msg: e.to_string() };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let mut md = src.clone();
    md.root = out.to_path_buf();
    let copy = |p: &PathBuf| -> Result<PathBuf> {
        let dst = out.join(p.file_name().expect("file"));
        if !dst.exists() {
            std::fs::copy(p, &dst).map_err(|e| WeightsError::Data { path: p.display().to_string(), msg: format!("cannot copy it to {}: {e}", dst.display()) })?;
        }
        Ok(dst)
    };
    for f in md.files_mut() {
        *f = copy(f)?;
    }
    md.write_config()?;
    Ok(md)
}
