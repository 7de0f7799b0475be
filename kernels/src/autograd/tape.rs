//! The tape, tracked values and gradients.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::{ops, Error, Result, Tensor};

/// Maps the output gradient to one gradient per input (None where not needed); `needs[i]`
/// says whether input i wants a gradient, so unneeded work can be skipped.
pub(crate) type Backward = Box<dyn FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send>;

struct Node {
    inputs: Vec<usize>,
    backward: Option<Backward>,
}

impl Inner {
    fn log_param(&mut self, value: &Tensor) {
        if let Some((seen, log)) = self.param_log.as_mut() {
            if seen.insert(value.storage_id()) {
                log.push(value.clone());
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    nodes: Vec<Node>,
    recording: bool,
    consumed: bool,
    /// With `trainable`, [`Tape::param`] gives one leaf per weight buffer.
    trainable: bool,
    params: HashMap<usize, usize>,
    /// With `trainable`: only these weight buffers become leaves (None: all).
    only: Option<std::collections::HashSet<usize>>,
    /// When Some: every weight [`Tape::param`] or [`Tape::lora_of`] is asked for, once
    /// each (see [`Tape::checkpoint_params`]).
    param_log: Option<(std::collections::HashSet<usize>, Vec<Tensor>)>,
    /// Weight buffer -> its LoRA adapter ([`Tape::attach_lora`]) and, once a reader that
    /// does not apply adapters asked [`Tape::param`] for it, the merged weight.
    adapters: HashMap<usize, (super::LoraVars, Option<Var>)>,
}

/// A recording of differentiable ops. Cheap to clone (shared).
#[derive(Clone)]
pub struct Tape(Arc<Mutex<Inner>>);

impl Default for Tape {
    fn default() -> Self {
        Tape::new()
    }
}

/// A tensor on a tape: tracked (it has a node and may receive a gradient) or constant.
#[derive(Clone)]
pub struct Var {
    pub(crate) value: Tensor,
    pub(crate) node: Option<usize>,
    pub(crate) tape: Tape,
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Var({:?}, node {:?})", self.value.shape(), self.node)
    }
}

/// Gradients of the leaves reached by one backward pass.
#[derive(Debug)]
pub struct Grads {
    map: HashMap<usize, Tensor>,
}

impl Grads {
    /// The gradient of `v` (None if `v` is no leaf or got no gradient).
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        v.node.and_then(|n| self.map.get(&n))
    }
    /// Moves the gradient of `v` out.
    pub fn take(&mut self, v: &Var) -> Option<Tensor> {
        v.node.and_then(|n| self.map.remove(&n))
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn ad_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Autograd(msg.into()))
}

impl Tape {
    pub fn new() -> Tape {
        Tape(Arc::new(Mutex::new(Inner { recording: true, ..Default::default() })))
    }

    /// A tracked leaf: a parameter, or an input whose gradient is wanted.
    pub fn leaf(&self, value: Tensor) -> Var {
        let mut t = self.0.lock().unwrap();
        t.nodes.push(Node { inputs: vec![], backward: None });
        Var { value, node: Some(t.nodes.len() - 1), tape: self.clone() }
    }

    /// An untracked value (data, targets, frozen weights).
    pub fn constant(&self, value: Tensor) -> Var {
        Var { value, node: None, tape: self.clone() }
    }

    /// Makes [`Tape::param`] return tracked leaves (training) instead of constants.
    pub fn set_trainable(&self, on: bool) {
        let mut t = self.0.lock().unwrap();
        t.trainable = on;
        t.only = None;
    }

    /// Makes [`Tape::param`] return tracked leaves for these weights only; every other
    /// weight stays a constant (frozen models sharing the tape cost no weight gradients).
    pub fn train_only(&self, weights: &[Tensor]) {
        let mut t = self.0.lock().unwrap();
        t.trainable = true;
        t.only = Some(weights.iter().map(|w| w.storage_id()).collect());
    }

