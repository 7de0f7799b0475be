//! The three pretraining objectives (see the module docs of `pretrain`).

use std::path::Path;

use t2v_kernels::autograd::{self as ad, Tape, Var};
use t2v_kernels::ops::UnaryOp;
use t2v_kernels::{Gpu, Tensor};

use super::{clips_tensor, copy_model_dir, draw_clips, run_loop, LoopMetrics, PretrainConfig, StepOut};
use crate::diffusion::Schedule;
use crate::models::clip::Clip;
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet3d::{Unet3d, UnetInputs};
use crate::models::vae::Vae;
use crate::models::weights::{save_weights, Loader, Result, SaveDtype, WeightFile, WeightsError};
use crate::pipeline::model_dir::ModelDir;
use crate::pipeline::sample::Gaussian;
use crate::reward::Preprocess;
use crate::world::WorldConfig;

/// Which model to pretrain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    Vae,
    Teacher,
    Reward,
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

fn tokenize(tok: &ClipTokenizer, texts: &[String]) -> Result<Vec<Vec<u32>>> {
    texts.iter().map(|t| Ok(tok.encode(t).map_err(|e| WeightsError::Format { path: "caption".into(), msg: e.to_string() })?.ids)).collect()
}

/// Symmetric InfoNCE of unit features a (B, E), b (B, E) at temperature 1/scale; and the
/// accuracy of a -> b retrieval.
fn contrastive(a: &Var, b: &Var, scale: f32) -> Result<(Var, Var)> {
    let n = a.shape()[0];
    let logits = ad::matmul_ex(a, b, false, true, scale, None)?; // (B, B)
    let nll = |m: &Var| -> Result<Var> { Ok(ad::scale(&ad::mean_all(&ad::unary(&crate::reward::diagonal(&ad::softmax(m)?, n)?, UnaryOp::Log)?)?, -1.0)?) };
    let loss = ad::axpby(&nll(&logits)?, 0.5, &nll(&ad::transpose(&logits, 0, 1)?)?, 0.5)?;
    // retrieval accuracy (no gradient): the diagonal wins its row
    let l = logits.value().to_vec()?;
    let hits = (0..n).filter(|&i| (0..n).all(|j| j == i || l[i * n + j] < l[i * n + i])).count();
    let acc = a.tape().constant(Tensor::from_slice(a.value().gpu(), &[1], &[hits as f32 / n as f32])?);
    Ok((loss, acc))
}

