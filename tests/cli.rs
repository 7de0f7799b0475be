//! The `t2v-turbo` binary: info, adapter selection and the no-adapter message.
use std::process::Command;

mod common;
use common::Scratch;

fn t2v(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_t2v-turbo"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().expect("run t2v-turbo");
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

#[test]
fn info_lists_adapters_and_self_checks() {
    let (ok, out, err) = t2v(&["info"], &[]);
    assert!(ok, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("[0] "), "{out}");
    assert!(out.contains("SHADER_F16") && out.contains("storage binding"), "{out}");
    assert!(out.contains("self-check") && out.contains("ok"), "{out}");
}

/// `--matrix-cores`: the GEMMs on the adapter's matrix units where it has cooperative
/// matrices (the self-check passes on them), else a refusal that says why.
#[test]
fn matrix_cores_run_or_are_refused_with_the_reason() {
    let (ok, out, err) = t2v(&["info", "--matrix-cores"], &[]);
    if ok {
        assert!(out.contains("GEMMs: matrix cores") && out.contains("self-check") && out.contains("ok"), "{out}");
    } else {
        assert!(err.contains("matrix cores requested") && err.contains("lacks") && err.contains("run without them"), "{err}");
        assert!(out.contains("matrix cores: none usable"), "{out}");
    }
}

#[test]
fn unknown_adapter_lists_the_available_ones() {
    let (ok, _, err) = t2v(&["info", "--adapter", "no-such-gpu-42"], &[]);
    assert!(!ok);
    assert!(err.contains("no adapter matches \"no-such-gpu-42\"") && err.contains("[0]"), "{err}");
}

#[test]
fn a_bad_conv_path_setting_is_refused() {
    let (ok, _, err) = t2v(&["info"], &[("T2V_CONV_PATH", "fft")]);
    assert!(!ok && err.contains("T2V_CONV_PATH=fft: expected auto, direct, winograd or winograd4"), "{err}");
    let (ok, out, err) = t2v(&["info"], &[("T2V_CONV_PATH", "winograd")]);
    assert!(ok && out.contains("3x3 convolutions: Winograd (T2V_CONV_PATH)") && out.contains("self-check"), "{out}\n{err}");
}

#[test]
fn no_adapter_explains_how_to_get_software_vulkan() {
    // Metal does not exist on Linux/Windows: no adapter at all.
    if cfg!(target_os = "macos") {
        return;
    }
    let (ok, _, err) = t2v(&["info"], &[("WGPU_BACKEND", "metal")]);
    assert!(!ok);
    assert!(err.contains("no GPU adapter found") && err.contains("mesa-vulkan-drivers"), "{err}");
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn parity_passes_on_the_vae_fixture() {
    let (ok, out, err) = t2v(&["parity", fixture("vae").to_str().unwrap()], &[]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("out.decoded") && out.contains("all 4 tensors within tolerance"), "{out}");
}

#[test]
fn parity_fails_when_a_reference_output_is_off() {
    // copy the fixture, nudge one reference tensor by 1% of its scale, expect FAIL + exit 1
    let src = fixture("vae");
    let dir = Scratch::new("parity", "vae");
    for f in ["config.json", "weights.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("io.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    for (name, view) in st.tensors() {
        let mut data = view.data().to_vec();
        if name == "out.decoded" {
            let mut v: Vec<f32> = bytemuck::pod_collect_to_vec(&data);
            let scale = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            v[5] += 0.01 * scale;
            data = bytemuck::cast_slice(&v).to_vec();
        }
        owned.push((name, view.shape().to_vec(), data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, s, d)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap()))
        .collect();
    std::fs::write(dir.join("io.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    let (ok, out, err) = t2v(&["parity", dir.to_str().unwrap()], &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL") && err.contains("1 of 4 tensors outside tolerance"), "{out}\n{err}");
}

#[test]
fn parity_passes_on_the_internvideo2_fixture() {
    let (ok, out, err) = t2v(&["parity", fixture("internvideo2").to_str().unwrap()], &[]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("InternVideo2 layout"), "{out}");
    for t in ["out.vision_tokens", "out.vision_pooled", "out.video_features", "out.text_cls", "out.text_features", "out.score"] {
        assert!(out.lines().any(|l| l.starts_with(t) && l.ends_with("pass")), "{t}: {out}");
    }
}

#[test]
fn parity_names_unknown_and_unsupported_folders() {
    let (ok, _, err) = t2v(&["parity", env!("CARGO_MANIFEST_DIR")], &[]);
    assert!(!ok && err.contains("not a fixture folder"), "{err}");
}

#[test]
fn info_describes_a_checkpoint() {
    let (ok, out, err) = t2v(&["info", "--weights", fixture("vae").join("weights.safetensors").to_str().unwrap()], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("124 tensors") && out.contains("VAE (ldm AutoencoderKL)") && out.contains("BF16"), "{out}");
    let (ok, _, err) = t2v(&["info", "--weights", "/nonexistent.safetensors"], &[]);
    assert!(!ok && err.contains("/nonexistent.safetensors"), "{err}");
}

#[test]
fn parity_passes_on_the_tokenizer_fixture_with_the_shipped_tokenizer() {
    let (ok, out, err) = t2v(&["parity", fixture("tokenizer").to_str().unwrap()], &[]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("Tokenizer layout") && out.contains("all 25 tensors within tolerance"), "{out}");
}

#[test]
fn parity_passes_on_the_openclip_fixture() {
    let (ok, out, err) = t2v(&["parity", fixture("openclip").to_str().unwrap()], &[]);
    assert!(ok, "{out}\n{err}");
    for t in ["out.penultimate", "out.text_features", "out.image_features", "out.cosine", "out.preprocess_hps", "out.preprocess_clipscore"] {
        assert!(out.lines().any(|l| l.starts_with(t) && l.ends_with("pass")), "{t}: {out}");
    }
    assert!(out.contains("all 6 tensors within tolerance"), "{out}");
}

#[test]
fn parity_passes_on_the_unet3d_fixture_forward_and_motion_guidance() {
    let (ok, out, err) = t2v(&["parity", fixture("unet3d").to_str().unwrap()], &[]);
    assert!(ok, "{out}\n{err}");
    for t in ["out.eps_teacher", "out.eps_student", "attn.output_blocks.5.2.transformer_blocks.0.attn1", "motion.energy", "motion.grad",
              "alphas_cumprod", "inference_timesteps_origin200_steps16", "c_out", "ddim_step.out", "ddim_reverse.out", "sample.denoised3",
              "train.loss", "train.target", "train.grad.time_cond_proj.weight", "train.grad.out.2.weight", "motion.z_ref"] {
        assert!(out.lines().any(|l| l.starts_with(t) && l.ends_with("pass")), "{t}: {out}");
    }
}

fn sample_args(out: &std::path::Path) -> Vec<String> {
    let f = |p: &str| fixture(p).to_str().unwrap().to_string();
    [
        "sample", "--unet", &f("unet3d/weights.safetensors"), "--unet-config", &f("unet3d/config.json"),
        "--vae", &f("vae/weights.safetensors"), "--vae-config", &f("vae/config.json"),
        "--text", &f("openclip/weights.safetensors"), "--text-config", &f("openclip/config.json"),
        "--prompt", "a red fox running through snow", "--frames", "4", "--height", "32", "--width", "32",
        "--out", out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn sample_writes_gifs_and_frames_reproducibly_and_never_overwrites() {
    let base = Scratch::new("sample", "cli");
    let (a, b) = (base.join("a"), base.join("b"));
    // (peak MiB, MiB in tensors at once) of a run's line
    let memory = |stdout: &str| -> (f64, f64) {
        let after = |key: &str| stdout.split(key).nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{key}: {stdout}"));
        (after("peak GPU memory "), after("MiB, "))
    };
    let args = sample_args(&a);
    let (ok, stdout, err) = t2v(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(ok, "{stdout}\n{err}");
    assert!(stdout.contains("4 consistency steps") && stdout.contains("in tensors at once"), "{stdout}");
    // the second run under a memory limit between what it holds at once and what it takes
    // with the pool: the same video, the peak under the limit
    let (peak, at_once) = memory(&stdout);
    assert!(peak > at_once + 2.0, "{stdout}");
    let limit = ((peak + at_once) / 2.0).round();
    let mut args = sample_args(&b);
    args.extend(["--max-memory".to_string(), format!("{limit}MiB")]);
    let (ok, stdout, err) = t2v(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(ok, "{stdout}\n{err}");
    assert!(memory(&stdout).0 <= limit, "peak over the --max-memory {limit}MiB: {stdout}");
    // far too little: stopped with the reason
    let mut args = sample_args(&base.join("tight"));
    args.extend(["--max-memory", "1MiB", "--weights-dtype", "f32"].map(String::from));
    let (ok, _, err) = t2v(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(!ok && err.contains("over the memory limit of 1 MiB"), "{err}");
    assert!(err.contains("To need less memory, add: --weights-dtype stored") && !err.contains("--batch 1"), "{err}");
    let gif = std::fs::read(a.join("000_a_red_fox_running_through_snow.gif")).unwrap();
    assert_eq!(&gif[..6], b"GIF89a");
    let frames: Vec<_> = std::fs::read_dir(a.join("000_a_red_fox_running_through_snow")).unwrap().collect();
    assert_eq!(frames.len(), 4);
    let f0 = |d: &std::path::Path| std::fs::read(d.join("000_a_red_fox_running_through_snow/frame_002.png")).unwrap();
    assert_eq!(f0(&a), f0(&b), "the same seed gives the same video");
    // the folder is not empty now: refused without --overwrite
    let args = sample_args(&a);
    let (ok, _, err) = t2v(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(!ok && err.contains("not empty"), "{err}");
    // the teacher's DDIM with CFG (3 steps keep the test short)
    let mut targs = sample_args(&base.join("t"));
    targs.extend(["--teacher", "--teacher-steps", "3", "--eta", "0"].map(String::from));
    let (ok, stdout, err) = t2v(&targs.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(ok && stdout.contains("3 teacher DDIM steps"), "{stdout}\n{err}");
    assert!(base.join("t/000_a_red_fox_running_through_snow.gif").exists());
    let (ok, _, err) = t2v(&["sample", "--prompt", "x", "--out", base.join("c").to_str().unwrap()], &[]);
    assert!(!ok && err.contains("--checkpoint"), "{err}");
    let (ok, _, err) = t2v(&["sample", "--out", base.join("d").to_str().unwrap()], &[]);
    assert!(!ok && err.contains("no prompt"), "{err}");
}

/// A batch that runs out of device memory is halved for the rest of the run: under a limit
/// between what batches of one and of three hold at once, `--batch 3` writes the videos
/// `--batch 1` writes, byte for byte.
#[test]
fn a_batch_that_runs_out_of_memory_is_split() {
    let base = Scratch::new("sample-split", "cli");
    // (peak MiB, MiB in tensors at once) over a run's lines
    let at_once = |stdout: &str| -> f64 {
        stdout.split("MiB, ").skip(1).filter_map(|r| r.split_whitespace().next()?.parse::<f64>().ok()).fold(0.0, f64::max)
    };
    let run = |dir: &str, extra: &[&str]| -> (String, String) {
        let mut args = sample_args(&base.join(dir));
        args.extend(["--videos-per-prompt", "3", "--no-mp4"].map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        let (ok, stdout, err) = t2v(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
        assert!(ok, "{dir}: {stdout}\n{err}");
        (stdout, err)
    };
    let (one, _) = run("one", &["--batch", "1"]);
    let (three, _) = run("three", &["--batch", "3"]);
    let (a1, a3) = (at_once(&one), at_once(&three));
    assert!(a3 > a1 + 1.0, "batches of three hold more at once: {a1} vs {a3} MiB");
    let limit = format!("{}MiB", ((a1 + a3) / 2.0).round());
    let (split, err) = run("split", &["--batch", "3", "--max-memory", &limit]);
    assert!(err.contains("a batch of 3 videos ran out of device memory: batches of 1 from now on"), "{err}");
    assert!(split.contains("in a batch of 1") && !split.contains("in a batch of 3"), "{split}");
    // the progress line counts the three batches of one (4 steps each) as its total
    assert!(err.contains("] 12/12 "), "{err}");
    for v in 0..3 {
        let frame = |dir: &str| std::fs::read(base.join(dir).join(format!("{v:03}_a_red_fox_running_through_snow/frame_002.png"))).unwrap();
        assert_eq!(frame("split"), frame("one"), "video {v}: split batch vs --batch 1");
    }
}

#[test]
fn demo_world_and_train_refuse_bad_settings_before_any_work() {
    let out = std::env::temp_dir().join(format!("t2v-demo-bad-mgs-{}", std::process::id()));
    let (ok, _, err) = t2v(&["demo", "--motion-gs=-1", "--out", out.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(err.contains("--motion-gs must be a finite number >= 0"), "{err}");
    assert!(!out.exists(), "nothing is written for a refused run");
    for cmd in ["demo", "world"] {
        let (ok, _, err) = t2v(&[cmd, "--short-fraction", "1.5", "--out", out.to_str().unwrap()], &[]);
        assert!(!ok && err.contains("--short-fraction must be within 0..1"), "{cmd}: {err}");
        assert!(!out.exists(), "{cmd}: nothing is written for a refused run");
    }
    for (args, msg) in [
        (&["--motion-reference", "noised", "--reference-t", "1000"][..], "--reference-t 1000 is not a timestep"),
        (&["--reference-t", "300"][..], "--reference-t applies to --motion-reference noised only"),
    ] {
        let (ok, _, err) = t2v(&[&["demo", "--out", out.to_str().unwrap()][..], args].concat(), &[]);
        assert!(!ok && err.contains(msg), "{args:?}: {err}");
        assert!(!out.exists(), "demo {args:?}: nothing is written for a refused run");
    }
    let (ok, _, err) = t2v(&["train", "--models", "assets/tiny", "--data", "no-such-shards", "--out", out.to_str().unwrap(), "--reward-sample-steps", "2"], &[]);
    assert!(!ok && err.contains("--reward-sample-steps applies to --reward-input sample only"), "{err}");
    assert!(!out.exists(), "train: nothing is written for a refused run");
    // settings that cannot work are refused before anything is read or written
    for (args, msg) in [
        (&["--ema-target", "1.5"][..], "the EMA target's decay must be in [0, 1), got 1.5"),
        (&["--ema-target", "--lora-rank", "4"][..], "--ema-target needs full fine-tuning"),
        (&["--lr-scheduler", "polynomial", "--lr", "1e-8"][..], "the polynomial schedule decays to 1e-7"),
        (&["--adam-beta2", "1"][..], "AdamW needs betas in [0, 1)"),
        (&["--vid-reward-records", "0"][..], "rewarded records must be at least 1"),
        (&["--w-min", "3"][..], "--w-min and --w-max apply to --redraw-w only"),
        (&["--redraw-w", "--w-min", "9", "--w-max", "3"][..], "the guidance-scale range must be finite with min <= max"),
        (&["--train-text-encoder", "--lora-rank", "4"][..], "--train-text-encoder needs full fine-tuning"),
        (&["--train-text-encoder", "--unlocked-text-layers", "0"][..], "--unlocked-text-layers must be at least 1"),
        (&["--unlocked-text-layers", "2"][..], "--train-text-encoder"),
    ] {
        let (ok, _, err) = t2v(&[&["train", "--models", "assets/tiny", "--data", "no-such-shards", "--out", out.to_str().unwrap()][..], args].concat(), &[]);
        assert!(!ok && err.contains(msg), "{args:?}: {err}");
        assert!(!out.exists(), "train {args:?}: nothing is written for a refused run");
    }
}

#[test]
fn pretrain_refuses_options_of_other_stages_before_any_work() {
    let out = std::env::temp_dir().join(format!("t2v-pretrain-bad-{}", std::process::id()));
    let o = out.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["pretrain", "text", "--models", "assets/tiny", "--out", o, "--frames", "9"], "the text encoder can see 1 to 8 frames per clip (the clips' length), not 9"),
        (&["pretrain", "teacher", "--models", "assets/tiny", "--out", o, "--frames", "4"], "--frames applies to `pretrain text` only"),
        (&["pretrain", "text", "--models", "assets/tiny", "--out", o, "--frames", "0"], "the text encoder can see 1 to 8 frames per clip (the clips' length), not 0"),
        (&["pretrain", "vae", "--models", "assets/tiny", "--out", o, "--reversed-pairs"], "--reversed-pairs applies to the contrastive stages"),
        (&["pretrain", "text", "--models", "assets/tiny", "--out", o, "--image-batch", "8"], "--image-batch applies to `pretrain teacher` only"),
        (&["pretrain", "teacher", "--models", "assets/tiny", "--out", o, "--direction-head"], "--direction-head applies to `pretrain video-reward` and `pretrain reward` only"),
    ];
    for (args, msg) in cases {
        let (ok, _, err) = t2v(args, &[]);
        assert!(!ok && err.contains(msg), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?}: nothing is written for a refused run");
    }
    // a video reward whose tokens see 2 of its 4 frames; 3 does not divide them
    let (ok, _, err) = t2v(&["init", "--out", o, "--video-tubelet", "3"], &[]);
    assert!(!ok && err.contains("--video-tubelet must divide the video reward's 4 frames, got 3"), "{err}");
    assert!(!out.exists());
    let (ok, stdout, err) = t2v(&["init", "--out", o, "--video-tubelet", "2"], &[]);
    assert!(ok, "{stdout}{err}");
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("\"tubelet_size\": 2"), "{config}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_converted_torch_checkpoint_passes_the_vae_parity_check() {
    // torch.save's Lightning-style checkpoint of the VAE fixture's weights -> safetensors,
    // then the fixture's reference outputs through the converted file
    let d = Scratch::new("convert", "vae");
    for f in ["config.json", "io.safetensors"] {
        std::fs::copy(fixture("vae").join(f), d.join(f)).unwrap();
    }
    let ckpt = fixture("torch").join("vae_model.ckpt");
    let out = d.join("weights.safetensors");
    let (ok, stdout, err) = t2v(&["convert", ckpt.to_str().unwrap(), "--out", out.to_str().unwrap()], &[]);
    assert!(ok && stdout.contains("124 tensors of entry \"state_dict\""), "{stdout}\n{err}");
    let (ok, stdout, err) = t2v(&["parity", d.to_str().unwrap()], &[]);
    assert!(ok && stdout.contains("all 4 tensors within tolerance"), "{stdout}\n{err}");
    // the output exists now: refused without --overwrite, and left as it was
    let before = std::fs::read(&out).unwrap();
    let (ok, _, err) = t2v(&["convert", ckpt.to_str().unwrap(), "--out", out.to_str().unwrap(), "--dtype", "f32"], &[]);
    assert!(!ok && err.contains("exists; choose another output or pass --overwrite"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // the fixture's weights are bf16: widened to f32 (exactly), twice the size, same outputs
    let (ok, _, err) = t2v(&["convert", ckpt.to_str().unwrap(), "--out", out.to_str().unwrap(), "--dtype", "f32", "--overwrite"], &[]);
    assert!(ok, "{err}");
    assert!(std::fs::read(&out).unwrap().len() > before.len() * 19 / 10, "f32 doubles the file");
    let (ok, stdout, err) = t2v(&["parity", d.to_str().unwrap()], &[]);
    assert!(ok && stdout.contains("all 4 tensors within tolerance"), "{stdout}\n{err}");
}

#[test]
fn info_describes_torch_checkpoints_too() {
    let ckpt = fixture("torch").join("vae_model.ckpt");
    let (ok, out, err) = t2v(&["info", "--weights", ckpt.to_str().unwrap()], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("124 tensors") && out.contains("dtypes: BF16 x124") && out.contains("VAE (ldm AutoencoderKL): 124 tensors under \"first_stage_model.\""), "{out}");
    assert!(out.contains("a PyTorch checkpoint (torch.save); top-level keys: state_dict, global_step, epoch") && out.contains("t2v-turbo convert "), "{out}");
}
