//! Pretraining the embedded default's models (tiny random start, a few steps) and the
//! shortened demo and the reward-gradient path on the shipped models.
mod common;
use common::Scratch;

use t2v_kernels::{Gpu, GpuOptions};
use t2v_turbo::models::weights::{SaveDtype, WeightFile};
use t2v_turbo::pipeline::model_dir::{init_random, init_random_with, ModelDir, Preset};
use t2v_turbo::pretrain::{pretrain, PretrainConfig, What};

fn tmp(name: &str) -> Scratch {
    Scratch::new("pretrain", name)
}

fn gpu() -> Gpu {
    Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).unwrap()
}

fn values(path: &std::path::Path) -> Vec<f32> {
    let f = WeightFile::open(path).unwrap();
    let keys: Vec<String> = f.entries().keys().cloned().collect();
    keys.iter().flat_map(|k| f.host_f32(k).unwrap().1).collect()
}

/// Rewrites a weight file with `edit` applied to each tensor's values (by key).
fn rewrite_weights(g: &Gpu, path: &std::path::Path, edit: impl Fn(&str, &mut Vec<f32>)) {
    let f = WeightFile::open(path).unwrap();
    let tensors: Vec<(String, t2v_kernels::Tensor)> = f
        .entries()
        .keys()
        .map(|k| {
            let (shape, mut v) = f.host_f32(k).unwrap();
            edit(k, &mut v);
            (k.clone(), t2v_kernels::Tensor::from_slice(g, &shape, &v).unwrap())
        })
        .collect();
    drop(f);
    t2v_turbo::models::weights::save_weights(path, &tensors, SaveDtype::F32, &[]).unwrap();
}

