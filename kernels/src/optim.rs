//! Optimisation: fused AdamW (`shaders/optim.wgsl`) with parameter groups, global
//! gradient-norm clipping computed on the GPU (no host round trip), a finiteness check,
//! and optimizer state saved and loaded as safetensors.

use std::collections::HashMap;
use std::path::Path;

use bytemuck::{Pod, Zeroable};

use crate::ops::{self, fold_groups, launch};
use crate::shaders::OPTIM;
use crate::{Error, Result, Tensor};

/// Elements per partial sum of [`global_norm`] (SQ_CHUNK in optim.wgsl).
const SQ_CHUNK: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _pad: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bc1: f32,
    bc2_sqrt: f32,
    _p: [u32; 3],
}

/// AdamW hyper-parameters (PyTorch's defaults except the learning rate, which is
/// T2V-Turbo's 1e-5).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

/// A group of parameters sharing a learning-rate scale and weight decay.
pub struct ParamGroup {
    pub params: Vec<Tensor>,
    /// Multiplies the optimizer's learning rate.
    pub lr_scale: f32,
    /// Overrides the optimizer's weight decay.
    pub weight_decay: Option<f32>,
}

/// What one step measured (lazily: nothing is read back unless asked).
#[derive(Debug)]
pub struct StepInfo {
    /// The global gradient norm before clipping, shape `[1]`.
    pub grad_norm: Tensor,
}

/// AdamW over parameter groups; updates the parameter tensors in place.
pub struct AdamW {
    pub config: AdamWConfig,
    groups: Vec<ParamGroup>,
    /// (m, v) per parameter, created on the first step.
    state: Vec<(Tensor, Tensor)>,
    step: u64,
}

fn opt_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Optim(msg.into()))
}

impl AdamW {
    pub fn new(config: AdamWConfig, groups: Vec<ParamGroup>) -> AdamW {
        AdamW { config, groups, state: Vec::new(), step: 0 }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// All parameters, group by group (the order `grads` follow in [`AdamW::step`]).
    pub fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.groups.iter().flat_map(|g| g.params.iter())
    }

    /// One update from `grads` (one per parameter, same order and shapes). With
    /// `max_norm`, gradients are scaled by min(1, max_norm / (||g|| + 1e-6)) like
    /// torch.nn.utils.clip_grad_norm_, the norm being computed on the GPU.
    pub fn step(&mut self, grads: &[Tensor], max_norm: Option<f32>) -> Result<StepInfo> {
        let n_params = self.params().count();
        if grads.len() != n_params {
            return opt_err(format!("{} gradients for {n_params} parameters", grads.len()));
        }
        for (i, (p, g)) in self.params().zip(grads).enumerate() {
            if p.shape() != g.shape() {
                return opt_err(format!("gradient {i} has shape {:?}, parameter {:?}", g.shape(), p.shape()));
            }
        }
        let Some(first) = grads.first() else {
            return opt_err("no parameters to optimise");
        };
        let gpu = first.gpu().clone();
        let grad_norm = global_norm(grads)?;
        let clip = match max_norm {
            Some(mx) => {
                // min(1, max / (norm + 1e-6))
                let coef = ops::scale(&ops::recip(&ops::affine(&grad_norm, 1.0, 1e-6)?)?, mx)?;
                ops::minimum(&coef, &Tensor::full(&gpu, &[1], 1.0)?)?
            }
            None => Tensor::full(&gpu, &[1], 1.0)?,
        };
        if self.state.is_empty() {
            for p in self.groups.iter().flat_map(|g| g.params.iter()) {
                self.state.push((Tensor::zeros(&gpu, p.shape())?, Tensor::zeros(&gpu, p.shape())?));
            }
        }
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let mut k = 0;
        for group in &self.groups {
            let wd = group.weight_decay.unwrap_or(c.weight_decay);
            for p in &group.params {
                let (m, v) = &self.state[k];
                let prm = Params {
                    n: p.numel() as u32,
                    _pad: 0,
                    lr: c.lr * group.lr_scale,
                    beta1: c.beta1,
                    beta2: c.beta2,
                    eps: c.eps,
                    weight_decay: wd,
                    bc1: 1.0 - c.beta1.powi(t),
                    bc2_sqrt: (1.0 - c.beta2.powi(t)).sqrt(),
                    _p: [0; 3],
                };
                if p.numel() > 0 {
                    launch(&gpu, &OPTIM, "adamw", &[], bytemuck::bytes_of(&prm), &[p, &grads[k], m, v, &clip], fold_groups(&gpu, p.numel(), 256))?;
                }
                k += 1;
            }
        }
        Ok(StepInfo { grad_norm })
    }

