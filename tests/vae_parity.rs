//! The VAE against the ldm reference outputs in tests/fixtures/vae (bf16 weights).
use std::path::Path;

use t2v_kernels::autograd::Tape;
use t2v_kernels::{Gpu, GpuOptions, Tensor};
use t2v_turbo::models::vae::{Vae, VaeConfig};
use t2v_turbo::models::weights::{Loader, WeightFile, WeightsError};

fn gpu() -> Gpu {
    Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).expect("a wgpu adapter")
}

fn max_err(got: &[f32], want: &[f32]) -> (f32, f32) {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    (err, scale)
}

/// The fixture's directory, its config, and its weight and input/output files.
fn fixture() -> (std::path::PathBuf, VaeConfig, WeightFile, WeightFile) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vae");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let config = VaeConfig::from_json(&cfg).unwrap();
    let wf = WeightFile::open(&dir.join("weights.safetensors")).unwrap();
    let io = WeightFile::open(&dir.join("io.safetensors")).unwrap();
    (dir, config, wf, io)
}

#[test]
fn vae_matches_the_reference() {
    let (_, config, wf, io) = fixture();
    let g = gpu();
    let loader = Loader::new(&wf, &g, "first_stage_model.");
    let vae = Vae::load(&loader, &config).unwrap();
    loader.finish().unwrap();
    let tape = Tape::new();
    let x = tape.constant(io.tensor(&g, "in.image").unwrap());
    let (mean, logvar) = vae.encode_moments(&x).unwrap();
    let latent = vae.encode(&x).unwrap();
    for (name, v) in [("out.mean", &mean), ("out.logvar", &logvar), ("out.latent_scaled", &latent)] {
        let (shape, want) = io.host_f32(name).unwrap();
        assert_eq!(v.shape(), shape.as_slice(), "{name}");
        let (err, scale) = max_err(&v.value().to_vec().unwrap(), &want);
        assert!(err <= 1e-4 * scale, "{name}: max abs error {err:e} > 1e-4 x {scale}");
    }
    // a video of the two images as frames gives the same latents, frame by frame
    let frames = t2v_kernels::ops::permute(&x.value().reshape(&[1, 2, 3, 32, 32]).unwrap(), &[0, 2, 1, 3, 4]).unwrap();
    let zv = vae.encode_video(&tape.constant(frames)).unwrap();
    assert_eq!(zv.shape(), [1, 4, 2, 16, 16]);
    let zv_frames = t2v_kernels::ops::permute(zv.value(), &[0, 2, 1, 3, 4]).unwrap().to_vec().unwrap();
    let (err, scale) = max_err(&zv_frames, &latent.value().to_vec().unwrap());
    assert!(err <= 1e-6 * scale.max(1.0), "video encode differs from per-image encode by {err}");
    let z = tape.constant(io.tensor(&g, "in.latent_scaled").unwrap());
    let dec = vae.decode(&z).unwrap();
    let (shape, want) = io.host_f32("out.decoded").unwrap();
    assert_eq!(dec.shape(), shape.as_slice());
    let (err, scale) = max_err(&dec.value().to_vec().unwrap(), &want);
    assert!(err <= 1e-4 * scale, "decoded: max abs error {err:e} > 1e-4 x {scale}");
}

#[test]
fn decoder_is_differentiable_in_its_latent() {
    let (_, config, wf, io) = fixture();
    let g = gpu();
    let loader = Loader::new(&wf, &g, "first_stage_model.");
    let vae = Vae::load(&loader, &config).unwrap();
    let (shape, zv) = io.host_f32("in.latent_scaled").unwrap();
    let loss_of = |z: &[f32]| -> (f32, Option<Vec<f32>>) {
        let tape = Tape::new();
        let zl = tape.leaf(Tensor::from_slice(&g, &shape, z).unwrap());
        let img = vae.decode(&zl).unwrap();
        let loss = t2v_kernels::autograd::mean_all(&t2v_kernels::autograd::square(&img).unwrap()).unwrap();
        let l = loss.value().item_at(0).unwrap();
        let grads = tape.backward(&loss).unwrap();
        (l, grads.get(&zl).map(|t| t.to_vec().unwrap()))
    };
    let (_, grad) = loss_of(&zv);
    let grad = grad.expect("gradient w.r.t. the latent");
    // central differences on a few latent elements (f32 forward: loose tolerance)
    for e in [0, zv.len() / 3, zv.len() - 1] {
        let h = 1e-2;
        let (mut p, mut m) = (zv.clone(), zv.clone());
        p[e] += h;
        m[e] -= h;
        let num = (loss_of(&p).0 - loss_of(&m).0) / (2.0 * h);
        assert!((grad[e] - num).abs() <= 0.05 * num.abs().max(1e-3), "d loss / d z[{e}]: {} vs {num}", grad[e]);
    }
}

