//! Reward-model scores of finished clips (`t2v-turbo eval --models`): what the method's
//! reward feedback optimises (the image rewards' R_img and the video reward's R_vid),
//! measured on any videos with their prompts — also those the moving-shapes analyser
//! cannot read. No gradients; one clip at a time, at its own size (each reward model
//! resizes and crops as its reference does).

use t2v_kernels::autograd::Tape;
use t2v_kernels::{Gpu, Tensor};

use crate::models::tokenizer::ClipTokenizer;
use crate::models::weights::{Result, WeightsError};
use crate::pipeline::model_dir::ModelDir;
use crate::pipeline::video_io::Frames;
use crate::reward::{ImageTextReward, VideoTextReward};

/// Frames the video reward sees when its model does not fix the number (4, as in training).
pub const DEFAULT_VIDEO_FRAMES: usize = 4;

/// The reward scores of one clip against its prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipRewards {
    /// Each image reward's mean score over the clip's chosen frames (model-folder order).
    pub image: Vec<f32>,
    /// R_img: their sum weighted by the folder's weights; None without image rewards.
    pub image_weighted: Option<f32>,
    /// R_vid of evenly strided frames (centre crop); None without a video reward.
    pub video: Option<f32>,
}

/// A model folder's reward models, ready to score clips.
pub struct RewardScorer {
    /// The weight files' stems, in the folder's order.
    names: Vec<String>,
    image: Vec<(ImageTextReward, f32)>,
    video: Option<Box<dyn VideoTextReward>>,
    tokenizer: ClipTokenizer,
    image_frames: usize,
}

/// Indices of `m` frames evenly spread over `f` (from the first): k * f / m.
pub fn strided(f: usize, m: usize) -> Vec<usize> {
    (0..m).map(|k| k * f / m).collect()
}

/// Frames of a clip a video reward scores (its model's number, else
/// [`DEFAULT_VIDEO_FRAMES`]).
pub fn video_frames_of(video: &dyn VideoTextReward) -> usize {
    video.frames().unwrap_or(DEFAULT_VIDEO_FRAMES)
}

impl RewardScorer {
    /// The image rewards (scoring `image_frames` evenly strided frames of each clip) and
    /// the video reward of a model folder; an error if it has neither.
    pub fn load(gpu: &Gpu, md: &ModelDir, image_frames: usize) -> Result<RewardScorer> {
        let fmt = |msg: String| WeightsError::Data { path: md.root.join("config.json").display().to_string(), msg };
        if md.image_rewards.is_empty() && md.video_reward.is_none() {
            return Err(fmt("the model folder names no reward models (image_rewards, video_reward)".into()));
        }
        if image_frames == 0 {
            return Err(fmt("image rewards need at least one frame per clip".into()));
        }
        let names = md.image_rewards.iter().map(|r| r.file.file_stem().map_or_else(|| "image reward".into(), |s| s.to_string_lossy().into_owned())).collect();
        let tokenizer = ClipTokenizer::new().map_err(|e| fmt(e.to_string()))?;
        Ok(RewardScorer { names, image: md.load_image_rewards(gpu)?, video: md.load_video_reward(gpu)?, tokenizer, image_frames })
    }

    /// The image rewards' names (their weight files' stems) and weights, in order.
    pub fn image_rewards(&self) -> Vec<(&str, f32)> {
        self.names.iter().zip(&self.image).map(|(n, (_, w))| (n.as_str(), *w)).collect()
    }

    /// The models, borrowed (to score batches of videos of one size).
    pub fn set(&self) -> RewardSet<'_> {
        RewardSet { image: &self.image, video: self.video.as_deref(), tokenizer: &self.tokenizer }
    }

    pub fn has_video_reward(&self) -> bool {
        self.video.is_some()
    }

    /// Scores of `clip` against `prompt`: each image reward's mean over
    /// `min(image_frames, F)` evenly strided frames, and the video reward of its model's
    /// number of evenly strided frames (an error if the clip is shorter).
    pub fn score(&self, gpu: &Gpu, clip: &Frames, prompt: &str) -> Result<ClipRewards> {
        let (f, h, w) = (clip.frames.len(), clip.height, clip.width);
        if f == 0 {
            return Err(shape_error("the clip has no frames".into()));
        }
        let chw = clip.to_model_input(h, w); // (3, F, H, W) in [-1, 1], unchanged size
        let video_frames = self.video.as_deref().map_or(DEFAULT_VIDEO_FRAMES, video_frames_of);
        let mut r = self.set().score(gpu, &[&chw], &[prompt], (f, h, w), &strided(f, self.image_frames.min(f)), video_frames)?;
        Ok(r.pop().expect("one clip"))
    }
}

