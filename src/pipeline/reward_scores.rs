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
    /// (name: the weight file's stem, model, weight)
    image: Vec<(String, ImageTextReward, f32)>,
    video: Option<Box<dyn VideoTextReward>>,
    tokenizer: ClipTokenizer,
    image_frames: usize,
}

/// Indices of `m` frames evenly spread over `f` (from the first): k * f / m.
pub fn strided(f: usize, m: usize) -> Vec<usize> {
    (0..m).map(|k| k * f / m).collect()
}

impl RewardScorer {
    /// The image rewards (scoring `image_frames` evenly strided frames of each clip) and
    /// the video reward of a model folder; an error if it has neither.
    pub fn load(gpu: &Gpu, md: &ModelDir, image_frames: usize) -> Result<RewardScorer> {
        let fmt = |msg: String| WeightsError::Format { path: md.root.join("config.json").display().to_string(), msg };
        if md.image_rewards.is_empty() && md.video_reward.is_none() {
            return Err(fmt("the model folder names no reward models (image_rewards, video_reward)".into()));
        }
        if image_frames == 0 {
            return Err(fmt("image rewards need at least one frame per clip".into()));
        }
        let names = md.image_rewards.iter().map(|r| r.file.file_stem().map_or_else(|| "image reward".into(), |s| s.to_string_lossy().into_owned()));
        let image = names.zip(md.load_image_rewards(gpu)?).map(|(n, (m, w))| (n, m, w)).collect();
        let tokenizer = ClipTokenizer::new().map_err(|e| fmt(e.to_string()))?;
        Ok(RewardScorer { image, video: md.load_video_reward(gpu)?, tokenizer, image_frames })
    }

    /// The image rewards' names (their weight files' stems) and weights, in order.
    pub fn image_rewards(&self) -> Vec<(&str, f32)> {
        self.image.iter().map(|(n, _, w)| (n.as_str(), *w)).collect()
    }

    pub fn has_video_reward(&self) -> bool {
        self.video.is_some()
    }

    /// Frames of a clip the video reward scores.
    pub fn video_frames(&self) -> usize {
        self.video.as_ref().and_then(|v| v.frames()).unwrap_or(DEFAULT_VIDEO_FRAMES)
    }

    /// Scores of `clip` against `prompt`: each image reward's mean over
    /// `min(image_frames, F)` evenly strided frames, and the video reward of
    /// [`RewardScorer::video_frames`] evenly strided frames (an error if the clip is shorter).
    pub fn score(&self, gpu: &Gpu, clip: &Frames, prompt: &str) -> Result<ClipRewards> {
        let (f, h, w) = (clip.frames.len(), clip.height, clip.width);
        let shape_err = |msg: String| WeightsError::Gpu(t2v_kernels::Error::Shape { op: "reward scores", msg });
        if f == 0 {
            return Err(shape_err("the clip has no frames".into()));
        }
        let chw = clip.to_model_input(h, w); // (3, F, H, W) in [-1, 1], unchanged size
        // frames `picks` as (3, picks, H, W) = (picks, 3, H, W) after a permute on the host
        let gather = |picks: &[usize], frame_major: bool| -> Vec<f32> {
            let hw = h * w;
            let mut out = Vec::with_capacity(3 * picks.len() * hw);
            if frame_major {
                for &t in picks {
                    for c in 0..3 {
                        out.extend_from_slice(&chw[(c * f + t) * hw..(c * f + t + 1) * hw]);
                    }
                }
            } else {
                for c in 0..3 {
                    for &t in picks {
                        out.extend_from_slice(&chw[(c * f + t) * hw..(c * f + t + 1) * hw]);
                    }
                }
            }
            out
        };
        let tape = Tape::new();
        tape.no_grad(|| {
            let mut image = Vec::new();
            if !self.image.is_empty() {
                let picks = strided(f, self.image_frames.min(f));
                let frames = tape.constant(Tensor::from_slice(gpu, &[picks.len(), 3, h, w], &gather(&picks, true))?);
                let ids = self.tokenizer.encode_warn(prompt).map_err(|e| WeightsError::Format { path: "prompt".into(), msg: e.to_string() })?.ids;
                let ids = vec![ids; picks.len()];
                for (_, model, _) in &self.image {
                    let s = model.score(&frames, &ids)?.value().to_vec()?;
                    image.push(s.iter().sum::<f32>() / s.len() as f32);
                }
            }
            let image_weighted = (!image.is_empty()).then(|| image.iter().zip(&self.image).map(|(s, (_, _, wt))| s * wt).sum());
            let video = match &self.video {
                Some(model) => {
                    let m = self.video_frames();
                    if f < m {
                        return Err(shape_err(format!("the clip has {f} frames; the video reward scores {m}")));
                    }
                    let x = tape.constant(Tensor::from_slice(gpu, &[1, 3, m, h, w], &gather(&strided(f, m), false))?);
                    Some(model.score(&x, &[prompt], 0.5)?.value().to_vec()?[0])
                }
                None => None,
            };
            Ok(ClipRewards { image, image_weighted, video })
        })
    }
}
