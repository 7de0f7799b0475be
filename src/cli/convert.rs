//! `t2v-turbo convert`: a PyTorch checkpoint (`.ckpt`, `.pt`, `.pth`, `.bin`) to a
//! safetensors file, without Python.

use std::path::PathBuf;

use crate::models::torch_checkpoint::{convert, ConvertOptions, FloatDtype};
use crate::pipeline::progress::Progress;

use super::CliError;

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// The checkpoint torch.save wrote (VideoCrafter2's model.ckpt, open_clip's
    /// open_clip_pytorch_model.bin, HPS_v2.1_compressed.pt, an InternVideo2 .pt, ...).
    pub input: PathBuf,
    /// The safetensors file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Which part of the checkpoint holds the weights: a dotted path into its dicts
    /// (`state_dict`, `module`, `model`, `optimizer_states.0.state`...), or `*` for every tensor.
    /// Default: `state_dict`, `module` or `model` where present, else everything.
    #[arg(long)]
    pub entry: Option<String>,
    /// Keep only tensors whose names start with this (repeatable), e.g.
    /// `--only model.diffusion_model. --only first_stage_model.`.
    #[arg(long)]
    pub only: Vec<String>,
    /// Remove this from the start of the names that have it (e.g. `module.`).
    #[arg(long)]
    pub strip_prefix: Option<String>,
    /// Element type of the floating-point tensors written (integers stay as they are).
    #[arg(long, value_enum, default_value = "keep")]
    pub dtype: FloatDtype,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: &ConvertArgs) -> Result<(), CliError> {
    let opts = ConvertOptions { entry: a.entry.clone(), only: a.only.clone(), strip_prefix: a.strip_prefix.clone(), dtype: a.dtype, overwrite: a.overwrite };
    let mut bar: Option<Progress> = None;
    let rep = convert(&a.input, &a.out, &opts, &mut |_, total| bar.get_or_insert_with(|| Progress::new("convert", total)).advance(1, ""))?;
    let skipped = if rep.skipped > 0 { format!(" ({} others left out by --only)", rep.skipped) } else { String::new() };
    println!("{}: {} tensors of entry {:?}{skipped}, {:.1} MB -> {}", a.input.display(), rep.tensors, rep.entry, rep.bytes as f64 / 1e6, a.out.display());
    println!("describe it with: t2v-turbo info --weights {}", a.out.display());
    Ok(())
}
