//! Optimisation: fused AdamW (`shaders/optim.wgsl`) with parameter groups, global
//! gradient-norm clipping computed on the GPU (no host round trip), a finiteness check,
//! and optimizer state saved and loaded as safetensors. Optionally with 8-bit states
//! (bitsandbytes' block-wise AdamW8bit, what T2V-Turbo's training scripts use): 2 bytes of
//! state per parameter instead of 8.

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
    /// 8-bit states for parameters of at least [`Q8_MIN_ELEMENTS`] elements (smaller ones
    /// keep f32 states, as in bitsandbytes).
    pub eight_bit: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2, eight_bit: false }
    }
}

/// Elements per quantisation block of the 8-bit states (one absmax each).
pub const Q8_BLOCK: usize = 256;
/// Parameters with fewer elements keep f32 states under [`AdamWConfig::eight_bit`].
pub const Q8_MIN_ELEMENTS: usize = 4096;

/// The 256 codes of bitsandbytes' dynamic quantisation map, ascending: `signed` (first
/// moments) spans [-1, 1], otherwise (second moments) [0, 1]. Exponent i = 0..7 covers
/// magnitudes 10^(i-6) * (0.1, 1] with 2^i (signed; 2^(i+1) unsigned) linearly spaced values
/// (midpoints of a linspace(0.1, 1) grid); plus 0 and 1.
pub fn dynamic_map(signed: bool) -> [f32; 256] {
    let mut codes = vec![0.0f64, 1.0];
    for i in 0..7 {
        let items = if signed { 1usize << i } else { 2usize << i };
        let scale = 10f64.powi(i - 6);
        for k in 0..items {
            let lo = 0.1 + 0.9 * k as f64 / items as f64;
            let hi = 0.1 + 0.9 * (k + 1) as f64 / items as f64;
            let v = scale * (lo + hi) / 2.0;
            codes.push(v);
            if signed {
                codes.push(-v);
            }
        }
    }
    codes.sort_by(f64::total_cmp);
    debug_assert_eq!(codes.len(), 256);
    let mut out = [0.0f32; 256];
    for (o, c) in out.iter_mut().zip(&codes) {
        *o = *c as f32;
    }
    out
}

/// Bytes of the moments of a parameter of `numel` elements (f32, or 8-bit codes padded to
/// whole blocks plus two f32 block maxima per block).
pub fn state_bytes(numel: usize, eight_bit: bool) -> u64 {
    match q8_blocks(numel, eight_bit) {
        None => 8 * numel as u64,
        Some(blocks) => blocks as u64 * (2 * Q8_BLOCK as u64 + 8),
    }
}

/// The quantisation blocks of a parameter of `numel` elements whose moments are 8-bit;
/// None where they are f32.
fn q8_blocks(numel: usize, eight_bit: bool) -> Option<usize> {
    (eight_bit && numel >= Q8_MIN_ELEMENTS).then(|| numel.div_ceil(Q8_BLOCK))
}

/// One parameter's moments: f32, or 8-bit codes (four per u32 word, 64 words per block)
/// with per-block absmax ([2 * blocks]: the first moments' then the second's).
enum State {
    F32 { m: Tensor, v: Tensor },
    Q8 { m: Tensor, v: Tensor, absmax: Tensor },
}

impl State {
    fn zeros(p: &Tensor, eight_bit: bool, zero_code: u8) -> Result<State> {
        let gpu = p.gpu();
        let Some(blocks) = q8_blocks(p.numel(), eight_bit) else {
            return Ok(State::F32 { m: Tensor::zeros(gpu, p.shape())?, v: Tensor::zeros(gpu, p.shape())? });
        };
        let words = blocks * Q8_BLOCK / 4;
        // m: the signed map's 0 in every byte; v: code 0 is the unsigned map's 0
        let m = Tensor::from_u32(gpu, &[words], &vec![u32::from_ne_bytes([zero_code; 4]); words])?;
        let v = Tensor::from_u32(gpu, &[words], &vec![0; words])?;
        Ok(State::Q8 { m, v, absmax: Tensor::full(gpu, &[2 * blocks], 1.0)? })
    }
}

/// A group of parameters sharing a learning-rate scale and weight decay.
pub struct ParamGroup {
    pub params: Vec<Tensor>,
    /// Multiplies the optimizer's learning rate.
    pub lr_scale: f32,
    /// Overrides the optimizer's weight decay.
    pub weight_decay: Option<f32>,
    /// Whether the group's gradients count in the global norm of [`AdamW::step`]'s clipping
    /// and are scaled by it (false: used as they are, like parameters left out of
    /// torch.nn.utils.clip_grad_norm_).
    pub clipped: bool,
}

