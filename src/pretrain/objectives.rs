//! The three pretraining objectives (see the module docs of `pretrain`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use t2v_kernels::autograd::{self as ad, Tape, Var};
use t2v_kernels::ops::UnaryOp;
use t2v_kernels::{Gpu, Tensor};

use super::{clips_tensor, copy_model_dir, draw_clips, draw_reversed_pairs, run_loop, LoopMetrics, PretrainConfig, StepOut};
use crate::diffusion::Schedule;
use crate::models::clip::{l2_normalize, Clip, VisionTower};
use crate::models::internvideo2::InternVideo2;
use crate::models::tokenizer::{BertTokenizer, ClipTokenizer};
use crate::models::unet3d::{Unet3d, UnetInputs};
use crate::models::vae::Vae;
use crate::models::weights::{save_weights, Loader, Result, SaveDtype, WeightFile, WeightsError};
use crate::pipeline::model_dir::{load_internvideo2_params, ModelDir, VideoRewardSpec};
use crate::pipeline::sample::Gaussian;
use crate::reward::Preprocess;
use crate::world::WorldConfig;

/// Which model to pretrain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    Vae,
    Teacher,
    /// The teacher's text encoder (the conditioning tower), contrastively against frames
    /// through a temporary vision tower, as OpenCLIP was trained before VideoCrafter2 used it.
    Text,
    /// Every reward model of the folder, together.
    Reward,
    /// Only the image reward towers.
    ImageRewards,
    /// Only the video reward.
    VideoReward,
}

impl What {
    /// Trained with the contrastive loss (needs batches of at least 2).
    pub fn is_contrastive(self) -> bool {
        matches!(self, What::Text | What::Reward | What::ImageRewards | What::VideoReward)
    }
}

fn load<T>(gpu: &Gpu, path: &Path, f: impl FnOnce(&Loader) -> Result<T>) -> Result<(T, Vec<(String, Tensor)>)> {
    let file = WeightFile::open(path)?;
    let prefix = file.prefix_among(&["model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."]);
    let l = Loader::new(&file, gpu, &prefix);
    let m = f(&l)?;
    let params = l.params();
    l.finish()?;
    Ok((m, params))
}

/// The "pretrained" metadata of the source folder's weight files, by file name: what the
/// weights had been through before this run (continued pretraining records both).
fn source_notes(src: &ModelDir) -> BTreeMap<OsString, String> {
    src.files()
        .into_iter()
        .filter_map(|f| Some((f.file_name()?.to_os_string(), WeightFile::open(f).ok()?.metadata.get("pretrained")?.clone())))
        .collect()
}

/// The "pretrained" metadata of `file` after `steps` more steps (`how`: a note on the
/// recipe, or empty). No steps (a check, or a re-save as f16) keep the note as it was.
fn pretrained_note(notes: &BTreeMap<OsString, String>, file: &Path, steps: u64, how: &str) -> String {
    let now = format!("{steps} step{} on the moving-shapes world{how}", if steps == 1 { "" } else { "s" });
    match file.file_name().and_then(|n| notes.get(n)) {
        Some(before) if steps == 0 => before.clone(),
        Some(before) => format!("{now}, after {before}"),
        None => now,
    }
}

/// Token ids of each text (a tokenizer error as a weights-format error naming the caption).
pub(super) fn tokenize(tok: &ClipTokenizer, texts: &[String]) -> Result<Vec<Vec<u32>>> {
    texts.iter().map(|t| Ok(tok.encode(t).map_err(|e| WeightsError::Data { path: "caption".into(), msg: e.to_string() })?.ids)).collect()
}

