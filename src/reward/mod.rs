//! Reward models of T2V-Turbo-v2's feedback, differentiable with respect to the generated
//! frames:
//! - image-text: an OpenCLIP ViT + text tower scoring frames by cosine similarity, with
//!   HPSv2.1's preprocessing (longest side + zero padding) or CLIPScore's (squash);
//! - video-text: behind [`VideoTextReward`]: [`InternVideo2Reward`] (InternVideo2-stage2,
//!   the paper's R_vid) and [`ClipVideoReward`], a CLIP ViT over frames with temporal mean
//!   pooling (ViCLIP-style). Each brings its own tokenizer, so callers pass prompts.

use t2v_kernels::autograd::{self as ad, Var};

use crate::models::clip::{cosine, l2_normalize, Clip};
use crate::models::internvideo2::InternVideo2;
use crate::models::preprocess;
use crate::models::tokenizer::{BertTokenizer, ClipTokenizer, TokenizerError};
use crate::models::weights::{Result, WeightsError};

/// Which reference preprocessing an image reward uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preprocess {
    /// HPSv2.1: longest side to S, zero padding, OpenAI mean/std.
    Hps,
    /// CLIPScore: squash-resize to S x S, OpenAI mean/std.
    ClipScore,
}

/// Frames in [-1, 1] (N, 3, H, W) -> preprocessed (N, 3, S, S).
fn prepare(frames: &Var, mode: Preprocess, size: usize) -> Result<Var> {
    let unit = ad::affine(frames, 0.5, 0.5)?; // [-1, 1] -> [0, 1]
    Ok(match mode {
        Preprocess::Hps => preprocess::hps(&unit, size)?,
        Preprocess::ClipScore => preprocess::clipscore(&unit, size)?,
    })
}

/// An image-text reward (HPSv2.1 or CLIPScore architecture).
pub struct ImageTextReward {
    pub clip: Clip,
    pub mode: Preprocess,
}

impl ImageTextReward {
    /// Score of each frame (N, 3, H, W) in [-1, 1] against its prompt's ids: (N,).
    pub fn score(&self, frames: &Var, ids: &[Vec<u32>]) -> Result<Var> {
        let n = frames.shape()[0];
        let size = self.clip.vision.config.image_size;
        let img = self.clip.vision.features(&prepare(frames, self.mode, size)?)?;
        let txt = self.clip.text.features(frames.tape(), ids)?;
        diagonal(&cosine(&img, &txt)?, n)
    }
}

/// The diagonal of a square (n, n) matrix -> (n,).
pub(crate) fn diagonal(m: &Var, n: usize) -> Result<Var> {
    let flat = ad::reshape(m, &[n * n, 1])?;
    let idx: Vec<u32> = (0..n as u32).map(|i| i * (n as u32 + 1)).collect();
    Ok(ad::reshape(&ad::embedding(&flat, &idx)?, &[n])?)
}

/// A video-text reward: videos (B, 3, F, H, W) in [-1, 1] and one prompt each -> (B,).
pub trait VideoTextReward: Send + Sync {
    /// `crop_at` in [0, 1] places the square crop of a model that crops non-square frames
    /// (0.5: centre; training draws it uniformly, like the reference's RandomCrop).
    fn score(&self, video: &Var, prompts: &[&str], crop_at: f32) -> Result<Var>;
    /// The number of frames the model takes, where it fixes one (None: any number).
    fn frames(&self) -> Option<usize> {
        None
    }
    /// Recompute the vision side's layers in the backward pass instead of keeping their
    /// activations.
    fn set_checkpointing(&self, on: bool);
}

fn token_error(e: TokenizerError) -> WeightsError {
    WeightsError::Data { path: "prompt".into(), msg: e.to_string() }
}

/// Videos (B, 3, F, H, W) -> frames (B*F, 3, H, W), video-major.
fn frames_of(video: &Var) -> Result<Var> {
    let s = video.shape().to_vec();
    if s.len() != 5 || s[1] != 3 {
        return Err(WeightsError::Gpu(t2v_kernels::Error::Shape { op: "video reward", msg: format!("videos must be (B, 3, F, H, W), got {s:?}") }));
    }
    Ok(ad::reshape(&ad::permute(video, &[0, 2, 1, 3, 4])?, &[s[0] * s[2], 3, s[3], s[4]])?)
}

/// CLIP ViT over every frame, features averaged over time and L2-normalised, cosine with
/// the text features (ViCLIP-style temporal pooling).
pub struct ClipVideoReward {
    pub clip: Clip,
    pub tokenizer: ClipTokenizer,
}

impl VideoTextReward for ClipVideoReward {
    fn score(&self, video: &Var, prompts: &[&str], _crop_at: f32) -> Result<Var> {
        let (b, f) = (video.shape()[0], video.shape()[2]);
        let frames = frames_of(video)?;
        let size = self.clip.vision.config.image_size;
        let feats = self.clip.vision.features(&prepare(&frames, Preprocess::ClipScore, size)?)?; // (B*F, E)
        let e = feats.shape()[1];
        let pooled = l2_normalize(&ad::mean(&ad::reshape(&feats, &[b, f, e])?, 1)?)?;
        let ids = prompts.iter().map(|p| Ok(self.tokenizer.encode_warn(p).map_err(token_error)?.ids)).collect::<Result<Vec<_>>>()?;
        let txt = self.clip.text.features(video.tape(), &ids)?;
        diagonal(&cosine(&pooled, &txt)?, b)
    }
    fn set_checkpointing(&self, on: bool) {
        self.clip.vision.set_checkpointing(on);
    }
}

/// InternVideo2-stage2 as the reference's reward function uses it: frames to [0, 1],
/// shorter side to the model's size and a square crop, ImageNet normalisation, cosine of
/// the projected, normalised video and text features.
pub struct InternVideo2Reward {
    pub model: InternVideo2,
    pub tokenizer: BertTokenizer,
}

impl VideoTextReward for InternVideo2Reward {
    fn score(&self, video: &Var, prompts: &[&str], crop_at: f32) -> Result<Var> {
        let (b, f) = (video.shape()[0], video.shape()[2]);
        let size = self.model.config.vision.img_size;
        let frames = preprocess::min_side_crop(&ad::affine(&frames_of(video)?, 0.5, 0.5)?, size, crop_at)?;
        let vid = self.model.video_features(&ad::reshape(&frames, &[b, f, 3, size, size])?)?;
        let (ids, mask) = self.tokenizer.encode_batch(prompts).map_err(token_error)?;
        let txt = self.model.text_features(video.tape(), &ids, &mask)?;
        diagonal(&cosine(&vid, &txt)?, b)
    }
    fn frames(&self) -> Option<usize> {
        Some(self.model.config.vision.num_frames)
    }
    fn set_checkpointing(&self, on: bool) {
        self.model.vision.set_checkpointing(on);
    }
}
