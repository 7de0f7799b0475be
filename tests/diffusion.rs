//! Teacher DDIM sampling with classifier-free guidance, checked against a host
//! computation on the unet3d fixture model.
use std::path::Path;

use t2v_kernels::autograd::Tape;
use t2v_kernels::{Gpu, GpuOptions, Tensor};
use t2v_turbo::diffusion::{consistency_timesteps, ddim_sample, ddim_timesteps, DdimConfig, Schedule};
use t2v_turbo::models::unet3d::{Unet3d, UnetConfig, UnetInputs};
use t2v_turbo::models::weights::{Loader, WeightFile};

#[test]
fn one_ddim_step_is_x0_of_the_guided_eps() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet3d");
    let g = Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).unwrap();
    let cfg = UnetConfig::from_json(&serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()).unwrap();
    let wf = WeightFile::open(&dir.join("weights.safetensors")).unwrap();
    let unet = Unet3d::load(&Loader::new(&wf, &g, "model.diffusion_model."), &cfg).unwrap();
    let io = WeightFile::open(&dir.join("forward.safetensors")).unwrap();
    let tape = Tape::new();
    let z = tape.constant(io.tensor(&g, "in.z").unwrap());
    let ctx = tape.constant(io.tensor(&g, "in.context").unwrap());
    let unc = tape.constant(Tensor::zeros(&g, ctx.shape()).unwrap());
    let sched = Schedule::videocrafter();
    let x0 = ddim_sample(&unet, &sched, &z, &ctx, &unc, &[8.0], &DdimConfig { steps: 1, cfg: 12.0, eta: 0.0 }, |_| unreachable!()).unwrap();
    // host: eps = eps_u + 12 (eps_c - eps_u) at t = 999, x0 = (z - sqrt(1 - a) eps) / sqrt(a)
    let call = |c: &t2v_kernels::autograd::Var| unet.forward(&UnetInputs { z: &z, t: &[999.0], context: c, fps: &[8.0], w_embedding: None, motion_embedding: None, record_attention: false }).unwrap().eps.value().to_vec().unwrap();
    let (ec, eu, zv) = (call(&ctx), call(&unc), z.value().to_vec().unwrap());
    let a = sched.alphas_cumprod[999] as f64;
    let got = x0.value().to_vec().unwrap();
    for i in 0..zv.len() {
        let eps = eu[i] as f64 + 12.0 * (ec[i] as f64 - eu[i] as f64);
        let want = (zv[i] as f64 - (1.0 - a).sqrt() * eps) / a.sqrt();
        assert!((got[i] as f64 - want).abs() <= 1e-4 * want.abs().max(1.0), "element {i}: {} vs {want}", got[i]);
    }
    assert_eq!(ddim_timesteps(1000, 50)[49], 999);
    assert_eq!(consistency_timesteps(1000, 200, 4), vec![999, 749, 499, 249]);
}
