//! Does a teacher use its captions? The eps-prediction error on the same noisy latents of
//! fresh world clips with the clip's own short caption, with the caption of another color,
//! of another shape, of the opposite direction, and with the empty prompt, at a few
//! timesteps. A teacher that ignores the text scores them alike (and samples at chance on
//! the world's attributes, whatever the CFG scale); one that reads a word (color, shape,
//! direction) predicts worse with the wrong word than with its own.

use serde::Serialize;
use t2v_kernels::autograd::Tape;
use t2v_kernels::{ops, Gpu, Tensor};

use super::{clips_tensor, draw_clips};
use crate::diffusion::Schedule;
use crate::models::clip::TextTower;
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet3d::{Unet3d, UnetInputs};
use crate::models::vae::Vae;
use crate::models::weights::{Result, WeightsError};
use crate::pipeline::sample::Gaussian;
use crate::world::{ClipSpec, WorldConfig, COLORS, SHAPES};

/// Timesteps of the check: where the subject is still legible in z_t (300) to where it
/// is drowned in noise (900).
pub const CHECK_TIMESTEPS: [usize; 4] = [300, 500, 700, 900];

/// Mean eps-MSE at one timestep.
#[derive(Clone, Debug, Serialize)]
pub struct CaptionErrors {
    pub t: usize,
    pub own: f64,
    pub other_color: f64,
    pub other_shape: f64,
    /// The opposite direction (left <-> right, up <-> down).
    pub other_direction: f64,
    pub empty: f64,
}

impl CaptionErrors {
    /// Relative increase of the error with the wrong color, percent.
    pub fn color_gap(&self) -> f64 {
        self.gap(self.other_color)
    }
    /// Relative increase of the error with the wrong shape, percent.
    pub fn shape_gap(&self) -> f64 {
        self.gap(self.other_shape)
    }
    /// Relative increase of the error with the opposite direction, percent.
    pub fn direction_gap(&self) -> f64 {
        self.gap(self.other_direction)
    }
    /// Relative increase of the error without a caption, percent.
    pub fn empty_gap(&self) -> f64 {
        self.gap(self.empty)
    }
    fn gap(&self, other: f64) -> f64 {
        100.0 * (other - self.own) / self.own.max(1e-12)
    }
}

/// Runs the check on `clips` fresh clips (batches of `batch`) of the world of `world_seed`.
#[allow(clippy::too_many_arguments)]
pub fn caption_sensitivity(gpu: &Gpu, unet: &Unet3d, vae: &Vae, text: &TextTower, world: &WorldConfig, fps: f32, world_seed: u64, clips: usize, batch: usize) -> Result<Vec<CaptionErrors>> {
    let tok = ClipTokenizer::new().map_err(|e| WeightsError::Data { path: "tokenizer".into(), msg: e.to_string() })?;
    let sched = Schedule::videocrafter();
    let mut rng = Gaussian::new(world_seed ^ 0x00CA_9710);
    let mut sums = vec![[0f64; 5]; CHECK_TIMESTEPS.len()];
    let tape = Tape::new();
    let batches = clips.div_ceil(batch.max(1));
    for k in 0..batches {
        let b = batch.min(clips - k * batch);
        let specs = draw_clips(&mut rng, world_seed, b, world);
        let altered = |change: fn(&mut ClipSpec)| -> Vec<String> {
            specs.iter().map(|s| {
                let mut o = s.clone();
                change(&mut o);
                o.short_caption()
            }).collect()
        };
        let captions: [Vec<String>; 5] = [
            specs.iter().map(|s| s.short_caption()).collect(),
            altered(|o| o.color = (o.color + COLORS.len() / 2) % COLORS.len()),
            altered(|o| o.shape = (o.shape + 1) % SHAPES.len()),
            altered(|o| o.direction ^= 1), // left <-> right, up <-> down
            vec![String::new(); b],
        ];
        tape.no_grad(|| -> Result<()> {
            let z0 = vae.encode_video(&tape.constant(clips_tensor(gpu, &specs, world)?))?.value().clone();
            let mut contexts = Vec::new();
            for texts in &captions {
                contexts.push(text.penultimate(&tape, &super::objectives::tokenize(&tok, texts)?)?);
            }
            for (i, &t) in CHECK_TIMESTEPS.iter().enumerate() {
                let noise_host = rng.take(z0.numel());
                let noise = Tensor::from_slice(gpu, z0.shape(), &noise_host)?;
                let ab = sched.alphas_cumprod[t];
                let z_t = tape.constant(ops::add(&ops::scale(&z0, ab.sqrt())?, &ops::scale(&noise, (1.0 - ab).sqrt())?)?);
                for (j, ctx) in contexts.iter().enumerate() {
                    let inputs = UnetInputs { z: &z_t, t: &vec![t as f32; b], context: ctx, fps: &vec![fps; b], w_embedding: None, motion_embedding: None, record_attention: false };
                    let eps = unet.forward(&inputs)?.eps.value().to_vec()?;
                    let se: f64 = eps.iter().zip(&noise_host).map(|(a, n)| ((a - n) as f64).powi(2)).sum();
                    sums[i][j] += se / noise_host.len() as f64 * b as f64;
                }
            }
            Ok(())
        })?;
    }
    Ok(CHECK_TIMESTEPS
        .iter()
        .zip(&sums)
        .map(|(&t, s)| {
            let m = |j: usize| s[j] / clips as f64;
            CaptionErrors { t, own: m(0), other_color: m(1), other_shape: m(2), other_direction: m(3), empty: m(4) }
        })
        .collect())
}

/// Lines for the terminal: one per timestep and a verdict.
pub fn describe(errors: &[CaptionErrors]) -> String {
    let mut s = String::from("caption check (eps-MSE on fresh clips: own caption, then the gap with another color / shape / the opposite direction / the empty prompt):\n");
    for e in errors {
        s += &format!(
            "  t={:<4} {:.5}  color {:+.2} %  shape {:+.2} %  direction {:+.2} %  empty {:+.2} %\n",
            e.t,
            e.own,
            e.color_gap(),
            e.shape_gap(),
            e.direction_gap(),
            e.empty_gap()
        );
    }
    let best = errors.iter().map(|e| e.color_gap()).fold(f64::MIN, f64::max);
    s += &if best < 0.5 {
        format!(
            "  the teacher barely reads the color word (largest gap {best:.2} %): expect samples near chance on the world's colors. \
             A contrastively pretrained text encoder (`pretrain text`) is read within a few hundred steps, a random one not in 1400; \
             joint image-video steps (--image-batch) show the captions more often"
        )
    } else {
        format!("  the teacher reads the color word (largest gap {best:.2} %)")
    };
    let words = |gap: fn(&CaptionErrors) -> f64| errors.iter().map(gap).fold(f64::MIN, f64::max);
    let direction = words(CaptionErrors::direction_gap);
    s += &format!("; largest shape gap {:.2} %, direction gap {direction:.2} %", words(CaptionErrors::shape_gap));
    if best >= 0.5 && direction < 0.5 {
        // a text encoder that learnt from single frames gives direction words nearly equal features
        s += ": the direction words make no difference to it, so expect directions at chance";
    }
    s
}
