//! The `unet3d/` layout: config.json (UNetModel arguments, checkpoint_prefix),
//! weights.safetensors, forward.safetensors (see ../shared/fixtures/unet3d/README.md).
//! solver.*, motion_guidance.* and train_step.* belong to the pipeline and are reported as
//! not compared.

use std::path::Path;

use t2v_kernels::autograd::Tape;
use t2v_kernels::Gpu;

use super::{Check, ParityError, Reference};
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
    let params = loader.params();
    loader.finish()?;
    let mut fwd = Reference::open(&dir.join("forward.safetensors"))?;
    let tape = Tape::new();
    let z = tape.constant(fwd.io.tensor(gpu, "in.z")?);
    let context = tape.constant(fwd.io.tensor(gpu, "in.context")?);
    let as_f32 = |k: &str| -> Result<Vec<f32>, ParityError> { Ok(fwd.io.host_i64(k)?.1.into_iter().map(|x| x as f32).collect()) };
    let (t, fps) = (as_f32("in.t")?, as_f32("in.fps")?);
    let w = tape.constant(fwd.io.tensor(gpu, "in.w_embedding")?);
    let m = tape.constant(fwd.io.tensor(gpu, "in.motion_embedding")?);
    let teacher = unet.forward(&UnetInputs { z: &z, t: &t, context: &context, fps: &fps, w_embedding: None, motion_embedding: None, record_attention: true })?;
    fwd.compare("out.eps_teacher", teacher.eps.value(), None)?;
    for (path, probs) in &teacher.attention {
        let key = format!("attn.{path}");
        if fwd.io.entries().contains_key(&key) {
            fwd.compare(&key, probs.value(), Some(1e-5))?;
        }
    }
    let student = unet.forward(&UnetInputs { z: &z, t: &t, context: &context, fps: &fps, w_embedding: Some(&w), motion_embedding: Some(&m), record_attention: false })?;
    fwd.compare("out.eps_student", student.eps.value(), None)?;
    let mut checks = std::mem::take(&mut fwd.checks);
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
        // the reference latent itself: DDIM inversion of z0 up to t on the 200 grid
        let sched = crate::diffusion::Schedule::videocrafter();
        let grid = crate::diffusion::ddim_timesteps(1000, 200);
        let t_target = i64s("t")?[0] as usize;
        if let Some(index) = grid.iter().position(|&g| g == t_target) {
            let tape = Tape::new();
            let fps = i64s("fps")?;
            let z_ref = tape.no_grad(|| {
                let (z0, ctx) = (tape.constant(mg.tensor(gpu, "z0")?), tape.constant(mg.tensor(gpu, "context")?));
                crate::diffusion::ddim_invert(&unet, &sched, &grid, &z0, &ctx, &fps, index)
            })?;
            checks.push(Check::new("motion.z_ref (DDIM inversion)", &z_ref.value().to_vec()?, &mg.host_f32("z_ref")?.1, 1e-4));
        }
    }
    if dir.join("solver.json").exists() && dir.join("solver.safetensors").exists() {
        checks.extend(solver(dir, gpu, &unet, &fwd.io)?);
    }
    if dir.join("train_step.safetensors").exists() {
        let grad_params: Vec<String> = cfg["grad_params"].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default();
        checks.extend(train_step(dir, &unet, &params, &grad_params)?);
    }
    Ok(checks)
}

