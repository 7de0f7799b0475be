//! Layers shared by the models, loaded by checkpoint key (`{key}.weight`, `{key}.bias`)
//! with frozen weights put on the caller's tape as constants. Matrix weights (linear and
//! conv kernels) are [`Weight`]s: f32, or half precision where the loader keeps them so.

use std::sync::Arc;

use t2v_kernels::autograd::{self as ad, LoraVars, Var};
use t2v_kernels::ops::Conv2d as Geo;
use t2v_kernels::Tensor;

use super::weights::{Loader, Result, Weight, WeightsError};

/// A weight on `like`'s tape: a constant, or a trainable leaf when the tape trains.
pub fn konst(t: &Tensor, like: &Var) -> Var {
    like.tape().param(t)
}

/// Half-precision weights are frozen: a tape that trains every weight it meets is refused
/// rather than leaving them out unnoticed.
fn frozen(like: &Var) -> Result<()> {
    if like.tape().trains_every_param() {
        return Err(WeightsError::HalfTrained);
    }
    Ok(())
}

/// nn.Linear (weight (out, in)); also Conv1d with kernel 1 (weight (out, in, 1)).
pub struct Linear {
    pub w: Weight,
    pub b: Option<Tensor>,
}

impl Linear {
    pub fn load(l: &Loader, key: &str, inp: usize, out: usize, bias: bool) -> Result<Linear> {
        Ok(Linear { w: l.get_weight(&format!("{key}.weight"), &[out, inp])?, b: if bias { Some(l.get(&format!("{key}.bias"), &[out])?) } else { None } })
    }
    /// A Conv1d with kernel size 1 used as a linear map over channels.
    pub fn load_conv1x1(l: &Loader, key: &str, inp: usize, out: usize) -> Result<Linear> {
        let w = l.get_weight(&format!("{key}.weight"), &[out, inp, 1])?.reshape(&[out, inp])?;
        Ok(Linear { w, b: Some(l.get(&format!("{key}.bias"), &[out])?) })
    }
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let b = self.b.as_ref().map(|b| konst(b, x));
        Ok(match &self.w {
            // a LoRA adapter on the weight (training): W x + (alpha/r) B (A x), unmerged
            Weight::F32(w) => match x.tape().lora_of(w) {
                Some(l) => {
                    let (r, inp) = (l.down.shape()[0], w.shape()[1]);
                    let lora = LoraVars { down: ad::reshape(&l.down, &[r, inp])?, up: ad::reshape(&l.up, &[w.shape()[0], r])?, scale: l.scale };
                    ad::linear_lora(x, &x.tape().constant(w.clone()), b.as_ref(), &lora)?
                }
                None => ad::linear(x, &konst(w, x), b.as_ref())?,
            },
            Weight::Half(w) => {
                frozen(x)?;
                ad::linear_half(x, w, b.as_ref())?
            }
        })
    }
}

/// nn.Conv2d (weight (out, in, k, k)) with its geometry.
pub struct Conv {
    pub w: Weight,
    pub b: Tensor,
    pub geo: Geo,
}

impl Conv {
    pub fn load(l: &Loader, key: &str, cin: usize, cout: usize, k: usize, geo: Geo) -> Result<Conv> {
        Ok(Conv { w: l.get_weight(&format!("{key}.weight"), &[cout, cin, k, k])?, b: l.get(&format!("{key}.bias"), &[cout])?, geo })
    }
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let b = konst(&self.b, x);
        Ok(match &self.w {
            // a LoRA adapter: conv(x, W) + (alpha/r) conv1x1(conv(x, A), B), unmerged
            Weight::F32(w) => match x.tape().lora_of(w) {
                Some(l) => {
                    let s = w.shape();
                    let r = l.down.shape()[0];
                    let lora = LoraVars { down: ad::reshape(&l.down, &[r, s[1], s[2], s[3]])?, up: ad::reshape(&l.up, &[s[0], r, 1, 1])?, scale: l.scale };
                    ad::conv2d_lora(x, &x.tape().constant(w.clone()), Some(&b), self.geo, &lora)?
                }
                None => ad::conv2d(x, &konst(w, x), Some(&b), self.geo)?,
            },
            Weight::Half(w) => {
                frozen(x)?;
                ad::conv2d_half(x, w, Some(&b), self.geo)?
            }
        })
    }
}