    /// A model weight on this tape: a constant, or with [`Tape::set_trainable`] the one
    /// leaf of this weight's buffer (the same leaf each time it is used, whatever view).
    pub fn param(&self, value: &Tensor) -> Var {
        let mut t = self.0.lock().unwrap();
        t.log_param(value);
        if let Some((lora, merged)) = t.adapters.get(&value.storage_id()).cloned() {
            drop(t);
            // a reader that does not apply the adapter itself gets W + (alpha/r) B A, made
            // once per tape (shapes were checked in `attach_lora`)
            let merged = match merged {
                Some(m) => m,
                None => {
                    let m = super::lora::merge_vars(self, value, &lora).expect("adapter fits its weight");
                    self.0.lock().unwrap().adapters.insert(value.storage_id(), (lora, Some(m.clone())));
                    m
                }
            };
            return super::reshape(&merged, value.shape()).expect("merged weight has the weight's size");
        }
        let key = value.storage_id();
        if !t.trainable || t.only.as_ref().is_some_and(|o| !o.contains(&key)) {
            drop(t);
            return self.constant(value.clone());
        }
        let node = match t.params.get(&key) {
            Some(&id) => id,
            None => {
                t.nodes.push(Node { inputs: vec![], backward: None });
                let id = t.nodes.len() - 1;
                t.params.insert(key, id);
                id
            }
        };
        Var { value: value.clone(), node: Some(node), tape: self.clone() }
    }

    /// Puts LoRA adapter `lora` (down (r, fan_in), up (out, r), any layout of those sizes)
    /// on `weight` (out, ...): layers that apply adapters next to the weight
    /// ([`Tape::lora_of`], [`super::linear_lora`], [`super::conv2d_lora`]) never form the
    /// merged weight; any other reader of the weight through [`Tape::param`] gets W +
    /// (alpha/r) B A, merged once.
    pub fn attach_lora(&self, weight: &Tensor, lora: super::LoraVars) -> Result<()> {
        let (r, o) = (lora.down.shape()[0], weight.shape()[0]);
        if lora.up.value.numel() != o * r || lora.down.value.numel() * o != weight.numel() * r {
            return ad_err(format!("an adapter with down {:?} and up {:?} does not fit a weight {:?}", lora.down.shape(), lora.up.shape(), weight.shape()));
        }
        self.0.lock().unwrap().adapters.insert(weight.storage_id(), (lora, None));
        Ok(())
    }

    /// The LoRA adapter [`Tape::attach_lora`] put on `weight`, if any.
    pub fn lora_of(&self, weight: &Tensor) -> Option<super::LoraVars> {
        let mut t = self.0.lock().unwrap();
        t.log_param(weight);
        t.adapters.get(&weight.storage_id()).map(|(l, _)| l.clone())
    }

    /// Puts adapter `(down, up)` values on `weight`'s buffer of this tape, each a leaf
    /// where `track` says so (else a constant): a checkpointed block's runs apply the
    /// adapters of the tape it was recorded on.
    fn attach_values(&self, weight: usize, lora: &super::LoraVars, track: [bool; 2]) -> super::LoraVars {
        let put = |v: &Var, leaf: bool| if leaf { self.leaf(v.value.clone()) } else { self.constant(v.value.clone()) };
        let vars = super::LoraVars { down: put(&lora.down, track[0]), up: put(&lora.up, track[1]), scale: lora.scale };
        self.0.lock().unwrap().adapters.insert(weight, (vars.clone(), None));
        vars
    }

    /// The leaf of a weight made by [`Tape::param`], if it was used on this tape.
    pub fn param_var(&self, value: &Tensor) -> Option<Var> {
        let t = self.0.lock().unwrap();
        t.params.get(&value.storage_id()).map(|&id| Var { value: value.clone(), node: Some(id), tape: self.clone() })
    }

