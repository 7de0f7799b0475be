//! PyTorch checkpoints (`torch.save`'s zip format: VideoCrafter2's `model.ckpt`, open_clip's
//! `.bin`, HPS and InternVideo2 `.pt` files) read without Python, and converted to the
//! safetensors files the loaders take.
//!
//! Layout of such a file: a zip archive `<name>/data.pkl` (the pickled object: dicts,
//! tensors as `_rebuild_tensor_v2(storage, offset, shape, stride, ...)`) beside one stored
//! entry `<name>/data/<key>` per storage, the raw little-endian elements. The reader maps
//! the file, runs the pickle without executing anything (see [`pickle`]) and copies each
//! chosen tensor's strided view out of its storage; the writer streams tensors one at a
//! time, so a 10 GB checkpoint needs about one tensor of memory.

pub mod pickle;
pub mod zip;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

pub use pickle::{StorageRef, TensorRef, Value};

/// Errors of reading or converting a PyTorch checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    #[error("{path}: cannot read or write: {msg}")]
    Io { path: String, msg: String },
    #[error("{path}: not a readable PyTorch checkpoint: {msg}")]
    Format { path: String, msg: String },
    #[error("{path}: {msg}")]
    Select { path: String, msg: String },
    #[error("{path} exists; choose another output or pass --overwrite")]
    Exists { path: String },
}

pub type Result<T, E = TorchError> = std::result::Result<T, E>;

/// The compute core's file helpers report I/O errors in its own type.
impl From<t2v_kernels::Error> for TorchError {
    fn from(e: t2v_kernels::Error) -> Self {
        match e {
            t2v_kernels::Error::Io { path, msg } => TorchError::Io { path, msg },
            other => TorchError::Io { path: String::new(), msg: other.to_string() },
        }
    }
}

/// Element types of torch storages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TorchDtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl TorchDtype {
    /// From a storage class name (`FloatStorage`, ...).
    pub fn from_storage(name: &str) -> Option<TorchDtype> {
        Some(match name {
            "DoubleStorage" => TorchDtype::F64,
            "FloatStorage" => TorchDtype::F32,
            "HalfStorage" => TorchDtype::F16,
            "BFloat16Storage" => TorchDtype::BF16,
            "LongStorage" => TorchDtype::I64,
            "IntStorage" => TorchDtype::I32,
            "ShortStorage" => TorchDtype::I16,
            "CharStorage" => TorchDtype::I8,
            "ByteStorage" => TorchDtype::U8,
            "BoolStorage" => TorchDtype::Bool,
            _ => return None,
        })
    }
    pub fn size(self) -> usize {
        match self {
            TorchDtype::F64 | TorchDtype::I64 => 8,
            TorchDtype::F32 | TorchDtype::I32 => 4,
            TorchDtype::F16 | TorchDtype::BF16 | TorchDtype::I16 => 2,
            TorchDtype::I8 | TorchDtype::U8 | TorchDtype::Bool => 1,
        }
    }
    /// The safetensors header name.
    pub fn safetensors(self) -> &'static str {
        match self {
            TorchDtype::F64 => "F64",
            TorchDtype::F32 => "F32",
            TorchDtype::F16 => "F16",
            TorchDtype::BF16 => "BF16",
            TorchDtype::I64 => "I64",
            TorchDtype::I32 => "I32",
            TorchDtype::I16 => "I16",
            TorchDtype::I8 => "I8",
            TorchDtype::U8 => "U8",
            TorchDtype::Bool => "BOOL",
        }
    }
    fn is_float(self) -> bool {
        matches!(self, TorchDtype::F64 | TorchDtype::F32 | TorchDtype::F16 | TorchDtype::BF16)
    }
}

/// A memory-mapped PyTorch checkpoint: its unpickled object and where each storage lies.
pub struct TorchCheckpoint {
    pub path: PathBuf,
    map: memmap2::Mmap,
    pub root: Value,
    storages: HashMap<String, Range<usize>>,
}