/// Symmetric InfoNCE of unit features a (B, E), b (B, E) at temperature 1/scale; the
/// accuracy of a -> b retrieval; and with `twins` (a batch of reversed pairs: row i and
/// row i + B/2 are the same clip played both ways) the share of rows whose own caption
/// beats its twin's (1/2 for a model blind to the direction of motion).
fn contrastive(a: &Var, b: &Var, scale: f32, twins: bool) -> Result<(Var, Var, Option<Var>)> {
    let n = a.shape()[0];
    let logits = ad::matmul_ex(a, b, false, true, scale, None)?; // (B, B)
    let nll = |m: &Var| -> Result<Var> { Ok(ad::scale(&ad::mean_all(&ad::unary(&crate::reward::diagonal(&ad::softmax(m)?, n)?, UnaryOp::Log)?)?, -1.0)?) };
    let loss = ad::axpby(&nll(&logits)?, 0.5, &nll(&ad::transpose(&logits, 0, 1)?)?, 0.5)?;
    // retrieval accuracy (no gradient): the diagonal wins its row
    let l = logits.value().to_vec()?;
    let h = n / 2;
    let twin = if twins && h > 0 {
        let wins = (0..2 * h).filter(|&i| l[i * n + i] > l[i * n + (i + h) % (2 * h)]).count();
        Some(scalar(a, wins as f32 / (2 * h) as f32)?)
    } else {
        None
    };
    Ok((loss, scalar(a, row_accuracy(&l, n, 0..n))?, twin))
}

/// The share of rows of the row-major host matrix `l` (`cols` wide) whose entry at the
/// row's target column beats every other entry of the row.
fn row_accuracy(l: &[f32], cols: usize, targets: impl IntoIterator<Item = usize>) -> f32 {
    let rows = l.len() / cols;
    let hits = targets.into_iter().enumerate().filter(|&(i, t)| (0..cols).all(|j| j == t || l[i * cols + j] < l[i * cols + t])).count();
    hits as f32 / rows as f32
}

/// A logged value (shape `[1]`, no gradient) on the tape of `like`.
fn scalar(like: &Var, v: f32) -> Result<Var> {
    Ok(like.tape().constant(Tensor::from_slice(like.value().gpu(), &[1], &[v])?))
}

/// A reward model being pretrained.
enum Tower {
    /// An image-text tower scoring one frame against the short caption.
    Image(Box<Clip>, Preprocess),
    /// A CLIP video tower (frames mean-pooled) against the long caption.
    ClipVideo(Box<Clip>),
    /// InternVideo2 against the long caption; with a temporary direction head
    /// ([`DIRECTION_HEAD`]) its video features also classify the direction of motion.
    InternVideo2(Box<InternVideo2>, Box<BertTokenizer>, Option<Tensor>),
    /// The conditioning text encoder with a vision tower: one frame (or several frames and
    /// a motion map, see [`motion_features`]) against the long or the short caption (each
    /// half the time, as the teacher is trained).
    Conditioning(Box<Clip>, Option<Tensor>),
}

impl Tower {
    /// The metric columns: retrieval accuracy, the same on batches of reversed pairs, and
    /// on those the share of clips whose own caption beats its twin's (the direction).
    fn metrics(&self) -> [&'static str; 3] {
        match self {
            Tower::Image(_, Preprocess::Hps) => ["hps_retrieval", "hps_retrieval_pairs", "hps_direction"],
            Tower::Image(_, Preprocess::ClipScore) => ["clip_retrieval", "clip_retrieval_pairs", "clip_direction"],
            Tower::ClipVideo(_) | Tower::InternVideo2(..) => ["video_retrieval", "video_retrieval_pairs", "video_direction"],
            Tower::Conditioning(..) => ["text_retrieval", "text_retrieval_pairs", "text_direction"],
        }
    }
    fn model_name(&self) -> &'static str {
        match self {
            Tower::InternVideo2(..) => "internvideo2 reward",
            Tower::Conditioning(..) => "openclip text",
            _ => "openclip reward",
        }
    }
}

/// A tower with its named weights, the file they are saved to and the keys saved there.
type TowerRun = (Tower, Vec<(String, Tensor)>, PathBuf, Option<Vec<String>>);

/// Keys of a CLIP that a conditioning-only text file may lack: the contrastive training
/// adds them (randomly initialised) and drops them again when saving.
const CLIP_BEYOND_TEXT: [&str; 3] = ["visual.", "text_projection", "logit_scale"];

