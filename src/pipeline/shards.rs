//! The preprocessed data set on disk: safetensors shards written by `preprocess` and read by
//! `train`. Shard `shard-{i}of{n}-{k:05}.safetensors` holds records `0.., ` as tensors
//! `{j}.z_t`, `{j}.cond_eps`, `{j}.uncond_eps`, `{j}.context` and, for motion-guided
//! records, `{j}.score` (all f32, batch 1), with the records' metadata as JSON in the
//! header (`__metadata__.records`). `manifest-{i}of{n}.json` lists the finished shards and
//! the skipped videos of machine i of n.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use t2v_kernels::{Gpu, Tensor};

use crate::models::weights::{save_weights, Result, SaveDtype, WeightFile, WeightsError};
use crate::pipeline::preprocess::MotionReference;

/// Metadata of one preprocessed clip.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordMeta {
    /// Row of the captions file.
    pub row: usize,
    pub path: String,
    pub caption: String,
    pub short_caption: Option<String>,
    /// Grid index n (z_t is at `grid[n]`).
    pub index: usize,
    pub w: f32,
    /// Motion-guidance energy (motion-guided records).
    pub motion_energy: Option<f32>,
}

/// Settings every shard of a data set shares (checked by `train`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardConfig {
    pub ddim_steps: usize,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub fps: f32,
    pub seed: u64,
    pub motion: bool,
    /// Where motion-guided records' reference attention came from (absent in the file:
    /// DDIM inversion, T2V-Turbo-v2's).
    #[serde(default, skip_serializing_if = "MotionReference::is_inversion")]
    pub motion_reference: MotionReference,
    /// The text of the teacher's unconditional outputs (the reference's `--negative_prompt`
    /// of preprocessing, empty there and when absent from the file).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub negative_prompt: String,
    /// Records per clip: independent draws of n and w, each with its own teacher outputs
    /// (absent in the file: 1, the reference's).
    #[serde(default = "one_draw", skip_serializing_if = "is_one_draw")]
    pub draws: usize,
}

fn one_draw() -> usize {
    1
}

fn is_one_draw(n: &usize) -> bool {
    *n == 1
}

/// One record's tensors.
pub struct RecordTensors {
    pub z_t: Tensor,
    pub cond_eps: Tensor,
    pub uncond_eps: Tensor,
    pub context: Tensor,
    pub score: Option<Tensor>,
}

pub fn shard_name(shard: (usize, usize), k: usize) -> String {
    format!("shard-{}of{}-{k:05}.safetensors", shard.0, shard.1)
}

pub fn manifest_name(shard: (usize, usize)) -> String {
    format!("manifest-{}of{}.json", shard.0, shard.1)
}

/// The videos a preprocessing manifest lists as skipped, as (path, reason); None when the
/// file is missing or not a manifest's JSON.
pub fn manifest_skipped_videos(path: &Path) -> Option<Vec<(String, String)>> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    Some(v["skipped_videos"].as_array().into_iter().flatten().filter_map(|e| Some((e["path"].as_str()?.to_string(), e["error"].as_str()?.to_string()))).collect())
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> WeightsError {
    WeightsError::Data { path: path.display().to_string(), msg: msg.to_string() }
}

/// Writes one shard atomically.
pub fn write_shard(path: &Path, config: &ShardConfig, records: &[(RecordMeta, RecordTensors)]) -> Result<()> {
    let mut named = Vec::new();
    for (j, (_, t)) in records.iter().enumerate() {
        named.push((format!("{j}.z_t"), t.z_t.clone()));
        named.push((format!("{j}.cond_eps"), t.cond_eps.clone()));
        named.push((format!("{j}.uncond_eps"), t.uncond_eps.clone()));
        named.push((format!("{j}.context"), t.context.clone()));
        if let Some(s) = &t.score {
            named.push((format!("{j}.score"), s.clone()));
        }
    }
    let metas: Vec<&RecordMeta> = records.iter().map(|(m, _)| m).collect();
    let meta = [
        ("format", "t2v-turbo shard".to_string()),
        ("config", serde_json::to_string(config).expect("json")),
        ("records", serde_json::to_string(&metas).expect("json")),
    ];
    save_weights(path, &named, SaveDtype::F32, &meta)
}