#[test]
fn passes_of_fewer_images_give_the_same_values_and_gradients() {
    // a device whose binding limit holds one image's activations at a time decodes (and
    // encodes) a batch in passes: same values, same gradient as one pass
    let (_, config, wf, io) = fixture();
    let g = gpu();
    let load = || Vae::load(&Loader::new(&wf, &g, "first_stage_model."), &config).unwrap();
    let (whole, passes) = (load(), load().with_pass_bytes(1));
    let z2 = io.tensor(&g, "in.latent_scaled").unwrap();
    let z = t2v_kernels::ops::concat(&[&z2, &t2v_kernels::ops::slice(&z2, 0, 0, 1).unwrap()], 0).unwrap();
    let x = io.tensor(&g, "in.image").unwrap();
    let run = |vae: &Vae| {
        let tape = Tape::new();
        let zl = tape.leaf(z.clone());
        let img = vae.decode(&zl).unwrap();
        let loss = t2v_kernels::autograd::mean_all(&t2v_kernels::autograd::square(&img).unwrap()).unwrap();
        let grad = tape.backward(&loss).unwrap().get(&zl).unwrap().to_vec().unwrap();
        let (mean, logvar) = vae.encode_moments(&tape.constant(x.clone())).unwrap();
        (img.shape().to_vec(), img.value().to_vec().unwrap(), grad, mean.value().to_vec().unwrap(), logvar.value().to_vec().unwrap())
    };
    // without a tape, a pass's activations are freed before the next: a lower peak
    let peak = |vae: &Vae| {
        let tape = Tape::new();
        g.sync().unwrap();
        g.reset_peak_memory();
        let base = g.memory().live_bytes;
        let img = tape.no_grad(|| vae.decode(&tape.constant(z.clone())).unwrap());
        img.value().item_at(0).unwrap();
        g.memory().peak_live_bytes - base
    };
    // (one image per pass asked for directly: `sample --vae-frames-per-pass 1`)
    let counted = load().with_images_per_pass(1);
    let (p_whole, p_passes, p_counted) = (peak(&whole), peak(&passes), peak(&counted));
    assert!(p_passes * 3 < p_whole * 2, "peak bytes: {p_passes} in passes of one image, {p_whole} in one pass");
    assert_eq!(p_counted, p_passes, "one image per pass, asked for by count and by bytes");
    let a = run(&whole);
    assert_eq!(a.0, [3, 3, 32, 32]);
    for b in [run(&passes), run(&counted)] {
        assert_eq!(a.0, b.0);
        for (name, u, v) in [("decoded", &a.1, &b.1), ("gradient", &a.2, &b.2), ("mean", &a.3, &b.3), ("logvar", &a.4, &b.4)] {
            let (err, scale) = max_err(v, u);
            assert!(err <= 1e-5 * scale.max(1e-3), "{name}: passes differ from one pass by {err:e} (scale {scale})");
        }
    }
    // under a memory limit between the two peaks, a decode without a backward pass to keep
    // for splits its pass in halves when it runs out of memory: the same images
    g.sync().unwrap();
    let base = g.memory().live_bytes;
    g.set_memory_limit(Some(base + (p_passes + p_whole) / 2));
    let tape = Tape::new();
    let split = tape.no_grad(|| whole.decode(&tape.constant(z.clone()))).unwrap().value().to_vec().unwrap();
    let (err, scale) = max_err(&split, &a.1);
    assert!(err <= 1e-5 * scale.max(1e-3), "split passes differ from one pass by {err:e} (scale {scale})");
    // a decode that records for a backward pass is not split: out of memory
    let e = whole.decode(&tape.leaf(z.clone())).unwrap_err().to_string();
    assert!(e.contains("over the memory limit"), "{e}");
    g.set_memory_limit(None);
    // the third image is the first again
    let n = a.1.len() / 3;
    let (err, scale) = max_err(&a.1[2 * n..], &a.1[..n]);
    assert!(err <= 1e-5 * scale, "the repeated image decodes differently: {err:e}");
}