    /// The gradient of a weight used through [`Tape::param`], in the weight's own shape
    /// (a layer may have used a reshaped view of it); None if it got no gradient.
    pub fn param_grad(&self, grads: &Grads, value: &Tensor) -> Result<Option<Tensor>> {
        match self.param_var(value).as_ref().and_then(|v| grads.get(v)) {
            Some(g) => Ok(Some(g.reshape(value.shape())?)),
            None => Ok(None),
        }
    }

    /// Does [`Tape::param`] make every weight it is given trainable ([`Tape::set_trainable`]
    /// without [`Tape::train_only`])? Weights that cannot be trained (kept in half
    /// precision) refuse such a tape instead of staying frozen unnoticed.
    pub fn trains_every_param(&self) -> bool {
        let t = self.0.lock().unwrap();
        t.trainable && t.only.is_none()
    }

    pub fn is_recording(&self) -> bool {
        self.0.lock().unwrap().recording
    }

    /// Runs `f` without recording: ops inside give untracked results.
    pub fn no_grad<T>(&self, f: impl FnOnce() -> T) -> T {
        let before = std::mem::replace(&mut self.0.lock().unwrap().recording, false);
        let out = f();
        self.0.lock().unwrap().recording = before;
        out
    }

    /// Number of recorded nodes (leaves included).
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().nodes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records an op with output `value` computed from `inputs`; returns an untracked Var
    /// when nothing needs a gradient.
    pub(crate) fn record(&self, value: Tensor, inputs: &[&Var], backward: Backward) -> Result<Var> {
        for v in inputs {
            if !Arc::ptr_eq(&v.tape.0, &self.0) {
                return ad_err("an op mixes values of two different tapes");
            }
        }
        let mut t = self.0.lock().unwrap();
        let tracked = inputs.iter().any(|v| v.node.is_some());
        if !t.recording || !tracked {
            drop(t);
            return Ok(Var { value, node: None, tape: self.clone() });
        }
        if t.consumed {
            return ad_err("this tape's backward pass already ran; record on a new tape");
        }
        // Untracked inputs get usize::MAX: no gradient flows to them.
        let ids = inputs.iter().map(|v| v.node.unwrap_or(usize::MAX)).collect();
        t.nodes.push(Node { inputs: ids, backward: Some(backward) });
        let id = t.nodes.len() - 1;
        drop(t);
        Ok(Var { value, node: Some(id), tape: self.clone() })
    }

    /// Gradients of the scalar `loss` (one element) with respect to every leaf it depends on.
    pub fn backward(&self, loss: &Var) -> Result<Grads> {
        if loss.value.numel() != 1 {
            return ad_err(format!(
                "backward needs a scalar loss, got shape {:?}; use backward_with and a seed gradient",
                loss.value.shape()
            ));
        }
        let seed = Tensor::full(loss.value.gpu(), loss.value.shape(), 1.0)?;
        self.backward_with(loss, seed)
    }

