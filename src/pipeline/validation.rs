//! Validation during distillation (the reference's `--validation_steps`): every N steps the
//! student samples a fixed set of prompts with fixed noise (prompt i draws from seed + i, so
//! every validation sees the same noise). The clips are scored by the reward-independent
//! analyser of `crate::eval` (for prompts of the moving-shapes world) and by the run's reward
//! models, written as GIFs under OUT/validation/step-NNNNNN/ and as one row of
//! OUT/validation.jsonl, plotted in OUT/validation.png. Rewards rising on the training
//! records while the validation accuracy falls is reward hacking or collapse, which the
//! training curves alone do not show.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use t2v_kernels::autograd::Tape;

use crate::models::clip::TextTower;
use crate::models::weights::{Result, WeightsError};
use crate::pipeline::reward_scores::{ClipRewards, RewardSet};
use crate::pipeline::sample::{SampleOptions, SamplerModels};
use crate::pipeline::train::{RewardModels, Trainer};
use crate::pipeline::video_io::{write_gif, Frames};

/// What to validate and how often.
pub struct Validation {
    /// Validate every this many steps (and at the start and the end of a run).
    pub every: u64,
    pub prompts: Vec<String>,
    /// Sampling settings (steps, w, motion scale, size; `seed` is prompt 0's).
    pub options: SampleOptions,
    /// Videos per sampling batch.
    pub batch: usize,
    /// The text tower of the model folder (training itself reads stored text contexts);
    /// None for a run that trains the text encoder, which samples with its own.
    pub text: Option<TextTower>,
}

/// One validation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ValidationRow {
    pub step: u64,
    /// Analyser accuracies in % (None: the prompts name no color, shape or direction of
    /// the world).
    pub accuracy: Option<f32>,
    pub color_accuracy: Option<f32>,
    pub shape_accuracy: Option<f32>,
    pub direction_accuracy: Option<f32>,
    pub dynamic_degree: f32,
    pub flicker: f32,
    /// Weighted image rewards of the middle frames against the prompts (None: no image
    /// reward models).
    pub image_reward: Option<f32>,
    /// The video reward of evenly strided frames against the prompts.
    pub video_reward: Option<f32>,
    pub seconds: f32,
}

/// Samples the prompts with the trainer's current student, writes the GIFs under
/// `out/validation/step-NNNNNN/` and scores them.
pub fn validate(trainer: &Trainer, v: &Validation, out: &Path) -> Result<ValidationRow> {
    let t0 = Instant::now();
    let models = trainer.models;
    let tape = Tape::new();
    trainer.student.attach_for_sampling(&tape)?;
    // a run that trains the text encoder samples with the trained one
    let text = match (&trainer.student.text, &v.text) {
        (Some(t), _) => &t.tower,
        (None, Some(t)) => t,
        (None, None) => return Err(WeightsError::Data { path: "validation".into(), msg: "no text encoder to sample with: give the model folder's".into() }),
    };
    let sampler = SamplerModels { unet: &trainer.student.unet, vae: &models.vae, text, tokenizer: &models.tokenizer, schedule: trainer.schedule() };
    let o = &v.options;
    let dir = out.join("validation").join(format!("step-{:06}", trainer.state.step));
    std::fs::create_dir_all(&dir).map_err(|e| WeightsError::Write { path: dir.display().to_string(), msg: e.to_string() })?;
    let mut videos = Vec::new();
    for (c, chunk) in v.prompts.chunks(v.batch.max(1)).enumerate() {
        let items: Vec<(&str, u64)> = chunk.iter().enumerate().map(|(i, p)| (p.as_str(), o.seed + (c * v.batch.max(1) + i) as u64)).collect();
        videos.extend(sampler.generate_batch(&tape, &items, o)?);
    }
    let (f, h, w) = (o.frames, o.height, o.width);
    let mut clips = Vec::new();
    for (i, (video, prompt)) in videos.iter().zip(&v.prompts).enumerate() {
        let frames = Frames::from_chw(video, f, h, w);
        let gif = dir.join(format!("{i:03}.gif"));
        write_gif(&gif, &frames, o.fps).map_err(|e| WeightsError::Write { path: gif.display().to_string(), msg: e.to_string() })?;
        clips.push((frames, prompt.clone()));
    }
    let report = crate::eval::score(&clips);
    let known = |x: f32| x.is_finite().then_some(x);
    let (image_reward, video_reward) = sample_rewards(models, trainer.config.vid_frames, &videos, &v.prompts, (f, h, w))?;
    Ok(ValidationRow {
        step: trainer.state.step,
        accuracy: known(report.accuracy),
        color_accuracy: known(report.color_accuracy),
        shape_accuracy: known(report.shape_accuracy),
        direction_accuracy: known(report.direction_accuracy),
        dynamic_degree: report.dynamic_degree,
        flicker: report.flicker,
        image_reward,
        video_reward,
        seconds: t0.elapsed().as_secs_f32(),
    })
}

