//! `t2v-turbo parity DIR`: runs a fixture folder of one of the documented layouts
//! (../shared/fixtures) through the project and compares every output tensor.

mod internvideo2;
mod openclip;
mod tokenizer;
mod unet3d;
mod vae;

use std::path::Path;

/// One compared tensor.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub max_abs: f32,
    pub max_rel: f32,
    /// Allowed max abs error.
    pub tolerance: f32,
}

impl Check {
    /// Compares `got` with `want` under tolerance `rel_to_scale` x max|want|.
    pub fn new(name: &str, got: &[f32], want: &[f32], rel_to_scale: f32) -> Check {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let mut max_abs = if got.len() == want.len() { 0f32 } else { f32::INFINITY };
        let mut max_rel = 0f32;
        for (a, b) in got.iter().zip(want) {
            let e = (a - b).abs();
            max_abs = if e.is_nan() { f32::INFINITY } else { max_abs.max(e) };
            max_rel = max_rel.max(e / b.abs().max(1e-6 * scale.max(1e-30)));
        }
        Check { name: name.to_string(), max_abs, max_rel, tolerance: rel_to_scale * scale }
    }
    /// Compares under an absolute tolerance.
    pub fn absolute(name: &str, got: &[f32], want: &[f32], tolerance: f32) -> Check {
        Check { tolerance, ..Check::new(name, got, want, 0.0) }
    }
    /// Compares the MEAN abs error (reported in the max-abs column) with `tolerance`.
    pub fn mean_abs(name: &str, got: &[f32], want: &[f32], tolerance: f32) -> Check {
        let mean = got.iter().zip(want).map(|(a, b)| (a - b).abs()).sum::<f32>() / want.len().max(1) as f32;
        Check { name: format!("{name} (mean)"), max_abs: mean, max_rel: 0.0, tolerance }
    }
    pub fn passed(&self) -> bool {
        self.max_abs <= self.tolerance
    }
}

/// A file of reference outputs and the checks made against it.
pub(crate) struct Reference {
    pub io: crate::models::weights::WeightFile,
    pub checks: Vec<Check>,
}

impl Reference {
    pub fn open(path: &Path) -> Result<Reference, ParityError> {
        Ok(Reference { io: crate::models::weights::WeightFile::open(path)?, checks: Vec::new() })
    }

    /// Compares `got` with the reference tensor `name` (same shape required): within
    /// 1e-4 x the reference's scale, or within `abs` absolute.
    pub fn compare(&mut self, name: &str, got: &t2v_kernels::Tensor, abs: Option<f32>) -> Result<(), ParityError> {
        let (shape, want) = self.io.host_f32(name)?;
        if got.shape() != shape.as_slice() {
            return Err(ParityError::Bad { path: self.io.path.display().to_string(), msg: format!("{name}: reference shape {shape:?}, ours {:?}", got.shape()) });
        }
        let v = got.to_vec()?;
        self.checks.push(match abs {
            Some(a) => Check::absolute(name, &v, &want, a),
            None => Check::new(name, &v, &want, 1e-4),
        });
        Ok(())
    }
}

/// The fixture layouts `parity` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Tokenizer,
    OpenClip,
    Vae,
    Unet3d,
    InternVideo2,
}

#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error("{0}: not a fixture folder of a known layout (tokenizer/, openclip/, vae/, unet3d/, internvideo2/: see their README.md)")]
    Unknown(String),
    #[error("{path}: {msg}")]
    Bad { path: String, msg: String },
    #[error(transparent)]
    Weights(#[from] crate::models::weights::WeightsError),
    #[error(transparent)]
    Kernels(#[from] t2v_kernels::Error),
}

/// Recognises a fixture folder's layout from the files present.
pub fn detect(dir: &Path) -> Result<Layout, ParityError> {
    let has = |f: &str| dir.join(f).exists();
    let config = std::fs::read_to_string(dir.join("config.json")).ok().and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
    Ok(match config {
        _ if has("forward.safetensors") => Layout::Unet3d,
        Some(c) if c.get("ddconfig").is_some() => Layout::Vae,
        // InternVideo2's config names its parts like the reference (vision.depth, text.hidden_size)
        Some(c) if c["vision"].get("depth").is_some() && c["text"].get("hidden_size").is_some() => Layout::InternVideo2,
        Some(c) if c.get("vision").is_some() && c.get("text").is_some() => Layout::OpenClip,
        _ if has("prompts.json") => Layout::Tokenizer,
        _ => return Err(ParityError::Unknown(dir.display().to_string())),
    })
}

/// Runs the folder; returns its layout and every comparison.
pub fn run(dir: &Path, gpu: &t2v_kernels::Gpu) -> Result<(Layout, Vec<Check>), ParityError> {
    let layout = detect(dir)?;
    let checks = match layout {
        Layout::Vae => vae::run(dir, gpu)?,
        Layout::Tokenizer => tokenizer::run(dir)?,
        Layout::OpenClip => openclip::run(dir, gpu)?,
        Layout::Unet3d => unet3d::run(dir, gpu)?,
        Layout::InternVideo2 => internvideo2::run(dir, gpu)?,
    };
    Ok((layout, checks))
}
