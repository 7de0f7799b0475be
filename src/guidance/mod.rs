//! Motion guidance (T2V-Turbo-v2, after MotionClone): the energy G(z_t) compares the
//! temporal self-attention maps of the teacher on z_t with those on a reference latent, on
//! the reference's top-1 (argmax) key frame of every query row, and its gradient with
//! respect to z_t comes through autodiff of the UNet up to those layers.
//!   loss_l = sum(M_l (A_ref,l - A_l(z_t))^2) / sum(M_l),  M_l = onehot(argmax A_ref,l)
//!   G = temp_loss_scale * mean_l(layer_scale * loss_l)        (reference: 100 and 100)

use t2v_kernels::autograd::{self as ad, Tape, Var};
use t2v_kernels::{ops, Tensor};

use crate::models::unet3d::{Unet3d, UnetInputs};
use crate::models::weights::{Result, WeightsError};

/// The reference code's scales.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MotionScales {
    pub temp_loss_scale: f32,
    pub layer_scale: f32,
}

impl Default for MotionScales {
    fn default() -> Self {
        MotionScales { temp_loss_scale: 100.0, layer_scale: 100.0 }
    }
}

/// G from the reference maps (constants) and the current maps (tracked), shape `[1]`.
pub fn motion_energy(reference: &[Tensor], current: &[Var], s: MotionScales) -> Result<Var> {
    if reference.is_empty() || reference.len() != current.len() {
        return Err(WeightsError::Gpu(t2v_kernels::Error::Shape {
            op: "motion_energy",
            msg: format!("{} reference maps for {} current maps (need as many, at least one)", reference.len(), current.len()),
        }));
    }
    let mut total: Option<Var> = None;
    for (r, a) in reference.iter().zip(current) {
        let tape = a.tape();
        let keep: Vec<usize> = r.shape()[..r.rank() - 1].iter().copied().chain([1]).collect();
        // top-1 mask of each query row of the reference (ties would all count; random maps have none)
        let mask = ops::eq(r, &ops::max(r, -1)?.reshape(&keep)?)?;
        let count = ops::sum(&mask.reshape(&[mask.numel()])?, 0)?.reshape(&[1])?;
        let d = ad::sub(&tape.constant(r.clone()), a)?;
        let masked = ad::mul(&ad::square(&d)?, &tape.constant(mask))?;
        let loss = ad::div(&ad::sum_all(&masked)?, &tape.constant(count))?;
        total = Some(match total {
            Some(t) => ad::add(&t, &loss)?,
            None => loss,
        });
    }
    let n = reference.len() as f32;
    Ok(ad::scale(&total.expect("at least one layer"), s.temp_loss_scale * s.layer_scale / n)?)
}

/// What one motion-guidance evaluation gives.
pub struct MotionGrad {
    pub energy: f32,
    /// dG/dz_t, shape of z_t
    pub grad: Tensor,
    /// The teacher's eps on z_t (the same call).
    pub teacher_eps: Tensor,
}

/// G and dG/dz_t for the teacher (text-conditioned, no student conditioning) at timestep t,
/// with the reference maps taken from `z_ref` at the same t.
pub fn motion_guidance(unet: &Unet3d, z_ref: &Tensor, z_t: &Tensor, t: &[f32], context: &Tensor, fps: &[f32], s: MotionScales) -> Result<MotionGrad> {
    let reference = {
        let tape = Tape::new();
        tape.no_grad(|| -> Result<Vec<Tensor>> {
            let z = tape.constant(z_ref.clone());
            let ctx = tape.constant(context.clone());
            let out = unet.forward(&UnetInputs { z: &z, t, context: &ctx, fps, w_embedding: None, motion_embedding: None, record_attention: true })?;
            Ok(out.attention.into_iter().map(|(_, p)| p.value().clone()).collect())
        })?
    };
    let tape = Tape::new();
    let z = tape.leaf(z_t.clone());
    let ctx = tape.constant(context.clone());
    // recomputation checkpoints: the backward through the whole UNet would otherwise keep
    // every activation (well over 100 GB at VideoCrafter2's size, 16 x 320 x 512); one
    // more forward's time, small against the DDIM inversion's 100-200 calls
    let out = unet.forward_checkpointed(&UnetInputs { z: &z, t, context: &ctx, fps, w_embedding: None, motion_embedding: None, record_attention: true })?;
    let maps: Vec<Var> = out.attention.into_iter().map(|(_, p)| p).collect();
    let g = motion_energy(&reference, &maps, s)?;
    let energy = g.value().item_at(0)?;
    let teacher_eps = out.eps.value().clone();
    let grads = tape.backward(&g)?;
    let grad = grads.get(&z).cloned().ok_or_else(|| WeightsError::Gpu(t2v_kernels::Error::Autograd("the energy does not depend on z_t".into())))?;
    Ok(MotionGrad { energy, grad, teacher_eps })
}