/// One shard opened for reading (memory-mapped).
pub struct Shard {
    pub path: PathBuf,
    pub config: ShardConfig,
    pub records: Vec<RecordMeta>,
    file: WeightFile,
}

impl Shard {
    pub fn open(path: &Path) -> Result<Shard> {
        let file = WeightFile::open(path)?;
        let meta = &file.metadata;
        if meta.get("format").map(String::as_str) != Some("t2v-turbo shard") {
            return Err(bad(path, "not a t2v-turbo shard (written by `t2v-turbo preprocess`)"));
        }
        let config: ShardConfig = serde_json::from_str(meta.get("config").map(String::as_str).unwrap_or("")).map_err(|e| bad(path, format!("config: {e}")))?;
        let records: Vec<RecordMeta> = serde_json::from_str(meta.get("records").map(String::as_str).unwrap_or("")).map_err(|e| bad(path, format!("records: {e}")))?;
        Ok(Shard { path: path.to_path_buf(), config, records, file })
    }

    /// The shape of record `j`'s noisy latent z_t (1, C, F, h, w), read from the header.
    pub fn latent_shape(&self, j: usize) -> Result<Vec<usize>> {
        let key = format!("{j}.z_t");
        self.file.entries().get(&key).map(|e| e.shape.clone()).ok_or_else(|| bad(&self.path, format!("no tensor {key}")))
    }

    /// Record `j`'s tensors on `gpu`.
    pub fn tensors(&self, gpu: &Gpu, j: usize) -> Result<RecordTensors> {
        let t = |name: &str| self.file.tensor(gpu, &format!("{j}.{name}"));
        let key = format!("{j}.score");
        Ok(RecordTensors {
            z_t: t("z_t")?,
            cond_eps: t("cond_eps")?,
            uncond_eps: t("uncond_eps")?,
            context: t("context")?,
            score: if self.file.entries().contains_key(&key) { Some(t("score")?) } else { None },
        })
    }
}

/// Every shard in `dir`, in name order, checked to share one DDIM grid and clip size.
pub fn open_dataset(dir: &Path) -> Result<Vec<Shard>> {
    open_datasets(&[dir])
}

/// The shards of several folders — e.g. the reference's two preprocessing passes, the
/// motion-guided upper half of the grid and the plain lower half — each folder's in name
/// order, the folders in the order given; checked to share one DDIM grid and clip size.
pub fn open_datasets<P: AsRef<Path>>(dirs: &[P]) -> Result<Vec<Shard>> {
    let mut shards = Vec::new();
    for dir in dirs {
        let dir = dir.as_ref();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| bad(dir, format!("cannot read the folder of shards: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("shard-") && n.ends_with(".safetensors")))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(bad(dir, "no shard-*.safetensors files (write them with `t2v-turbo preprocess`)"));
        }
        for f in &files {
            shards.push(Shard::open(f)?);
        }
    }
    // what training depends on must agree (passes may differ in seed and motion)
    let key = |c: &ShardConfig| (c.ddim_steps, c.frames, c.height, c.width, c.fps.to_bits());
    if let Some(other) = shards.iter().find(|s| key(&s.config) != key(&shards[0].config)) {
        return Err(bad(&other.path, format!("another DDIM grid or clip size than {}: {:?} vs {:?}", shards[0].path.display(), other.config, shards[0].config)));
    }
    Ok(shards)
}

/// What a training run's order of records depends on, to check that a resumed run reads
/// the same data: the number of shards and records, and a hash (FNV-1a) of each shard's
/// file name and its records' rows and paths, in order. Moving the folders changes nothing.
pub fn dataset_fingerprint(shards: &[Shard]) -> serde_json::Value {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes.iter().chain(&[0xff]) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for s in shards {
        eat(s.path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        for r in &s.records {
            eat(&(r.row as u64).to_le_bytes());
            eat(r.path.as_bytes());
        }
    }
    serde_json::json!({ "shards": shards.len(), "records": shards.iter().map(|s| s.records.len()).sum::<usize>(), "hash": format!("{h:016x}") })
}
