//! LoRA: low-rank adapters on linear and conv layers, trainable on their own and mergeable
//! into the base weights. Layout and initialisation follow PEFT: `down` (A) is random
//! (uniform, bound 1/sqrt(fan_in)), `up` (B) is zero, so a fresh adapter changes nothing;
//! the update is scaled by alpha / rank.
//!   linear: W x + (alpha/r) B A x, A (r, in), B (out, r)
//!   conv:   conv(x, W) + (alpha/r) conv1x1(conv(x, A), B), A (r, C, KH, KW) with the base
//!           layer's stride and padding, B (O, r, 1, 1); a temporal (3, 1, 1) conv likewise

use super::{conv2d, linear, Tape, Var};
use crate::ops::{self as k, Conv2d};
use crate::{Error, Gpu, Result, Tensor};

/// A rank-r adapter for one layer (weights as plain tensors; put them on a tape with
/// [`Lora::vars`]).
#[derive(Clone, Debug)]
pub struct Lora {
    pub down: Tensor,
    pub up: Tensor,
    pub scale: f32,
}

/// An adapter's tensors on a tape.
#[derive(Clone)]
pub struct LoraVars {
    pub down: Var,
    pub up: Var,
    pub scale: f32,
}

fn uniform(n: usize, bound: f32, seed: u64) -> Vec<f32> {
    // splitmix64 -> [-bound, bound)
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
        })
        .collect()
}

impl Lora {
    /// An adapter for a linear layer with weight (out, inp).
    pub fn linear(gpu: &Gpu, inp: usize, out: usize, rank: usize, alpha: f32, seed: u64) -> Result<Lora> {
        if rank == 0 {
            return Err(Error::Autograd("LoRA rank must be at least 1".into()));
        }
        Ok(Lora {
            down: Tensor::from_slice(gpu, &[rank, inp], &uniform(rank * inp, 1.0 / (inp as f32).sqrt(), seed))?,
            up: Tensor::zeros(gpu, &[out, rank])?,
            scale: alpha / rank as f32,
        })
    }

    /// An adapter for a conv layer with weight (o, c, kh, kw).
    pub fn conv(gpu: &Gpu, weight_shape: [usize; 4], rank: usize, alpha: f32, seed: u64) -> Result<Lora> {
        if rank == 0 {
            return Err(Error::Autograd("LoRA rank must be at least 1".into()));
        }
        let [o, c, kh, kw] = weight_shape;
        let fan_in = c * kh * kw;
        Ok(Lora {
            down: Tensor::from_slice(gpu, &[rank, c, kh, kw], &uniform(rank * fan_in, 1.0 / (fan_in as f32).sqrt(), seed))?,
            up: Tensor::zeros(gpu, &[o, rank, 1, 1])?,
            scale: alpha / rank as f32,
        })
    }

    /// Tracked leaves for training (the base weights stay constants).
    pub fn vars(&self, tape: &Tape) -> LoraVars {
        LoraVars { down: tape.leaf(self.down.clone()), up: tape.leaf(self.up.clone()), scale: self.scale }
    }

    /// Tracked adapter leaves, attached to `w` on `tape` ([`Tape::attach_lora`]): layers
    /// that apply adapters run W x + (alpha/r) B (A x) without forming the merged weight
    /// (a copy of W per adapted layer), others read the merged weight.
    pub fn attach(&self, tape: &Tape, w: &Tensor) -> Result<LoraVars> {
        let vars = self.vars(tape);
        tape.attach_lora(w, vars.clone())?;
        Ok(vars)
    }

    /// W + (alpha/r) B A, same shape as `w` (linear (out, in) or conv (o, c, kh, kw)).
    pub fn merge(&self, w: &Tensor) -> Result<Tensor> {
        let r = self.down.shape()[0];
        let o = self.up.shape()[0];
        let fan_in = self.down.numel() / r;
        if w.numel() != o * fan_in || w.shape()[0] != o {
            return Err(Error::Shape { op: "lora merge", msg: format!("weight {:?} does not fit adapter up {:?} down {:?}", w.shape(), self.up.shape(), self.down.shape()) });
        }
        let delta = k::matmul_ex(&self.up.reshape(&[o, r])?, &self.down.reshape(&[r, fan_in])?, k::Matmul { alpha: self.scale, ..Default::default() })?;
        k::add(w, &delta.reshape(w.shape())?)
    }
}

/// W + scale B A on `tape` (W a constant) as (out, fan_in), from adapter tensors of any
/// layout of (r, fan_in) and (out, r).
pub(crate) fn merge_vars(tape: &Tape, w: &Tensor, vars: &LoraVars) -> Result<Var> {
    let r = vars.down.shape()[0];
    let o = w.shape()[0];
    let fan_in = vars.down.value.numel() / r;
    if w.numel() != o * fan_in || vars.up.value.numel() != o * r {
        return Err(Error::Shape { op: "lora merge", msg: format!("weight {:?} does not fit adapter up {:?} down {:?}", w.shape(), vars.up.shape(), vars.down.shape()) });
    }
    let up = super::reshape(&vars.up, &[o, r])?;
    let down = super::reshape(&vars.down, &[r, fan_in])?;
    let delta = super::matmul_ex(&up, &down, false, false, vars.scale, None)?;
    super::add(&tape.constant(w.reshape(&[o, fan_in])?), &delta)
}

/// linear(x, w, b) + scale * up(down(x)).
pub fn linear_lora(x: &Var, w: &Var, bias: Option<&Var>, lora: &LoraVars) -> Result<Var> {
    let base = linear(x, w, bias)?;
    let delta = linear(&linear(x, &lora.down, None)?, &lora.up, None)?;
    super::axpby(&base, 1.0, &delta, lora.scale)
}

/// VideoCrafter's temporal conv (x (B, C, F, H, W), w (O, C, 3, 1, 1)) plus scale * up(
/// temporal_conv(x, down)), as [`conv2d_lora`] on the (3, 1) conv it is; the adapter's
/// tensors in any layout of (r, C * 3) and (O, r).
pub fn temporal_conv_lora(x: &Var, w: &Var, bias: Option<&Var>, lora: &LoraVars) -> Result<Var> {
    let r = lora.down.shape()[0];
    super::ops::as_conv3x1("temporal_conv_lora", x, w.shape(), |x4, w4, geo| {
        let lora4 = LoraVars { down: super::reshape(&lora.down, &[r, w4[1], 3, 1])?, up: super::reshape(&lora.up, &[w4[0], r, 1, 1])?, scale: lora.scale };
        conv2d_lora(x4, &super::reshape(w, w4)?, bias, geo, &lora4)
    })
}

/// conv2d(x, w, b) + scale * conv1x1(conv2d(x, down), up).
pub fn conv2d_lora(x: &Var, w: &Var, bias: Option<&Var>, geo: Conv2d, lora: &LoraVars) -> Result<Var> {
    let base = conv2d(x, w, bias, geo)?;
    let delta = conv2d(&conv2d(x, &lora.down, None, geo)?, &lora.up, None, Conv2d::new(1, 0))?;
    super::axpby(&base, 1.0, &delta, lora.scale)
}