#[test]
fn each_stage_trains_and_resumes_exactly() {
    let g = gpu();
    let d = tmp("stages");
    let src = init_random(&g, Preset::Tiny, &d.join("init"), 3, SaveDtype::F32).unwrap();
    let keys = |path: &std::path::Path| WeightFile::open(path).unwrap().entries().keys().cloned().collect::<Vec<_>>();
    let stages = [
        (What::Vae, 2, "vae.safetensors", false, 1, false),
        (What::Teacher, 1, "unet.safetensors", false, 1, false),
        (What::Text, 2, "text.safetensors", false, 1, false),
        (What::Text, 4, "text.safetensors", true, 3, false),
        (What::Reward, 2, "reward_video.safetensors", false, 1, false),
        (What::VideoReward, 4, "reward_video.safetensors", true, 1, true),
    ];
    // the direction head trains a video reward whose tokens see two frames each
    let mut iv2 = Preset::Tiny.video_reward_config();
    iv2.vision.tubelet_size = 2;
    let src2 = init_random_with(&g, Preset::Tiny, &d.join("init-tubelet2"), 3, SaveDtype::F32, iv2).unwrap();
    for (what, batch, file, reversed_pairs, text_frames, direction_head) in stages {
        let src = if direction_head { &src2 } else { &src };
        let cfg = |steps| PretrainConfig { steps, batch, lr: 1e-3, seed: 1, world_seed: 2, image_batch: 0, reversed_pairs, text_frames, direction_head };
        let run = format!("{what:?}{}{}", if reversed_pairs { "-pairs" } else { "" }, if text_frames > 1 { "-frames" } else { "" });
        let a = d.join(format!("{run}-straight"));
        let (md, ms) = pretrain(&g, what, src, &a, &cfg(3), 10, SaveDtype::F32, true).unwrap();
        assert_eq!(ms.len(), 3);
        assert!(ms.iter().all(|m| m.loss.is_finite()), "{what:?}");
        assert_ne!(values(&a.join(file)), values(&src.root.join(file)), "{what:?}: weights did not change");
        // interrupted after 2 steps, then resumed to 3: the same weights bit for bit
        let b = d.join(format!("{run}-resumed"));
        pretrain(&g, what, src, &b, &cfg(2), 1, SaveDtype::F32, true).unwrap();
        let (_, ms_b) = pretrain(&g, what, src, &b, &cfg(3), 1, SaveDtype::F32, true).unwrap();
        assert_eq!(ms_b.len(), 1, "{what:?}: resumed at step 2");
        assert_eq!(ms_b[0].loss.to_bits(), ms[2].loss.to_bits(), "{what:?}");
        assert_eq!(values(&b.join(file)), values(&a.join(file)), "{what:?}");
        // the weights record their pretraining, and a continued run records both
        let note = |dir: &std::path::Path| WeightFile::open(&dir.join(file)).unwrap().metadata.get("pretrained").cloned();
        let how = match (reversed_pairs, text_frames, direction_head) {
            (false, 1, false) => String::new(),
            (true, 1, false) => " (with reversed pairs)".into(),
            (true, 1, true) => " (with reversed pairs; with a direction head)".into(),
            (true, n, false) => format!(" ({n} frames per clip and a motion map; with reversed pairs)"),
            (false, n, false) => format!(" ({n} frames per clip and a motion map)"),
            other => panic!("no case {other:?}"),
        };
        assert_eq!(note(&a), Some(format!("3 steps on the moving-shapes world{how}")), "{what:?}");
        assert_eq!(note(&b), note(&a), "{what:?}: resuming is not continuing");
        let c = d.join(format!("{run}-continued"));
        pretrain(&g, what, &md, &c, &cfg(1), 10, SaveDtype::F32, true).unwrap();
        assert_eq!(note(&c), Some(format!("1 step on the moving-shapes world{how}, after 3 steps on the moving-shapes world{how}")), "{what:?}");
        // the output is a model folder with the source's other models
        let back = ModelDir::read(&a).unwrap();
        assert_eq!(back.unet.1, src.unet.1);
        // the text encoder trains through a temporary vision tower, the video reward with a
        // temporary direction head: neither is saved
        assert_eq!(keys(&a.join(file)), keys(&src.root.join(file)), "{what:?}");
        if what == What::Text {
            assert_eq!(ms[0].logs[0].0, "text_retrieval");
            assert!(keys(&a.join(file)).iter().all(|k| !k.starts_with("visual.")));
        }
        if reversed_pairs {
            // step 2 is a batch of reversed pairs, logged apart
            let metric = if what == What::Text { "text" } else { "video" };
            assert_eq!((ms[0].logs[0].0.clone(), ms[1].logs[0].0.clone()), (format!("{metric}_retrieval"), format!("{metric}_retrieval_pairs")));
            // and the share of clips whose own caption beats its twin's (the direction)
            let (name, share) = &ms[1].logs[1];
            assert!(name == &format!("{metric}_direction") && (0.0..=1.0).contains(share), "{:?}", ms[1].logs);
            let head = usize::from(direction_head);
            assert_eq!(ms[0].logs.len(), 1 + head, "no direction on ordinary batches: {:?}", ms[0].logs);
        }
        if direction_head {
            // the head's accuracy on every batch, ordinary or reversed pairs
            for m in &ms {
                let (name, acc) = m.logs.last().unwrap();
                assert!(name == "video_direction_head" && (0.0..=1.0).contains(acc), "{:?}", m.logs);
            }
        }
        if what == What::Vae {
            assert!(md.vae.1.scale_factor != src.vae.1.scale_factor && md.vae.1.scale_factor.is_finite());
        }
        if what == What::Reward {
            assert_eq!(ms[0].logs.len(), 3, "retrieval accuracy of each tower");
        }
        assert!(a.join(format!("pretrain-{}/metrics.png", format!("{what:?}").to_lowercase())).exists());
        // checkpoints with optimizer state: ~250 MB a stage, more than CI's disk affords for all
        if what != What::Vae {
            for dir in [&a, &b, &c] {
                std::fs::remove_dir_all(dir).unwrap();
            }
        }
    }
    // other settings do not resume silently
    let e = pretrain(&g, What::Vae, &src, &d.join("Vae-resumed"), &PretrainConfig { steps: 4, batch: 2, lr: 5e-3, seed: 1, world_seed: 2, image_batch: 0, reversed_pairs: false, text_frames: 1, direction_head: false }, 1, SaveDtype::F32, true).unwrap_err();
    assert!(e.to_string().contains("other settings"), "{e}");
}

