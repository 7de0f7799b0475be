//! Pretraining the embedded default's models (tiny random start, a few steps) and the
//! shortened demo on the shipped models.
use std::path::PathBuf;

use t2v_kernels::{Gpu, GpuOptions};
use t2v_turbo::models::weights::{SaveDtype, WeightFile};
use t2v_turbo::pipeline::model_dir::{init_random, ModelDir, Preset};
use t2v_turbo::pretrain::{pretrain, PretrainConfig, What};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("t2v-pretrain-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gpu() -> Gpu {
    Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).unwrap()
}

fn values(path: &std::path::Path) -> Vec<f32> {
    let f = WeightFile::open(path).unwrap();
    let keys: Vec<String> = f.entries().keys().cloned().collect();
    keys.iter().flat_map(|k| f.host_f32(k).unwrap().1).collect()
}

#[test]
fn each_stage_trains_and_resumes_exactly() {
    let g = gpu();
    let d = tmp("stages");
    let src = init_random(&g, Preset::Tiny, &d.join("init"), 3, SaveDtype::F32).unwrap();
    let keys = |path: &std::path::Path| WeightFile::open(path).unwrap().entries().keys().cloned().collect::<Vec<_>>();
    for (what, batch, file) in [(What::Vae, 2, "vae.safetensors"), (What::Teacher, 1, "unet.safetensors"), (What::Text, 2, "text.safetensors"), (What::Reward, 2, "reward_video.safetensors")] {
        let cfg = |steps| PretrainConfig { steps, batch, lr: 1e-3, seed: 1, world_seed: 2, image_batch: 0 };
        let a = d.join(format!("{what:?}-straight"));
        let (md, ms) = pretrain(&g, what, &src, &a, &cfg(3), 10, SaveDtype::F32, true).unwrap();
        assert_eq!(ms.len(), 3);
        assert!(ms.iter().all(|m| m.loss.is_finite()), "{what:?}");
        assert_ne!(values(&a.join(file)), values(&src.root.join(file)), "{what:?}: weights did not change");
        // interrupted after 2 steps, then resumed to 3: the same weights bit for bit
        let b = d.join(format!("{what:?}-resumed"));
        pretrain(&g, what, &src, &b, &cfg(2), 1, SaveDtype::F32, true).unwrap();
        let (_, ms_b) = pretrain(&g, what, &src, &b, &cfg(3), 1, SaveDtype::F32, true).unwrap();
        assert_eq!(ms_b.len(), 1, "{what:?}: resumed at step 2");
        assert_eq!(ms_b[0].loss.to_bits(), ms[2].loss.to_bits(), "{what:?}");
        assert_eq!(values(&b.join(file)), values(&a.join(file)), "{what:?}");
        // the weights record their pretraining, and a continued run records both
        let note = |dir: &std::path::Path| WeightFile::open(&dir.join(file)).unwrap().metadata.get("pretrained").cloned();
        assert_eq!(note(&a).as_deref(), Some("3 steps on the moving-shapes world"), "{what:?}");
        assert_eq!(note(&b), note(&a), "{what:?}: resuming is not continuing");
        let c = d.join(format!("{what:?}-continued"));
        pretrain(&g, what, &md, &c, &cfg(1), 10, SaveDtype::F32, true).unwrap();
        assert_eq!(note(&c).as_deref(), Some("1 step on the moving-shapes world, after 3 steps on the moving-shapes world"), "{what:?}");
        // the output is a model folder with the source's other models
        let back = ModelDir::read(&a).unwrap();
        assert_eq!(back.unet.1, src.unet.1);
        // the text encoder trains through a temporary vision tower that is not saved
        assert_eq!(keys(&a.join(file)), keys(&src.root.join(file)), "{what:?}");
        if what == What::Text {
            assert_eq!(ms[0].logs[0].0, "text_retrieval");
            assert!(keys(&a.join(file)).iter().all(|k| !k.starts_with("visual.")));
        }
        if what == What::Vae {
            assert!(md.vae.1.scale_factor != src.vae.1.scale_factor && md.vae.1.scale_factor.is_finite());
        }
        if what == What::Reward {
            assert_eq!(ms[0].logs.len(), 3, "retrieval accuracy of each tower");
        }
        assert!(a.join(format!("pretrain-{}/metrics.png", format!("{what:?}").to_lowercase())).exists());
    }
    // other settings do not resume silently
    let e = pretrain(&g, What::Vae, &src, &d.join("Vae-resumed"), &PretrainConfig { steps: 4, batch: 2, lr: 5e-3, seed: 1, world_seed: 2, image_batch: 0 }, 1, SaveDtype::F32, true).unwrap_err();
    assert!(e.to_string().contains("other settings"), "{e}");
}