    /// Backward pass from `out` with the given output gradient `seed` (same shape).
    /// Consumes the tape: a second backward is an error.
    pub fn backward_with(&self, out: &Var, seed: Tensor) -> Result<Grads> {
        let Some(root) = out.node else {
            return ad_err("backward of a value that does not require grad (constant, detached, or made under no_grad)");
        };
        if seed.shape() != out.value.shape() {
            return ad_err(format!("seed gradient {:?} does not match output {:?}", seed.shape(), out.value.shape()));
        }
        let mut nodes = {
            let mut t = self.0.lock().unwrap();
            if t.consumed {
                return ad_err("backward called twice on one tape (its records were freed by the first)");
            }
            t.consumed = true;
            std::mem::take(&mut t.nodes)
        };
        // Which nodes lie on a path to the root (and so need gradients)?
        let mut live = vec![false; root + 1];
        live[root] = true;
        for i in (0..=root).rev() {
            if live[i] {
                for &j in &nodes[i].inputs {
                    if j != usize::MAX {
                        live[j] = true;
                    }
                }
            }
        }
        let mut grads: HashMap<usize, Tensor> = HashMap::new();
        grads.insert(root, seed);
        let mut leaves = HashMap::new();
        for i in (0..=root).rev() {
            let Some(g) = grads.remove(&i) else { continue };
            let node = &mut nodes[i];
            let Some(bw) = node.backward.take() else {
                leaves.insert(i, g);
                continue;
            };
            let needs: Vec<bool> = node.inputs.iter().map(|&j| j != usize::MAX && live[j]).collect();
            let input_grads = bw(&g, &needs)?;
            for (k, gi) in input_grads.into_iter().enumerate() {
                let (Some(gi), true) = (gi, needs[k]) else { continue };
                let j = node.inputs[k];
                let acc = match grads.remove(&j) {
                    // in place when this accumulator is ours alone (no new buffer)
                    Some(prev) if prev.owns_buffer() && prev.shape() == gi.shape() => {
                        ops::add_assign(&prev, &gi)?;
                        prev
                    }
                    Some(prev) => ops::add(&prev, &gi)?,
                    None => gi,
                };
                grads.insert(j, acc);
            }
        }
        Ok(Grads { map: leaves })
    }