/// What one step measured (lazily: nothing is read back unless asked).
#[derive(Debug)]
pub struct StepInfo {
    /// The global norm of the clipped groups' gradients before clipping, shape `[1]`.
    pub grad_norm: Tensor,
    /// The same over the groups outside the clipping (None when there are none).
    pub unclipped_norm: Option<Tensor>,
}

/// AdamW over parameter groups; updates the parameter tensors in place.
pub struct AdamW {
    pub config: AdamWConfig,
    groups: Vec<ParamGroup>,
    /// The moments of each parameter, created on the first step.
    state: Vec<State>,
    /// The signed then the unsigned [`dynamic_map`] (8-bit states), created with them.
    codes: Option<Tensor>,
    step: u64,
}

fn opt_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Optim(msg.into()))
}

impl AdamW {
    pub fn new(config: AdamWConfig, groups: Vec<ParamGroup>) -> AdamW {
        AdamW { config, groups, state: Vec::new(), codes: None, step: 0 }
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
    /// `max_norm`, the gradients of the [`ParamGroup::clipped`] groups are scaled by
    /// min(1, max_norm / (||g|| + 1e-6)) like torch.nn.utils.clip_grad_norm_ over their
    /// parameters, the norm being computed on the GPU.
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
        // which gradients the clipping reads and scales
        let clipped: Vec<bool> = self.groups.iter().flat_map(|g| std::iter::repeat_n(g.clipped, g.params.len())).collect();
        let pick = |on: bool| grads.iter().zip(&clipped).filter(|(_, &c)| c == on).map(|(g, _)| g.clone()).collect::<Vec<_>>();
        let (inside, outside) = (pick(true), pick(false));
        let grad_norm = if inside.is_empty() { Tensor::zeros(&gpu, &[1])? } else { global_norm(&inside)? };
        let unclipped_norm = if outside.is_empty() { None } else { Some(global_norm(&outside)?) };
        let one = Tensor::full(&gpu, &[1], 1.0)?;
        let clip = match max_norm {
            Some(mx) => {
                // min(1, max / (norm + 1e-6))
                let coef = ops::scale(&ops::recip(&ops::affine(&grad_norm, 1.0, 1e-6)?)?, mx)?;
                ops::minimum(&coef, &one)?
            }
            None => one.clone(),
        };
        if self.state.is_empty() {
            self.state = self.zero_state()?;
        }
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let mut k = 0;
        for group in &self.groups {
            let wd = group.weight_decay.unwrap_or(c.weight_decay);
            let clip = if group.clipped { &clip } else { &one };
            for p in &group.params {
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
                match &self.state[k] {
                    _ if p.numel() == 0 => {}
                    State::F32 { m, v } => launch(&gpu, &OPTIM, "adamw", &[], bytemuck::bytes_of(&prm), &[p, &grads[k], m, v, clip], fold_groups(&gpu, p.numel(), 256))?,
                    State::Q8 { m, v, absmax } => {
                        let codes = self.codes.as_ref().expect("created with the 8-bit states");
                        let blocks = p.numel().div_ceil(Q8_BLOCK);
                        ops::launch_at(&gpu, &OPTIM, "adamw8bit", &[], bytemuck::bytes_of(&prm), 8, &[p, &grads[k], m, v, absmax, clip, codes], fold_groups(&gpu, blocks, 1))?
                    }
                }
                k += 1;
            }
        }
        Ok(StepInfo { grad_norm, unclipped_norm })
    }

    /// Bytes the moments take on the device (0 before the first step).
    pub fn state_bytes(&self) -> u64 {
        let b = |t: &Tensor| 4 * t.numel() as u64;
        self.state
            .iter()
            .map(|s| match s {
                State::F32 { m, v } => b(m) + b(v),
                State::Q8 { m, v, absmax } => b(m) + b(v) + b(absmax),
            })
            .sum()
    }

    /// Zero moments for every parameter.
    fn zero_state(&mut self) -> Result<Vec<State>> {
        let params: Vec<Tensor> = self.params().cloned().collect();
        self.upload_codes()?;
        let zero_code = dynamic_map(true).iter().position(|&c| c == 0.0).expect("the map holds 0") as u8;
        params.iter().map(|p| State::zeros(p, self.config.eight_bit, zero_code)).collect()
    }