#[test]
fn checkpointed_decoding_holds_no_activations_and_gives_the_same_gradient() {
    // Vae::decode_checkpointed (training's reward frames with recomputation): the same
    // images and gradient as Vae::decode, with only inputs and outputs held for the backward
    let (_, config, wf, io) = fixture();
    let g = gpu();
    let vae = Vae::load(&Loader::new(&wf, &g, "first_stage_model."), &config).unwrap();
    let z2 = io.tensor(&g, "in.latent_scaled").unwrap();
    let z = t2v_kernels::ops::concat(&[&z2, &z2], 0).unwrap();
    let run = |checkpointed: bool| {
        let tape = Tape::new();
        let zl = tape.leaf(z.clone());
        g.sync().unwrap();
        let base = g.memory().live_bytes;
        let img = if checkpointed { vae.decode_checkpointed(&zl).unwrap() } else { vae.decode(&zl).unwrap() };
        let loss = t2v_kernels::autograd::mean_all(&t2v_kernels::autograd::square(&img).unwrap()).unwrap();
        g.sync().unwrap();
        let held = g.memory().live_bytes - base;
        let grad = tape.backward(&loss).unwrap().get(&zl).unwrap().to_vec().unwrap();
        (img.value().to_vec().unwrap(), grad, held)
    };
    let (plain, ckpt) = (run(false), run(true));
    for (name, u, v) in [("decoded", &plain.0, &ckpt.0), ("gradient", &plain.1, &ckpt.1)] {
        let (err, scale) = max_err(v, u);
        assert!(err <= 1e-5 * scale.max(1e-3), "{name}: checkpointed decoding differs by {err:e} (scale {scale})");
    }
    // held for the backward: the decoder's activations of 4 images, or their latents and images
    let image_bytes = (plain.0.len() * 4) as u64;
    assert!(ckpt.2 <= 3 * image_bytes, "checkpointed decoding holds {} bytes for 4 images of {image_bytes} bytes", ckpt.2);
    assert!(ckpt.2 * 5 < plain.2, "held bytes: {} checkpointed, {} plain", ckpt.2, plain.2);
}

#[test]
fn weight_problems_are_reported_together() {
    let (dir, config, wf, _) = fixture();
    let g = gpu();
    // a config that disagrees with the file: wider channels and an extra level
    let wrong = VaeConfig { ch: 32, ch_mult: vec![1, 2, 2], num_res_blocks: 1, resolution: 32, ..Default::default() };
    let loader = Loader::new(&wf, &g, "first_stage_model.");
    let _ = Vae::load(&loader, &wrong).unwrap();
    let e = loader.finish().unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, WeightsError::Mismatch { .. }));
    assert!(msg.contains("missing keys") && msg.contains("encoder.down.2.block.0.conv1.weight"), "{msg}");
    assert!(msg.contains("weights.safetensors"), "names the file: {msg}");
    // wrong prefix: everything missing, the file's keys unexpected... none under this prefix
    let l2 = Loader::new(&wf, &g, "model.diffusion_model.");
    let _ = Vae::load(&l2, &config).unwrap();
    assert!(l2.finish().unwrap_err().to_string().contains("missing keys"));
    // truncated and foreign files
    let tmp = std::env::temp_dir().join(format!("t2v-trunc-{}.safetensors", std::process::id()));
    let bytes = std::fs::read(dir.join("weights.safetensors")).unwrap();
    std::fs::write(&tmp, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(WeightFile::open(&tmp), Err(WeightsError::Format { .. })));
    std::fs::write(&tmp, b"{\"hello\": 1}").unwrap();
    assert!(matches!(WeightFile::open(&tmp), Err(WeightsError::Format { .. })));
    std::fs::remove_file(&tmp).unwrap();
    assert!(matches!(WeightFile::open(&dir.join("nope.safetensors")), Err(WeightsError::Io { .. })));
}

#[test]
fn extra_keys_and_shape_mismatches_are_reported_with_missing_ones() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vae");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("weights.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // drop one key, change one shape, add one unknown key
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = vec![];
    for (name, v) in st.tensors() {
        match name.as_str() {
            "first_stage_model.decoder.conv_out.bias" => continue,
            "first_stage_model.quant_conv.bias" => owned.push((name.clone(), v.dtype(), vec![2, v.shape()[0] / 2], v.data().to_vec())),
            _ => owned.push((name.clone(), v.dtype(), v.shape().to_vec(), v.data().to_vec())),
        }
    }
    owned.push(("first_stage_model.encoder.extra_head.weight".into(), safetensors::Dtype::F32, vec![2], vec![0u8; 8]));
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        owned.iter().map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let tmp = std::env::temp_dir().join(format!("t2v-badkeys-{}.safetensors", std::process::id()));
    std::fs::write(&tmp, safetensors::serialize(views, None).unwrap()).unwrap();
    let g = gpu();
    let wf = WeightFile::open(&tmp).unwrap();
    let l = Loader::new(&wf, &g, "first_stage_model.");
    let _ = Vae::load(&l, &VaeConfig::from_json(&cfg).unwrap()).unwrap();
    let msg = l.finish().unwrap_err().to_string();
    std::fs::remove_file(&tmp).unwrap();
    assert!(msg.contains("missing keys (1)") && msg.contains("decoder.conv_out.bias"), "{msg}");
    assert!(msg.contains("shape mismatches (1)") && msg.contains("quant_conv.bias: file [2, 4], model [8]"), "{msg}");
    assert!(msg.contains("unexpected keys (1)") && msg.contains("encoder.extra_head.weight"), "{msg}");
}