impl TorchCheckpoint {
    pub fn open(path: &Path) -> Result<TorchCheckpoint> {
        let p = path.display().to_string();
        let format = |msg: String| TorchError::Format { path: p.clone(), msg };
        let file = std::fs::File::open(path).map_err(|e| TorchError::Io { path: p.clone(), msg: e.to_string() })?;
        // SAFETY: read-only map of a file not expected to change while converting.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| TorchError::Io { path: p.clone(), msg: e.to_string() })?;
        if !zip::is_zip(&map) {
            let msg = if map.first() == Some(&0x80) {
                "a legacy (pre-1.6, non-zip) torch.save file; load and save it once with torch >= 1.6 (the zip format is the default since)".to_string()
            } else if map.len() >= 8 && map.get(8) == Some(&b'{') {
                "this looks like a safetensors file already; the loaders read it as it is".to_string()
            } else {
                "not a zip archive (torch.save's format)".to_string()
            };
            return Err(format(msg));
        }
        let entries = zip::stored_entries(&map).map_err(format)?;
        let pkl = entries.iter().find(|e| e.name.ends_with("/data.pkl") && e.name.matches('/').count() == 1).ok_or_else(|| format("no <name>/data.pkl entry: a zip archive, but not one torch.save wrote".into()))?;
        let base = pkl.name.trim_end_matches("data.pkl").to_string();
        if let Some(order) = entries.iter().find(|e| e.name == format!("{base}byteorder")) {
            if &map[order.data.clone()] != b"little" {
                return Err(format(format!("storages are {}-endian; only little-endian checkpoints are read", String::from_utf8_lossy(&map[order.data.clone()]))));
            }
        }
        let storages = entries.iter().filter_map(|e| e.name.strip_prefix(&format!("{base}data/")).map(|k| (k.to_string(), e.data.clone()))).collect();
        let root = pickle::load(&map[pkl.data.clone()]).map_err(|m| format(format!("{}: {m}", pkl.name)))?;
        Ok(TorchCheckpoint { path: path.to_path_buf(), map, root, storages })
    }

    fn select_error(&self, msg: String) -> TorchError {
        TorchError::Select { path: self.path.display().to_string(), msg }
    }

    /// The tensors under `entry` (a dotted path into the checkpoint's dicts and lists; `*`
    /// = everything), named by their dotted paths below it. Without `entry`: `state_dict`
    /// (Lightning), else `module`, else `model`, where the checkpoint has such a key, else
    /// everything. Returns the entry taken.
    pub fn tensors(&self, entry: Option<&str>) -> Result<(String, Vec<(String, TensorRef)>)> {
        let chosen = match entry {
            Some(e) => e.to_string(),
            None => ["state_dict", "module", "model"].iter().find(|k| lookup(&self.root, k).is_some_and(|v| matches!(v, Value::Dict(_)) && !flatten(&v).is_empty())).map_or("*".to_string(), |k| k.to_string()),
        };
        let value = if chosen == "*" {
            self.root.clone()
        } else {
            lookup(&self.root, &chosen).ok_or_else(|| self.select_error(format!("no entry {chosen:?}; top-level keys: {}", top_keys(&self.root).join(", "))))?
        };
        let tensors = flatten(&value);
        if tensors.is_empty() {
            return Err(self.select_error(format!("entry {chosen:?} holds no tensors; top-level keys: {}", top_keys(&self.root).join(", "))));
        }
        Ok((chosen, tensors))
    }

