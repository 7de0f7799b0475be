//! `t2v-turbo init`: a model folder of randomly initialised models (the tiny size of the
//! embedded default, or VideoCrafter2's for benchmarks and memory planning).

use std::path::PathBuf;

use t2v_kernels::{Gpu, GpuOptions};

use super::{ensure_new_dir, CliError, DeviceArgs};
use crate::models::weights::SaveDtype;
use crate::pipeline::model_dir::{init_random, Preset};

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Output folder (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = Preset::Tiny)]
    pub preset: Preset,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Store weights as f16 (half the size).
    #[arg(long)]
    pub f16: bool,
}

pub fn run(dev: &DeviceArgs, a: &InitArgs) -> Result<(), CliError> {
    ensure_new_dir(&a.out, false)?;
    let gpu = Gpu::new(&GpuOptions { adapter: dev.adapter.clone(), quiet: true, ..Default::default() })?;
    let dir = init_random(&gpu, a.preset, &a.out, a.seed, if a.f16 { SaveDtype::F16 } else { SaveDtype::F32 })?;
    println!("random {:?} models in {} (config: {})", a.preset, a.out.display(), dir.root.join("config.json").display());
    Ok(())
}
