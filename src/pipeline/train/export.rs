//! A model folder from one of a run's checkpoints (`t2v-turbo export`): the student as it
//! was at that step — or its EMA target — written as `train` writes its final one, to
//! sample or evaluate intermediate steps (the reference's `checkpoint-N/unet.pt`).

use std::path::{Path, PathBuf};

use t2v_kernels::Gpu;

use super::{list_checkpoints, load_student, read_checkpoint, restore_student, write_student_model, CheckpointInfo, Student, TrainConfig, TrainError};
use crate::models::weights::SaveDtype;
use crate::pipeline::model_dir::ModelDir;

/// The checkpoint folder `path` names: a checkpoint itself (it holds `state.json`), or the
/// newest one of a run folder (`RUN/checkpoints/step-*`) or of a checkpoints folder.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf, TrainError> {
    if path.join("state.json").exists() {
        return Ok(path.to_path_buf());
    }
    for dir in [path.join("checkpoints"), path.to_path_buf()] {
        if let Some(newest) = list_checkpoints(&dir).pop() {
            return Ok(newest);
        }
    }
    Err(TrainError::Setup(format!("{}: neither a checkpoint folder (state.json, student.safetensors) nor a run folder with checkpoints", path.display())))
}

/// Which network of a checkpoint becomes the model folder's UNet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exported {
    /// The student (adapters merged; with its LoRA file, as at the end of a LoRA run).
    Student,
    /// The EMA target of a run with `--ema-target`.
    EmaTarget,
}

/// Writes the model folder `out` of checkpoint `ckpt` (a folder that `resolve_checkpoint`
/// found) of a run that trained from `md`: the UNet (and a trained text encoder) at the
/// checkpoint's step, the other models referred to in `md`. Returns the folder and what
/// the checkpoint holds.
pub fn export_checkpoint(gpu: &Gpu, md: &ModelDir, ckpt: &Path, out: &Path, dtype: SaveDtype, which: Exported) -> Result<(ModelDir, CheckpointInfo), TrainError> {
    let info = read_checkpoint(ckpt)?;
    // the student alone needs no second UNet for the EMA target (the recomputation setting
    // does not matter here)
    let config = match which {
        Exported::Student => TrainConfig { ema_target: None, ..info.config.clone() },
        Exported::EmaTarget => info.config.clone(),
    };
    let student = load_student(gpu, md, &config)?;
    restore_student(ckpt, &student)?;
    let student = match which {
        Exported::Student => student,
        Exported::EmaTarget => ema_student(student).ok_or_else(|| TrainError::Setup(format!("{} holds no EMA target: its run did not use --ema-target", ckpt.display())))?,
    };
    let folder = write_student_model(out, md, &student, info.state.step, dtype)?;
    Ok((folder, info))
}

/// The student whose UNet is `student`'s EMA target (None without one).
fn ema_student(student: Student) -> Option<Student> {
    let target = student.target?;
    let params = student.params.into_iter().map(|(n, _)| n).zip(target.params).collect();
    Some(Student { unet: target.unet, params, adapters: vec![], target: None, text: student.text })
}