    /// The code table of 8-bit moments on the device, once.
    fn upload_codes(&mut self) -> Result<()> {
        let Some(first) = self.params().next() else { return Ok(()) };
        if self.config.eight_bit && self.codes.is_none() {
            let both: Vec<f32> = dynamic_map(true).iter().chain(dynamic_map(false).iter()).copied().collect();
            self.codes = Some(Tensor::from_slice(first.gpu(), &[512], &both)?);
        }
        Ok(())
    }

    /// Writes step count, hyper-parameters and every parameter's moments (f32, or 8-bit
    /// codes with their block maxima) to a safetensors file, atomically (a temporary file
    /// renamed over the target), streamed from the device.
    pub fn save(&self, path: &Path) -> Result<()> {
        // (name, dtype, tensor) of every state tensor
        let mut named: Vec<(String, safetensors::Dtype, &Tensor)> = Vec::new();
        for (i, s) in self.state.iter().enumerate() {
            match s {
                State::F32 { m, v } => {
                    named.push((format!("{i}.exp_avg"), safetensors::Dtype::F32, m));
                    named.push((format!("{i}.exp_avg_sq"), safetensors::Dtype::F32, v));
                }
                State::Q8 { m, v, absmax } => {
                    named.push((format!("{i}.exp_avg.q8"), safetensors::Dtype::U32, m));
                    named.push((format!("{i}.exp_avg_sq.q8"), safetensors::Dtype::U32, v));
                    named.push((format!("{i}.absmax"), safetensors::Dtype::F32, absmax));
                }
            }
        }
        let c = self.config;
        let meta: Vec<(String, String)> = [
            ("format", "t2v-turbo adamw".to_string()),
            ("step", self.step.to_string()),
            ("params", self.params().count().to_string()),
            ("lr", c.lr.to_string()),
            ("beta1", c.beta1.to_string()),
            ("beta2", c.beta2.to_string()),
            ("eps", c.eps.to_string()),
            ("weight_decay", c.weight_decay.to_string()),
            ("state_bits", if c.eight_bit { "8" } else { "32" }.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        // streamed: the host holds one staging buffer's worth of the state at a time
        let entries: Vec<crate::io::SafetensorsEntry> = named.iter().map(|(n, dtype, t)| (n.clone(), *dtype, t.shape().to_vec())).collect();
        crate::io::write_safetensors(path, &entries, &meta, |w| {
            Tensor::read_each_bytes(&named.iter().map(|n| n.2).collect::<Vec<_>>(), |_, bytes| w.write_all(&bytes).map_err(|e| Error::Io { path: path.display().to_string(), msg: e.to_string() }))
        })
    }

    /// Restores the state written by [`AdamW::save`] (same parameters, same order).
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let bytes = crate::io::map_file(path)?;
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
        // absent: written before 8-bit states existed
        let bits = meta.get("state_bits").map_or("32", String::as_str);
        let want = if self.config.eight_bit { "8" } else { "32" };
        if bits != want {
            return Err(bad(format!("the state was saved with {bits}-bit moments, this optimizer keeps {want}-bit ones")));
        }
        // every parameter's tensors, of the layout its state has (see State)
        let mut state = Vec::new();
        for (i, p) in params.iter().enumerate() {
            let read = |name: String, shape: &[usize], dtype: safetensors::Dtype| -> Result<Tensor> {
                let t = st.tensor(&name).map_err(|e| bad(format!("{name}: {e}")))?;
                if t.shape() != shape || t.dtype() != dtype {
                    return Err(bad(format!("{name} is {:?} {:?}, expected {dtype:?} {shape:?} for parameter {i} {:?}", t.dtype(), t.shape(), p.shape())));
                }
                match dtype {
                    safetensors::Dtype::U32 => Tensor::from_u32(p.gpu(), shape, &bytemuck::pod_collect_to_vec::<u8, u32>(t.data())),
                    _ => Tensor::from_slice(p.gpu(), shape, &bytemuck::pod_collect_to_vec::<u8, f32>(t.data())),
                }
            };
            let (float, word) = (safetensors::Dtype::F32, safetensors::Dtype::U32);
            state.push(match q8_blocks(p.numel(), self.config.eight_bit) {
                None => State::F32 { m: read(format!("{i}.exp_avg"), p.shape(), float)?, v: read(format!("{i}.exp_avg_sq"), p.shape(), float)? },
                Some(blocks) => {
                    let words = [blocks * Q8_BLOCK / 4];
                    State::Q8 { m: read(format!("{i}.exp_avg.q8"), &words, word)?, v: read(format!("{i}.exp_avg_sq.q8"), &words, word)?, absmax: read(format!("{i}.absmax"), &[2 * blocks], float)? }
                }
            });
        }
        self.upload_codes()?;
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
