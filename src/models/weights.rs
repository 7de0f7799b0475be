//! Checkpoint weights from safetensors files: memory-mapped, converted to f32 on upload
//! (f32, f16, bf16), addressed by the real checkpoints' key names. Frozen matrix weights
//! (linear and conv kernels) may instead stay in half precision on the device
//! ([`WeightPrecision`], [`Weight`]), widened to f32 by the op that reads them.
//!
//! Loading is strict: a model constructor asks a [`Loader`] for every tensor it needs by key
//! and shape; the loader records every missing key and shape mismatch instead of stopping
//! at the first, and [`Loader::finish`] reports them all together with the keys of the file
//! (under the model's prefix) that nothing asked for.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use half::{bf16, f16};
use safetensors::Dtype;
use t2v_kernels::{Gpu, HalfKind, HalfTensor, Tensor};

/// Errors of weight files.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: cannot read: {msg}")]
    Io { path: String, msg: String },
    #[error("{path}: cannot write: {msg}")]
    Write { path: String, msg: String },
    #[error("{path}: not a valid safetensors file ({msg}); is it truncated or a different format?")]
    Format { path: String, msg: String },
    #[error("{path} is a PyTorch checkpoint (torch.save), not a safetensors file; convert it once: t2v-turbo convert {path} --out {out}")]
    TorchFile { path: String, out: String },
    #[error("{path}: tensor {key} has dtype {dtype:?}; supported: F32, F16, BF16")]
    Dtype { path: String, key: String, dtype: Dtype },
    #[error("{path}: no tensor {key}")]
    Missing { path: String, key: String },
    #[error("{path}: weights do not match the model (prefix {prefix:?}):\n{report}")]
    Mismatch { path: String, prefix: String, report: String },
    /// Readable files or folders whose content is not what was asked for.
    #[error("{path}: {msg}")]
    Data { path: String, msg: String },
    /// A generation stopped by its caller's step callback.
    #[error("cancelled after {done} of {total} steps")]
    Cancelled { done: usize, total: usize },
    #[error("a weight kept in half precision cannot be trained: load a model that is trained with WeightPrecision::F32")]
    HalfTrained,
    #[error(transparent)]
    Gpu(#[from] t2v_kernels::Error),
}

pub type Result<T, E = WeightsError> = std::result::Result<T, E>;

impl WeightsError {
    /// Did the device run out of memory (or over its memory limit)?
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, WeightsError::Gpu(e) if e.is_out_of_memory())
    }
}

/// Model code run inside the compute core's closures (recomputation checkpoints) reports
/// through its error type: device errors as they are, others by message.
impl From<WeightsError> for t2v_kernels::Error {
    fn from(e: WeightsError) -> Self {
        match e {
            WeightsError::Gpu(g) => g,
            other => t2v_kernels::Error::Autograd(other.to_string()),
        }
    }
}

/// One tensor's description in a file.
#[derive(Clone, Debug)]
pub struct Entry {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A memory-mapped safetensors file.
pub struct WeightFile {
    pub path: PathBuf,
    map: memmap2::Mmap,
    data_start: usize,
    entries: BTreeMap<String, Entry>,
    pub metadata: BTreeMap<String, String>,
}

impl WeightFile {
    pub fn open(path: &Path) -> Result<WeightFile> {
        let p = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| WeightsError::Io { path: p.clone(), msg: e.to_string() })?;
        // SAFETY: the map is read-only; the file is not expected to change while in use
        // (like every tool that maps model checkpoints).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| WeightsError::Io { path: p.clone(), msg: e.to_string() })?;
        // Full validation (header, offsets inside the file) before anything is read.
        safetensors::SafeTensors::deserialize(&map).map_err(|e| {
            if crate::models::torch_checkpoint::zip::is_zip(&map) || map.first() == Some(&0x80) {
                WeightsError::TorchFile { path: p.clone(), out: path.with_extension("safetensors").display().to_string() }
            } else {
                WeightsError::Format { path: p.clone(), msg: e.to_string() }
            }
        })?;
        let (n, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| WeightsError::Format { path: p.clone(), msg: e.to_string() })?;
        let entries = meta
            .tensors()
            .into_iter()
            .map(|(k, i)| (k, Entry { dtype: i.dtype, shape: i.shape.clone(), start: i.data_offsets.0, end: i.data_offsets.1 }))
            .collect();
        let metadata = meta.metadata().clone().unwrap_or_default().into_iter().collect();
        Ok(WeightFile { path: path.to_path_buf(), map, data_start: 8 + n, entries, metadata })
    }

    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    /// The first of `candidates` (checkpoint key prefixes such as `first_stage_model.`)
    /// that some key starts with; "" when none does (a file of one model, no prefix).
    pub fn prefix_among(&self, candidates: &[&str]) -> String {
        candidates.iter().find(|p| !p.is_empty() && self.entries.keys().any(|k| k.starts_with(*p))).map(|p| p.to_string()).unwrap_or_default()
    }

