//! The `unet3d/` layout: config.json (UNetModel arguments, checkpoint_prefix),
//! weights.safetensors, forward.safetensors (see ../shared/fixtures/unet3d/README.md).
//! solver.*, motion_guidance.* and train_step.* belong to the pipeline and are reported as
//! not compared.

use std::path::Path;

use t2v_kernels::autograd::Tape;
use t2v_kernels::Gpu;

use super::{Check, ParityError};
use crate::guidance::{motion_guidance, MotionScales};
use crate::models::unet3d::{Unet3d, UnetConfig, UnetInputs};
use crate::models::weights::{Loader, WeightFile};

pub fn run(dir: &Path, gpu: &Gpu) -> Result<Vec<Check>, ParityError> {
    let cfg_path = dir.join("config.json");
    let bad = |msg: String| ParityError::Bad { path: cfg_path.display().to_string(), msg };
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    let config = UnetConfig::from_json(&cfg).ok_or_else(|| bad("missing UNetModel arguments".into()))?;
    let prefix = cfg["checkpoint_prefix"].as_str().unwrap_or("model.diffusion_model.");
    let wf = WeightFile::open(&dir.join("weights.safetensors"))?;
    let loader = Loader::new(&wf, gpu, prefix);
    let unet = Unet3d::load(&loader, &config)?;
    loader.finish()?;
    let io = WeightFile::open(&dir.join("forward.safetensors"))?;
    let io_path = dir.join("forward.safetensors").display().to_string();
    let tape = Tape::new();
    let z = tape.constant(io.tensor(gpu, "in.z")?);
    let context = tape.constant(io.tensor(gpu, "in.context")?);
    let as_f32 = |k: &str| -> Result<Vec<f32>, ParityError> { Ok(io.host_i64(k)?.1.into_iter().map(|x| x as f32).collect()) };
    let (t, fps) = (as_f32("in.t")?, as_f32("in.fps")?);
    let w = tape.constant(io.tensor(gpu, "in.w_embedding")?);
    let m = tape.constant(io.tensor(gpu, "in.motion_embedding")?);
    let mut checks = Vec::new();
    let mut compare = |name: &str, got: &t2v_kernels::Tensor, abs: Option<f32>| -> Result<(), ParityError> {
        let (shape, want) = io.host_f32(name)?;
        if got.shape() != shape.as_slice() {
            return Err(ParityError::Bad { path: io_path.clone(), msg: format!("{name}: reference shape {shape:?}, ours {:?}", got.shape()) });
        }
        let v = got.to_vec()?;
        checks.push(match abs {
            Some(a) => Check::absolute(name, &v, &want, a),
            None => Check::new(name, &v, &want, 1e-4),
        });
        Ok(())
    };
    let teacher = unet.forward(&UnetInputs { z: &z, t: &t, context: &context, fps: &fps, w_embedding: None, motion_embedding: None, record_attention: true })?;
    compare("out.eps_teacher", teacher.eps.value(), None)?;
    for (path, probs) in &teacher.attention {
        let key = format!("attn.{path}");
        if io.entries().contains_key(&key) {
            compare(&key, probs.value(), Some(1e-5))?;
        }
    }
    let student = unet.forward(&UnetInputs { z: &z, t: &t, context: &context, fps: &fps, w_embedding: Some(&w), motion_embedding: Some(&m), record_attention: false })?;
    compare("out.eps_student", student.eps.value(), None)?;
    drop(compare);
    let mg_path = dir.join("motion_guidance.safetensors");
    if mg_path.exists() {
        let mg = WeightFile::open(&mg_path)?;
        let i64s = |k: &str| -> Result<Vec<f32>, ParityError> { Ok(mg.host_i64(k)?.1.into_iter().map(|x| x as f32).collect()) };
        let r = motion_guidance(&unet, &mg.tensor(gpu, "z_ref")?, &mg.tensor(gpu, "z_t")?, &i64s("t")?, &mg.tensor(gpu, "context")?, &i64s("fps")?, MotionScales::default())?;
        let energy = mg.host_f32("energy")?.1;
        // the README's energy tolerance is relative (1e-4)
        checks.push(Check::new("motion.energy", &[r.energy], &energy, 1e-4));
        checks.push(Check::new("motion.grad", &r.grad.to_vec()?, &mg.host_f32("grad")?.1, 1e-3));
        checks.push(Check::new("motion.cond_teacher_out", &r.teacher_eps.to_vec()?, &mg.host_f32("cond_teacher_out")?.1, 1e-4));
    }
    Ok(checks)
}
