//! What do the reward models see? For fresh world clips, each reward model scores the clip
//! against its own caption and against the same caption with one attribute changed (a color
//! far or near in hue, another shape, the opposite direction). A model that reads an
//! attribute scores the own caption higher on nearly every clip; one that ignores it wins
//! about half the time with a gap near zero. Reward feedback can only teach a student what
//! its reward models see.

use serde::Serialize;
use t2v_kernels::autograd::Tape;
use t2v_kernels::{ops, Gpu, Tensor};

use super::{clips_tensor, draw_clips};
use crate::models::tokenizer::ClipTokenizer;
use crate::models::weights::{Result, WeightsError};
use crate::pipeline::model_dir::{ModelDir, VideoRewardSpec};
use crate::pipeline::sample::Gaussian;
use crate::world::{ClipSpec, WorldConfig, COLORS, SHAPES};

/// One reward model, one caption kind, one changed attribute.
#[derive(Clone, Debug, Serialize)]
pub struct AttributeScore {
    /// "hps", "clip" (image rewards, one frame vs the short caption) or "video".
    pub model: String,
    /// "short" or "long".
    pub caption: &'static str,
    /// "color", "shape" or "direction".
    pub attribute: &'static str,
    /// Clips whose own caption scored higher than the changed one.
    pub wins: usize,
    pub clips: usize,
    /// Mean of own minus changed score.
    pub mean_gap: f64,
}

/// A clip with one attribute changed.
pub(super) type Change = fn(&ClipSpec) -> ClipSpec;

/// The attributes the check changes: another color (three hues away, and the next hue of
/// the palette: cyan for green, blue for cyan, ...), the next shape, the opposite direction.
pub(super) const CHANGES: [(&str, Change); 4] = [
    ("color", |s| ClipSpec { color: (s.color + COLORS.len() / 2) % COLORS.len(), ..s.clone() }),
    ("near color", |s| ClipSpec { color: (s.color + 1) % COLORS.len(), ..s.clone() }),
    ("shape", |s| ClipSpec { shape: (s.shape + 1) % SHAPES.len(), ..s.clone() }),
    ("direction", |s| ClipSpec { direction: s.direction ^ 1, ..s.clone() }),
];

/// The changed attributes, in the order of the check's rows.
pub fn attributes() -> impl Iterator<Item = &'static str> {
    CHANGES.iter().map(|(name, _)| *name)
}

/// Runs the check on `clips` fresh clips of the world of `world_seed` for every reward model
/// of `md` (image rewards on the middle frame, the video reward on its evenly strided frames).
pub fn reward_sensitivity(gpu: &Gpu, md: &ModelDir, world: &WorldConfig, world_seed: u64, clips: usize) -> Result<Vec<AttributeScore>> {
    let tok = ClipTokenizer::new().map_err(|e| WeightsError::Data { path: "tokenizer".into(), msg: e.to_string() })?;
    let mut rng = Gaussian::new(world_seed ^ 0x004E_3A4D);
    let specs = draw_clips(&mut rng, world_seed, clips, world);
    let x = clips_tensor(gpu, &specs, world)?; // (N, 3, F, S, S) in [-1, 1]
    let tape = Tape::new();
    let mut out = Vec::new();
    let tally = |model: &str, caption: &'static str, attribute: &'static str, own: &[f32], changed: &[f32]| AttributeScore {
        model: model.to_string(),
        caption,
        attribute,
        wins: own.iter().zip(changed).filter(|(a, b)| a > b).count(),
        clips: own.len(),
        mean_gap: own.iter().zip(changed).map(|(a, b)| (a - b) as f64).sum::<f64>() / own.len().max(1) as f64,
    };
    let images = md.load_image_rewards(gpu)?;
    if !images.is_empty() {
        let mid = ops::slice(&x, 2, world.frames / 2, 1)?.reshape(&[clips, 3, world.size, world.size])?;
        for ((model, _), spec) in images.iter().zip(&md.image_rewards) {
            let name = spec.file.file_stem().map(|s| s.to_string_lossy().trim_start_matches("reward_").to_string()).unwrap_or_default();
            let score = |s: &[ClipSpec]| -> Result<Vec<f32>> {
                let ids = super::objectives::tokenize(&tok, &s.iter().map(|s| s.short_caption()).collect::<Vec<_>>())?;
                tape.no_grad(|| Ok(model.score(&tape.constant(mid.clone()), &ids)?.value().to_vec()?))
            };
            let own = score(&specs)?;
            for (attribute, change) in CHANGES {
                let changed: Vec<ClipSpec> = specs.iter().map(change).collect();
                out.push(tally(&name, "short", attribute, &own, &score(&changed)?));
            }
        }
    }
    // the frames the video reward takes: InternVideo2's num_frames; a CLIP video tower, 4
    let frames = match &md.video_reward {
        Some(VideoRewardSpec::InternVideo2 { config, .. }) => config.vision.num_frames,
        _ => 4,
    };
    if let Some(model) = md.load_video_reward(gpu)? {
        let n = frames.min(world.frames);
        let stride = (world.frames / n).max(1);
        let parts = (0..n).map(|i| ops::slice(&x, 2, (i * stride).min(world.frames - 1), 1)).collect::<t2v_kernels::Result<Vec<Tensor>>>()?;
        let video = ops::concat(&parts.iter().collect::<Vec<_>>(), 2)?;
        for (caption, text) in [("long", ClipSpec::caption as fn(&ClipSpec) -> String), ("short", ClipSpec::short_caption)] {
            let score = |s: &[ClipSpec]| -> Result<Vec<f32>> {
                let prompts: Vec<String> = s.iter().map(text).collect();
                let refs: Vec<&str> = prompts.iter().map(|p| p.as_str()).collect();
                tape.no_grad(|| Ok(model.score(&tape.constant(video.clone()), &refs, 0.5)?.value().to_vec()?))
            };
            let own = score(&specs)?;
            for (attribute, change) in CHANGES {
                let changed: Vec<ClipSpec> = specs.iter().map(change).collect();
                out.push(tally("video", caption, attribute, &own, &score(&changed)?));
            }
        }
    }
    Ok(out)
}

/// A table of the check for the log.
pub fn describe(scores: &[AttributeScore]) -> String {
    let mut s = String::from("reward check (own caption vs one attribute changed; ~50% wins = the model does not see it):\n");
    s += "  model  caption  attribute    wins      mean gap\n";
    for a in scores {
        s += &format!("  {:<6} {:<8} {:<11} {:>3}/{:<4}  {:+.4}\n", a.model, a.caption, a.attribute, a.wins, a.clips, a.mean_gap);
    }
    s
}