    /// Gradient checkpointing: runs `block` on `inputs` without keeping its intermediate
    /// values, and re-runs it during the backward pass to get the gradients. Pass every
    /// tracked value the block uses (its parameters too) in `inputs`; `block` receives them
    /// as Vars of a private tape and must be deterministic. Both runs of the block happen in
    /// the device's [`crate::Gpu::memory_lean`] scope (e.g. fused attention on CPU adapters).
    pub fn checkpoint<F>(&self, inputs: &[&Var], block: F) -> Result<Var>
    where
        F: Fn(&[Var]) -> Result<Var> + Send + 'static,
    {
        let inner = Tape::new();
        let detached: Vec<Var> = inputs.iter().map(|v| inner.constant(v.value.clone())).collect();
        let out = memory_lean(inputs.first().map(|v| &v.value), || inner.no_grad(|| block(&detached)))?;
        let saved: Vec<Tensor> = inputs.iter().map(|v| v.value.clone()).collect();
        self.record(
            out.value.clone(),
            inputs,
            Box::new(move |g, needs| memory_lean(saved.first(), || {
                let sub = Tape::new();
                let vars: Vec<Var> = saved
                    .iter()
                    .zip(needs)
                    .map(|(t, &n)| if n { sub.leaf(t.clone()) } else { sub.constant(t.clone()) })
                    .collect();
                let y = block(&vars)?;
                if y.node.is_none() {
                    return Ok(vec![None; vars.len()]);
                }
                let grads = sub.backward_with(&y, g.clone())?;
                Ok(vars.iter().map(|v| grads.get(v).cloned()).collect())
            })),
        )
    }
}

impl Tape {
    /// [`Tape::checkpoint`] for blocks of a model whose weights are read through
    /// [`Tape::param`] (so they need not be passed in): a first run finds the weights the
    /// block asks for, and those this tape trains get their gradients from the recomputed
    /// block, as do the LoRA adapters ([`Tape::attach_lora`]) on the weights it reads. When
    /// nothing can need a gradient, the block simply runs on this tape.
    pub fn checkpoint_params<F>(&self, inputs: &[&Var], block: F) -> Result<Var>
    where
        F: Fn(&[Var]) -> Result<Var> + Send + 'static,
    {
        let (trainable, only, adapters, recording) = {
            let t = self.0.lock().unwrap();
            let adapters: Vec<(usize, super::LoraVars)> = t.adapters.iter().map(|(&k, (l, _))| (k, l.clone())).collect();
            (t.trainable, t.only.clone(), adapters, t.recording)
        };
        if !recording || (!trainable && adapters.is_empty() && inputs.iter().all(|v| v.node.is_none())) {
            return block(&inputs.iter().map(|v| (*v).clone()).collect::<Vec<_>>());
        }
        let inner = Tape::new();
        inner.0.lock().unwrap().param_log = Some(Default::default());
        for (w, l) in &adapters {
            inner.attach_values(*w, l, [false, false]);
        }
        let detached: Vec<Var> = inputs.iter().map(|v| inner.constant(v.value.clone())).collect();
        let out = memory_lean(inputs.first().map(|v| &v.value), || inner.no_grad(|| block(&detached)))?;
        let used = inner.0.lock().unwrap().param_log.take().map(|(_, l)| l).unwrap_or_default();
        // the adapters on weights the block read: their (down, up) become the node's inputs
        let adapted: Vec<(usize, super::LoraVars)> =
            used.iter().filter_map(|w| adapters.iter().find(|(k, _)| *k == w.storage_id()).cloned()).collect();
        let trained: Vec<Tensor> = if trainable { used.into_iter().filter(|w| only.as_ref().is_none_or(|o| o.contains(&w.storage_id()))).collect() } else { vec![] };
        let wvars: Vec<Var> = trained.iter().map(|w| self.param(w)).collect();
        let mut all: Vec<&Var> = inputs.to_vec();
        all.extend(wvars.iter());
        let lora_inputs: Vec<Var> = adapted.iter().flat_map(|(_, l)| [l.down.clone(), l.up.clone()]).collect();
        all.extend(lora_inputs.iter());
        let saved: Vec<Tensor> = inputs.iter().map(|v| v.value.clone()).collect();
        let (n_in, n_w) = (saved.len(), trained.len());
        self.record(
            out.value.clone(),
            &all,
            Box::new(move |g, needs| memory_lean(saved.first(), || {
                let sub = Tape::new();
                let vars: Vec<Var> = saved.iter().zip(needs).map(|(t, &n)| if n { sub.leaf(t.clone()) } else { sub.constant(t.clone()) }).collect();
                let train: Vec<Tensor> = trained.iter().zip(&needs[n_in..]).filter(|(_, &n)| n).map(|(w, _)| w.clone()).collect();
                sub.train_only(&train);
                let lora_needs = &needs[n_in + n_w..];
                let lora_vars: Vec<super::LoraVars> =
                    adapted.iter().enumerate().map(|(i, (w, l))| sub.attach_values(*w, l, [lora_needs[2 * i], lora_needs[2 * i + 1]])).collect();
                let y = block(&vars)?;
                if y.node.is_none() {
                    return Ok(vec![None; needs.len()]);
                }
                let grads = sub.backward_with(&y, g.clone())?;
                let mut out: Vec<Option<Tensor>> = vars.iter().map(|v| grads.get(v).cloned()).collect();
                for (w, &n) in trained.iter().zip(&needs[n_in..]) {
                    out.push(if n { sub.param_grad(&grads, w)? } else { None });
                }
                out.extend(lora_vars.iter().flat_map(|l| [grads.get(&l.down).cloned(), grads.get(&l.up).cloned()]));
                Ok(out)
            })),
        )
    }
}

/// Runs a checkpointed block (its first run and its recomputation) in the device's
/// memory-lean scope: checkpointing is asked for to save memory (see [`crate::Gpu::memory_lean`]).
fn memory_lean<R>(any_input: Option<&Tensor>, f: impl FnOnce() -> R) -> R {
    match any_input {
        Some(t) => t.gpu().clone().memory_lean(f),
        None => f(),
    }
}

impl Var {
    pub fn value(&self) -> &Tensor {
        &self.value
    }
    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }
    pub fn tape(&self) -> &Tape {
        &self.tape
    }
    /// Does a gradient flow through this value?
    pub fn requires_grad(&self) -> bool {
        self.node.is_some()
    }
    /// The same value, untracked (stop-gradient).
    pub fn detach(&self) -> Var {
        Var { value: self.value.clone(), node: None, tape: self.tape.clone() }
    }
}