#[test]
fn the_quick_demo_runs_on_the_shipped_models() {
    let d = tmp("demo");
    let out = d.join("out");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_t2v-turbo")).args(["demo", "--quick", "--out", out.to_str().unwrap()]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{text}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| teacher (10 DDIM steps") && report.contains("| t2v-turbo-v2 (4 steps)") && report.contains("| cd-only (4 steps)"), "{report}");
    assert!(report.contains("GEMMs: f32. Time: preprocess ") && report.contains("distill cd-only ") && report.contains(", total "), "stage times: {report}");
    assert!(report.contains("## What the reward models see") && report.contains("| video | long | "), "reward check: {report}");
    assert!(report.contains("| image reward | video reward |") && report.contains("- the held-out image reward (what the image rewards optimise): "), "held-out rewards: {report}");
    assert!(out.join("gifs/000.gif").exists() && out.join("students/t2v-turbo-v2/metrics.png").exists());
    assert!(out.join("students/t2v-turbo-v2/model/config.json").exists());
    // the students also sampled 4 prompts of the grid, and the targets compare them there
    assert!(report.contains("### The students on the prompt grid") && report.contains("(4 prompts, 12 attribute judgments per student"), "grid: {report}");
    assert!(report.contains("over plain consistency distillation (4 grid prompts): ") && report.contains("(sign test p = "), "paired comparison: {report}");
    // the color line (what the reward models see) has its own paired test; the demo's
    // defaults: every clip short-captioned, rewards on generations from noise
    assert!(report.contains("color accuracy (the attribute the reward models see) (4 grid prompts): ") && report.matches("(sign test p = ").count() == 2, "color test: {report}");
    assert!(report.contains("(fraction 1 with a short caption") && report.contains("rewards scored on the students' one-step generations from fresh noise"), "defaults: {report}");
    assert!(out.join("samples/grid-2/captions.jsonl").exists());
}

#[test]
fn joint_image_video_teacher_steps_run_and_resume_exactly() {
    let g = gpu();
    let d = tmp("joint");
    let src = init_random(&g, Preset::Tiny, &d.join("init"), 4, SaveDtype::F32).unwrap();
    let cfg = |steps| PretrainConfig { steps, batch: 1, lr: 1e-3, seed: 1, world_seed: 2, image_batch: 3, reversed_pairs: false, text_frames: 1, direction_head: false };
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
    let (unet, params) = load_unet_file(&g, &md.unet.0, &md.unet.1, None, t2v_turbo::models::weights::WeightPrecision::F32).unwrap();
    let (vae, text) = (md.load_vae(&g).unwrap(), md.load_text(&g).unwrap());
    let world = WorldConfig { frames: md.video.frames, size: md.video.height, short_fraction: 0.5 };
    let check = || caption_sensitivity(&g, &unet, &vae, &text, &world, md.video.fps, 9, 3, 2).unwrap();
    let random = check();
    assert_eq!(random.len(), 4);
    assert!(random.iter().all(|e| e.own.is_finite() && e.own > 0.0));
    let others = |e: &t2v_turbo::pretrain::caption_check::CaptionErrors| [e.other_color, e.other_shape, e.other_direction, e.empty];
    assert!(random.iter().all(|e| others(e).iter().all(|&o| o != e.own)), "random cross-attention reads the caption: {random:?}");
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
    assert!(blind.iter().all(|e| others(e).iter().all(|&o| o == e.own)), "{blind:?}");
    assert!(blind.iter().zip(&random).all(|(b, r)| b.own != r.own));
}

#[test]
fn the_reward_check_measures_through_the_captions() {
    use t2v_turbo::pretrain::reward_check::reward_sensitivity;
    use t2v_turbo::world::WorldConfig;
    let g = gpu();
    let d = tmp("reward-check");
    let md = init_random(&g, Preset::Tiny, &d.join("init"), 6, SaveDtype::F32).unwrap();
    let world = WorldConfig { frames: md.video.frames, size: md.video.height, short_fraction: 0.5 };
    let random = reward_sensitivity(&g, &md, &world, 9, 5).unwrap();
    let rows: Vec<(&str, &str, &str)> = random.iter().map(|a| (a.model.as_str(), a.caption, a.attribute)).collect();
    assert_eq!(rows.len(), 16, "{rows:?}");
    assert!(["hps", "clip", "video"].iter().all(|m| rows.iter().any(|r| r.0 == *m)) && rows.contains(&("video", "long", "direction")), "{rows:?}");
    assert!(random.iter().all(|a| a.clips == 5 && a.wins <= 5 && a.mean_gap.is_finite() && a.mean_gap != 0.0), "random towers read the captions: {random:?}");
    // a video reward whose text features do not depend on the caption (text_proj weight 0,
    // bias 1) scores every caption alike: no wins, no gap; the image towers are untouched
    let Some(t2v_turbo::pipeline::model_dir::VideoRewardSpec::InternVideo2 { file, .. }) = &md.video_reward else { panic!("the tiny preset has an InternVideo2") };
    rewrite_weights(&g, file, |k, v| {
        if k.starts_with("text_proj.") {
            v.fill(if k.ends_with("bias") { 1.0 } else { 0.0 });
        }
    });
    let blind = reward_sensitivity(&g, &md, &world, 9, 5).unwrap();
    for (b, r) in blind.iter().zip(&random) {
        if b.model == "video" {
            assert_eq!((b.wins, b.mean_gap), (0, 0.0), "{b:?}");
        } else {
            assert_eq!((b.wins, b.mean_gap), (r.wins, r.mean_gap), "{b:?}");
        }
    }
}