    /// A tensor's elements as contiguous little-endian bytes of its own dtype.
    pub fn tensor_bytes(&self, name: &str, t: &TensorRef) -> Result<Vec<u8>> {
        let s = &t.storage;
        let range = self.storages.get(&s.key).ok_or_else(|| self.select_error(format!("tensor {name}: storage data/{} missing from the archive", s.key)))?;
        let es = s.dtype.size();
        let data = &self.map[range.clone()];
        let want = s.numel.checked_mul(es).unwrap_or(usize::MAX);
        if data.len() < want {
            return Err(TorchError::Format { path: self.path.display().to_string(), msg: format!("storage data/{} holds {} bytes, {} elements of {:?} expected (truncated?)", s.key, data.len(), s.numel, s.dtype) });
        }
        let numel = t.numel().ok_or_else(|| TorchError::Format { path: self.path.display().to_string(), msg: format!("tensor {name}: shape {:?} overflows", t.shape) })?;
        if numel == 0 {
            return Ok(Vec::new());
        }
        // the furthest element the view reaches (checked: the shape and strides are the file's word)
        let last = t.shape.iter().zip(&t.stride).try_fold(t.offset, |acc, (&n, &st)| (n - 1).checked_mul(st).and_then(|x| acc.checked_add(x)));
        if last.is_none_or(|last| last >= s.numel) {
            return Err(TorchError::Format { path: self.path.display().to_string(), msg: format!("tensor {name} ({:?}, strides {:?}, offset {}) reaches past its storage of {} elements", t.shape, t.stride, t.offset, s.numel) });
        }
        // row-major contiguous: one slice
        let mut contiguous = true;
        let mut expect = 1;
        for (&n, &st) in t.shape.iter().zip(&t.stride).rev() {
            if n > 1 && st != expect {
                contiguous = false;
            }
            expect *= n;
        }
        if contiguous {
            return Ok(data[t.offset * es..(t.offset + numel) * es].to_vec());
        }
        let mut out = Vec::with_capacity(numel * es);
        let mut index = vec![0usize; t.shape.len()];
        for _ in 0..numel {
            let e = t.offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            out.extend_from_slice(&data[e * es..(e + 1) * es]);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < t.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(out)
    }
}

/// `a.b.0.c` through dicts (string or integer keys) and lists.
fn lookup(v: &Value, path: &str) -> Option<Value> {
    let mut cur = v.clone();
    for part in path.split('.') {
        cur = child(&cur).into_iter().find(|(k, _)| k == part)?.1;
    }
    Some(cur)
}

/// A container's children with their names.
fn child(v: &Value) -> Vec<(String, Value)> {
    match v {
        Value::Dict(d) => d.borrow().iter().filter_map(|(k, v)| key_name(k).map(|k| (k, v.clone()))).collect(),
        Value::List(l) => l.borrow().iter().enumerate().map(|(i, v)| (i.to_string(), v.clone())).collect(),
        Value::Tuple(t) => t.iter().enumerate().map(|(i, v)| (i.to_string(), v.clone())).collect(),
        _ => Vec::new(),
    }
}

fn key_name(k: &Value) -> Option<String> {
    match k {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

impl TorchCheckpoint {
    /// The names of the checkpoint's top-level entries.
    pub fn top_keys(&self) -> Vec<String> {
        top_keys(&self.root)
    }
}

fn top_keys(root: &Value) -> Vec<String> {
    let keys: Vec<String> = child(root).into_iter().map(|(k, _)| k).collect();
    if keys.is_empty() {
        vec!["(none: the checkpoint is not a dict)".into()]
    } else {
        keys
    }
}

/// Every tensor below `v`, named by its dotted path.
fn flatten(v: &Value) -> Vec<(String, TensorRef)> {
    fn walk(v: &Value, prefix: &str, out: &mut Vec<(String, TensorRef)>) {
        match v {
            Value::Tensor(t) => out.push((prefix.to_string(), t.clone())),
            _ => {
                for (k, c) in child(v) {
                    let name = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                    walk(&c, &name, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(v, "", &mut out);
    out
}

/// The element type of converted floating-point tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FloatDtype {
    /// As stored in the checkpoint.
    Keep,
    F32,
    F16,
    Bf16,
}

/// What [`convert`] writes.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// See [`TorchCheckpoint::tensors`].
    pub entry: Option<String>,
    /// Keep only tensors whose names start with one of these (after `strip_prefix`).
    pub only: Vec<String>,
    /// Removed from the start of every name that has it (e.g. `module.`).
    pub strip_prefix: Option<String>,
    pub dtype: FloatDtype,
    pub overwrite: bool,
}

/// What [`convert`] wrote.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    pub entry: String,
    pub tensors: usize,
    pub skipped: usize,
    pub bytes: u64,
}

fn convert_bytes(bytes: Vec<u8>, from: TorchDtype, to: TorchDtype) -> Vec<u8> {
    if from == to {
        return bytes;
    }
    let es = from.size();
    let values = bytes.chunks_exact(es).map(|c| match from {
        TorchDtype::F64 => f64::from_le_bytes(c.try_into().unwrap()) as f32,
        TorchDtype::F32 => f32::from_le_bytes(c.try_into().unwrap()),
        TorchDtype::F16 => f16::from_le_bytes(c.try_into().unwrap()).to_f32(),
        TorchDtype::BF16 => bf16::from_le_bytes(c.try_into().unwrap()).to_f32(),
        _ => unreachable!("only floats are converted"),
    });
    match to {
        TorchDtype::F32 => values.flat_map(f32::to_le_bytes).collect(),
        TorchDtype::F16 => values.flat_map(|v| f16::from_f32(v).to_le_bytes()).collect(),
        TorchDtype::BF16 => values.flat_map(|v| bf16::from_f32(v).to_le_bytes()).collect(),
        _ => unreachable!("floats convert to f32, f16 or bf16"),
    }
}

/// Writes the chosen tensors of a PyTorch checkpoint to a safetensors file (names sorted,
/// metadata `converted_from`), through a temporary file renamed into place. `progress` is
/// called after each tensor with (done, total).
pub fn convert(input: &Path, output: &Path, opts: &ConvertOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<ConvertReport> {
    let out_str = output.display().to_string();
    if output.exists() && !opts.overwrite {
        return Err(TorchError::Exists { path: out_str });
    }
    let ckpt = TorchCheckpoint::open(input)?;
    let (entry, all) = ckpt.tensors(opts.entry.as_deref())?;
    let total = all.len();
    let mut chosen: BTreeMap<String, TensorRef> = BTreeMap::new();
    for (name, t) in all {
        let name = match &opts.strip_prefix {
            Some(p) => name.strip_prefix(p.as_str()).map(str::to_string).unwrap_or(name),
            None => name,
        };
        if !opts.only.is_empty() && !opts.only.iter().any(|o| name.starts_with(o.as_str())) {
            continue;
        }
        if chosen.insert(name.clone(), t).is_some() {
            return Err(ckpt.select_error(format!("two tensors are named {name:?} after removing the prefix")));
        }
    }
    if chosen.is_empty() {
        return Err(ckpt.select_error(format!("no tensor of entry {entry:?} starts with {:?}", opts.only)));
    }
    let out_dtype = |d: TorchDtype| match (opts.dtype, d.is_float()) {
        (_, false) | (FloatDtype::Keep, _) => d,
        (FloatDtype::F32, true) => TorchDtype::F32,
        (FloatDtype::F16, true) => TorchDtype::F16,
        (FloatDtype::Bf16, true) => TorchDtype::BF16,
    };
    // header: every tensor's dtype, shape and byte range, in name order
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, t) in &chosen {
        let d = out_dtype(t.storage.dtype);
        let len = t.numel().ok_or_else(|| ckpt.select_error(format!("tensor {name}: shape {:?} overflows", t.shape)))? as u64 * d.size() as u64;
        header.insert(name.clone(), serde_json::json!({ "dtype": d.safetensors(), "shape": t.shape, "data_offsets": [offset, offset + len] }));
        offset += len;
    }
    let source = input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    header.insert("__metadata__".into(), serde_json::json!({ "converted_from": source, "entry": entry }));
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header)).expect("a JSON map serialises");
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    t2v_kernels::io::write_atomic_with(output, |w| -> Result<()> {
        let io = |e: std::io::Error| TorchError::Io { path: out_str.clone(), msg: e.to_string() };
        w.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&json).map_err(io)?;
        for (i, (name, t)) in chosen.iter().enumerate() {
            let bytes = ckpt.tensor_bytes(name, t)?;
            w.write_all(&convert_bytes(bytes, t.storage.dtype, out_dtype(t.storage.dtype))).map_err(io)?;
            progress(i + 1, chosen.len());
        }
        Ok(())
    })?;
    Ok(ConvertReport { entry, tensors: chosen.len(), skipped: total - chosen.len(), bytes: 8 + json.len() as u64 + offset })
}