fn shape_error(msg: String) -> WeightsError {
    WeightsError::Gpu(t2v_kernels::Error::Shape { op: "reward scores", msg })
}

/// Borrowed reward models (a [`RewardScorer`]'s, or a training run's).
pub struct RewardSet<'a> {
    pub image: &'a [(ImageTextReward, f32)],
    pub video: Option<&'a dyn VideoTextReward>,
    /// The image rewards' tokenizer.
    pub tokenizer: &'a ClipTokenizer,
}

impl RewardSet<'_> {
    /// Scores of videos of one size, each (3, F, H, W) in [-1, 1] row-major, against their
    /// prompts, in one batch per model: each image reward's mean over frames `image_picks`,
    /// and the video reward of `video_frames` evenly strided frames (from the first).
    pub fn score(&self, gpu: &Gpu, videos: &[&[f32]], prompts: &[&str], (f, h, w): (usize, usize, usize), image_picks: &[usize], video_frames: usize) -> Result<Vec<ClipRewards>> {
        let n = videos.len();
        if prompts.len() != n || videos.iter().any(|v| v.len() != 3 * f * h * w) || image_picks.is_empty() || image_picks.iter().any(|&t| t >= f) {
            return Err(shape_error(format!("{n} videos of (3, {f}, {h}, {w}) with {} prompts, frames {image_picks:?}", prompts.len())));
        }
        let hw = h * w;
        // frames `picks` of every video, as (N * picks, 3, H, W) or (N, 3, picks, H, W)
        let gather = |picks: &[usize], frame_major: bool| -> Vec<f32> {
            let mut out = Vec::with_capacity(n * 3 * picks.len() * hw);
            let plane = |c: usize, t: usize| -> std::ops::Range<usize> { (c * f + t) * hw..(c * f + t + 1) * hw };
            for v in videos {
                if frame_major {
                    for &t in picks {
                        (0..3).for_each(|c| out.extend_from_slice(&v[plane(c, t)]));
                    }
                } else {
                    for c in 0..3 {
                        picks.iter().for_each(|&t| out.extend_from_slice(&v[plane(c, t)]));
                    }
                }
            }
            out
        };
        let tape = Tape::new();
        tape.no_grad(|| {
            let m = image_picks.len();
            // per image reward, each video's mean over its frames
            let mut image: Vec<Vec<f32>> = Vec::new();
            if !self.image.is_empty() {
                let frames = tape.constant(Tensor::from_slice(gpu, &[n * m, 3, h, w], &gather(image_picks, true))?);
                let ids = prompts
                    .iter()
                    .map(|p| Ok(self.tokenizer.encode_warn(p).map_err(|e| WeightsError::Data { path: "prompt".into(), msg: e.to_string() })?.ids))
                    .collect::<Result<Vec<_>>>()?;
                let ids: Vec<Vec<u32>> = ids.iter().flat_map(|i| std::iter::repeat_n(i.clone(), m)).collect();
                for (model, _) in self.image {
                    let s = model.score(&frames, &ids)?.value().to_vec()?;
                    image.push(s.chunks(m).map(|c| c.iter().sum::<f32>() / m as f32).collect());
                }
            }
            let video = match self.video {
                Some(model) => {
                    if f < video_frames {
                        return Err(shape_error(format!("the clip has {f} frames; the video reward scores {video_frames}")));
                    }
                    let x = tape.constant(Tensor::from_slice(gpu, &[n, 3, video_frames, h, w], &gather(&strided(f, video_frames), false))?);
                    Some(model.score(&x, prompts, 0.5)?.value().to_vec()?)
                }
                None => None,
            };
            Ok((0..n)
                .map(|i| {
                    let each: Vec<f32> = image.iter().map(|s| s[i]).collect();
                    let image_weighted = (!each.is_empty()).then(|| each.iter().zip(self.image).map(|(s, (_, wt))| s * wt).sum());
                    ClipRewards { image: each, image_weighted, video: video.as_ref().map(|v| v[i]) }
                })
                .collect())
        })
    }
}
