//! The `vae/` layout: config.json (ddconfig, embed_dim, scale_factor, checkpoint_prefix),
//! weights.safetensors, io.safetensors (see ../shared/fixtures/vae/README.md).

use std::path::Path;

use t2v_kernels::autograd::Tape;
use t2v_kernels::Gpu;

use super::{Check, ParityError};
use crate::models::vae::{Vae, VaeConfig};
use crate::models::weights::{Loader, WeightFile};

/// Max abs error allowed, relative to the reference output's largest magnitude.
const TOLERANCE: f32 = 1e-4;

pub fn run(dir: &Path, gpu: &Gpu) -> Result<Vec<Check>, ParityError> {
    let cfg_path = dir.join("config.json");
    let bad = |msg: &str| ParityError::Bad { path: cfg_path.display().to_string(), msg: msg.to_string() };
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).map_err(|e| bad(&e.to_string()))?).map_err(|e| bad(&e.to_string()))?;
    let config = VaeConfig::from_json(&cfg).ok_or_else(|| bad("ddconfig lacks fields (ch, ch_mult, num_res_blocks, z_channels, in_channels, out_ch, resolution) or embed_dim"))?;
    let prefix = cfg["checkpoint_prefix"].as_str().unwrap_or("first_stage_model.");
    let wf = WeightFile::open(&dir.join("weights.safetensors"))?;
    let loader = Loader::new(&wf, gpu, prefix);
    let vae = Vae::load(&loader, &config)?;
    loader.finish()?;
    let io = WeightFile::open(&dir.join("io.safetensors"))?;
    let tape = Tape::new();
    let mut checks = Vec::new();
    let mut compare = |name: &str, got: &t2v_kernels::Tensor| -> Result<(), ParityError> {
        let (shape, want) = io.host_f32(name)?;
        if got.shape() != shape.as_slice() {
            return Err(ParityError::Bad { path: dir.join("io.safetensors").display().to_string(), msg: format!("{name}: reference shape {shape:?}, ours {:?}", got.shape()) });
        }
        checks.push(Check::new(name, &got.to_vec()?, &want, TOLERANCE));
        Ok(())
    };
    if io.entries().contains_key("in.image") {
        let x = tape.constant(io.tensor(gpu, "in.image")?);
        let (mean, logvar) = vae.encode_moments(&x)?;
        compare("out.mean", mean.value())?;
        compare("out.logvar", logvar.value())?;
        compare("out.latent_scaled", vae.encode(&x)?.value())?;
    }
    if io.entries().contains_key("in.latent_scaled") {
        let z = tape.constant(io.tensor(gpu, "in.latent_scaled")?);
        compare("out.decoded", vae.decode(&z)?.value())?;
    }
    Ok(checks)
}
