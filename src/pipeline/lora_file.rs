//! A LoRA run's result as one small file (`train`'s `OUT/model/lora.safetensors`): for every
//! adapted UNet weight `W` (checkpoint key, no prefix) its `W.lora_down` (rank, fan-in...)
//! and `W.lora_up` (out, rank...), their scale alpha / rank in the metadata, and as
//! `student.K` the student's own layers K (the guidance- and motion-scale embeddings a
//! teacher lacks). A teacher's model folder plus this file is the student
//! (`sample --models TEACHER --lora FILE`); `strength` scales the adapters.

use std::collections::HashMap;
use std::path::Path;

use t2v_kernels::autograd::Lora;
use t2v_kernels::Tensor;

use crate::models::weights::{save_weights, Result, SaveDtype, WeightFile, WeightsError};
use crate::pipeline::model_dir::STUDENT_LAYERS;
use crate::pipeline::train::Student;

/// The `format` metadata of such a file.
pub const LORA_FORMAT: &str = "t2v-turbo lora";

/// Writes `student`'s adapters and its own layers to `path` (`dtype`: their precision).
pub fn write_lora(path: &Path, student: &Student, dtype: SaveDtype) -> Result<()> {
    let bad = |msg: String| WeightsError::Data { path: path.display().to_string(), msg };
    let Some((_, first)) = student.adapters.first() else { return Err(bad("the student has no LoRA adapters".into())) };
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (i, l) in &student.adapters {
        if l.scale != first.scale {
            return Err(bad(format!("adapters of different scales ({} and {}): one file holds one", first.scale, l.scale)));
        }
        let name = &student.params[*i].0;
        named.push((format!("{name}.lora_down"), l.down.clone()));
        named.push((format!("{name}.lora_up"), l.up.clone()));
    }
    for (name, t) in student.params.iter().filter(|(n, _)| is_student_layer(n)) {
        named.push((format!("student.{name}"), t.clone()));
    }
    save_weights(path, &named, dtype, &[("format", LORA_FORMAT.into()), ("scale", first.scale.to_string()), ("rank", first.down.shape()[0].to_string())])
}

fn is_student_layer(name: &str) -> bool {
    STUDENT_LAYERS.iter().any(|p| name.starts_with(p))
}

/// Opens a LoRA file, checking that it is one.
pub fn open_lora(path: &Path) -> Result<WeightFile> {
    let f = WeightFile::open(path)?;
    if f.metadata.get("format").map(String::as_str) != Some(LORA_FORMAT) {
        return Err(WeightsError::Data { path: path.display().to_string(), msg: format!("not a LoRA file of `t2v-turbo train --lora-rank` (no format {LORA_FORMAT:?} in its metadata)") });
    }
    Ok(f)
}

/// The width of the guidance-scale embedding of a LoRA file's student layers, if it has them.
pub fn student_cond_dim(f: &WeightFile) -> Option<usize> {
    f.entries().get("student.time_cond_proj.weight").and_then(|e| e.shape.last().copied())
}

/// Whether a LoRA file's student layers include the motion-scale embedding (T2V-Turbo-v2's
/// student; without: T2V-Turbo (v1)'s, conditioned on w alone).
pub fn student_motion_cond(f: &WeightFile) -> bool {
    f.entries().contains_key("student.motion_cond_proj.weight")
}

/// What [`apply_lora`] changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraApplied {
    pub adapters: usize,
    pub student_layers: usize,
}

/// Adds the adapters of a LoRA file ([`open_lora`]), times `strength` (1: as trained), to
/// the weights `params` name (a UNet's, f32: [`crate::pipeline::model_dir::load_unet_file`]'s),
/// on the device, and copies the file's student layers into theirs. Every tensor of the
/// file must find its weight, with the shape it was trained for.
pub fn apply_lora(params: &[(String, Tensor)], f: &WeightFile, strength: f32) -> Result<LoraApplied> {
    let bad = |msg: String| WeightsError::Data { path: f.path.display().to_string(), msg };
    let scale: f32 = f.metadata.get("scale").and_then(|s| s.parse().ok()).ok_or_else(|| bad("no scale in its metadata".into()))?;
    let by_name: HashMap<&str, &Tensor> = params.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let weight = |name: &str| by_name.get(name).copied().ok_or_else(|| bad(format!("adapts {name}, which the UNet does not have (another model?)")));
    let gpu = params.first().map(|(_, t)| t.gpu().clone()).ok_or_else(|| bad("no UNet weights to apply it to".into()))?;
    let tensor = |key: &str| f.tensor(&gpu, key);
    let mut applied = LoraApplied { adapters: 0, student_layers: 0 };
    // the student layers first: their adapters add to them
    for key in f.entries().keys() {
        if let Some(name) = key.strip_prefix("student.") {
            let (w, t) = (weight(name)?, tensor(key)?);
            if w.shape() != t.shape() {
                return Err(bad(format!("{key} is {:?}, the UNet's {name} {:?}", t.shape(), w.shape())));
            }
            w.copy_from(&t)?;
            applied.student_layers += 1;
        }
    }
    for key in f.entries().keys().filter(|k| !k.starts_with("student.")) {
        if let Some(name) = key.strip_suffix(".lora_down") {
            let w = weight(name)?;
            let lora = Lora { down: tensor(key)?, up: tensor(&format!("{name}.lora_up"))?, scale: scale * strength };
            w.copy_from(&lora.merge(w)?)?;
            applied.adapters += 1;
        } else if !key.ends_with(".lora_up") {
            return Err(bad(format!("unexpected tensor {key}")));
        }
    }
    let ups = f.entries().keys().filter(|k| k.ends_with(".lora_up")).count();
    if ups != applied.adapters {
        return Err(bad(format!("{ups} lora_up tensors for {} lora_down ones", applied.adapters)));
    }
    Ok(applied)
}