    fn bytes(&self, e: &Entry) -> &[u8] {
        &self.map[self.data_start + e.start..self.data_start + e.end]
    }

    /// A tensor's values as f32 on the host.
    pub fn host_f32(&self, key: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let e = self.entry(key)?;
        let b = self.bytes(e);
        let v: Vec<f32> = match e.dtype {
            Dtype::F32 => bytemuck::pod_collect_to_vec(b),
            Dtype::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
            Dtype::U8 => b.iter().map(|&x| x as f32).collect(),
            d => return Err(WeightsError::Dtype { path: self.path.display().to_string(), key: key.into(), dtype: d }),
        };
        Ok((e.shape.clone(), v))
    }

    /// An integer tensor (I64 or I32) on the host.
    pub fn host_i64(&self, key: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let e = self.entry(key)?;
        let b = self.bytes(e);
        let v = match e.dtype {
            Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
            Dtype::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64).collect(),
            d => return Err(WeightsError::Dtype { path: self.path.display().to_string(), key: key.into(), dtype: d }),
        };
        Ok((e.shape.clone(), v))
    }

    fn entry(&self, key: &str) -> Result<&Entry> {
        self.entries.get(key).ok_or_else(|| WeightsError::Missing { path: self.path.display().to_string(), key: key.into() })
    }

    /// Uploads a tensor as f32.
    pub fn tensor(&self, gpu: &Gpu, key: &str) -> Result<Tensor> {
        let (shape, v) = self.host_f32(key)?;
        Ok(Tensor::from_slice(gpu, &shape, &v)?)
    }

    /// Uploads a tensor in half precision: an f16 / bf16 tensor of that kind as it is
    /// stored, anything else rounded to `kind` (to nearest, ties to even).
    pub fn half_tensor(&self, gpu: &Gpu, key: &str, kind: HalfKind) -> Result<HalfTensor> {
        let e = self.entry(key)?;
        if half_kind(e.dtype) == Some(kind) {
            let bits: Vec<u16> = self.bytes(e).chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            return Ok(HalfTensor::from_bits(gpu, &e.shape, kind, &bits)?);
        }
        let (shape, v) = self.host_f32(key)?;
        Ok(HalfTensor::from_f32(gpu, &shape, kind, &v)?)
    }
}

/// The half-precision kind of a file dtype, if it is one.
fn half_kind(dtype: Dtype) -> Option<HalfKind> {
    match dtype {
        Dtype::F16 => Some(HalfKind::F16),
        Dtype::BF16 => Some(HalfKind::BF16),
        _ => None,
    }
}

/// How a [`Loader`] keeps the matrix weights of linear and conv layers on the device (norms,
/// biases and embeddings are always f32). Half precision takes half the memory; the op that
/// reads such a weight widens it to f32 first (exactly), one short pass per use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightPrecision {
    /// Everything f32 (trained models; the default).
    #[default]
    F32,
    /// Half-precision tensors of the file stay as they are (f16 or bf16; the results equal
    /// the f32 path's bit for bit), f32 ones f32.
    Stored,
    /// Rounded to f16 / bf16 where the file has another type (not exact).
    F16,
    BF16,
}