/// train_step.safetensors: one consistency-distillation loss and its parameter gradients.
fn train_step(dir: &Path, unet: &Unet3d, params: &[(String, t2v_kernels::Tensor)], grad_params: &[String]) -> Result<Vec<Check>, ParityError> {
    use crate::diffusion::distill::{consistency_loss, CdSample, Distance};
    use crate::diffusion::{DdimSolver, Schedule};
    let path = dir.join("train_step.safetensors");
    let ts = WeightFile::open(&path)?;
    let gpu = unet_gpu(params)?;
    let t = |k: &str| ts.tensor(&gpu, k);
    let scalar = |k: &str| -> Result<f32, ParityError> { Ok(ts.host_f32(k)?.1[0]) };
    let (z_t, cond, uncond, score) = (t("in.z_t")?, t("in.cond_teacher_out")?, t("in.uncond_teacher_out")?, t("in.score")?);
    let tape = Tape::new();
    let context = tape.constant(t("in.context")?);
    let fps: Vec<f32> = ts.host_i64("in.fps")?.1.into_iter().map(|x| x as f32).collect();
    let use_motion = ts.host_f32("in.use_motion_guide")?.1[0] != 0.0;
    let sample = CdSample {
        z_t: &z_t,
        index: ts.host_i64("in.index")?.1[0] as usize,
        cond_eps: &cond,
        uncond_eps: &uncond,
        score: Some(&score),
        use_motion,
        w: scalar("in.w")?,
        motion_gs: scalar("in.motion_gs")?,
        motion_percentage: 0.5,
        noise_factor: crate::diffusion::distill::NoiseFactor::Code,
        context: &context,
        fps: &fps,
    };
    let sched = Schedule::videocrafter();
    let solver = DdimSolver::new(&sched, 200);
    tape.set_trainable(true);
    let out = consistency_loss(unet, None, &sched, &solver, &tape, &sample, Distance::PseudoHuber(0.001))?;
    let mut checks = vec![
        Check::new("train.model_pred", &out.model_pred.value().to_vec()?, &ts.host_f32("mid.model_pred")?.1, 1e-4),
        Check::new("train.x_prev", &out.x_prev.to_vec()?, &ts.host_f32("mid.x_prev")?.1, 1e-4),
        Check::new("train.target", &out.target.to_vec()?, &ts.host_f32("mid.target")?.1, 1e-4),
        Check::new("train.loss", &[out.loss.value().item_at(0)?], &ts.host_f32("out.loss")?.1, 1e-4),
        Check::new("train.motion_scale", &[out.motion_scale], &ts.host_f32("mid.motion_scale_cond")?.1, 1e-6),
    ];
    let vars: Vec<(String, Option<t2v_kernels::autograd::Var>)> = grad_params
        .iter()
        .map(|name| (name.clone(), params.iter().find(|(k, _)| k == name).and_then(|(_, p)| tape.param_var(p))))
        .collect();
    let grads = tape.backward(&out.loss)?;
    for (name, var) in vars {
        let key = format!("grad.{name}");
        let want = ts.host_f32(&key)?.1;
        let got = match var.as_ref().and_then(|v| grads.get(v)) {
            Some(g) => g.to_vec()?,
            None => return Err(ParityError::Bad { path: path.display().to_string(), msg: format!("{name}: no gradient reached this parameter") }),
        };
        checks.push(Check::new(&format!("train.{key}"), &got, &want, 1e-3));
    }
    Ok(checks)
}

fn unet_gpu(params: &[(String, t2v_kernels::Tensor)]) -> Result<Gpu, ParityError> {
    params.first().map(|(_, t)| t.gpu().clone()).ok_or_else(|| ParityError::Bad { path: "weights".into(), msg: "no parameters".into() })
}

