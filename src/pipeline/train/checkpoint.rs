//! Checkpoints of a run: written atomically, read back for an exact resume, and their
//! weights restored into a student (`export`).

use std::path::{Path, PathBuf};

use t2v_kernels::Tensor;

use super::{Student, TrainConfig, TrainError, TrainState, Trainer};
use crate::models::weights::{save_weights, Result, SaveDtype, WeightFile, WeightsError};
use crate::pipeline::shards::dataset_fingerprint;

impl Trainer<'_> {
    /// Writes a checkpoint folder `dir/step-{step:06}` atomically (written under a
    /// temporary name, then renamed), then drops all but the newest `keep`.
    pub fn save_checkpoint(&self, dir: &Path, keep: usize) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|e| WeightsError::Write { path: dir.display().to_string(), msg: e.to_string() })?;
        let fin = dir.join(format!("step-{:06}", self.state.step));
        t2v_kernels::io::write_atomic_dir(&fin, |tmp| -> Result<()> {
            let named: Vec<(String, Tensor)> = self.student.trainable_names().into_iter().zip(self.student.trainable()).collect();
            save_weights(&tmp.join("student.safetensors"), &named, SaveDtype::F32, &[("format", "t2v-turbo student".into())])?;
            if let Some(target) = &self.student.target {
                let named: Vec<(String, Tensor)> = self.student.params.iter().map(|(n, _)| n.clone()).zip(target.params.iter().cloned()).collect();
                save_weights(&tmp.join(EMA_TARGET_FILE), &named, SaveDtype::F32, &[("format", "t2v-turbo ema target".into())])?;
            }
            self.opt.save(&tmp.join("optimizer.safetensors"))?;
            let mut state = serde_json::json!({ "state": self.state, "config": self.config, "data": dataset_fingerprint(self.shards) });
            if let Some(models) = &self.models_folder {
                state["models"] = serde_json::json!(models.display().to_string());
            }
            Ok(t2v_kernels::io::write_atomic(&tmp.join("state.json"), serde_json::to_string_pretty(&state).expect("json").as_bytes())?)
        })?;
        let mut all = list_checkpoints(dir);
        while all.len() > keep.max(1) {
            let old = all.remove(0);
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(fin)
    }

    /// Restores weights, optimizer, stream and cursor from a checkpoint folder. The run's
    /// settings must equal the checkpoint's but for the length and recomputation; returns
    /// the checkpoint's.
    pub fn load_checkpoint(&mut self, ckpt: &Path) -> std::result::Result<TrainConfig, TrainError> {
        let CheckpointInfo { config, state, data, .. } = read_checkpoint(ckpt)?;
        // what may change: the length, and recomputation (the same steps up to rounding: a
        // run stopped out of memory continues with --recompute)
        // (checkpoints written before the image-reward weights were recorded hold none)
        let weights = config.image_reward_weights.clone().or_else(|| self.config.image_reward_weights.clone());
        let same = TrainConfig { steps: self.config.steps, recompute: self.config.recompute, image_reward_weights: weights, ..config.clone() };
        if same != self.config {
            return Err(TrainError::Setup(format!(
                "{} was written with other settings; resume with the same ones (only --steps and --recompute may change).\n  checkpoint: {config:?}\n  now:        {:?}",
                ckpt.display(),
                self.config
            )));
        }
        // the order of records (the cursor's meaning) depends on the data; checkpoints
        // of earlier versions do not record it
        let now = dataset_fingerprint(self.shards);
        if let Some(was) = data.filter(|was| *was != now) {
            return Err(TrainError::Setup(format!(
                "{} was trained on other data ({was}; now {now}): resume with the same --data folders, in the same order",
                ckpt.display()
            )));
        }
        restore_student(ckpt, &self.student)?;
        self.opt.load(&ckpt.join("optimizer.safetensors"))?;
        self.sync_replicas()?;
        // a run that switched to recomputation when out of memory keeps it
        if state.recompute_since.is_some() && !self.config.recompute {
            self.set_recompute(true);
        }
        self.state = state;
        Ok(config)
    }
}

/// What a checkpoint's `state.json` holds.
pub struct CheckpointInfo {
    /// The run's settings.
    pub config: TrainConfig,
    /// Where the run was.
    pub state: TrainState,
    /// The fingerprint of the data it trained on (None: written before it was recorded).
    pub data: Option<serde_json::Value>,
    /// The model folder it trained from (None: not recorded, e.g. a run made through the
    /// library without [`Trainer::record_models_folder`]).
    pub models: Option<PathBuf>,
}

/// Reads a checkpoint folder's `state.json`.
pub fn read_checkpoint(ckpt: &Path) -> std::result::Result<CheckpointInfo, TrainError> {
    let file = ckpt.join("state.json");
    let bad = |e: &dyn std::fmt::Display| TrainError::Setup(format!("{}: {e} (not a checkpoint folder of `train`?)", file.display()));
    let text = std::fs::read_to_string(&file).map_err(|e| bad(&e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e))?;
    let config: TrainConfig = serde_json::from_value(v["config"].clone()).map_err(|e| bad(&e))?;
    let state: TrainState = serde_json::from_value(v["state"].clone()).map_err(|e| bad(&e))?;
    let models = v.get("models").and_then(|m| m.as_str()).map(PathBuf::from);
    Ok(CheckpointInfo { config, state, data: v.get("data").cloned(), models })
}

/// Writes a checkpoint's weights into `student` (loaded with the checkpoint's settings):
/// its trainable tensors and, with one, its EMA target.
pub fn restore_student(ckpt: &Path, student: &Student) -> std::result::Result<(), TrainError> {
    let restore = |file: &str, named: Vec<(String, Tensor)>| -> std::result::Result<(), TrainError> {
        let f = WeightFile::open(&ckpt.join(file))?;
        for (name, t) in named {
            let (shape, data) = f.host_f32(&name)?;
            if shape != t.shape() {
                return Err(TrainError::Setup(format!("{}: {name} is {shape:?}, the student has {:?}", ckpt.join(file).display(), t.shape())));
            }
            t.write(&data)?;
        }
        Ok(())
    };
    restore("student.safetensors", student.trainable_names().into_iter().zip(student.trainable()).collect())?;
    if let Some(target) = &student.target {
        restore(EMA_TARGET_FILE, student.params.iter().map(|(n, _)| n.clone()).zip(target.params.iter().cloned()).collect())?;
    }
    Ok(())
}

/// A checkpoint's EMA target weights (runs with [`TrainConfig::ema_target`]).
const EMA_TARGET_FILE: &str = "ema_target.safetensors";

/// Checkpoint folders in `dir`, oldest first.
pub fn list_checkpoints(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-"))).collect())
        .unwrap_or_default();
    v.sort();
    v
}
