//! Reward models of T2V-Turbo-v2's feedback, differentiable with respect to the generated
//! frames:
//! - image-text: an OpenCLIP ViT + text tower scoring frames by cosine similarity, with
//!   HPSv2.1's preprocessing (longest side + zero padding) or CLIPScore's (squash);
//! - video-text: behind [`VideoTextReward`]. Implemented here: [`ClipVideoReward`], a CLIP
//!   ViT over frames with temporal mean pooling (ViCLIP-style). InternVideo2-stage2 (the
//!   paper's video reward) is not implemented yet.

use t2v_kernels::autograd::{self as ad, Var};

use crate::models::clip::{cosine, Clip};
use crate::models::preprocess;
use crate::models::weights::Result;

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
pub trait VideoTextReward {
    fn score(&self, video: &Var, ids: &[Vec<u32>]) -> Result<Var>;
}

/// CLIP ViT over every frame, features averaged over time and L2-normalised, cosine with
/// the text features (ViCLIP-style temporal pooling).
pub struct ClipVideoReward {
    pub clip: Clip,
}

impl VideoTextReward for ClipVideoReward {
    fn score(&self, video: &Var, ids: &[Vec<u32>]) -> Result<Var> {
        let s = video.shape().to_vec();
        let (b, f) = (s[0], s[2]);
        let frames = ad::reshape(&ad::permute(video, &[0, 2, 1, 3, 4])?, &[b * f, s[1], s[3], s[4]])?;
        let size = self.clip.vision.config.image_size;
        let feats = self.clip.vision.features(&prepare(&frames, Preprocess::ClipScore, size)?)?; // (B*F, E)
        let e = feats.shape()[1];
        let pooled = ad::mean(&ad::reshape(&feats, &[b, f, e])?, 1)?;
        let norm = ad::sqrt(&ad::sum(&ad::square(&pooled)?, -1)?)?;
        let pooled = ad::div(&pooled, &ad::reshape(&norm, &[b, 1])?)?;
        let txt = self.clip.text.features(video.tape(), ids)?;
        diagonal(&cosine(&pooled, &txt)?, b)
    }
}