/// `n` evenly strided frames of each clip (random start), clip-major: (B*n, 3, S, S).
fn strided_frames(x: &Tensor, rng: &mut Gaussian, n: usize, world: &WorldConfig) -> Result<Tensor> {
    let b = x.shape()[0];
    let stride = (world.frames / n).max(1);
    let start = ((rng.uniform() * stride as f64) as usize).min(stride - 1);
    let parts = (0..n).map(|i| t2v_kernels::ops::slice(x, 2, (start + i * stride).min(world.frames - 1), 1)).collect::<t2v_kernels::Result<Vec<_>>>()?;
    if n == 1 {
        // one frame: (b, 3, 1, S, S) is already clip-major
        return Ok(parts[0].reshape(&[b, 3, world.size, world.size])?);
    }
    let sel = t2v_kernels::ops::concat(&parts.iter().collect::<Vec<_>>(), 2)?; // (b, 3, n, S, S)
    Ok(t2v_kernels::ops::permute(&sel, &[0, 2, 1, 3, 4])?.reshape(&[b * n, 3, world.size, world.size])?)
}

/// Video features of a two-stream kind (appearance and motion) for the contrastive
/// training of the text encoder: `frames` are n preprocessed frames of each of b clips,
/// clip-major (b*n, 3, S, S). Appearance: the CLIP vision tower's features of each frame,
/// averaged over the clip. Motion: a linear map `motion_proj` (E, 3*S*S) of the clip's
/// difference image (last frame minus first). The clip's unit feature is the normalised
/// sum. A clip and the same clip played backwards have opposite difference images, so
/// their motion features are opposite from the first step: a randomly initialised vision
/// tower's features hardly depend on its input at all, and through it alone the direction
/// of motion was not learnt in 800 steps (the reversed pairs stayed at chance). n = 1 (no
/// `motion_proj`): the frame's own features.
pub fn motion_features(vision: &VisionTower, motion_proj: Option<&Var>, frames: &Var, b: usize, n: usize) -> Result<Var> {
    let Some(w) = motion_proj.filter(|_| n > 1) else {
        return vision.features(frames);
    };
    let per: usize = frames.shape()[1..].iter().product();
    let e = w.shape()[0];
    let appearance = ad::mean(&ad::reshape(&vision.features(frames)?, &[b, n, e])?, 1)?;
    let clips = ad::reshape(frames, &[b, n, per])?;
    let difference = ad::reshape(&ad::sub(&ad::slice(&clips, 1, n - 1, 1)?, &ad::slice(&clips, 1, 0, 1)?)?, &[b, per])?;
    let motion = ad::matmul_ex(&difference, w, false, true, 1.0, None)?; // (b, E)
    l2_normalize(&ad::add(&appearance, &motion)?)
}

/// The key of the motion map of [`motion_features`] during `pretrain text` (a tensor of the
/// temporary vision side: checkpointed with the run, never saved with the text encoder).
const MOTION_PROJ: &str = "visual.motion_proj.weight";

/// The key of the video reward's temporary direction head (`--direction-head`): a linear
/// map (4, E) from its unit video features to the four directions of the world, trained
/// with cross-entropy on the clips' true directions beside the contrastive loss and never
/// saved. Through the contrastive loss alone the video reward stayed blind to direction
/// (reversed pairs at chance: a randomly initialised ViT's pooled features hardly depend
/// on the order of the frames, and the captions then give them no consistent target); the
/// head gives the vision side a direct one, and the text side follows once the features
/// carry it — with tokens of two frames each (`tubelet_size` 2, `init --video-tubelet 2`):
/// on the tiny reward with single-frame tokens the head itself stayed at chance.
const DIRECTION_HEAD: &str = "aux.direction_head.weight";

/// Temperature of the direction head's logits (the features are unit vectors).
const DIRECTION_HEAD_SCALE: f32 = 20.0;

