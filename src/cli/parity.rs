//! `t2v-turbo parity DIR`.

use std::path::PathBuf;

use t2v_kernels::Gpu;

use super::{CliError, DeviceArgs};

#[derive(clap::Args, Debug)]
pub struct ParityArgs {
    /// A fixture folder (layouts of ../shared/fixtures: tokenizer/, openclip/, vae/, unet3d/, internvideo2/),
    /// from this project or your own PyTorch run of the reference code.
    pub dir: PathBuf,
}

pub fn run(dev: &DeviceArgs, args: &ParityArgs) -> Result<(), CliError> {
    let gpu = Gpu::new(&dev.gpu_options(true))?;
    let (layout, checks) = crate::parity::run(&args.dir, &gpu).map_err(|e| CliError::Check(e.to_string()))?;
    println!("{} ({layout:?} layout) on {}", args.dir.display(), gpu.adapter_info().name);
    println!("{:<34} {:>12} {:>12} {:>12}  result", "tensor", "max abs", "max rel", "tolerance");
    let mut failed = 0;
    for c in &checks {
        let ok = c.passed();
        failed += !ok as usize;
        println!("{:<34} {:>12.3e} {:>12.3e} {:>12.3e}  {}", c.name, c.max_abs, c.max_rel, c.tolerance, if ok { "pass" } else { "FAIL" });
    }
    if checks.is_empty() {
        return Err(CliError::Check("no output tensors to compare in this folder".into()));
    }
    if failed > 0 {
        return Err(CliError::Check(format!("{failed} of {} tensors outside tolerance", checks.len())));
    }
    println!("all {} tensors within tolerance", checks.len());
    Ok(())
}