/// Pretrains `what` starting from the models of `src`; writes the model folder `out`.
#[allow(clippy::too_many_arguments)]
pub fn pretrain(gpu: &Gpu, what: What, src: &ModelDir, out: &Path, cfg: &PretrainConfig, every: u64, dtype: SaveDtype, quiet: bool) -> Result<(ModelDir, Vec<LoopMetrics>)> {
    let mut md = copy_model_dir(src, out)?;
    let world = WorldConfig { frames: md.video.frames, size: md.video.height, short_fraction: 0.5 };
    if md.video.height != md.video.width {
        return Err(WeightsError::Format { path: out.display().to_string(), msg: "the world makes square clips: the model folder's video height and width must be equal".into() });
    }
    let dir = out.join(format!("pretrain-{}", format!("{what:?}").to_lowercase()));
    let tok = ClipTokenizer::new().map_err(|e| WeightsError::Format { path: "tokenizer".into(), msg: e.to_string() })?;
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
            save_weights(&md.vae.0, &params, dtype, &[("model", "vae".into()), ("pretrained", format!("{} steps on the moving-shapes world", cfg.steps))])?;
            m
        }
        What::Teacher => {
            let (unet, params) = load(gpu, &md.unet.0, |l| Unet3d::load(l, &md.unet.1))?;
            let vae = md.load_vae(gpu)?;
            let text = md.load_text(gpu)?;
            let sched = Schedule::videocrafter();
            let fps = vec![md.video.fps; b];
            let m = run_loop(&dir, &params, cfg, every, quiet, |tape, rng, _| {
                let specs = draw_clips(rng, ws, b, &world);
                let (z0, ctx) = tape.no_grad(|| -> Result<(Tensor, Tensor)> {
                    let z0 = vae.encode_video(&tape.constant(clips_tensor(gpu, &specs, &world)?))?.value().clone();
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
                let eps = unet.forward(&UnetInputs { z: &tape.constant(z_t), t: &tf, context: &tape.constant(ctx), fps: &fps, w_embedding: None, motion_embedding: None, record_attention: false })?.eps;
                Ok(StepOut { loss: ad::mse(&eps, &tape.constant(noise))?, logs: vec![] })
            })?;
            save_weights(&md.unet.0, &params, dtype, &[("model", "unet3d teacher".into()), ("pretrained", format!("{} steps on the moving-shapes world", cfg.steps))])?;
            m
        }
        What::Reward => {
            let mut towers = Vec::new(); // (clip, params, preprocess or None for the video tower)
            for r in &md.image_rewards {
                let (c, p) = load(gpu, &r.file, |l| Clip::load(l, &r.config))?;
                towers.push((c, p, Some(r.preprocess)));
            }
            if let Some((f, c)) = &md.video_reward {
                let (c, p) = load(gpu, f, |l| Clip::load(l, c))?;
                towers.push((c, p, None));
            }
            if towers.is_empty() {
                return Err(WeightsError::Format { path: src.root.display().to_string(), msg: "the model folder has no reward models".into() });
            }
            let all: Vec<(String, Tensor)> = towers.iter().enumerate().flat_map(|(k, (_, p, _))| p.iter().map(move |(n, t)| (format!("{k}.{n}"), t.clone()))).collect();
            let nvid = 4.min(world.frames);
            let names: Vec<&'static str> = towers.iter().map(|(_, _, p)| match p {
                Some(Preprocess::Hps) => "hps_retrieval",
                Some(Preprocess::ClipScore) => "clip_retrieval",
                None => "video_retrieval",
            }).collect();
            let m = run_loop(&dir, &all, cfg, every, quiet, |tape, rng, _| {
                let specs = draw_clips(rng, ws, b, &world);
                let x = clips_tensor(gpu, &specs, &world)?;
                let short = tokenize(&tok, &specs.iter().map(|s| s.short_caption()).collect::<Vec<_>>())?;
                let long = tokenize(&tok, &specs.iter().map(|s| s.caption()).collect::<Vec<_>>())?;
                let mut total: Option<Var> = None;
                let mut logs = Vec::new();
                for (k, (clip, _, pre)) in towers.iter().enumerate() {
                    let size = clip.vision.config.image_size;
                    let (img, ids) = match pre {
                        Some(mode) => {
                            // one random frame per clip
                            let f = ((rng.uniform() * world.frames as f64) as usize).min(world.frames - 1);
                            let fr = t2v_kernels::ops::slice(&x, 2, f, 1)?.reshape(&[b, 3, world.size, world.size])?;
                            let unit = ad::affine(&tape.constant(fr), 0.5, 0.5)?;
                            let prep = match mode {
                                Preprocess::Hps => crate::models::preprocess::hps(&unit, size)?,
                                Preprocess::ClipScore => crate::models::preprocess::clipscore(&unit, size)?,
                            };
                            (clip.vision.features(&prep)?, &short)
                        }
                        None => {
                            // strided frames, features mean-pooled over time and renormalised
                            let stride = (world.frames / nvid).max(1);
                            let start = ((rng.uniform() * stride as f64) as usize).min(stride - 1);
                            let parts = (0..nvid).map(|i| t2v_kernels::ops::slice(&x, 2, (start + i * stride).min(world.frames - 1), 1)).collect::<t2v_kernels::Result<Vec<_>>>()?;
                            let sel = t2v_kernels::ops::concat(&parts.iter().collect::<Vec<_>>(), 2)?; // (b, 3, n, S, S)
                            let frames = t2v_kernels::ops::permute(&sel, &[0, 2, 1, 3, 4])?.reshape(&[b * nvid, 3, world.size, world.size])?;
                            let unit = ad::affine(&tape.constant(frames), 0.5, 0.5)?;
                            let feats = clip.vision.features(&crate::models::preprocess::clipscore(&unit, size)?)?;
                            let e = feats.shape()[1];
                            let pooled = ad::mean(&ad::reshape(&feats, &[b, nvid, e])?, 1)?;
                            let norm = ad::sqrt(&ad::sum(&ad::square(&pooled)?, -1)?)?;
                            (ad::div(&pooled, &ad::reshape(&norm, &[b, 1])?)?, &long)
                        }
                    };
                    let txt = clip.text.features(tape, ids)?;
                    let (loss, acc) = contrastive(&img, &txt, 20.0)?;
                    logs.push((names[k], acc));
                    total = Some(match total {
                        Some(t) => ad::add(&t, &loss)?,
                        None => loss,
                    });
                }
                Ok(StepOut { loss: total.expect("a tower"), logs })
            })?;
            for (k, (_, p, _)) in towers.iter().enumerate() {
                let file = if k < md.image_rewards.len() { md.image_rewards[k].file.clone() } else { md.video_reward.as_ref().expect("video").0.clone() };
                save_weights(&file, p, dtype, &[("model", "openclip reward".into()), ("pretrained", format!("{} steps on the moving-shapes world", cfg.steps))])?;
            }
            m
        }
    };
    md.write_config()?;
    Ok((md, metrics))
}
