//! `t2v-turbo export`: a model folder from one of a run's checkpoints.

use std::path::PathBuf;

use crate::models::weights::SaveDtype;
use crate::pipeline::model_dir::ModelDir;
use crate::pipeline::train::{export_checkpoint, resolve_checkpoint, Exported};

use super::{CliError, DeviceArgs};

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A checkpoint folder of `train` (RUN/checkpoints/step-NNNNNN), or a run folder (its
    /// newest checkpoint).
    pub checkpoint: PathBuf,
    /// The model folder the run trained from (default: the one the checkpoint records).
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// The model folder to write (it must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Storage of the UNet (and a trained text encoder) written, as `train --model-dtype`.
    #[arg(long, value_enum, default_value_t = SaveDtype::F32)]
    pub model_dtype: SaveDtype,
    /// Export the run's EMA target (`train --ema-target`) instead of the student.
    #[arg(long)]
    pub ema_target: bool,
}

pub fn run(dev: &DeviceArgs, a: &ExportArgs) -> Result<(), CliError> {
    let ckpt = resolve_checkpoint(&a.checkpoint).map_err(|e| CliError::Check(e.to_string()))?;
    let recorded = crate::pipeline::train::read_checkpoint(&ckpt).map_err(|e| CliError::Check(e.to_string()))?.models;
    let models = match (&a.models, &recorded) {
        (Some(m), _) => m.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => return Err(CliError::Check(format!("{} does not record the model folder its run trained from (an earlier version wrote it): give it with --models", ckpt.display()))),
    };
    if let (Some(given), Some(was)) = (&a.models, &recorded) {
        if std::fs::canonicalize(given).ok().as_ref() != Some(was) {
            eprintln!("note: the run trained from {}; exporting with {} (their UNets must be the same for the result to be the run's student)", was.display(), given.display());
        }
    }
    let md = ModelDir::read(&models)?;
    super::ensure_new_dir(&a.out, false)?;
    let gpu = t2v_kernels::Gpu::new(&dev.gpu_options(false))?;
    let which = if a.ema_target { Exported::EmaTarget } else { Exported::Student };
    let (_, info) = export_checkpoint(&gpu, &md, &ckpt, &a.out, a.model_dtype, which).map_err(|e| {
        // nothing half-written is left behind
        let _ = std::fs::remove_dir_all(&a.out);
        CliError::Check(e.to_string())
    })?;
    let what = if a.ema_target { "the EMA target" } else { "the student" };
    println!("{what} at step {} of {} -> model folder {}", info.state.step, ckpt.display(), a.out.display());
    println!("sample it with: t2v-turbo sample --models {} --prompt \"...\" --out videos/", a.out.display());
    Ok(())
}