/// Cross-entropy of the direction head on unit features `vid` (B, E) against the clips'
/// directions, and the head's accuracy (no gradient).
fn direction_loss(vid: &Var, head: &Var, specs: &[crate::world::ClipSpec]) -> Result<(Var, Var)> {
    let (b, k) = (specs.len(), head.shape()[0]);
    let logits = ad::matmul_ex(vid, head, false, true, DIRECTION_HEAD_SCALE, None)?; // (B, k)
    let mut onehot = vec![0f32; b * k];
    for (i, s) in specs.iter().enumerate() {
        onehot[i * k + s.direction] = 1.0;
    }
    let gpu = vid.value().gpu();
    let target = vid.tape().constant(Tensor::from_slice(gpu, &[b, k], &onehot)?);
    let log_p = ad::unary(&ad::softmax(&logits)?, UnaryOp::Log)?;
    let loss = ad::scale(&ad::mean_all(&ad::mul(&log_p, &target)?)?, -(k as f32))?;
    let acc = row_accuracy(&logits.value().to_vec()?, k, specs.iter().map(|s| s.direction));
    Ok((loss, scalar(vid, acc)?))
}

/// Pretrains `what` starting from the models of `src`; writes the model folder `out`.
#[allow(clippy::too_many_arguments)]
pub fn pretrain(gpu: &Gpu, what: What, src: &ModelDir, out: &Path, cfg: &PretrainConfig, every: u64, dtype: SaveDtype, quiet: bool) -> Result<(ModelDir, Vec<LoopMetrics>)> {
    let notes = source_notes(src);
    if what == What::Text && !(1..=src.video.frames).contains(&cfg.text_frames) {
        return Err(WeightsError::Data { path: src.root.display().to_string(), msg: format!("the text encoder can see 1 to {} frames per clip (the clips' length), not {}", src.video.frames, cfg.text_frames) });
    }
    let mut md = copy_model_dir(src, out)?;
    let world = WorldConfig { frames: md.video.frames, size: md.video.height, short_fraction: 0.5 };
    if md.video.height != md.video.width {
        return Err(WeightsError::Data { path: out.display().to_string(), msg: "the world makes square clips: the model folder's video height and width must be equal".into() });
    }
    let dir = out.join(format!("pretrain-{}", format!("{what:?}").to_lowercase()));
    let tok = ClipTokenizer::new().map_err(|e| WeightsError::Data { path: "tokenizer".into(), msg: e.to_string() })?;
    let b = cfg.batch;
    let ws = cfg.world_seed;
    let metrics = match what {
        What::Vae => {
            let (vae, params) = load(gpu, &md.vae.0, |l| Vae::load(l, &md.vae.1))?;
            let m = run_loop(&dir, &params, cfg, every, quiet, |tape, rng, _| {
                // one random frame of each of b clips
                let specs = draw_clips(rng, ws, b, &world);
                let x = clips_tensor(gpu, &specs, &world)?; // (b, 3, F, S, S)
                let frames: Vec<Var> = (0..b)
                    .map(|i| {
                        let f = ((rng.uniform() * world.frames as f64) as usize).min(world.frames - 1);
                        let one = t2v_kernels::ops::slice(&t2v_kernels::ops::slice(&x, 0, i, 1)?, 2, f, 1)?;
                        Ok(tape.constant(one.reshape(&[1, 3, world.size, world.size])?))
                    })
                    .collect::<Result<_>>()?;
                let x = ad::concat(&frames.iter().collect::<Vec<_>>(), 0)?;
                let recon = vae.decode(&vae.encode(&x)?)?;
                let loss = ad::mse(&recon, &x)?;
                Ok(StepOut { loss: loss.clone(), logs: vec![] })
            })?;
            // latent scale: 1 / std of the latents over fresh clips
            let mut rng = Gaussian::new(cfg.seed ^ 0x5CA1E);
            let specs = draw_clips(&mut rng, ws ^ 1, 16, &world);
            let tape = Tape::new();
            let mut z = Vec::new();
            let mut recon = Vec::new();
            for pair in specs.chunks(2) {
                let (lat, video) = tape.no_grad(|| -> Result<(Vec<f32>, Vec<f32>)> {
                    let l = vae.encode_video(&tape.constant(clips_tensor(gpu, pair, &world)?))?;
                    Ok((l.value().to_vec()?, vae.decode_video(&l)?.value().to_vec()?))
                })?;
                z.extend(lat);
                let per = video.len() / pair.len();
                for (k, s) in pair.iter().enumerate() {
                    let frames = crate::pipeline::video_io::Frames::from_chw(&video[k * per..(k + 1) * per], world.frames, world.size, world.size);
                    recon.push((frames, s.caption()));
                }
            }
            // the analyser on reconstructions: what the VAE preserves of the world
            let rep = crate::eval::score(&recon);
            if !quiet {
                eprintln!(
                    "VAE reconstructions of {} fresh clips: accuracy {:.1} % (color {:.1}, shape {:.1}, direction {:.1}), flicker {:.4}",
                    rep.clips, rep.accuracy, rep.color_accuracy, rep.shape_accuracy, rep.direction_accuracy, rep.flicker
                );
            }
            let unscaled: Vec<f64> = z.iter().map(|v| *v as f64 / md.vae.1.scale_factor as f64).collect();
            let mean = unscaled.iter().sum::<f64>() / unscaled.len() as f64;
            let std = (unscaled.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / unscaled.len() as f64).sqrt();
            md.vae.1.scale_factor = (1.0 / std.max(1e-6)) as f32;
            save_weights(&md.vae.0, &params, dtype, &[("model", "vae".into()), ("pretrained", pretrained_note(&notes, &md.vae.0, cfg.steps, ""))])?;
            m
        }
        What::Teacher => {
            let (unet, params) = load(gpu, &md.unet.0, |l| Unet3d::load(l, &md.unet.1))?;
            let vae = md.load_vae(gpu)?;
            let text = md.load_text(gpu)?;
            let sched = Schedule::videocrafter();
            let m = run_loop(&dir, &params, cfg, every, quiet, |tape, rng, at| {
                // joint image-video training: odd steps take one random frame of each of
                // image_batch clips, as (n, 3, 1, S, S) one-frame videos
                let images = cfg.image_batch > 0 && at % 2 == 1;
                let b = if images { cfg.image_batch } else { b };
                let specs = draw_clips(rng, ws, b, &world);
                let (z0, ctx) = tape.no_grad(|| -> Result<(Tensor, Tensor)> {
                    let x = clips_tensor(gpu, &specs, &world)?;
                    let x = if images {
                        let frames = (0..b)
                            .map(|i| {
                                let f = ((rng.uniform() * world.frames as f64) as usize).min(world.frames - 1);
                                Ok(t2v_kernels::ops::slice(&t2v_kernels::ops::slice(&x, 0, i, 1)?, 2, f, 1)?)
                            })
                            .collect::<Result<Vec<_>>>()?;
                        t2v_kernels::ops::concat(&frames.iter().collect::<Vec<_>>(), 0)?
                    } else {
                        x
                    };
                    let z0 = vae.encode_video(&tape.constant(x))?.value().clone();
                    // long or short caption; the empty prompt 10% of the time
                    let texts: Vec<String> = specs
                        .iter()
                        .map(|s| {
                            let u = rng.uniform();
                            if u < 0.1 {
                                String::new()
                            } else if u < 0.55 {
                                s.caption()
                            } else {
                                s.short_caption()
                            }
                        })
                        .collect();
                    Ok((z0, text.penultimate(tape, &tokenize(&tok, &texts)?)?.value().clone()))
                })?;
                let ts: Vec<usize> = (0..b).map(|_| ((rng.uniform() * 1000.0) as usize).min(999)).collect();
                let shape = [b, 1, 1, 1, 1];
                let a: Vec<f32> = ts.iter().map(|&t| sched.alphas_cumprod[t].sqrt()).collect();
                let s: Vec<f32> = ts.iter().map(|&t| (1.0 - sched.alphas_cumprod[t]).sqrt()).collect();
                let noise = Tensor::from_slice(gpu, z0.shape(), &rng.take(z0.numel()))?;
                let z_t = t2v_kernels::ops::add(&t2v_kernels::ops::mul(&z0, &Tensor::from_slice(gpu, &shape, &a)?)?, &t2v_kernels::ops::mul(&noise, &Tensor::from_slice(gpu, &shape, &s)?)?)?;
                let tf: Vec<f32> = ts.iter().map(|&t| t as f32).collect();
                let eps = unet.forward(&UnetInputs { z: &tape.constant(z_t), t: &tf, context: &tape.constant(ctx), fps: &vec![md.video.fps; b], w_embedding: None, motion_embedding: None, record_attention: false })?.eps;
                Ok(StepOut { loss: ad::mse(&eps, &tape.constant(noise))?, logs: vec![] })
            })?;
            let how = if cfg.image_batch > 0 { format!(" (joint image-video steps, --image-batch {})", cfg.image_batch) } else { String::new() };
            save_weights(&md.unet.0, &params, dtype, &[("model", "unet3d teacher".into()), ("pretrained", pretrained_note(&notes, &md.unet.0, cfg.steps, &how))])?;
            if !quiet {
                // held-out world (another seed): does the trained teacher read the captions?
                let check = super::caption_check::caption_sensitivity(gpu, &unet, &vae, &text, &world, md.video.fps, ws ^ 0xC4EC, 16, b)?;
                eprintln!("{}", super::caption_check::describe(&check));
                std::fs::create_dir_all(&dir).map_err(|e| WeightsError::Write { path: dir.display().to_string(), msg: e.to_string() })?;
                let path = dir.join("caption_check.json");
                t2v_kernels::io::write_atomic(&path, serde_json::to_string_pretty(&check).expect("json").as_bytes())?;
            }
            m
        }
        What::Text | What::Reward | What::ImageRewards | What::VideoReward => {
            let mut towers: Vec<TowerRun> = Vec::new();
            if what == What::Text {
                let (file, config) = &md.text;
                let f = WeightFile::open(file)?;
                let l = Loader::new(&f, gpu, &f.prefix_among(&["cond_stage_model.model."])).init_missing(&CLIP_BEYOND_TEXT, cfg.seed ^ 0x7E47);
                let c = Clip::load(&l, config)?;
                let mut params = l.params();
                // saved: what the file had (a text-only file stays text-only)
                let keep = params.iter().map(|(k, _)| k.clone()).filter(|k| l.contains(k)).collect();
                l.finish()?;
                // several frames: a motion map from the difference image, initialised at a
                // quarter of the usual scale (its output then about matches a unit feature)
                let motion = if cfg.text_frames > 1 {
                    let s = config.vision.image_size;
                    let w = Loader::random(gpu, cfg.seed ^ 0x30710).get(MOTION_PROJ, &[config.embed_dim, 3 * s * s])?;
                    let w = t2v_kernels::ops::scale(&w, 0.25)?;
                    params.push((MOTION_PROJ.to_string(), w.clone()));
                    Some(w)
                } else {
                    None
                };
                towers.push((Tower::Conditioning(Box::new(c), motion), params, file.clone(), Some(keep)));
            }
            let image_rewards = if matches!(what, What::VideoReward | What::Text) { &[][..] } else { &md.image_rewards[..] };
            let video_reward = if matches!(what, What::ImageRewards | What::Text) { None } else { md.video_reward.as_ref() };
            for r in image_rewards {
                let (c, p) = load(gpu, &r.file, |l| Clip::load(l, &r.config))?;
                towers.push((Tower::Image(Box::new(c), r.preprocess), p, r.file.clone(), None));
            }
            match video_reward {
                Some(VideoRewardSpec::Clip { file, config }) => {
                    let (c, p) = load(gpu, file, |l| Clip::load(l, config))?;
                    towers.push((Tower::ClipVideo(Box::new(c)), p, file.clone(), None));
                }
                Some(VideoRewardSpec::InternVideo2 { file, config, tokenizer }) => {
                    let (m, mut p) = load_internvideo2_params(gpu, file, config)?;
                    let tok = BertTokenizer::from_file(tokenizer, config.max_txt_len).map_err(|e| WeightsError::Data { path: tokenizer.display().to_string(), msg: e.to_string() })?;
                    // saved: the model's own keys, never the temporary head
                    let keep = p.iter().map(|(k, _)| k.clone()).collect();
                    let head = if cfg.direction_head {
                        let w = Loader::random(gpu, cfg.seed ^ 0xD1EC).get(DIRECTION_HEAD, &[crate::world::DIRECTIONS.len(), config.embed_dim])?;
                        p.push((DIRECTION_HEAD.to_string(), w.clone()));
                        Some(w)
                    } else {
                        None
                    };
                    towers.push((Tower::InternVideo2(Box::new(m), Box::new(tok), head), p, file.clone(), Some(keep)));
                }
                None => {}
            }
            if towers.is_empty() {
                return Err(WeightsError::Data { path: src.root.display().to_string(), msg: format!("the model folder has no reward models to train ({what:?})") });
            }
            if cfg.direction_head && !towers.iter().any(|t| matches!(t.0, Tower::InternVideo2(..))) {
                return Err(WeightsError::Data { path: src.root.display().to_string(), msg: "--direction-head trains the InternVideo2 video reward: the model folder has none, or the stage does not train it".into() });
            }
            let all: Vec<(String, Tensor)> = towers.iter().enumerate().flat_map(|(k, (_, p, _, _))| p.iter().map(move |(n, t)| (format!("{k}.{n}"), t.clone()))).collect();
            let m = run_loop(&dir, &all, cfg, every, quiet, |tape, rng, at| {
                let pairs = cfg.reversed_pairs && at % 2 == 1;
                let specs = if pairs { draw_reversed_pairs(rng, ws, b, &world) } else { draw_clips(rng, ws, b, &world) };
                let x = clips_tensor(gpu, &specs, &world)?;
                let short: Vec<String> = specs.iter().map(|s| s.short_caption()).collect();
                let long: Vec<String> = specs.iter().map(|s| s.caption()).collect();
                let mut total: Option<Var> = None;
                let mut logs = Vec::new();
                // the direction head's loss and accuracy
                let mut extra: Option<(Var, Var)> = None;
                for (tower, _, _, _) in &towers {
                    let (vis, txt) = match tower {
                        Tower::Image(clip, mode) => {
                            // one random frame per clip vs the short caption
                            let f = ((rng.uniform() * world.frames as f64) as usize).min(world.frames - 1);
                            let fr = t2v_kernels::ops::slice(&x, 2, f, 1)?.reshape(&[b, 3, world.size, world.size])?;
                            let unit = ad::affine(&tape.constant(fr), 0.5, 0.5)?;
                            let size = clip.vision.config.image_size;
                            let prep = match mode {
                                Preprocess::Hps => crate::models::preprocess::hps(&unit, size)?,
                                Preprocess::ClipScore => crate::models::preprocess::clipscore(&unit, size)?,
                            };
                            (clip.vision.features(&prep)?, clip.text.features(tape, &tokenize(&tok, &short)?)?)
                        }
                        Tower::Conditioning(clip, motion) => {
                            // one random frame, or n strided frames: (b*n, 3, S, S)
                            let n = cfg.text_frames;
                            let frames = strided_frames(&x, rng, n, &world)?;
                            let unit = ad::affine(&tape.constant(frames), 0.5, 0.5)?;
                            let prep = crate::models::preprocess::clipscore(&unit, clip.vision.config.image_size)?;
                            let texts: Vec<String> = specs.iter().map(|s| if rng.uniform() < 0.5 { s.caption() } else { s.short_caption() }).collect();
                            let vis = motion_features(&clip.vision, motion.as_ref().map(|w| tape.param(w)).as_ref(), &prep, b, n)?;
                            (vis, clip.text.features(tape, &tokenize(&tok, &texts)?)?)
                        }
                        Tower::ClipVideo(clip) => {
                            // strided frames, features mean-pooled over time and renormalised, vs the long caption
                            let n = 4.min(world.frames);
                            let frames = strided_frames(&x, rng, n, &world)?; // (b*n, 3, S, S)
                            let unit = ad::affine(&tape.constant(frames), 0.5, 0.5)?;
                            let feats = clip.vision.features(&crate::models::preprocess::clipscore(&unit, clip.vision.config.image_size)?)?;
                            let e = feats.shape()[1];
                            let pooled = l2_normalize(&ad::mean(&ad::reshape(&feats, &[b, n, e])?, 1)?)?;
                            (pooled, clip.text.features(tape, &tokenize(&tok, &long)?)?)
                        }
                        Tower::InternVideo2(model, bert, head) => {
                            // as the reward sees them: num_frames strided frames vs the long caption
                            let (n, size) = (model.config.vision.num_frames, model.config.vision.img_size);
                            if n > world.frames {
                                return Err(WeightsError::Data { path: "video_reward".into(), msg: format!("the video reward takes {n} frames, the clips have {}", world.frames) });
                            }
                            let frames = strided_frames(&x, rng, n, &world)?;
                            let unit = ad::affine(&tape.constant(frames), 0.5, 0.5)?;
                            let prep = crate::models::preprocess::min_side_crop(&unit, size, 0.5)?;
                            let vid = model.video_features(&ad::reshape(&prep, &[b, n, 3, size, size])?)?;
                            if let Some(w) = head {
                                extra = Some(direction_loss(&vid, &tape.param(w), &specs)?);
                            }
                            let (ids, mask) = bert.encode_batch(&long).map_err(|e| WeightsError::Data { path: "caption".into(), msg: e.to_string() })?;
                            (vid, model.text_features(tape, &ids, &mask)?)
                        }
                    };
                    let (loss, acc, twin) = contrastive(&vis, &txt, 20.0, pairs)?;
                    let [plain, paired, direction] = tower.metrics();
                    logs.push((if pairs { paired } else { plain }, acc));
                    logs.extend(twin.map(|t| (direction, t)));
                    total = Some(match total {
                        Some(t) => ad::add(&t, &loss)?,
                        None => loss,
                    });
                }
                let total = total.expect("a tower");
                let loss = match extra {
                    Some((e, acc)) => {
                        logs.push(("video_direction_head", acc));
                        ad::add(&total, &e)?
                    }
                    None => total,
                };
                Ok(StepOut { loss, logs })
            })?;
            // the recipe, when not the default one
            let mut recipe = Vec::new();
            if what == What::Text && cfg.text_frames > 1 {
                recipe.push(format!("{} frames per clip and a motion map", cfg.text_frames));
            }
            if cfg.reversed_pairs {
                recipe.push("with reversed pairs".to_string());
            }
            if cfg.direction_head {
                recipe.push("with a direction head".to_string());
            }
            let how = if recipe.is_empty() { String::new() } else { format!(" ({})", recipe.join("; ")) };
            for (tower, p, file, keep) in &towers {
                let kept: Vec<(String, Tensor)> = p.iter().filter(|(k, _)| keep.as_ref().is_none_or(|keep| keep.contains(k))).cloned().collect();
                save_weights(file, &kept, dtype, &[("model", tower.model_name().into()), ("pretrained", pretrained_note(&notes, file, cfg.steps, &how))])?;
            }
            m
        }
    };
    md.write_config()?;
    if !quiet && what == What::Text {
        // held-out world: does the saved encoder's context tell the words apart?
        let check = super::text_check::word_sensitivity(&md.load_text(gpu)?, &world, ws ^ 0xC4EC, 32)?;
        eprintln!("{}", super::text_check::describe(&check));
        std::fs::create_dir_all(&dir).map_err(|e| WeightsError::Write { path: dir.display().to_string(), msg: e.to_string() })?;
        t2v_kernels::io::write_atomic(&dir.join("text_check.json"), serde_json::to_string_pretty(&check).expect("json").as_bytes())?;
    }
    if !quiet && matches!(what, What::Reward | What::ImageRewards | What::VideoReward) {
        // held-out world: which attributes do the trained reward models see?
        let check = super::reward_check::reward_sensitivity(gpu, &md, &world, ws ^ 0xC4EC, 32)?;
        eprintln!("{}", super::reward_check::describe(&check));
        std::fs::create_dir_all(&dir).map_err(|e| WeightsError::Write { path: dir.display().to_string(), msg: e.to_string() })?;
        t2v_kernels::io::write_atomic(&dir.join("reward_check.json"), serde_json::to_string_pretty(&check).expect("json").as_bytes())?;
    }
    Ok((md, metrics))
}