/// solver.json / solver.safetensors: schedule, grids, boundary conditions, DDIM step and
/// inversion, and a 4-step consistency sampling run of this UNet as the student.
fn solver(dir: &Path, gpu: &Gpu, unet: &Unet3d, forward_io: &WeightFile) -> Result<Vec<Check>, ParityError> {
    use crate::diffusion::{boundary, consistency_sample, consistency_timesteps, ddim_timesteps, DdimSolver, SamplerConfig, Schedule};
    let jpath = dir.join("solver.json");
    let bad = |msg: String| ParityError::Bad { path: jpath.display().to_string(), msg };
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&jpath).map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    let st = WeightFile::open(&dir.join("solver.safetensors"))?;
    let list = |k: &str| -> Result<Vec<f64>, ParityError> {
        j[k].as_array().ok_or_else(|| bad(format!("no list {k}")))?.iter().map(|v| v.as_f64().ok_or_else(|| bad(format!("{k}: not a number")))).collect()
    };
    let exact = |name: &str, got: &[usize], want: &[f64]| -> Check {
        let wrong = got.len().abs_diff(want.len()) + got.iter().zip(want).filter(|(a, b)| **a as f64 != **b).count();
        Check { name: name.to_string(), max_abs: wrong as f32, max_rel: 0.0, tolerance: 0.0 }
    };
    let sched = Schedule::videocrafter();
    let mut checks = vec![Check::new("alphas_cumprod", &sched.alphas_cumprod, &st.host_f32("alphas_cumprod")?.1, 1e-5)];
    for n in [200, 50] {
        checks.push(exact(&format!("ddim_timesteps_{n}"), &ddim_timesteps(1000, n), &list(&format!("ddim_timesteps_{n}"))?));
        for steps in [4, 8, 16] {
            let k = format!("inference_timesteps_origin{n}_steps{steps}");
            if j.get(&k).is_some() {
                checks.push(exact(&k, &consistency_timesteps(1000, n, steps), &list(&k)?));
            }
        }
    }
    let bt = list("boundary_t")?;
    let (cs, co): (Vec<f32>, Vec<f32>) = bt.iter().map(|&t| boundary(t as f32)).unzip();
    let to32 = |v: Vec<f64>| -> Vec<f32> { v.into_iter().map(|x| x as f32).collect() };
    checks.push(Check::new("c_skip", &cs, &to32(list("c_skip")?), 1e-6));
    checks.push(Check::new("c_out", &co, &to32(list("c_out")?), 1e-6));

    let tape = Tape::new();
    let c = |k: &str| -> Result<t2v_kernels::autograd::Var, ParityError> { Ok(tape.constant(st.tensor(gpu, k)?)) };
    let solver = DdimSolver::new(&sched, 200);
    let index = st.host_i64("ddim_step.index")?.1[0] as usize;
    let out = solver.step(&c("ddim_step.x0")?, &c("ddim_step.eps")?, index)?;
    checks.push(Check::new("ddim_step.out", &out.value().to_vec()?, &st.host_f32("ddim_step.out")?.1, 1e-4));
    let t = st.host_i64("ddim_reverse.t")?.1[0] as usize;
    let rev = sched.ddim_reverse(&c("ddim_reverse.x_prev")?, &c("ddim_reverse.eps")?, t, 5)?;
    checks.push(Check::new("ddim_reverse.out", &rev.value().to_vec()?, &st.host_f32("ddim_reverse.out")?.1, 1e-4));

    if st.entries().contains_key("sample.init") {
        let steps: Vec<usize> = list("sample_steps")?.into_iter().map(|x| x as usize).collect();
        let cfg = SamplerConfig {
            timesteps: steps,
            w: j["sample_w"].as_f64().unwrap_or(7.5) as f32,
            motion_scale: j["sample_motion_scale"].as_f64().unwrap_or(0.0) as f32,
            motion_percentage: j["sample_percentage"].as_f64().unwrap_or(0.5) as f32,
        };
        let context = tape.constant(forward_io.tensor(gpu, "in.context")?);
        let fps: Vec<f32> = forward_io.host_i64("in.fps")?.1.into_iter().map(|x| x as f32).collect();
        let denoised = consistency_sample(unet, &sched, &c("sample.init")?, &context, &fps, &cfg, |i| st.tensor(gpu, &format!("sample.noise{i}")), || Ok(()))?;
        for (i, d) in denoised.iter().enumerate() {
            let k = format!("sample.denoised{i}");
            checks.push(Check::new(&k, &d.value().to_vec()?, &st.host_f32(&k)?.1, 1e-3));
        }
    }
    Ok(checks)
}