#[test]
fn the_quick_demo_runs_on_the_shipped_models() {
    let out = tmp("demo").join("out");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_t2v-turbo")).args(["demo", "--quick", "--out", out.to_str().unwrap()]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{text}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| teacher (10 DDIM steps") && report.contains("| t2v-turbo-v2 (4 steps)") && report.contains("| cd-only (4 steps)"), "{report}");
    assert!(report.contains("Time: preprocess ") && report.contains("distill cd-only ") && report.contains(", total "), "stage times: {report}");
    assert!(out.join("gifs/000.gif").exists() && out.join("students/t2v-turbo-v2/metrics.png").exists());
    assert!(out.join("students/t2v-turbo-v2/model/config.json").exists());
}

#[test]
fn joint_image_video_teacher_steps_run_and_resume_exactly() {
    let g = gpu();
    let d = tmp("joint");
    let src = init_random(&g, Preset::Tiny, &d.join("init"), 4, SaveDtype::F32).unwrap();
    let cfg = |steps| PretrainConfig { steps, batch: 1, lr: 1e-3, seed: 1, world_seed: 2, image_batch: 3 };
    // step 1: one clip; step 2: three single frames (1-frame videos)
    let (_, ms) = pretrain(&g, What::Teacher, &src, &d.join("straight"), &cfg(2), 10, SaveDtype::F32, true).unwrap();
    assert!(ms.iter().all(|m| m.loss.is_finite()));
    pretrain(&g, What::Teacher, &src, &d.join("resumed"), &cfg(1), 1, SaveDtype::F32, true).unwrap();
    let (_, ms_b) = pretrain(&g, What::Teacher, &src, &d.join("resumed"), &cfg(2), 1, SaveDtype::F32, true).unwrap();
    assert_eq!(ms_b[0].loss.to_bits(), ms[1].loss.to_bits());
    assert_eq!(values(&d.join("resumed/unet.safetensors")), values(&d.join("straight/unet.safetensors")));
    // a run without image steps takes another path at step 2
    let (_, ms_v) = pretrain(&g, What::Teacher, &src, &d.join("videos"), &PretrainConfig { image_batch: 0, ..cfg(2) }, 10, SaveDtype::F32, true).unwrap();
    assert_eq!(ms_v[0].loss.to_bits(), ms[0].loss.to_bits(), "step 1 is a video step in both");
    assert_ne!(ms_v[1].loss.to_bits(), ms[1].loss.to_bits());
}

#[test]
fn caption_check_sees_the_text_only_through_cross_attention() {
    use t2v_turbo::pipeline::model_dir::load_unet_file;
    use t2v_turbo::pretrain::caption_check::caption_sensitivity;
    use t2v_turbo::world::WorldConfig;
    let g = gpu();
    let d = tmp("caption-check");
    let md = init_random(&g, Preset::Tiny, &d.join("init"), 5, SaveDtype::F32).unwrap();
    let (unet, params) = load_unet_file(&g, &md.unet.0, &md.unet.1, None).unwrap();
    let (vae, text) = (md.load_vae(&g).unwrap(), md.load_text(&g).unwrap());
    let world = WorldConfig { frames: md.video.frames, size: md.video.height, short_fraction: 0.5 };
    let check = || caption_sensitivity(&g, &unet, &vae, &text, &world, md.video.fps, 9, 3, 2).unwrap();
    let random = check();
    assert_eq!(random.len(), 4);
    assert!(random.iter().all(|e| e.own.is_finite() && e.own > 0.0));
    assert!(random.iter().all(|e| e.other_color != e.own && e.empty != e.own), "random cross-attention reads the caption: {random:?}");
    // without the cross-attention values the captions cannot matter: identical errors
    let mut zeroed = 0;
    for (name, t) in &params {
        if name.contains("attn2.to_v.") {
            t.write(&vec![0.0; t.numel()]).unwrap();
            zeroed += 1;
        }
    }
    assert!(zeroed > 0);
    let blind = check();
    assert!(blind.iter().all(|e| e.other_color == e.own && e.empty == e.own), "{blind:?}");
    assert!(blind.iter().zip(&random).all(|(b, r)| b.own != r.own));
}