impl WeightPrecision {
    /// The half kind to keep a file tensor of `stored` kind (None: f32) in; None = f32.
    fn keep(self, stored: Option<HalfKind>) -> Option<HalfKind> {
        match self {
            WeightPrecision::F32 => None,
            WeightPrecision::Stored => stored,
            WeightPrecision::F16 => Some(HalfKind::F16),
            WeightPrecision::BF16 => Some(HalfKind::BF16),
        }
    }
}

/// A layer's matrix weight: f32, or half precision (frozen) widened where an op reads it
/// (`linear_half`, `conv2d_half`, `temporal_conv_half` of the compute core).
#[derive(Clone, Debug)]
pub enum Weight {
    F32(Tensor),
    Half(HalfTensor),
}

impl Weight {
    pub fn gpu(&self) -> &Gpu {
        match self {
            Weight::F32(t) => t.gpu(),
            Weight::Half(h) => h.gpu(),
        }
    }
    pub fn reshape(&self, shape: &[usize]) -> Result<Weight> {
        Ok(match self {
            Weight::F32(t) => Weight::F32(t.reshape(shape)?),
            Weight::Half(h) => Weight::Half(h.reshape(shape)?),
        })
    }
}

#[derive(Default)]
struct Problems {
    missing: Vec<String>,
    shape: Vec<String>,
    other: Vec<String>,
    used: BTreeSet<String>,
    loaded: Vec<(String, Tensor)>,
    /// Tables loaded in row chunks ([`Loader::get_row_chunks`]): key, full shape, chunks.
    chunked: Vec<(String, Vec<usize>, Vec<Tensor>)>,
}

/// Hands tensors to a model constructor and collects every problem (see module docs).
pub struct Loader<'f> {
    file: Option<&'f WeightFile>,
    /// Without a file: the seed of deterministic random initialisation.
    seed: u64,
    gpu: Gpu,
    prefix: String,
    /// Key prefixes (after `prefix`) of other models in the same file: never "unexpected".
    ignore: Vec<String>,
    /// Key prefixes (after `prefix`) that are randomly initialised when the file lacks them
    /// (new layers of a student on top of teacher weights).
    init_missing: Vec<String>,
    precision: WeightPrecision,
    problems: Mutex<Problems>,
}

/// A deterministic random initialisation for `key`: 1-D `*.weight` (norm scales) and
/// `*.gamma` (layer scales) ones, `*.bias` and InternVideo2's `q_bias`/`k_bias`/`v_bias`
/// zeros, others uniform in +-1/sqrt(fan_in), fan_in = product of all but the first
/// dimension.
fn random_init(key: &str, shape: &[usize], seed: u64) -> Vec<f32> {
    let n: usize = shape.iter().product();
    if key.ends_with(".bias") || ["q_bias", "k_bias", "v_bias"].iter().any(|b| key.ends_with(&format!(".{b}"))) {
        return vec![0.0; n];
    }
    if (key.ends_with(".weight") && shape.len() == 1) || key.ends_with(".gamma") {
        return vec![1.0; n];
    }
    let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
    let bound = 1.0 / (fan_in as f32).sqrt();
    // FNV-1a of the key, then splitmix64
    let mut h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    (0..n)
        .map(|_| {
            h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = h;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
        })
        .collect()
}