/// Reward-model scores of generated videos against their prompts: the mean weighted image
/// reward of the middle frames and the mean video reward of `vid_frames` evenly strided
/// frames (from the first). Videos are (3, F, H, W) in [-1, 1], row-major.
pub fn sample_rewards(models: &RewardModels, vid_frames: usize, videos: &[Vec<f32>], prompts: &[String], (f, h, w): (usize, usize, usize)) -> Result<(Option<f32>, Option<f32>)> {
    let set = RewardSet { image: &models.image, video: models.video.as_deref(), tokenizer: &models.tokenizer };
    let refs: Vec<&[f32]> = videos.iter().map(Vec::as_slice).collect();
    let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let scores = set.score(models.vae.gpu(), &refs, &texts, (f, h, w), &[f / 2], vid_frames.clamp(1, f))?;
    let mean = |get: &dyn Fn(&ClipRewards) -> Option<f32>| scores.iter().map(get).sum::<Option<f32>>().map(|s| s / scores.len().max(1) as f32);
    Ok((mean(&|r| r.image_weighted), mean(&|r| r.video)))
}

/// One line for the log.
pub fn describe(r: &ValidationRow) -> String {
    let pct = |x: Option<f32>| x.map_or("-".to_string(), |x| format!("{x:.1}"));
    let mut s = format!("validation at step {}: ", r.step);
    if r.accuracy.is_some() {
        s += &format!("accuracy {}% (color {}, shape {}, direction {}), ", pct(r.accuracy), pct(r.color_accuracy), pct(r.shape_accuracy), pct(r.direction_accuracy));
    }
    s += &format!("dynamic degree {:.2}, flicker {:.4}", r.dynamic_degree, r.flicker);
    if let Some(x) = r.image_reward {
        s += &format!(", image reward {x:.3}");
    }
    if let Some(x) = r.video_reward {
        s += &format!(", video reward {x:.3}");
    }
    s + &format!(" ({:.0} s)", r.seconds)
}

/// The validation curves.
pub fn plot(path: &Path, rows: &[ValidationRow]) -> Result<()> {
    let s = |f: &dyn Fn(&ValidationRow) -> Option<f32>| rows.iter().filter_map(|r| f(r).map(|v| (r.step as f32, v))).collect::<Vec<_>>();
    crate::pipeline::plot::plot_series(
        path,
        &[
            ("VALIDATION ACCURACY", s(&|r| r.accuracy)),
            ("VALIDATION COLOR ACCURACY", s(&|r| r.color_accuracy)),
            ("VALIDATION IMAGE REWARD", s(&|r| r.image_reward)),
            ("VALIDATION VIDEO REWARD", s(&|r| r.video_reward)),
            ("VALIDATION DYNAMIC DEGREE", s(&|r| Some(r.dynamic_degree))),
        ],
    )
}