    /// Writes step count, hyper-parameters and every (m, v) to a safetensors file,
    /// atomically (a temporary file renamed over the target).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut host = Vec::new();
        for (i, (m, v)) in self.state.iter().enumerate() {
            host.push((format!("{i}.exp_avg"), m.shape().to_vec(), m.to_vec()?));
            host.push((format!("{i}.exp_avg_sq"), v.shape().to_vec(), v.to_vec()?));
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = host
            .iter()
            .map(|(n, s, d)| {
                let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), bytemuck::cast_slice(d))
                    .map_err(|e| Error::Optim(format!("{n}: {e}")))?;
                Ok((n.clone(), view))
            })
            .collect::<Result<_>>()?;
        let c = self.config;
        let meta: HashMap<String, String> = [
            ("format", "t2v-turbo adamw".to_string()),
            ("step", self.step.to_string()),
            ("params", self.params().count().to_string()),
            ("lr", c.lr.to_string()),
            ("beta1", c.beta1.to_string()),
            ("beta2", c.beta2.to_string()),
            ("eps", c.eps.to_string()),
            ("weight_decay", c.weight_decay.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Optim(e.to_string()))?;
        crate::io::write_atomic(path, &bytes)
    }

    /// Restores the state written by [`AdamW::save`] (same parameters, same order).
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.display().to_string(), msg: e.to_string() })?;
        let bad = |msg: String| Error::Optim(format!("{}: {msg}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some("t2v-turbo adamw") {
            return Err(bad("not a t2v-turbo optimizer state".into()));
        }
        let get = |k: &str| meta.get(k).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| bad(format!("metadata {k} missing")));
        let (step, n) = (get("step")?, get("params")? as usize);
        let params: Vec<Tensor> = self.params().cloned().collect();
        if n != params.len() {
            return Err(bad(format!("state for {n} parameters, optimizer has {}", params.len())));
        }
        let mut state = Vec::new();
        for (i, p) in params.iter().enumerate() {
            let mut pair = Vec::new();
            for kind in ["exp_avg", "exp_avg_sq"] {
                let name = format!("{i}.{kind}");
                let t = st.tensor(&name).map_err(|e| bad(format!("{name}: {e}")))?;
                if t.shape() != p.shape() || t.dtype() != safetensors::Dtype::F32 {
                    return Err(bad(format!("{name} is {:?} {:?}, parameter is {:?} F32", t.dtype(), t.shape(), p.shape())));
                }
                let data: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
                pair.push(Tensor::from_slice(p.gpu(), p.shape(), &data)?);
            }
            let v = pair.pop().expect("two");
            let m = pair.pop().expect("two");
            state.push((m, v));
        }
        self.state = state;
        self.step = step;
        Ok(())
    }
}

/// sqrt(sum of squares of all tensors), shape `[1]`, computed on the GPU.
pub fn global_norm(ts: &[Tensor]) -> Result<Tensor> {
    let Some(first) = ts.first() else {
        return opt_err("global norm of no tensors");
    };
    let gpu = first.gpu();
    // one partial sum of squares per SQ_CHUNK elements of each tensor (optim.wgsl)
    let slots: Vec<usize> = ts.iter().map(|t| t.numel().div_ceil(SQ_CHUNK)).collect();
    let total: usize = slots.iter().sum();
    if total == 0 {
        return Tensor::zeros(gpu, &[1]);
    }
    let partials = Tensor::empty(gpu, &[total], crate::DType::F32, "global norm partials")?;
    let mut at = 0;
    for (t, &n) in ts.iter().zip(&slots) {
        if n > 0 {
            let prm = Params { n: t.numel() as u32, _pad: at as u32, lr: 0.0, beta1: 0.0, beta2: 0.0, eps: 0.0, weight_decay: 0.0, bc1: 0.0, bc2_sqrt: 0.0, _p: [0; 3] };
            ops::launch_at(gpu, &OPTIM, "sumsq", &[], bytemuck::bytes_of(&prm), 6, &[t, &partials], fold_groups(gpu, n, 1))?;
        }
        at += n;
    }
    ops::sqrt(&ops::sum(&partials, 0)?.reshape(&[1])?)
}

/// Ok if every element of every tensor is finite; else an error naming the first bad one.
/// One readback for all tensors (a sync point: call it where a step ends anyway).
pub fn check_finite(named: &[(&str, &Tensor)]) -> Result<()> {
    // sum(x * 0) is 0 for finite x and NaN if any element is NaN or infinite
    let mut probes = Vec::new();
    let mut names = Vec::new();
    for (name, t) in named {
        if t.numel() > 0 {
            probes.push(ops::sum(&ops::scale(&t.reshape(&[t.numel()])?, 0.0)?, 0)?.reshape(&[1])?);
            names.push(*name);
        }
    }
    if probes.is_empty() {
        return Ok(());
    }
    let refs: Vec<&Tensor> = probes.iter().collect();
    let values = ops::concat(&refs, 0)?.to_vec()?;
    match values.iter().position(|v| !v.is_finite() || *v != 0.0) {
        Some(i) => Err(Error::NonFinite { what: names[i].to_string() }),
        None => Ok(()),
    }
}