impl<'f> Loader<'f> {
    /// Tensors under `prefix` (e.g. `first_stage_model.`) of `file`.
    pub fn new(file: &'f WeightFile, gpu: &Gpu, prefix: &str) -> Loader<'f> {
        Loader { file: Some(file), seed: 0, gpu: gpu.clone(), prefix: prefix.to_string(), ignore: Vec::new(), init_missing: Vec::new(), precision: WeightPrecision::F32, problems: Mutex::default() }
    }

    /// No file: every tensor is initialised randomly (deterministic in `seed` and the key),
    /// for training from scratch and for benchmarks at full size.
    pub fn random(gpu: &Gpu, seed: u64) -> Loader<'static> {
        Loader { file: None, seed, gpu: gpu.clone(), prefix: String::new(), ignore: Vec::new(), init_missing: Vec::new(), precision: WeightPrecision::F32, problems: Mutex::default() }
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Keys under these sub-prefixes belong to other models sharing the file (e.g. an
    /// OpenCLIP file's `visual.` tower when only the text tower is loaded).
    pub fn ignoring(mut self, prefixes: &[&str]) -> Self {
        self.ignore = prefixes.iter().map(|p| format!("{}{p}", self.prefix)).collect();
        self
    }

    /// Tensors under these key prefixes that the file lacks are initialised randomly
    /// (deterministic in `seed`), like PyTorch's `load_state_dict(strict=False)` leaves the
    /// new layers of T2V-Turbo's student (`time_cond_proj.`, ...) at their default init.
    pub fn init_missing(mut self, prefixes: &[&str], seed: u64) -> Self {
        self.init_missing = prefixes.iter().map(|p| p.to_string()).collect();
        self.seed = seed;
        self
    }

    /// Keeps the matrix weights ([`Loader::get_weight`]) in `precision`. Only for models
    /// that are not trained: half-precision weights are not among [`Loader::params`].
    pub fn with_precision(mut self, precision: WeightPrecision) -> Self {
        self.precision = precision;
        self
    }

    /// Does the file have `key` (under the prefix)?
    pub fn contains(&self, key: &str) -> bool {
        self.file.is_none_or(|f| f.entries.contains_key(&format!("{}{key}", self.prefix)))
    }

    /// The tensor `key` (under the prefix) of shape `shape`. On a problem it is recorded and
    /// a zero tensor of the expected shape stands in, so construction can go on and every
    /// problem gets reported by [`Loader::finish`].
    pub fn get(&self, key: &str, shape: &[usize]) -> Result<Tensor> {
        let t = match self.fetch(key, shape) {
            Some(v) => Tensor::from_slice(&self.gpu, shape, &v)?,
            None => return Ok(Tensor::zeros(&self.gpu, shape)?),
        };
        self.problems.lock().unwrap().loaded.push((key.to_string(), t.clone()));
        Ok(t)
    }

    /// The table `key` of shape (V, ...) as row chunks that each fit one storage binding of
    /// the device (one chunk when the whole does), for [`t2v_kernels::autograd::embedding_chunked`]:
    /// a vocabulary larger than a binding (CLIP's 49408 x 1024 is 193 MiB; lavapipe binds
    /// 128 MiB). Only a table in one chunk is among [`Loader::params`] (a larger one is
    /// for inference; [`Loader::all_tensors`] has it). Problems are recorded as by
    /// [`Loader::get`].
    pub fn get_row_chunks(&self, key: &str, shape: &[usize]) -> Result<Vec<Tensor>> {
        let row: usize = shape[1..].iter().product::<usize>().max(1);
        let rows_per = (self.gpu.max_binding_bytes() / (4 * row as u64)).max(1) as usize;
        if shape[0] <= rows_per {
            return Ok(vec![self.get(key, shape)?]);
        }
        let values = self.fetch(key, shape).unwrap_or_else(|| vec![0.0; shape[0] * row]);
        let chunks = values
            .chunks(rows_per * row)
            .map(|c| {
                let mut s = shape.to_vec();
                s[0] = c.len() / row;
                Ok(Tensor::from_slice(&self.gpu, &s, c)?)
            })
            .collect::<Result<Vec<_>>>()?;
        self.problems.lock().unwrap().chunked.push((key.to_string(), shape.to_vec(), chunks.clone()));
        Ok(chunks)
    }

    /// `key`'s values (under the prefix; random without a file, or where the file lacks a
    /// new layer's), checked against `shape`; None when a problem was recorded.
    fn fetch(&self, key: &str, shape: &[usize]) -> Option<Vec<f32>> {
        let Some(file) = self.file else { return Some(random_init(key, shape, self.seed)) };
        let full = format!("{}{key}", self.prefix);
        if !file.entries.contains_key(&full) && self.init_missing.iter().any(|p| key.starts_with(p.as_str())) {
            return Some(random_init(key, shape, self.seed));
        }
        let mut pr = self.problems.lock().unwrap();
        pr.used.insert(full.clone());
        match file.entries.get(&full) {
            None => pr.missing.push(format!("{full} {shape:?}")),
            Some(e) if e.shape != shape => pr.shape.push(format!("{full}: file {:?}, model {shape:?}", e.shape)),
            Some(_) => {
                drop(pr);
                match file.host_f32(&full) {
                    Ok((_, v)) => return Some(v),
                    Err(e) => self.problems.lock().unwrap().other.push(e.to_string()),
                }
            }
        }
        None
    }

    /// A linear or conv layer's matrix weight `key` of shape `shape`, in the loader's
    /// [`WeightPrecision`] (problems are recorded as by [`Loader::get`]). Random weights
    /// (no file) are f32 unless f16 / bf16 is asked for.
    pub fn get_weight(&self, key: &str, shape: &[usize]) -> Result<Weight> {
        let full = format!("{}{key}", self.prefix);
        let keep = match self.file {
            None => self.precision.keep(None),
            // missing or mismatched: `get` records the problem
            Some(f) => match f.entries.get(&full) {
                Some(e) if e.shape == shape => self.precision.keep(half_kind(e.dtype)),
                _ => None,
            },
        };
        let Some(kind) = keep else { return Ok(Weight::F32(self.get(key, shape)?)) };
        let Some(file) = self.file else {
            return Ok(Weight::Half(HalfTensor::from_f32(&self.gpu, shape, kind, &random_init(key, shape, self.seed))?));
        };
        self.problems.lock().unwrap().used.insert(full.clone());
        match file.half_tensor(&self.gpu, &full, kind) {
            Ok(h) => Ok(Weight::Half(h)),
            Err(e) => {
                self.problems.lock().unwrap().other.push(e.to_string());
                Ok(Weight::F32(Tensor::zeros(&self.gpu, shape)?))
            }
        }
    }

    /// Every f32 tensor loaded so far with its key (without the prefix): the model's named
    /// parameters, e.g. to map gradients back to checkpoint names.
    pub fn params(&self) -> Vec<(String, Tensor)> {
        self.problems.lock().unwrap().loaded.clone()
    }

    /// Every tensor loaded so far, as [`save_weight_parts`] writes them: the
    /// [`Loader::params`], then the tables loaded in row chunks.
    pub fn all_tensors(&self) -> Vec<(String, Vec<usize>, Vec<Tensor>)> {
        let pr = self.problems.lock().unwrap();
        pr.loaded.iter().map(|(k, t)| (k.clone(), t.shape().to_vec(), vec![t.clone()])).chain(pr.chunked.iter().cloned()).collect()
    }

    /// Ok if every requested tensor was present with its shape and every file key under
    /// the prefix was used; else one error listing all problems.
    pub fn finish(self) -> Result<()> {
        let pr = self.problems.into_inner().unwrap();
        let Some(file) = self.file else { return Ok(()) };
        let unexpected: Vec<&String> = file
            .entries
            .keys()
            .filter(|k| k.starts_with(&self.prefix) && !pr.used.contains(*k) && !self.ignore.iter().any(|i| k.starts_with(i.as_str())))
            .collect();
        if pr.missing.is_empty() && pr.shape.is_empty() && pr.other.is_empty() && unexpected.is_empty() {
            return Ok(());
        }
        let mut report = String::new();
        let mut section = |title: &str, items: Vec<String>| {
            if !items.is_empty() {
                report += &format!("  {title} ({}):\n", items.len());
                for i in items {
                    report += &format!("    {i}\n");
                }
            }
        };
        section("missing keys", pr.missing);
        section("shape mismatches", pr.shape);
        section("unreadable tensors", pr.other);
        section("unexpected keys", unexpected.into_iter().cloned().collect());
        Err(WeightsError::Mismatch { path: file.path.display().to_string(), prefix: self.prefix, report })
    }
}

/// Storage type of saved weights (also `train --model-dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SaveDtype {
    /// exactly the trained weights
    F32,
    /// rounded to f16: half the size (loaded back as f32, or kept 16-bit: `--weights-dtype`)
    F16,
    /// rounded to bf16: half the size, f32's range
    BF16,
}

/// Writes named tensors (e.g. [`Loader::params`]) to a safetensors file atomically, with
/// string metadata, streamed from the device.
pub fn save_weights(path: &Path, tensors: &[(String, Tensor)], dtype: SaveDtype, metadata: &[(&str, String)]) -> Result<()> {
    let parts: Vec<(String, Vec<usize>, Vec<Tensor>)> = tensors.iter().map(|(n, t)| (n.clone(), t.shape().to_vec(), vec![t.clone()])).collect();
    save_weight_parts(path, &parts, dtype, metadata)
}

/// [`save_weights`] of tensors made one at a time: `tensor(i)` gives the i-th of `named`
/// (name, shape) when it is written, and is dropped after (e.g. a LoRA student's merged
/// weights, so that the merged model is never on the device at once).
pub fn save_weights_made(path: &Path, named: &[(String, Vec<usize>)], dtype: SaveDtype, metadata: &[(&str, String)], mut tensor: impl FnMut(usize) -> Result<Tensor>) -> Result<()> {
    let st = save_dtype(dtype);
    let entries: Vec<t2v_kernels::io::SafetensorsEntry> = named.iter().map(|(n, shape)| (n.clone(), st, shape.clone())).collect();
    let meta: Vec<(String, String)> = metadata.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    t2v_kernels::io::write_safetensors(path, &entries, &meta, |w| {
        for (i, (name, shape)) in named.iter().enumerate() {
            let t = tensor(i)?;
            if t.shape() != shape.as_slice() {
                return Err(WeightsError::Data { path: path.display().to_string(), msg: format!("{name}: made {:?}, listed {shape:?}", t.shape()) });
            }
            write_values(w, &t.to_vec()?, dtype).map_err(|e| WeightsError::Write { path: path.display().to_string(), msg: e.to_string() })?;
        }
        Ok(())
    })
}

fn save_dtype(dtype: SaveDtype) -> safetensors::Dtype {
    match dtype {
        SaveDtype::F32 => safetensors::Dtype::F32,
        SaveDtype::F16 => safetensors::Dtype::F16,
        SaveDtype::BF16 => safetensors::Dtype::BF16,
    }
}

/// f32 values as `dtype`'s little-endian bytes into `w`.
fn write_values(w: &mut dyn std::io::Write, v: &[f32], dtype: SaveDtype) -> std::io::Result<()> {
    match dtype {
        SaveDtype::F32 => w.write_all(bytemuck::cast_slice(v)),
        SaveDtype::F16 => w.write_all(&v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect::<Vec<u8>>()),
        SaveDtype::BF16 => w.write_all(&v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect::<Vec<u8>>()),
    }
}

/// [`save_weights`] of tensors held in parts (name, full shape, parts whose elements
/// follow each other: a table's row chunks, [`Loader::all_tensors`]), each saved as one.
pub fn save_weight_parts(path: &Path, tensors: &[(String, Vec<usize>, Vec<Tensor>)], dtype: SaveDtype, metadata: &[(&str, String)]) -> Result<()> {
    let st = save_dtype(dtype);
    for (name, shape, parts) in tensors {
        let n: usize = parts.iter().map(Tensor::numel).sum();
        if n != shape.iter().product::<usize>() {
            return Err(WeightsError::Data { path: path.display().to_string(), msg: format!("{name}: parts of {n} values for shape {shape:?}") });
        }
    }
    let entries: Vec<t2v_kernels::io::SafetensorsEntry> = tensors.iter().map(|(n, shape, _)| (n.clone(), st, shape.clone())).collect();
    let meta: Vec<(String, String)> = metadata.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let refs: Vec<&Tensor> = tensors.iter().flat_map(|(_, _, parts)| parts).collect();
    let write_err = |e: std::io::Error| WeightsError::Write { path: path.display().to_string(), msg: e.to_string() };
    // streamed from the device: the host holds one staging buffer's worth at a time
    t2v_kernels::io::write_safetensors(path, &entries, &meta, |w| {
        Tensor::read_each(&refs, |_, v| -> Result<()> { write_values(w, &v, dtype).map_err(write_err) })
    })
}