/// nn.Conv3d with kernel (3, 1, 1), padding (1, 0, 0): VideoCrafter's temporal conv.
pub struct TemporalConv {
    pub w: Weight,
    pub b: Tensor,
}

impl TemporalConv {
    pub fn load(l: &Loader, key: &str, cin: usize, cout: usize) -> Result<TemporalConv> {
        Ok(TemporalConv { w: l.get_weight(&format!("{key}.weight"), &[cout, cin, 3, 1, 1])?, b: l.get(&format!("{key}.bias"), &[cout])? })
    }
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let b = konst(&self.b, x);
        Ok(match &self.w {
            // a LoRA adapter: beside the weight, as for the (3, 1) conv it is
            Weight::F32(w) => match x.tape().lora_of(w) {
                Some(l) => ad::temporal_conv_lora(x, &x.tape().constant(w.clone()), Some(&b), &l)?,
                None => ad::temporal_conv(x, &konst(w, x), Some(&b))?,
            },
            Weight::Half(w) => {
                frozen(x)?;
                ad::temporal_conv_half(x, w, Some(&b))?
            }
        })
    }
}

/// nn.GroupNorm (affine) with its group count and eps.
pub struct GroupNorm {
    pub g: Tensor,
    pub b: Tensor,
    pub groups: usize,
    pub eps: f32,
}

impl GroupNorm {
    pub fn load(l: &Loader, key: &str, c: usize, groups: usize, eps: f32) -> Result<GroupNorm> {
        Ok(GroupNorm { g: l.get(&format!("{key}.weight"), &[c])?, b: l.get(&format!("{key}.bias"), &[c])?, groups, eps })
    }
    /// Normalises x (N, C, ...) over each group of channels and everything after them;
    /// `silu` fuses the activation that follows in most blocks.
    pub fn forward(&self, x: &Var, silu: bool) -> Result<Var> {
        Ok(ad::group_norm(x, self.groups, Some(&konst(&self.g, x)), Some(&konst(&self.b, x)), self.eps, silu)?)
    }
}

/// nn.LayerNorm over the last axis.
pub struct LayerNorm {
    pub w: Tensor,
    pub b: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    pub fn load(l: &Loader, key: &str, n: usize, eps: f32) -> Result<LayerNorm> {
        Ok(LayerNorm { w: l.get(&format!("{key}.weight"), &[n])?, b: l.get(&format!("{key}.bias"), &[n])?, eps })
    }
    pub fn forward(&self, x: &Var) -> Result<Var> {
        Ok(ad::layer_norm(x, Some(&konst(&self.w, x)), Some(&konst(&self.b, x)), self.eps)?)
    }
}

/// A stack of blocks run in order on x. With `recompute`, each is a recomputation
/// checkpoint ([`ad::Tape::checkpoint_params`]): only its input is kept for the backward
/// pass, which runs the block again (a reward model's transformer layers under `train
/// --recompute`).
pub fn run_blocks<B, F>(x: Var, blocks: &[Arc<B>], recompute: bool, forward: F) -> Result<Var>
where
    B: Send + Sync + 'static,
    F: Fn(&B, &Var) -> Result<Var> + Clone + Send + 'static,
{
    let mut x = x;
    for b in blocks {
        x = if recompute {
            let (b, f) = (b.clone(), forward.clone());
            x.tape().clone().checkpoint_params(&[&x], move |v| Ok(f(&b, &v[0])?))?
        } else {
            forward(b, &x)?
        };
    }
    Ok(x)
}