/// Reward feedback's path, end to end on the shipped models: gradient ascent of the image
/// rewards (against each clip's caption with the color three hues away) on the VAE latent
/// of world frames turns the decoded subjects to the caption's color by the analyser, which
/// knows nothing of the rewards. A wrong backward anywhere on the path (VAE decoder,
/// preprocessing, CLIP towers) or rewards blind to hue would leave the colors.
#[test]
fn the_shipped_image_rewards_steer_colors_through_the_vae() {
    use t2v_kernels::autograd::Tape;
    use t2v_kernels::ops;
    use t2v_turbo::pipeline::sample::Gaussian;
    use t2v_turbo::pipeline::video_io::Frames;
    use t2v_turbo::pretrain::{clips_tensor, draw_clips};
    use t2v_turbo::world::{ClipSpec, WorldConfig, COLORS};
    let g = gpu();
    let md = ModelDir::read(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny")).unwrap();
    let world = WorldConfig { frames: md.video.frames, size: md.video.height, short_fraction: 0.5 };
    let (n, s) = (6, world.size);
    let specs = draw_clips(&mut Gaussian::new(5), 777, n, &world);
    let x = clips_tensor(&g, &specs, &world).unwrap();
    let frames = ops::slice(&x, 2, world.frames / 2, 1).unwrap().reshape(&[n, 3, s, s]).unwrap();
    let rewards = t2v_turbo::pipeline::train::RewardModels::load(&g, &md, None).unwrap();
    let vae = &rewards.vae;
    let tok = t2v_turbo::models::tokenizer::ClipTokenizer::new().unwrap();
    let targets: Vec<ClipSpec> = specs.iter().map(|c| ClipSpec { color: (c.color + COLORS.len() / 2) % COLORS.len(), ..c.clone() }).collect();
    let ids: Vec<Vec<u32>> = targets.iter().map(|t| tok.encode(&t.short_caption()).unwrap().ids).collect();
    let tape = Tape::new();
    let mut z = tape.no_grad(|| vae.encode(&tape.constant(frames.clone())).unwrap().value().clone());
    let colors = |img: &t2v_kernels::Tensor| -> Vec<Option<usize>> {
        let v = img.to_vec().unwrap();
        (0..n).map(|i| t2v_turbo::eval::analyse(&Frames::from_chw(&v[i * 3 * s * s..(i + 1) * 3 * s * s], 1, s, s)).color).collect()
    };
    let (mut first, mut last) = (None, (0.0, vec![]));
    for _ in 0..=20 {
        let tape = Tape::new();
        tape.train_only(&[]);
        let zv = tape.leaf(z.clone());
        let img = vae.decode(&zv).unwrap();
        let r = rewards.image_reward(&img, &ids).unwrap().unwrap();
        let value = r.value().to_vec().unwrap()[0];
        last = (value, colors(img.value()));
        first.get_or_insert(last.clone());
        let grad = tape.backward(&r).unwrap().get(&zv).unwrap().clone();
        let gv = grad.to_vec().unwrap();
        let rms = (gv.iter().map(|v| v * v).sum::<f32>() / gv.len() as f32).sqrt();
        z = ops::add(&z, &ops::scale(&grad, 0.08 / rms).unwrap()).unwrap();
    }
    let (r0, c0) = first.unwrap();
    let hits = |cs: &[Option<usize>], want: &[ClipSpec]| cs.iter().zip(want).filter(|(c, w)| **c == Some(w.color)).count();
    assert!(last.0 > r0 + 0.2, "the ascent raises the reward: {r0} -> {}", last.0);
    assert!(hits(&last.1, &targets) >= 3 && hits(&last.1, &targets) > hits(&c0, &targets), "analyser colors {:?} -> {:?}, wanted {:?}", c0, last.1, targets.iter().map(|t| t.color).collect::<Vec<_>>());
}

#[test]
fn the_text_check_measures_through_the_token_embeddings() {
    use t2v_turbo::pretrain::text_check::word_sensitivity;
    use t2v_turbo::world::WorldConfig;
    let g = gpu();
    let d = tmp("text-check");
    let md = init_random(&g, Preset::Tiny, &d.join("init"), 7, SaveDtype::F32).unwrap();
    let world = WorldConfig { frames: md.video.frames, size: md.video.height, short_fraction: 0.5 };
    let random = word_sensitivity(&md.load_text(&g).unwrap(), &world, 9, 3).unwrap();
    let rows: Vec<(&str, &str)> = random.iter().map(|c| (c.caption, c.attribute)).collect();
    assert_eq!(rows.len(), 8, "{rows:?}");
    assert!(rows.contains(&("long", "direction")) && rows.contains(&("short", "color")), "{rows:?}");
    assert!(random.iter().all(|c| c.context_change.is_finite() && c.context_change > 0.1), "{random:?}");
    // with every token embedded alike the context is the positions' alone: no word moves it
    rewrite_weights(&g, &md.text.0, |k, v| {
        if k.ends_with("token_embedding.weight") {
            v.fill(0.25);
        }
    });
    let blind = word_sensitivity(&md.load_text(&g).unwrap(), &world, 9, 3).unwrap();
    assert!(blind.iter().all(|c| c.context_change == 0.0), "{blind:?}");
}

/// Two-stream video features: the normalised sum of the mean frame feature and a linear map
/// of the difference image (last frame minus first); frames played backwards flip the
/// motion term; one frame, or no map, gives the frames' own features.
#[test]
fn motion_features_see_the_order_of_the_frames() {
    use t2v_kernels::autograd::Tape;
    use t2v_turbo::models::clip::Clip;
    use t2v_turbo::models::weights::Loader;
    use t2v_turbo::pretrain::motion_features;
    let g = gpu();
    let d = tmp("motion-features");
    let md = init_random(&g, Preset::Tiny, &d.join("init"), 8, SaveDtype::F32).unwrap();
    let spec = &md.image_rewards[0];
    let f = WeightFile::open(&spec.file).unwrap();
    let clip = Clip::load(&Loader::new(&f, &g, ""), &spec.config).unwrap();
    let (s, e) = (spec.config.vision.image_size, spec.config.embed_dim);
    let (b, n, per) = (2, 3, 3 * s * s);
    let tape = Tape::new();
    let x: Vec<f32> = (0..b * n * per).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
    let w: Vec<f32> = (0..e * per).map(|i| ((i * 53 % 97) as f32 - 48.0) / 4000.0).collect();
    let proj = tape.constant(t2v_kernels::Tensor::from_slice(&g, &[e, per], &w).unwrap());
    let frames = |v: &[f32], k: usize| tape.constant(t2v_kernels::Tensor::from_slice(&g, &[k, 3, s, s], v).unwrap());
    let features = |v: &[f32]| motion_features(&clip.vision, Some(&proj), &frames(v, b * n), b, n).unwrap().value().to_vec().unwrap();
    // the same on the host from the tower's features of each frame, forwards and backwards
    let single: Vec<f32> = clip.vision.features(&frames(&x, b * n)).unwrap().value().to_vec().unwrap();
    let want = |sign: f64| -> Vec<f64> {
        (0..b)
            .flat_map(|c| {
                let mut v: Vec<f64> = (0..e)
                    .map(|k| {
                        let appearance = (0..n).map(|t| single[(c * n + t) * e + k] as f64).sum::<f64>() / n as f64;
                        let motion: f64 = (0..per).map(|p| w[k * per + p] as f64 * (x[(c * n + n - 1) * per + p] - x[c * n * per + p]) as f64).sum();
                        appearance + sign * motion
                    })
                    .collect();
                let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
                v.iter_mut().for_each(|a| *a /= norm);
                v
            })
            .collect()
    };
    let close = |got: &[f32], want: &[f64]| got.iter().zip(want).all(|(a, b)| (*a as f64 - b).abs() < 1e-4);
    let got = features(&x);
    assert!(close(&got, &want(1.0)), "{got:?} vs {:?}", want(1.0));
    let backwards: Vec<f32> = (0..b).flat_map(|c| (0..n).rev().map(move |t| c * n + t)).flat_map(|i| x[i * per..(i + 1) * per].to_vec()).collect();
    let rev = features(&backwards);
    assert!(close(&rev, &want(-1.0)) && !close(&rev, &want(1.0)), "played backwards: {rev:?}");
    let one = motion_features(&clip.vision, Some(&proj), &frames(&x[..b * per], b), b, 1).unwrap().value().to_vec().unwrap();
    assert_eq!(one, single[..b * e].to_vec());
    let no_map = motion_features(&clip.vision, None, &frames(&x, b * n), b * n, 1).unwrap().value().to_vec().unwrap();
    assert_eq!(no_map, single);
}
