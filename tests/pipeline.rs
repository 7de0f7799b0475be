//! The pipeline on tiny random models (lavapipe): world -> preprocess -> train -> sample
//! through the binary, exact resume, LoRA, NaN stop and bad input.
mod common;
use common::Scratch;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use t2v_kernels::{Gpu, GpuOptions};
use t2v_turbo::models::tokenizer::ClipTokenizer;
use t2v_turbo::models::weights::SaveDtype;
use t2v_turbo::pipeline::model_dir::{init_random, ModelDir, Preset};
use t2v_turbo::pipeline::preprocess::{preprocess_dataset, PreprocessConfig, PreprocessJob, PreprocessModels};
use t2v_turbo::pipeline::shards::{open_dataset, open_datasets, write_shard, RecordTensors, Shard, ShardConfig};
use t2v_turbo::pipeline::sample::SampleOptions;
use t2v_turbo::pipeline::train::{load_run, run, LoraConfig, Replica, RewardCaptions, RewardInput, RunOptions, StepMetrics, TrainConfig, TrainError, Trainer};
use t2v_turbo::pipeline::validation::{validate, Validation, ValidationRow};
use t2v_turbo::world::{write_dataset, WorldConfig};

fn tmp(name: &str) -> Scratch {
    Scratch::new("pipe", name)
}

fn gpu() -> Gpu {
    Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).unwrap()
}

/// Tiny random models and 4 preprocessed clips (10-point DDIM grid), made once.
fn fixture() -> &'static (PathBuf, PathBuf) {
    static F: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        common::sweep_stale("pipe", "fixture");
        let d = tmp("fixture");
        let g = gpu();
        let md = init_random(&g, Preset::Tiny, &d.join("models"), 0, SaveDtype::F32).unwrap();
        write_dataset(&d.join("world"), 5, 4, &WorldConfig { short_fraction: 0.75, ..Default::default() }, true).unwrap();
        let (unet, vae, text) = (md.load_unet(&g).unwrap(), md.load_vae(&g).unwrap(), md.load_text(&g).unwrap());
        let tokenizer = ClipTokenizer::new().unwrap();
        let job = PreprocessJob {
            captions: d.join("world/captions.jsonl"),
            out: d.join("shards"),
            shard: (0, 1),
            shard_size: 2,
            config: ShardConfig { ddim_steps: 10, frames: 8, height: 32, width: 32, fps: 8.0, seed: 0, motion: true, motion_reference: Default::default(), negative_prompt: String::new(), draws: 1 },
            source_fps: None,
            settings: PreprocessConfig::default(),
            quiet: true,
        };
        std::fs::create_dir_all(&job.out).unwrap();
        let rep = preprocess_dataset(&PreprocessModels { unet: &unet, vae: &vae, text: &text, tokenizer: &tokenizer }, &job).unwrap();
        assert_eq!((rep.records, rep.shards_written), (4, 2));
        let paths = (d.join("models"), d.join("shards"));
        // shared by every test until the process ends (a static is never dropped): the next
        // run's sweep_stale removes it
        std::mem::forget(d);
        paths
    })
}

/// A device, the fixture's model folder and its shards, opened.
fn opened_fixture() -> (Gpu, ModelDir, Vec<Shard>) {
    let (models, shards) = fixture();
    (gpu(), ModelDir::read(models).unwrap(), open_dataset(shards).unwrap())
}

fn config(steps: u64) -> TrainConfig {
    TrainConfig { steps, lr: 1e-4, ..TrainConfig::default() }
}

fn opts(out: &Path, stop_after: Option<u64>) -> RunOptions {
    RunOptions { out: out.to_path_buf(), validation: None, checkpoint_every: 1, keep_checkpoints: 2, stop_after, quiet: true }
}

/// Validation every `every` steps on three world prompts (4 steps on the fixture's grid).
fn validation(g: &Gpu, md: &ModelDir, every: u64) -> Validation {
    let v = &md.video;
    let prompts = ["a red circle moving left", "a blue square moving up", "a green triangle moving down"].map(String::from).to_vec();
    let options = SampleOptions { steps: 4, origin: 10, w: 7.5, motion_scale: 0.05, motion_percentage: 0.5, seed: 3, frames: v.frames, height: v.height, width: v.width, fps: v.fps, teacher: None, negative_prompt: None, init: None };
    Validation { every, prompts, options, batch: 2, text: Some(md.load_text(g).unwrap()) }
}

/// A validation row without its wall-clock time.
fn scores(r: &ValidationRow) -> ValidationRow {
    ValidationRow { seconds: 0.0, ..r.clone() }
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one_bit_for_bit() {
    let (g, md, data) = opened_fixture();
    let losses = |out: &Path, stop: Option<u64>| -> Vec<(u32, Option<u32>, u32)> {
        let (student, rewards) = load_run(&g, &md, &config(4), None).unwrap();
        let mut t = Trainer::new(config(4), student, &rewards, &data).unwrap();
        run(&mut t, &RunOptions { validation: Some(validation(&g, &md, 2)), ..opts(out, stop) }).unwrap().iter().map(|m| (m.loss.to_bits(), m.image_reward.map(f32::to_bits), m.grad_norm.to_bits())).collect()
    };
    let straight_dir = tmp("straight");
    let straight = losses(&straight_dir, None);
    let resumed_dir = tmp("resumed");
    let mut parts = losses(&resumed_dir, Some(2));
    assert_eq!(parts.len(), 2);
    parts.extend(losses(&resumed_dir, None)); // resumes from step 2
    assert_eq!(parts, straight);
    // rewards were part of it: at least one record had a short caption
    assert!(straight.iter().any(|s| s.1.is_some()), "no reward step in {straight:?}");
    // the metrics file holds each step once
    let lines = std::fs::read_to_string(resumed_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 4);
    assert!(resumed_dir.join("metrics.png").exists());
    // validations at the start, step 2 and the end, once each, the same as without the stop
    let rows = |dir: &Path| -> Vec<ValidationRow> { std::fs::read_to_string(dir.join("validation.jsonl")).unwrap().lines().map(|l| scores(&serde_json::from_str(l).unwrap())).collect() };
    let (resumed, straight_rows) = (rows(&resumed_dir), rows(&straight_dir));
    assert_eq!(resumed.iter().map(|r| r.step).collect::<Vec<_>>(), vec![0, 2, 4]);
    assert_eq!(resumed, straight_rows);
    assert!(resumed.iter().all(|r| r.accuracy.is_some() && r.image_reward.is_some() && r.video_reward.is_some() && r.flicker.is_finite()), "{resumed:?}");
    assert!(resumed_dir.join("validation.png").exists() && resumed_dir.join("validation/step-000004/002.gif").exists());
    // only the newest two checkpoints are kept
    let ck: Vec<_> = std::fs::read_dir(resumed_dir.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    let mut ck = ck;
    ck.sort();
    assert_eq!(ck, vec!["step-000003", "step-000004"]);
    // other settings cannot resume
    let (student, rewards) = load_run(&g, &md, &TrainConfig { lr: 2e-4, ..config(6) }, None).unwrap();
    let mut t = Trainer::new(TrainConfig { lr: 2e-4, ..config(6) }, student, &rewards, &data).unwrap();
    let e = run(&mut t, &opts(&resumed_dir, None)).unwrap_err().to_string();
    assert!(e.contains("other settings"), "{e}");
    // nor other image-reward weights (recorded in the checkpoint)
    let (student, rewards) = load_run(&g, &md, &config(6), Some(&[0.5, 1.0])).unwrap();
    let mut t = Trainer::new(config(6), student, &rewards, &data).unwrap();
    let e = run(&mut t, &opts(&resumed_dir, None)).unwrap_err().to_string();
    assert!(e.contains("other settings") && e.contains("image_reward_weights: Some([1.0, 1.0])"), "{e}");
    // recomputation may change (a run stopped out of memory continues with it)
    let cfg = TrainConfig { recompute: true, ..config(5) };
    let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
    let mut t = Trainer::new(cfg, student, &rewards, &data).unwrap();
    let more = run(&mut t, &opts(&resumed_dir, None)).unwrap();
    assert_eq!(more.iter().map(|m| m.step).collect::<Vec<_>>(), vec![5]);
    assert!(more[0].loss.is_finite());
}

/// Data parallelism (`train --devices`): with a step's records shared by two devices (record
/// k on device k mod 2) the steps are the one-device steps bit for bit, whatever the number
/// of devices before a resume.
#[test]
fn two_devices_train_the_one_device_steps() {
    let (g, md, data) = opened_fixture();
    let cfg = TrainConfig { batch_size: 3, ..config(3) };
    let bits = |ms: Vec<StepMetrics>| ms.iter().map(|m| (m.loss.to_bits(), m.cd_loss.to_bits(), m.image_reward.map(f32::to_bits), m.video_reward.map(f32::to_bits), m.grad_norm.to_bits())).collect::<Vec<_>>();
    let weights = |t: &Trainer| t.student.trainable().iter().map(|w| w.to_vec().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>();
    let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
    let mut one = Trainer::new(cfg.clone(), student, &rewards, &data).unwrap();
    let straight = bits(run(&mut one, &opts(&tmp("dp-one"), None)).unwrap());
    assert!(straight.iter().all(|s| s.2.is_some() && s.3.is_some()), "every step should have rewarded records: {straight:?}");

    // step 1 on one device, then steps 2 and 3 on two: the replica gets the checkpoint's
    // weights, then each step's
    let dir = tmp("dp-two");
    let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
    let mut t = Trainer::new(cfg.clone(), student, &rewards, &data).unwrap();
    let mut steps = bits(run(&mut t, &opts(&dir, Some(1))).unwrap());
    let g2 = gpu();
    let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
    let (student2, rewards2) = load_run(&g2, &md, &cfg, None).unwrap();
    let mut two = Trainer::new(cfg.clone(), student, &rewards, &data).unwrap();
    two.add_replicas(vec![Replica { student: student2, models: rewards2 }]).unwrap();
    assert_eq!(two.device_count(), 2);
    g2.reset_peak_memory();
    let models_bytes = g2.memory().live_bytes;
    steps.extend(bits(run(&mut two, &opts(&dir, None)).unwrap()));
    assert_eq!(steps, straight);
    assert_eq!(weights(&two), weights(&one));
    // the second device did its share: its records' activations came on top of its models
    assert!(g2.memory().peak_total_bytes > models_bytes + (1 << 20), "{:?} over {models_bytes}", g2.memory());

    // LoRA: the replicas train the adapters the student does (two steps of two records)
    let lora = TrainConfig { lora: Some(LoraConfig { rank: 2, alpha: 2.0 }), batch_size: 2, ..config(2) };
    let lora_run = |devices: usize| {
        let (student, rewards) = load_run(&g, &md, &lora, None).unwrap();
        let (student2, rewards2) = load_run(&g2, &md, &lora, None).unwrap();
        let mut t = Trainer::new(lora.clone(), student, &rewards, &data).unwrap();
        if devices == 2 {
            t.add_replicas(vec![Replica { student: student2, models: rewards2 }]).unwrap();
        }
        (bits(run(&mut t, &opts(&tmp(&format!("dp-lora-{devices}")), None)).unwrap()), weights(&t))
    };
    assert_eq!(lora_run(2), lora_run(1));

    // a replica loaded otherwise is refused
    let (student2, rewards2) = load_run(&g2, &md, &lora, None).unwrap();
    let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
    let mut t = Trainer::new(cfg, student, &rewards, &data).unwrap();
    let e = t.add_replicas(vec![Replica { student: student2, models: rewards2 }]).unwrap_err().to_string();
    assert!(e.contains("replica 1 was not loaded like the student"), "{e}");
}

/// `preprocess --negative-prompt` (the reference's `--negative_prompt`): the teacher's
/// unconditional outputs come from that text and the rest of a record is as without it;
/// the shards record it, and a folder preprocessed with another one is refused.
#[test]
fn a_negative_prompt_conditions_the_unconditional_teacher_outputs() {
    use t2v_kernels::autograd::Tape;
    use t2v_turbo::diffusion::{DdimSolver, Schedule};
    use t2v_turbo::models::unet3d::UnetInputs;
    let (g, md, _) = opened_fixture();
    let world = fixture().0.parent().unwrap().join("world/captions.jsonl");
    let (unet, vae, text) = (md.load_unet(&g).unwrap(), md.load_vae(&g).unwrap(), md.load_text(&g).unwrap());
    let tokenizer = ClipTokenizer::new().unwrap();
    let models = PreprocessModels { unet: &unet, vae: &vae, text: &text, tokenizer: &tokenizer };
    let d = tmp("negative");
    // the first clip of the world's five, without motion guidance
    let job = |out: &str, negative: &str| PreprocessJob {
        captions: world.clone(),
        out: d.join(out),
        shard: (0, 5),
        shard_size: 1,
        config: ShardConfig { ddim_steps: 10, frames: 8, height: 32, width: 32, fps: 8.0, seed: 0, motion: false, motion_reference: Default::default(), negative_prompt: negative.into(), draws: 1 },
        source_fps: None,
        settings: PreprocessConfig { motion: false, ..PreprocessConfig::default() },
        quiet: true,
    };
    let record = |out: &str, negative: &str| {
        let job = job(out, negative);
        std::fs::create_dir_all(&job.out).unwrap();
        assert_eq!(preprocess_dataset(&models, &job).unwrap().records, 1);
        let shard = open_dataset(&job.out).unwrap().remove(0);
        let t = shard.tensors(&g, 0).unwrap();
        let host = |t: &t2v_kernels::Tensor| t.to_vec().unwrap();
        (shard.config.negative_prompt.clone(), (shard.records[0].index, shard.records[0].w), host(&t.z_t), host(&t.cond_eps), t.uncond_eps)
    };
    let plain = record("plain", "");
    let negative = record("negative", "static, blurry");
    assert_eq!((plain.0.as_str(), negative.0.as_str()), ("", "static, blurry"));
    assert_eq!((&plain.1, &plain.2, &plain.3), (&negative.1, &negative.2, &negative.3));
    let uncond = negative.4.to_vec().unwrap();
    assert_ne!(plain.4.to_vec().unwrap(), uncond);
    // the teacher on the record's z_t at its timestep, conditioned on the negative prompt
    let tape = Tape::new();
    let t = DdimSolver::new(&Schedule::videocrafter(), 10).grid[negative.1 .0] as f32;
    let z = tape.constant(t2v_kernels::Tensor::from_slice(&g, negative.4.shape(), &negative.2).unwrap());
    let ids = vec![tokenizer.encode_warn("static, blurry").unwrap().ids];
    let context = text.penultimate(&tape, &ids).unwrap();
    let eps = unet.forward(&UnetInputs { z: &z, t: &[t], context: &context, fps: &[8.0], w_embedding: None, motion_embedding: None, record_attention: false }).unwrap().eps.value().to_vec().unwrap();
    let worst = eps.iter().zip(&uncond).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-5, "stored unconditional eps differs from the teacher's on the negative prompt by {worst}");
    // the plain folder again with the negative prompt: refused
    let e = preprocess_dataset(&models, &job("plain", "static, blurry")).unwrap_err().to_string();
    assert!(e.contains("other settings"), "{e}");
}

/// `preprocess --draws K`: K records of a clip, each its own draw of n and w with its own
/// teacher outputs (motion-guided where n is in the upper half); draw 0 is the one-draw
/// run's record, bit for bit; the folder's setting is recorded and a run with another one
/// refused.
#[test]
fn several_draws_per_clip() {
    let (g, md, _) = opened_fixture();
    let world = fixture().0.parent().unwrap().join("world/captions.jsonl");
    let (unet, vae, text) = (md.load_unet(&g).unwrap(), md.load_vae(&g).unwrap(), md.load_text(&g).unwrap());
    let tokenizer = ClipTokenizer::new().unwrap();
    let models = PreprocessModels { unet: &unet, vae: &vae, text: &text, tokenizer: &tokenizer };
    let d = tmp("draws");
    // the first clip of the world's five, motion guidance on
    let job = |out: &str, draws: usize| PreprocessJob {
        captions: world.clone(),
        out: d.join(out),
        shard: (0, 5),
        shard_size: 1,
        config: ShardConfig { ddim_steps: 10, frames: 8, height: 32, width: 32, fps: 8.0, seed: 0, motion: true, motion_reference: Default::default(), negative_prompt: String::new(), draws },
        source_fps: None,
        settings: PreprocessConfig::default(),
        quiet: true,
    };
    let records = |out: &str, draws: usize| {
        let job = job(out, draws);
        std::fs::create_dir_all(&job.out).unwrap();
        assert_eq!(preprocess_dataset(&models, &job).unwrap().records, draws);
        let shard = open_dataset(&job.out).unwrap().remove(0);
        assert_eq!(shard.config.draws, draws);
        let host = |t: &t2v_kernels::Tensor| t.to_vec().unwrap();
        (0..shard.records.len())
            .map(|j| {
                let (m, t) = (&shard.records[j], shard.tensors(&g, j).unwrap());
                (m.row, m.index, m.w.to_bits(), host(&t.z_t), host(&t.cond_eps), host(&t.uncond_eps), t.score.as_ref().map(host))
            })
            .collect::<Vec<_>>()
    };
    let one = records("one", 1);
    let four = records("four", 4);
    assert_eq!(four[0], one[0], "draw 0 is the one-draw record");
    assert!(four.iter().all(|r| r.0 == one[0].0), "every draw is of the same clip");
    let ws: std::collections::BTreeSet<u32> = four.iter().map(|r| r.2).collect();
    assert_eq!(ws.len(), 4, "four draws of w");
    // each draw motion-guided exactly where its n is in the upper half of the grid
    assert!(four.iter().all(|r| r.6.is_some() == (2 * r.1 >= 10)), "{:?}", four.iter().map(|r| (r.1, r.6.is_some())).collect::<Vec<_>>());
    let e = preprocess_dataset(&models, &job("one", 2)).unwrap_err().to_string();
    assert!(e.contains("other settings"), "{e}");
}

/// Each reward's term of a step is the mean over the records that have it, as in the
/// reference, not over the batch: next to a record without a short caption, a rewarded
/// record pulls as hard as alone. `img_reward_records` / `vid_reward_records` reward that
/// many of a step's records.
#[test]
fn rewards_are_means_over_the_rewarded_records() {
    let (g, md, data) = opened_fixture();
    let d = tmp("reward-means");
    let mut all = Vec::new();
    for s in &data {
        for j in 0..s.records.len() {
            all.push((s.records[j].clone(), s.tensors(&g, j).unwrap()));
        }
    }
    let a = all.iter().position(|r| r.0.short_caption.is_some()).expect("a record with a short caption");
    let (b, mut plain) = all.iter().enumerate().find(|(k, _)| *k != a).map(|(k, r)| (k, r.0.clone())).unwrap();
    plain.short_caption = None;
    let write = |name: &str, recs: Vec<(t2v_turbo::pipeline::shards::RecordMeta, t2v_turbo::pipeline::shards::RecordTensors)>| {
        std::fs::create_dir_all(d.join(name)).unwrap();
        write_shard(&d.join(name).join("shard-0of1-00000.safetensors"), &data[0].config, &recs).unwrap();
        open_dataset(&d.join(name)).unwrap()
    };
    let copy = |k: usize| { let t = &all[k].1; t2v_turbo::pipeline::shards::RecordTensors { z_t: t.z_t.clone(), cond_eps: t.cond_eps.clone(), uncond_eps: t.uncond_eps.clone(), context: t.context.clone(), score: t.score.clone() } };
    let alone = write("a", vec![(all[a].0.clone(), copy(a))]);
    let pair = write("ab", vec![(all[a].0.clone(), copy(a)), (plain.clone(), copy(b))]);
    // a large image-reward scale: its gradient outweighs the consistency loss's
    let step = |shards: &[Shard], batch: usize| {
        let cfg = TrainConfig { batch_size: batch, beta_img: 1e4, beta_vid: 0.0, ..config(1) };
        let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
        Trainer::new(cfg, student, &rewards, shards).unwrap().step().unwrap()
    };
    let (one, two) = (step(&alone, 1), step(&pair, 2));
    assert_eq!((one.image_reward_records, two.image_reward_records), (1, 1));
    assert_eq!(one.image_reward, two.image_reward);
    let ratio = two.grad_norm / one.grad_norm;
    assert!((ratio - 1.0).abs() < 0.05, "gradient norms {} (with the unrewarded record) vs {} (alone)", two.grad_norm, one.grad_norm);
    // the loss is the mean consistency loss minus each reward's mean, scaled
    assert!((two.loss - (two.cd_loss - 1e4 * two.image_reward.unwrap())).abs() <= 1e-3 * two.loss.abs().max(1.0), "{two:?}");

    // at most one record a step gets each reward
    let shorts = data.iter().flat_map(|s| s.records.iter()).filter(|r| r.short_caption.is_some()).count();
    assert!(shorts >= 2, "the fixture has {shorts} records with a short caption");
    let cfg = TrainConfig { batch_size: 4, img_reward_records: Some(1), vid_reward_records: Some(1), ..config(1) };
    let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
    let m = Trainer::new(cfg.clone(), student, &rewards, &data).unwrap().step().unwrap();
    assert_eq!((m.image_reward_records, m.video_reward_records), (1, 1));
    let want = m.cd_loss - cfg.beta_img * m.image_reward.unwrap() - cfg.beta_vid * m.video_reward.unwrap();
    assert!((m.loss - want).abs() <= 1e-6, "{m:?}");
    let cfg = TrainConfig { batch_size: 4, ..config(1) };
    let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
    let m = Trainer::new(cfg, student, &rewards, &data).unwrap().step().unwrap();
    assert_eq!((m.image_reward_records, m.video_reward_records), (shorts, shorts));

    // which records: data without short captions gets its captions scored under `auto` (as
    // the reference code does), nothing under `short`; data with some: `auto` is `short`
    let mut a_plain = all[a].0.clone();
    a_plain.short_caption = None;
    let none = write("none", vec![(a_plain, copy(a)), (plain, copy(b))]);
    for (shards, captions, want) in [(&none, RewardCaptions::Auto, 2), (&none, RewardCaptions::Short, 0), (&pair, RewardCaptions::Auto, 1), (&pair, RewardCaptions::Any, 2)] {
        let cfg = TrainConfig { batch_size: 2, reward_captions: captions, ..config(1) };
        let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
        let m = Trainer::new(cfg, student, &rewards, shards).unwrap().step().unwrap();
        assert_eq!((m.image_reward_records, m.video_reward_records), (want, want), "{captions:?}");
    }
}

/// The reference's other training options. A temporal learning-rate scale applies to the
/// temporal transformers as the reference picks them (not the middle block's); an EMA
/// target starts as the student and moves by decay * target + (1 - decay) * student after
/// each step, on replicas too; and a run with a warmed-up cosine schedule, a temporal
/// scale, the L2 distance and an EMA target resumes bit for bit, each step at its rate.
#[test]
fn the_reference_training_options_act_and_resume_exactly() {
    use t2v_turbo::pipeline::train::{LossType, LrSchedule};
    let (g, md, data) = opened_fixture();
    let host = |ts: &[(String, t2v_kernels::Tensor)]| ts.iter().map(|(n, t)| (n.clone(), t.to_vec().unwrap())).collect::<Vec<_>>();

    // a temporal rate of 0: those weights stay, the others move
    let cfg = TrainConfig { temporal_lr_scale: 0.0, ..config(1) };
    let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
    let paths = student.unet.temporal_transformer_paths();
    assert!(paths.contains(&"init_attn.0".into()) && paths.contains(&"middle_block.2".into()) && paths.contains(&"input_blocks.1.2".into()), "{paths:?}");
    let before = host(&student.params);
    let mut t = Trainer::new(cfg, student, &rewards, &data).unwrap();
    t.step().unwrap();
    let (mut still, mut moved) = (vec![], vec![]);
    for ((name, was), (_, now)) in before.iter().zip(host(&t.student.params)) {
        let under = |p: &String| name.starts_with(&format!("{p}."));
        let group = if name.starts_with("middle_block.2.") { "middle temporal" } else if paths.iter().any(under) { "temporal" } else { "other" };
        if *was == now { still.push(group) } else { moved.push(group) }
    }
    assert!(still.contains(&"temporal") && !moved.contains(&"temporal"), "temporal weights moved at rate 0");
    assert!(moved.contains(&"middle temporal") && moved.contains(&"other"), "moved: {moved:?}");

    // the EMA target: the student's start, then the average after a step
    let cfg = TrainConfig { ema_target: Some(0.9), ..config(1) };
    let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
    let start = host(&student.params);
    let target = |t: &Trainer| t.student.target.as_ref().unwrap().params.iter().map(|p| p.to_vec().unwrap()).collect::<Vec<_>>();
    let mut t = Trainer::new(cfg, student, &rewards, &data).unwrap();
    assert_eq!(target(&t), start.iter().map(|p| p.1.clone()).collect::<Vec<_>>());
    t.step().unwrap();
    let mut worst = 0f32;
    for ((_, w0), (w1, ema)) in start.iter().zip(host(&t.student.params).iter().map(|p| &p.1).zip(target(&t))) {
        for ((a, b), e) in w0.iter().zip(w1).zip(ema) {
            worst = worst.max((0.9 * a + 0.1 * b - e).abs());
        }
    }
    assert!(worst <= 1e-6, "EMA target off by {worst}");
    // (its first step is the plain student's: AdamW's epsilon reaches the update)
    let eps = TrainConfig { adam_eps: 1.0, ..config(1) };
    let (student, rewards) = load_run(&g, &md, &eps, None).unwrap();
    let mut e = Trainer::new(eps, student, &rewards, &data).unwrap();
    e.step().unwrap();
    assert_ne!(host(&e.student.params), host(&t.student.params));
    let (student, rewards) = load_run(&g, &md, &config(1), None).unwrap();
    let bad = Trainer::new(TrainConfig { adam_betas: (0.9, 1.0), ..config(1) }, student, &rewards, &data).err().expect("beta2 of 1").to_string();
    assert!(bad.contains("betas in [0, 1)"), "{bad}");
    let lora = TrainConfig { lora: Some(LoraConfig { rank: 2, alpha: 2.0 }), ..t.config.clone() };
    let e = load_run(&g, &md, &lora, None).err().expect("LoRA with an EMA target").to_string();
    assert!(e.contains("full fine-tuning"), "{e}");

    // on two devices: the replica's target follows the student's
    let cfg = TrainConfig { ema_target: Some(0.5), batch_size: 2, ..config(2) };
    let g2 = gpu();
    let two_runs = |devices: usize| {
        let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
        let mut t = Trainer::new(cfg.clone(), student, &rewards, &data).unwrap();
        if devices == 2 {
            let (student2, rewards2) = load_run(&g2, &md, &cfg, None).unwrap();
            t.add_replicas(vec![Replica { student: student2, models: rewards2 }]).unwrap();
        }
        let ms = run(&mut t, &opts(&tmp(&format!("ema-{devices}")), None)).unwrap();
        (ms.iter().map(|m| (m.loss.to_bits(), m.grad_norm.to_bits())).collect::<Vec<_>>(), target(&t))
    };
    assert_eq!(two_runs(2), two_runs(1));

    // w drawn at every use (the reference code's): a range of the record's own w trains
    // what the record's w does, another w something else
    let d = tmp("redraw-w");
    std::fs::create_dir_all(&d).unwrap();
    let (s0, meta) = (&data[0], data[0].records[0].clone());
    write_shard(&d.join("shard-0of1-00000.safetensors"), &s0.config, &[(meta.clone(), s0.tensors(&g, 0).unwrap())]).unwrap();
    let one = open_dataset(&d).unwrap();
    let cd = |redraw_w: Option<(f32, f32)>| {
        let cfg = TrainConfig { redraw_w, ..config(1) };
        let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
        Trainer::new(cfg, student, &rewards, &one).unwrap().step().unwrap().cd_loss
    };
    let own = cd(None);
    assert_eq!(cd(Some((meta.w, meta.w))).to_bits(), own.to_bits());
    assert_ne!(cd(Some((meta.w + 3.0, meta.w + 3.0))), own);

    // all of them, stopped after step 1 and resumed
    let cfg = TrainConfig { lr_schedule: LrSchedule::Cosine, lr_warmup_steps: 1, temporal_lr_scale: 3.0, loss: LossType::L2, ema_target: Some(0.9), redraw_w: Some((5.0, 15.0)), ..config(3) };
    let steps = |out: &Path, stop: Option<u64>| {
        let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
        let mut t = Trainer::new(cfg.clone(), student, &rewards, &data).unwrap();
        run(&mut t, &opts(out, stop)).unwrap().iter().map(|m| (m.loss.to_bits(), m.grad_norm.to_bits(), m.lr)).collect::<Vec<_>>()
    };
    let straight = steps(&tmp("options-straight"), None);
    let dir = tmp("options-resumed");
    let mut parts = steps(&dir, Some(1));
    assert!(dir.join("checkpoints/step-000001/ema_target.safetensors").exists());
    parts.extend(steps(&dir, None));
    assert_eq!(parts, straight);
    // warmup from 0, then half a cosine over the two steps left: 1e-4 * [0, 1, 0.5]
    let lrs: Vec<f32> = straight.iter().map(|s| s.2).collect();
    assert_eq!(lrs[0], 0.0);
    assert!((lrs[1] - 1e-4).abs() < 1e-10 && (lrs[2] - 5e-5).abs() < 1e-10, "{lrs:?}");
}

/// `--train-text-encoder` (the reference's `--train_text_encoder`): the student reads its
/// encoder's context of each caption (the stored one before training), the last N blocks
/// the context reads and ln_final learn (the unread last block and the earlier ones stay),
/// the UNet's clipping reads the UNet's gradients alone, a resumed run equals an
/// uninterrupted one bit for bit, and the student model folder carries the trained encoder.
#[test]
fn the_text_encoder_trains_with_the_unet() {
    let (g, md, data) = opened_fixture();
    let host = |ts: &[(String, t2v_kernels::Tensor)]| ts.iter().map(|(n, t)| (n.clone(), t.to_vec().unwrap())).collect::<Vec<_>>();
    let cfg = TrainConfig { text_layers: Some(2), ..config(1) };
    let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
    let text = student.text.as_ref().unwrap();
    // the tiny encoder has 2 blocks: N = 2 trains block 0 (block 1 is unread) and ln_final
    let names: Vec<&str> = text.params.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.iter().all(|n| n.starts_with("transformer.resblocks.0.") || n.starts_with("ln_final.")) && names.contains(&"ln_final.weight") && names.len() > 2, "{names:?}");
    assert!(student.trainable_names().iter().any(|n| n == "cond_stage_model.model.ln_final.weight"));
    let reader = t2v_turbo::pipeline::model_dir::load_text_file_tensors(&g, &md.text.0, &md.text.1.text, t2v_turbo::models::weights::WeightPrecision::F32).unwrap().1;
    let all_before: Vec<(String, Vec<f32>)> = reader.iter().map(|(n, _, p)| (n.clone(), p.iter().flat_map(|t| t.to_vec().unwrap()).collect())).collect();
    let unet_before = host(&student.params);
    let mut t = Trainer::new(cfg.clone(), student, &rewards, &data).unwrap();
    let m = t.step().unwrap();
    // the same step's values as a run that reads the stored contexts
    let (plain_student, plain_rewards) = load_run(&g, &md, &config(1), None).unwrap();
    let plain = Trainer::new(config(1), plain_student, &plain_rewards, &data).unwrap().step().unwrap();
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * (1.0 + b.abs());
    assert!(close(m.loss, plain.loss) && close(m.cd_loss, plain.cd_loss), "with the encoder {m:?}, stored contexts {plain:?}");
    // the clipping's norm is the UNet's alone; the encoder's is reported apart
    assert!(close(m.grad_norm, plain.grad_norm), "UNet gradient norm {} vs {}", m.grad_norm, plain.grad_norm);
    assert!(m.text_grad_norm.is_some_and(|n| n > 0.0) && plain.text_grad_norm.is_none(), "{m:?}");
    // what moved: the trained tensors, not the frozen ones; the UNet too
    let text = t.student.text.as_ref().unwrap();
    let trained: Vec<&str> = text.params.iter().map(|(n, _)| n.as_str()).collect();
    let now = load_tensors(text);
    for ((name, was), (_, is)) in all_before.iter().zip(&now) {
        assert_eq!(trained.contains(&name.as_str()), was != is, "{name}: trained {}, moved {}", trained.contains(&name.as_str()), was != is);
    }
    assert_ne!(host(&t.student.params), unet_before);
    // the model folder carries the trained encoder: its context is the student's
    let d = tmp("text-encoder");
    let smd = t2v_turbo::pipeline::train::write_student_model(&d.join("model"), &md, &t.student, 1, SaveDtype::F32).unwrap();
    assert_eq!(smd.text.0, d.join("model/text.safetensors"));
    let ids = vec![ClipTokenizer::new().unwrap().encode("a red circle moving left").unwrap().ids];
    let context = |tower: &t2v_turbo::models::clip::TextTower| {
        let tape = t2v_kernels::autograd::Tape::new();
        tape.no_grad(|| tower.penultimate(&tape, &ids)).unwrap().value().to_vec().unwrap()
    };
    let (saved, student_ctx, teacher_ctx) = (context(&smd.load_text(&g).unwrap()), context(&text.tower), context(&md.load_text(&g).unwrap()));
    assert_eq!(saved, student_ctx);
    assert_ne!(saved, teacher_ctx);
    // stopped after step 1 and resumed: the uninterrupted run bit for bit
    let cfg = TrainConfig { text_layers: Some(2), batch_size: 2, ..config(3) };
    let steps = |out: &Path, stop: Option<u64>| {
        let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
        let mut t = Trainer::new(cfg.clone(), student, &rewards, &data).unwrap();
        run(&mut t, &opts(out, stop)).unwrap().iter().map(|m| (m.loss.to_bits(), m.grad_norm.to_bits(), m.text_grad_norm.map(f32::to_bits))).collect::<Vec<_>>()
    };
    let straight = steps(&tmp("text-straight"), None);
    let dir = tmp("text-resumed");
    let mut parts = steps(&dir, Some(1));
    parts.extend(steps(&dir, None));
    assert_eq!(parts, straight);
    // refused: more layers than the encoder has, and with LoRA
    let e = load_run(&g, &md, &TrainConfig { text_layers: Some(3), ..config(1) }, None).err().expect("3 of 2 layers").to_string();
    assert!(e.contains("has 2 resblocks"), "{e}");
    let e = load_run(&g, &md, &TrainConfig { text_layers: Some(2), lora: Some(LoraConfig { rank: 2, alpha: 2.0 }), ..config(1) }, None).err().expect("with LoRA").to_string();
    assert!(e.contains("full fine-tuning"), "{e}");
}

/// Every tensor of a trained text encoder, by key, on the host.
fn load_tensors(text: &t2v_turbo::pipeline::train::TextStudent) -> Vec<(String, Vec<f32>)> {
    text.tensors().iter().map(|(n, _, p)| (n.clone(), p.iter().flat_map(|t| t.to_vec().unwrap()).collect())).collect()
}

/// `--recompute` (UNet blocks, the reward frames' VAE decoding and the reward models'
/// vision layers recomputed in the backward) trains the same steps — losses, rewards and
/// gradient norms — with less memory at the peak; with LoRA too (the adapters' gradients
/// through the recomputed blocks).
#[test]
fn recomputation_trains_the_same_steps() {
    let (g, md, data) = opened_fixture();
    for lora in [None, Some(LoraConfig { rank: 4, alpha: 4.0 })] {
        // the steps' metrics and their largest peak of memory in tensors
        let steps = |recompute: bool| -> (Vec<(f32, Option<f32>, Option<f32>, f32)>, f32) {
            let cfg = TrainConfig { recompute, lora, ..config(3) };
            // loaded without recomputation: the trainer applies its settings
            let (student, rewards) = load_run(&g, &md, &TrainConfig { recompute: false, ..cfg.clone() }, None).unwrap();
            let mut t = Trainer::new(cfg, student, &rewards, &data).unwrap();
            let m: Vec<StepMetrics> = (0..3).map(|_| t.step().unwrap()).collect();
            (m.iter().map(|m| (m.loss, m.image_reward, m.video_reward, m.grad_norm)).collect(), m.iter().map(|m| m.peak_live_mib).fold(0.0, f32::max))
        };
        let ((plain, peak0), (recomputed, peak1)) = (steps(false), steps(true));
        assert!(plain.iter().any(|s| s.1.is_some() && s.2.is_some()), "no reward step in {plain:?}");
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1e-3);
        for (p, r) in plain.iter().zip(&recomputed) {
            let same = close(p.0, r.0) && close(p.3, r.3) && p.1.is_some() == r.1.is_some() && p.2.is_some() == r.2.is_some()
                && p.1.zip(r.1).is_none_or(|(a, b)| close(a, b)) && p.2.zip(r.2).is_none_or(|(a, b)| close(a, b));
            assert!(same, "lora {lora:?}: steps differ:\n  plain      {plain:?}\n  recomputed {recomputed:?}");
        }
        assert!(peak1 < peak0 && peak1 > 0.0, "lora {lora:?}: peak {peak1} MiB in tensors recomputed, {peak0} stored");
        eprintln!("lora {lora:?}: peak in tensors {peak0} -> {peak1} MiB");
        if lora.is_some() {
            continue;
        }
        // under a memory limit between the two peaks: without recomputation the first step
        // runs out of memory; a trainer told to recompute then does so from that step on,
        // and trains the recomputed steps
        g.set_memory_limit(Some(((peak0 + peak1) / 2.0 * 1048576.0) as u64));
        let cfg = config(3);
        {
            let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
            let mut t = Trainer::new(cfg.clone(), student, &rewards, &data).unwrap();
            let e = t.step().unwrap_err();
            assert!(e.is_out_of_memory(), "{e}");
        }
        let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
        let mut t = Trainer::new(cfg, student, &rewards, &data).unwrap();
        t.recompute_when_out_of_memory(true);
        let auto: Vec<_> = (0..3).map(|_| t.step().unwrap()).map(|m| (m.loss, m.image_reward, m.video_reward, m.grad_norm)).collect();
        assert_eq!((t.recompute_switched_at(), t.config.recompute), (Some(1), true));
        for (a, r) in auto.iter().zip(&recomputed) {
            assert!(close(a.0, r.0) && close(a.3, r.3) && a.1.zip(r.1).is_none_or(|(x, y)| close(x, y)), "steps differ:\n  switched   {auto:?}\n  recomputed {recomputed:?}");
        }
        g.set_memory_limit(None);
        // a run resumed from its checkpoint keeps recomputing
        let dir = tmp("switched");
        let ckpt = t.save_checkpoint(&dir, 1).unwrap();
        let (student, rewards) = load_run(&g, &md, &config(4), None).unwrap();
        let mut resumed = Trainer::new(config(4), student, &rewards, &data).unwrap();
        resumed.load_checkpoint(&ckpt).unwrap();
        assert_eq!((resumed.recompute_switched_at(), resumed.config.recompute), (Some(1), true));
    }
}

#[test]
fn lora_trains_adapters_and_leaves_the_base_weights() {
    let (g, md, data) = opened_fixture();
    let cfg = TrainConfig { lora: Some(LoraConfig { rank: 4, alpha: 4.0 }), lr: 1e-2, beta_vid: 0.0, ..config(2) };
    let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
    let base: Vec<Vec<f32>> = student.params.iter().map(|(_, t)| t.to_vec().unwrap()).collect();
    let mut t = Trainer::new(cfg.clone(), student, &rewards, &data).unwrap();
    let m1 = t.step().unwrap();
    let m2 = t.step().unwrap();
    assert!(m1.loss.is_finite() && m2.loss.is_finite() && m1.grad_norm > 0.0);
    for ((_, p), b) in t.student.params.iter().zip(&base) {
        assert_eq!(&p.to_vec().unwrap(), b, "a base weight changed");
    }
    let moved = t.student.adapters.iter().filter(|(_, l)| l.up.to_vec().unwrap().iter().any(|&x| x != 0.0)).count();
    assert!(moved > t.student.adapters.len() / 2, "{moved} of {} adapters trained", t.student.adapters.len());
    let merged = t.student.merged_params().unwrap();
    let changed = merged.iter().zip(&base).filter(|((_, m), b)| &m.to_vec().unwrap() != *b).count();
    assert!(changed > 0);
    // validation samples the student with its adapters: other videos than the base weights
    let v = validation(&g, &md, 1);
    let trained = validate(&t, &v, &tmp("lora-val")).unwrap();
    let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
    let fresh = Trainer::new(cfg.clone(), student, &rewards, &data).unwrap();
    let base_row = validate(&fresh, &v, &tmp("lora-val0")).unwrap();
    assert_ne!(trained.image_reward, base_row.image_reward, "the adapters were not sampled");
    // the run's model folder also holds its adapters alone: the teacher's folder plus them
    // is the merged student; strength 0 is the student before training
    use t2v_turbo::pipeline::sample::Generator;
    let d = tmp("lora-file");
    let smd = t2v_turbo::pipeline::train::write_student_model(&d.join("model"), &md, &t.student, 2, SaveDtype::F32).unwrap();
    let base_md = t2v_turbo::pipeline::train::write_student_model(&d.join("base"), &md, &fresh.student, 0, SaveDtype::F32).unwrap();
    let lora = d.join("model/lora.safetensors");
    // the trainer applies each adapter next to its layer (no merged copy of the weights):
    // its validation samples score what the merged student's do
    let merged_cfg = TrainConfig { lora: None, ..cfg.clone() };
    let (ms, mr) = load_run(&g, &smd, &merged_cfg, None).unwrap();
    let merged_row = validate(&Trainer::new(merged_cfg, ms, &mr, &data).unwrap(), &v, &tmp("lora-val-merged")).unwrap();
    let close = |a: Option<f32>, b: Option<f32>| (a.unwrap() - b.unwrap()).abs() <= 1e-4 * (1.0 + b.unwrap().abs());
    assert!(close(trained.image_reward, merged_row.image_reward) && close(trained.video_reward, merged_row.video_reward), "unmerged {trained:?} vs merged {merged_row:?}");
    assert!((trained.flicker - merged_row.flicker).abs() <= 1e-3 * (1.0 + merged_row.flicker.abs()), "unmerged {trained:?} vs merged {merged_row:?}");
    let opts = SampleOptions { steps: 2, seed: 4, ..SampleOptions::for_models(&smd) };
    let video = |gen: Generator| gen.generate("a red circle moving left", &opts).unwrap();
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let merged = video(Generator::from_model_dir(&g, &smd).unwrap());
    let applied = video(Generator::from_model_dir_with_lora(&g, &md, &lora, 1.0).unwrap());
    let d1 = max_diff(&applied, &merged);
    assert!(d1 <= 1e-5, "teacher + LoRA file vs the merged student: {d1}");
    let none = video(Generator::from_model_dir_with_lora(&g, &md, &lora, 0.0).unwrap());
    let before = video(Generator::from_model_dir(&g, &base_md).unwrap());
    let (d0, moved) = (max_diff(&none, &before), max_diff(&none, &merged));
    assert!(d0 <= 1e-5 && moved > 1e-3, "strength 0 vs the untrained student {d0}, vs the trained {moved}");
    // the same folder exported from a checkpoint of the run (`t2v-turbo export`)
    let ck = t.save_checkpoint(&d.join("checkpoints"), 1).unwrap();
    t2v_turbo::pipeline::train::export_checkpoint(&g, &md, &ck, &d.join("exported"), SaveDtype::F32, t2v_turbo::pipeline::train::Exported::Student).unwrap();
    for f in ["unet.safetensors", "lora.safetensors"] {
        assert!(std::fs::read(d.join("exported").join(f)).unwrap() == std::fs::read(d.join("model").join(f)).unwrap(), "exported {f} differs");
    }
    let e = Generator::from_model_dir_with_lora(&g, &md, &md.unet.0, 1.0).err().unwrap().to_string();
    assert!(e.contains("not a LoRA file"), "{e}");
    eprintln!("LoRA file: vs merged {d1}, strength 0 vs untrained {d0}, vs trained {moved}");
    // the command line: the teacher's folder with the file samples as a student
    let (teacher, file, out) = (md.root.to_string_lossy().into_owned(), lora.to_string_lossy().into_owned(), d.join("videos").to_string_lossy().into_owned());
    let (ok, text) = t2v(&["sample", "--models", &teacher, "--lora", &file, "--steps", "2", "--prompt", "a red circle moving left", "--out", &out]);
    assert!(ok && text.contains("2 consistency steps"), "{text}");
    let (ok, text) = t2v(&["sample", "--models", &teacher, "--lora", &file, "--teacher", "--prompt", "x", "--out", &format!("{out}-t")]);
    assert!(!ok && text.contains("with the --lora file is a distilled student"), "{text}");
    let (ok, text) = t2v(&["info", "--weights", &file]);
    assert!(ok && text.contains("a LoRA file of `t2v-turbo train --lora-rank`") && text.contains("--lora"), "{text}");
}

/// An image reward of weight 0 is left out of a step (not run): a reward model whose
/// weights are all NaN spoils the loss at any other weight, not at 0, where the image
/// reward is the other models' alone.
#[test]
fn an_image_reward_of_weight_zero_is_not_run() {
    use t2v_turbo::reward::ImageTextReward;
    let (g, md, data) = opened_fixture();
    let cfg = TrainConfig { reward_captions: RewardCaptions::Any, ..config(1) };
    let step = |second: Option<f32>| {
        let (student, mut rewards) = load_run(&g, &md, &cfg, None).unwrap();
        rewards.image.truncate(1);
        if let Some(weight) = second {
            let spec = &md.image_rewards[1];
            let l = t2v_turbo::models::weights::Loader::random(&g, 9);
            let clip = t2v_turbo::models::clip::Clip::load(&l, &spec.config).unwrap();
            for (_, t) in l.params() {
                t.write(&vec![f32::NAN; t.numel()]).unwrap();
            }
            rewards.image.push((ImageTextReward { clip, mode: spec.preprocess }, weight));
        }
        Trainer::new(cfg.clone(), student, &rewards, &data).unwrap().step()
    };
    let alone = step(None).unwrap();
    let zero = step(Some(0.0)).unwrap();
    assert!(alone.image_reward.is_some());
    assert_eq!((zero.loss.to_bits(), zero.image_reward.map(f32::to_bits)), (alone.loss.to_bits(), alone.image_reward.map(f32::to_bits)));
    let e = step(Some(0.5)).err().expect("a NaN reward model at weight 0.5").to_string();
    assert!(e.contains("not finite"), "{e}");
}

/// `--no-motion-cond`: T2V-Turbo (v1)'s student, conditioned on w alone: no motion-scale
/// layers, in its model folder and in a LoRA file, and both sample alike; refused on a
/// student's folder that has them.
#[test]
fn a_student_conditioned_on_w_alone() {
    use t2v_turbo::pipeline::sample::Generator;
    let (g, md, data) = opened_fixture();
    let cfg = TrainConfig { motion_cond: false, lora: Some(LoraConfig { rank: 2, alpha: 2.0 }), lr: 1e-2, ..config(1) };
    let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
    assert!(student.unet.config.time_cond_proj_dim.is_some() && student.unet.config.motion_cond_proj_dim.is_none());
    assert!(student.params.iter().any(|(n, _)| n.starts_with("time_cond_proj.")) && !student.params.iter().any(|(n, _)| n.starts_with("motion_cond_proj.") || n.starts_with("combine_proj.")));
    let mut t = Trainer::new(cfg.clone(), student, &rewards, &data).unwrap();
    assert!(t.step().unwrap().loss.is_finite());
    let d = tmp("w-alone");
    let smd = t2v_turbo::pipeline::train::write_student_model(&d.join("model"), &md, &t.student, 1, SaveDtype::F32).unwrap();
    let smd = ModelDir::read(&smd.root).unwrap();
    assert!(smd.is_student() && smd.unet.1.motion_cond_proj_dim.is_none());
    let lora = t2v_turbo::models::weights::WeightFile::open(&d.join("model/lora.safetensors")).unwrap();
    assert!(lora.entries().contains_key("student.time_cond_proj.weight") && !lora.entries().keys().any(|k| k.contains("motion_cond_proj")));
    // the teacher's folder plus the LoRA file is the merged student
    let opts = SampleOptions { steps: 2, seed: 5, ..SampleOptions::for_models(&smd) };
    let merged = Generator::from_model_dir(&g, &smd).unwrap().generate("a blue square moving up", &opts).unwrap();
    let applied = Generator::from_model_dir_with_lora(&g, &md, &d.join("model/lora.safetensors"), 1.0).unwrap().generate("a blue square moving up", &opts).unwrap();
    let diff = merged.iter().zip(&applied).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff <= 1e-5, "teacher + LoRA file vs the merged w-only student: {diff}");
    // a student folder with motion layers cannot become one without
    let v2 = TrainConfig { lora: None, ..config(1) };
    let (v2_student, _) = load_run(&g, &md, &v2, None).unwrap();
    let v2md = t2v_turbo::pipeline::train::write_student_model(&d.join("v2"), &md, &v2_student, 0, SaveDtype::F32).unwrap();
    let e = load_run(&g, &v2md, &TrainConfig { motion_cond: false, ..config(1) }, None).err().expect("a v2 student's folder").to_string();
    assert!(e.contains("a student with a motion-scale embedding"), "{e}");
}

/// `--reward-input noise` scores the student's one-step generation from fresh noise: other
/// rewards than on the data's consistency output, the same consistency loss, and gradients
/// through that generation (the weights end elsewhere than without rewards).
/// `--reward-input sample` scores the whole multistep sample: with one step it is the
/// one-step generation exactly; with two, the rewards score another video and the weights
/// end elsewhere.
#[test]
fn rewards_on_generations_from_noise() {
    let (g, md, data) = opened_fixture();
    let steps_of = |input: RewardInput, beta: f32, sample_steps: usize| {
        let cfg = TrainConfig { reward_input: input, reward_sample_steps: sample_steps, beta_img: beta, beta_vid: beta, ..config(4) };
        let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
        let mut t = Trainer::new(cfg, student, &rewards, &data).unwrap();
        let ms: Vec<_> = (0..4).map(|_| t.step().unwrap()).collect();
        (ms, t.student.params[0].1.to_vec().unwrap())
    };
    let steps = |input: RewardInput, beta: f32| steps_of(input, beta, 4);
    let (data_ms, _) = steps(RewardInput::Data, 0.5);
    let (noise_ms, noise_w) = steps(RewardInput::Noise, 0.5);
    let (_, cd_w) = steps(RewardInput::Noise, 0.0);
    // the first step's consistency loss comes before any update: equal
    assert_eq!(data_ms[0].cd_loss, noise_ms[0].cd_loss);
    let rewarded: Vec<usize> = (0..4).filter(|&i| data_ms[i].image_reward.is_some()).collect();
    assert!(!rewarded.is_empty() && rewarded.iter().all(|&i| noise_ms[i].image_reward.is_some() && noise_ms[i].video_reward.is_some()));
    assert!(rewarded.iter().all(|&i| noise_ms[i].image_reward != data_ms[i].image_reward), "{data_ms:?} {noise_ms:?}");
    assert!(noise_ms.iter().all(|m| m.loss.is_finite() && m.grad_norm.is_finite()));
    assert!(cd_w != noise_w, "the rewards on the generations moved no weight");
    // a one-step "sample" is the one-step generation, to the bit
    let (one_ms, one_w) = steps_of(RewardInput::Sample, 0.5, 1);
    let key = |m: &StepMetrics| (m.loss, m.image_reward, m.video_reward, m.grad_norm);
    assert_eq!(one_ms.iter().map(key).collect::<Vec<_>>(), noise_ms.iter().map(key).collect::<Vec<_>>());
    assert_eq!(one_w, noise_w);
    // two steps: the rewards score another video, and the weights end elsewhere
    let (two_ms, two_w) = steps_of(RewardInput::Sample, 0.5, 2);
    assert_eq!(two_ms[0].cd_loss, noise_ms[0].cd_loss);
    assert!(rewarded.iter().all(|&i| two_ms[i].image_reward.is_some() && two_ms[i].image_reward != noise_ms[i].image_reward), "{two_ms:?}");
    assert!(two_ms.iter().all(|m| m.loss.is_finite() && m.grad_norm.is_finite()));
    assert!(two_w != noise_w && two_w != cd_w);
}

#[test]
fn a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let (g, md, good) = opened_fixture();
    let out = tmp("nan");
    let cfg = TrainConfig { beta_img: 0.0, beta_vid: 0.0, ..config(3) };
    let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
    let mut t = Trainer::new(cfg.clone(), student, &rewards, &good).unwrap();
    run(&mut t, &opts(&out, Some(1))).unwrap();
    // the same records with NaN latents
    let bad_dir = tmp("nan-shards");
    for s in &good {
        let recs: Vec<_> = (0..s.records.len())
            .map(|j| {
                let r = s.tensors(&g, j).unwrap();
                let nan = t2v_kernels::Tensor::from_slice(&g, r.z_t.shape(), &vec![f32::NAN; r.z_t.numel()]).unwrap();
                (s.records[j].clone(), RecordTensors { z_t: nan, ..r })
            })
            .collect();
        write_shard(&bad_dir.join(s.path.file_name().unwrap()), &s.config, &recs).unwrap();
    }
    let bad = open_dataset(&bad_dir).unwrap();
    let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
    let mut t = Trainer::new(cfg.clone(), student, &rewards, &bad).unwrap();
    let e = run(&mut t, &opts(&out, None)).unwrap_err();
    assert!(matches!(e, TrainError::NonFinite { step: 2, .. }), "{e}");
    assert!(e.to_string().contains("step-000001"), "{e}");
    // the checkpoint is intact and resumable
    let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
    let mut t = Trainer::new(cfg, student, &rewards, &good).unwrap();
    let ms = run(&mut t, &opts(&out, None)).unwrap();
    assert_eq!(ms.first().map(|m| m.step), Some(2));
}

/// Several folders of shards are one data set (the reference's two preprocessing passes
/// into two folders); a resumed run must read the same data in the same order; folders of
/// another grid or clip size are refused by name.
#[test]
fn several_shard_folders_train_as_one_data_set() {
    let (g, md, one) = opened_fixture();
    let (_, shards) = fixture();
    let d = tmp("two-folders");
    std::fs::create_dir_all(d.join("b")).unwrap();
    // (a second folder: the fixture's last shard)
    let last = &one.last().unwrap().path;
    std::fs::copy(last, d.join("b").join(last.file_name().unwrap())).unwrap();
    let two = open_datasets(&[shards.clone(), d.join("b")]).unwrap();
    let records = |v: &[Shard]| v.iter().map(|s| s.records.len()).sum::<usize>();
    assert_eq!((two.len(), records(&two)), (one.len() + 1, records(&one) + one.last().unwrap().records.len()));
    let cfg = config(2);
    let trainer = || load_run(&g, &md, &cfg, None).unwrap();
    let (student, rewards) = trainer();
    let mut t = Trainer::new(cfg.clone(), student, &rewards, &two).unwrap();
    t.step().unwrap();
    let ckpt = t.save_checkpoint(&d.join("checkpoints"), 2).unwrap();
    // the same folders: resumes; one of them, or the two swapped: refused
    let (student, rewards) = trainer();
    Trainer::new(cfg.clone(), student, &rewards, &two).unwrap().load_checkpoint(&ckpt).unwrap();
    let swapped = open_datasets(&[d.join("b"), shards.clone()]).unwrap();
    for other in [&one, &swapped] {
        let (student, rewards) = trainer();
        let e = Trainer::new(cfg.clone(), student, &rewards, other).unwrap().load_checkpoint(&ckpt).unwrap_err().to_string();
        assert!(e.contains("trained on other data") && e.contains("same --data folders"), "{e}");
    }
    // another clip size
    std::fs::create_dir_all(d.join("c")).unwrap();
    let s = &one[0];
    let recs: Vec<_> = (0..s.records.len()).map(|j| (s.records[j].clone(), s.tensors(&g, j).unwrap())).collect();
    write_shard(&d.join("c/shard-0of1-00000.safetensors"), &ShardConfig { frames: 4, ..s.config.clone() }, &recs).unwrap();
    let e = open_datasets(&[shards.clone(), d.join("c")]).err().unwrap().to_string();
    assert!(e.contains("another DDIM grid or clip size") && e.contains("c/shard-0of1-00000.safetensors"), "{e}");
}

#[test]
fn bad_shards_are_reported_by_name() {
    let (_, shards) = fixture();
    let d = tmp("bad-shards");
    let e = open_dataset(&d).err().unwrap().to_string();
    assert!(e.contains("no shard-") && !e.contains("not a valid safetensors"), "{e}");
    let e = open_dataset(&d.join("missing")).err().unwrap().to_string();
    assert!(e.contains("cannot read the folder of shards"), "{e}");
    let first = std::fs::read_dir(shards).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|e| e == "safetensors")).unwrap();
    let bytes = std::fs::read(&first).unwrap();
    std::fs::write(d.join("shard-0of1-00000.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = open_dataset(&d).err().unwrap().to_string();
    assert!(e.contains("shard-0of1-00000.safetensors"), "{e}");
    // not a shard: a model file renamed
    let (models, _) = fixture();
    std::fs::copy(models.join("vae.safetensors"), d.join("shard-0of1-00000.safetensors")).unwrap();
    assert!(Shard::open(&d.join("shard-0of1-00000.safetensors")).err().unwrap().to_string().contains("not a t2v-turbo shard"));
}

fn t2v(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_t2v-turbo")).args(args).env("T2V_FFMPEG", "/nonexistent/ffmpeg").output().expect("run t2v-turbo");
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// [`t2v`] with every file limited to `blocks` blocks (`ulimit -f`, with SIGXFSZ ignored):
/// larger writes fail as on a full disk.
fn t2v_file_limit(args: &[&str], blocks: u64) -> (bool, String) {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {blocks} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_t2v-turbo"))
        .args(args)
        .env("T2V_FFMPEG", "/nonexistent/ffmpeg")
        .output()
        .expect("run t2v-turbo through sh");
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// `init` with weight files: the folder refers to them (nothing copied), takes a student's
/// UNet as a student's, checks that they load, and refuses one that does not fit.
#[test]
fn init_refers_to_given_weight_files() {
    let (models, _) = fixture();
    let d = tmp("init-files");
    let p = |x: &str| d.join(x).to_string_lossy().into_owned();
    let f = |x: &str| models.join(x).to_string_lossy().into_owned();
    let (ok, out) = t2v(&[
        "init", "--out", &p("given"), "--unet", &f("unet.safetensors"), "--vae", &f("vae.safetensors"), "--text", &f("text.safetensors"),
        "--hps", &f("reward_hps.safetensors"), "--clip", &f("reward_clip.safetensors"), "--video-reward", &f("reward_video.safetensors"), "--video-vocab", &f("bert_vocab.txt"),
    ]);
    assert!(ok && out.contains("teacher UNet") && out.contains("random weights: none"), "{out}");
    let md = ModelDir::read(&d.join("given")).unwrap();
    assert_eq!(md.unet.0, std::fs::canonicalize(models.join("unet.safetensors")).unwrap());
    assert!(!d.join("given/unet.safetensors").exists() && !d.join("given/reward_video.safetensors").exists(), "a given file was copied or made");
    // a student's UNet alone: a student's folder, the other models random
    let (g, fmd, _) = opened_fixture();
    let (student, _) = load_run(&g, &fmd, &config(1), None).unwrap();
    let smd = t2v_turbo::pipeline::train::write_student_model(&d.join("student-model"), &fmd, &student, 0, SaveDtype::F32).unwrap();
    let (ok, out) = t2v(&["init", "--out", &p("student"), "--unet", &smd.unet.0.to_string_lossy()]);
    assert!(ok && out.contains("student UNet") && out.contains("random weights: vae, text, hps, clip, video reward"), "{out}");
    assert!(ModelDir::read(&d.join("student")).unwrap().is_student());
    let (ok, out) = t2v(&["info", "--models", &p("student")]);
    assert!(ok && out.contains("a student's") && out.contains("UNet (32 channels)") && out.contains("image reward Hps"), "{out}");
    let (ok, out) = t2v(&["info", "--models", &p("given")]);
    assert!(ok && out.contains("a teacher's") && out.contains(&*f("reward_video.safetensors")), "{out}");
    // a VAE's weights as the UNet: refused by the check, naming what does not match
    let (ok, out) = t2v(&["init", "--out", &p("bad"), "--unet", &f("vae.safetensors")]);
    assert!(!ok && out.contains("do not fit the Tiny preset") && out.contains("weights do not match the model"), "{out}");
    assert_eq!(std::fs::read_dir(d.join("bad")).unwrap().count(), 0, "a refused init left files");
    let (ok, out) = t2v(&["init", "--out", &p("missing"), "--hps", &p("nothing.safetensors")]);
    assert!(!ok && out.contains("no such file"), "{out}");
}

#[test]
fn the_commands_run_end_to_end() {
    let (models, _) = fixture();
    let d = tmp("e2e");
    let p = |x: &str| d.join(x).to_string_lossy().into_owned();
    let m = models.to_string_lossy().into_owned();
    let (ok, out) = t2v(&["world", "--out", &p("world"), "--count", "3", "--seed", "9"]);
    assert!(ok, "{out}");
    // one missing video and one too short
    let mut caps = std::fs::read_to_string(d.join("world/captions.jsonl")).unwrap();
    caps += "{\"path\": \"clips/missing\", \"caption\": \"a red circle\"}\n";
    std::fs::create_dir_all(d.join("world/short")).unwrap();
    std::fs::copy(d.join("world/clips/00000/frame_000.png"), d.join("world/short/frame_000.png")).unwrap();
    caps += "{\"path\": \"short\", \"caption\": \"a blue square\"}\n";
    std::fs::write(d.join("world/captions.jsonl"), caps).unwrap();
    let pre = ["preprocess", "--models", &m, "--captions", &p("world/captions.jsonl"), "--out", &p("shards"), "--ddim-steps", "10", "--shard-size", "2"];
    // the models over --max-memory: stopped, with the options that need less
    let (ok, out) = t2v(&[&pre[..7], &["--max-memory", "1MiB", "--weights-dtype", "f32"]].concat());
    assert!(!ok && out.contains("over the memory limit of 1 MiB") && out.contains("To need less memory, add: --weights-dtype stored"), "{out}");
    let (ok, out) = t2v(&pre);
    assert!(ok, "{out}");
    assert!(out.contains("3 records") && out.contains("2 videos skipped") && out.contains("3 new shards"), "{out}");
    assert!(out.contains("clips/missing") && out.contains("1 frames, 8 needed"), "{out}");
    let manifest = std::fs::read_to_string(d.join("shards/manifest-0of1.json")).unwrap();
    assert!(manifest.contains("clips/missing"), "{manifest}");
    // again: everything is done already
    let (ok, out) = t2v(&pre);
    assert!(ok && out.contains("0 new shards, 3 shards done earlier, 2 videos skipped"), "{out}");
    // the manifest keeps the skipped videos and their reasons
    assert_eq!(std::fs::read_to_string(d.join("shards/manifest-0of1.json")).unwrap(), manifest);
    // what the folder holds
    let (ok, out) = t2v(&["info", "--data", &p("shards")]);
    assert!(ok && out.contains("3 shard files, 3 records of 8 frames") && out.contains("on a DDIM grid of 10 points") && out.contains("skipped videos       2"), "{out}");
    assert!(out.contains("clips/missing: ") && out.contains("motion-guided") && out.contains("negative prompt      \"\"") && out.contains("draws per clip       1"), "{out}");
    // on two devices (two of one adapter here), each taking the next shard file: the
    // files and the manifest are the one-device run's, byte for byte
    let shards2 = p("shards2");
    let mut two = pre.to_vec();
    two[6] = &shards2;
    let (ok, out) = t2v(&[two.as_slice(), &["--devices", "cpu,cpu"]].concat());
    assert!(ok && out.contains("preprocessing on 2 devices") && out.contains("3 records") && out.contains("3 new shards"), "{out}");
    let files = |dir: &str| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(d.join(dir)).unwrap().map(|e| e.unwrap()).map(|e| (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap())).collect();
        v.sort();
        v
    };
    let (one, both) = (files("shards"), files("shards2"));
    assert_eq!(one.iter().map(|f| &f.0).collect::<Vec<_>>(), both.iter().map(|f| &f.0).collect::<Vec<_>>());
    for ((name, a), (_, b)) in one.iter().zip(&both) {
        assert!(a == b, "{name} differs between one and two devices");
    }
    let (ok, out) = t2v(&["preprocess", "--models", &m, "--captions", &p("world/captions.jsonl"), "--out", &p("s2"), "--shard", "2/2"]);
    assert!(!ok && out.contains("expected i/n"), "{out}");

    std::fs::write(d.join("val.txt"), "a red circle moving left\n\n").unwrap();
    let val = p("val.txt");
    let train = ["train", "--models", &m, "--data", &p("shards"), "--out", &p("run"), "--steps", "2", "--checkpoint-every", "1", "--lr", "1e-4", "--validate-every", "2", "--validate-prompts", &val, "--model-dtype", "bf16", "--lr-scheduler", "cosine_with_restarts", "--lr-warmup-steps", "1", "--ema-target", "--train-text-encoder", "--unlocked-text-layers", "2"];
    // out of memory (the models alone over --max-memory): stopped, with the options that
    // need less
    let (ok, out) = t2v(&[&train[..5], &["--out", &p("tight"), "--max-memory", "1MiB", "--recompute", "--weights-dtype", "f32"]].concat());
    assert!(!ok && out.contains("over the memory limit of 1 MiB") && out.contains("To need less memory, add: --weights-dtype stored"), "{out}");
    assert!(out.contains("--lora-rank 64") && out.contains("--adam8bit") && !out.contains("add: --recompute") && !out.contains(", --recompute"), "{out}");
    let (ok, out) = t2v(&train);
    assert!(ok, "{out}");
    assert!(d.join("run/model/config.json").exists() && d.join("run/metrics.png").exists());
    // the student's weights as asked (the checkpoints stay f32, for exact resumption)
    let dtypes = |f: PathBuf| t2v_turbo::models::weights::WeightFile::open(&f).unwrap().entries().values().map(|e| e.dtype).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(dtypes(d.join("run/model/unet.safetensors")).into_iter().collect::<Vec<_>>(), vec![safetensors::Dtype::BF16]);
    // the trained text encoder too (block 0 of the tiny encoder's 2, and ln_final)
    assert_eq!(dtypes(d.join("run/model/text.safetensors")).into_iter().collect::<Vec<_>>(), vec![safetensors::Dtype::BF16]);
    assert!(out.contains("text encoder: ") && out.contains("(resblock 0 of 2 and ln_final;"), "{out}");
    assert_eq!(dtypes(d.join("run/checkpoints/step-000002/student.safetensors")).into_iter().collect::<Vec<_>>(), vec![safetensors::Dtype::F32]);
    assert!(out.contains("validation at step 0: accuracy") && out.contains("validation at step 2: "), "{out}");
    assert!(out.contains("GPU memory held through the run: models") && out.contains("f32 moments; --adam8bit: a quarter"), "{out}");
    // the progress line ends with the step's peak in tensors
    assert!(out.lines().any(|l| l.starts_with("train [") && l.contains(" 2/2 ") && l.trim_end().ends_with(" MiB")), "{out}");
    assert!(d.join("run/validation/step-000002/000.gif").exists() && d.join("run/validation.png").exists());
    let (ok, out) = t2v(&train);
    assert!(!ok && out.contains("--resume"), "{out}");
    let mut more = train.to_vec();
    more[8] = "3";
    more.push("--resume");
    let (ok, out) = t2v(&[more.as_slice(), &["--adapter", "cpu", "--devices", "cpu,cpu"]].concat());
    assert!(!ok && out.contains("give --adapter or --devices, not both"), "{out}");
    // step 3 on two devices (of one adapter here), the batch of 1 on the first
    let (ok, out) = t2v(&[more.as_slice(), &["--devices", "cpu,cpu"]].concat());
    assert!(ok && out.contains("step 3") && out.contains("data parallel on 2 devices") && out.contains("is not a multiple of 2"), "{out}");
    assert!(out.contains("learning-rate schedule now ends at step 3 (it ended at 2)"), "{out}");
    assert!(d.join("run/checkpoints/step-000003/ema_target.safetensors").exists());
    // the disk fills up while step 4's checkpoint is written (files limited to 2000 blocks,
    // well below the student's weights): a clear stop, step 3's checkpoint kept, no
    // partial folder left; once there is room again the run continues from step 3
    more[8] = "4";
    let (ok, out) = t2v_file_limit(&more, 2000);
    assert!(!ok && out.contains("step 4: writing its checkpoint failed") && out.contains("The last good checkpoint is kept") && out.contains("step-000003"), "{out}");
    let left: Vec<String> = std::fs::read_dir(d.join("run/checkpoints")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.contains(&"step-000003".to_string()) && left.iter().all(|n| n.starts_with("step-") && n.as_str() <= "step-000003"), "{left:?}");
    let (ok, out) = t2v(&more);
    assert!(ok && out.contains("resuming from") && out.contains("step 3") && out.contains("step 4"), "{out}");
    let (ok, out) = t2v(&["info", "--run", &p("run")]);
    assert!(ok && out.contains("step 4 of 4") && out.contains("step-000003, step-000004") && out.contains("last step            4: loss"), "{out}");
    assert!(out.contains("ema_target = 0.95") && out.contains("text_layers = 2") && out.contains("lr_schedule = \"cosine_with_restarts\"") && !out.contains("huber_c"), "{out}");
    assert!(out.contains("trains from") && out.contains("validation at step 4") && out.contains("student model folder"), "{out}");
    // a model folder from a checkpoint: the run's newest is the final student, byte for
    // byte (the trained text encoder too); the EMA target is another UNet
    let (ok, out) = t2v(&["export", &p("run"), "--out", &p("exported"), "--model-dtype", "bf16"]);
    assert!(ok && out.contains("the student at step 4 of") && out.contains("step-000004"), "{out}");
    for f in ["unet.safetensors", "text.safetensors"] {
        assert!(std::fs::read(d.join("exported").join(f)).unwrap() == std::fs::read(d.join("run/model").join(f)).unwrap(), "exported {f} differs from the run's");
    }
    let (ok, out) = t2v(&["export", &p("run"), "--out", &p("exported-ema"), "--ema-target", "--model-dtype", "bf16"]);
    assert!(ok && out.contains("the EMA target at step 4"), "{out}");
    let weights = |f: &str| t2v_turbo::models::weights::WeightFile::open(&d.join(f)).unwrap().host_f32("out.2.weight").unwrap().1;
    assert_ne!(weights("exported-ema/unet.safetensors"), weights("exported/unet.safetensors"));
    let (ok, out) = t2v(&["export", &p("run/checkpoints/step-000003"), "--out", &p("exported-3")]);
    assert!(ok && out.contains("the student at step 3"), "{out}");
    let (ok, out) = t2v(&["export", &p("run"), "--out", &p("exported")]);
    assert!(!ok && out.contains("not empty"), "{out}");
    let (ok, out) = t2v(&["sample", "--models", &p("run/checkpoints/step-000004"), "--prompt", "x", "--out", &p("from-checkpoint")]);
    assert!(!ok && out.contains("is a training run or checkpoint, not a model folder") && out.contains("t2v-turbo export"), "{out}");
    let (ok, out) = t2v(&["export", &p("shards"), "--out", &p("exported-none")]);
    assert!(!ok && out.contains("neither a checkpoint folder") && !d.join("exported-none").exists(), "{out}");

    let (ok, out) = t2v(&["sample", "--models", &p("run/model"), "--prompt", "a red circle moving left", "--out", &p("videos")]);
    assert!(ok, "{out}");
    assert!(out.contains("4 consistency steps") && out.contains("peak GPU memory") && out.contains("no MP4"), "{out}");
    // the progress line counts sampling steps (one batch of 4)
    assert!(out.contains("sample [########################] 4/4"), "{out}");
    assert!(d.join("videos/000_a_red_circle_moving_left.gif").exists() && d.join("videos/000_a_red_circle_moving_left/frame_007.png").exists());
    let (ok, out) = t2v(&["sample", "--models", &p("run/model"), "--prompt", "x", "--out", &p("videos")]);
    assert!(!ok && out.contains("not empty"), "{out}");
    // prompts streamed on standard input, two videos of each in a batch of 2: a prompt's
    // videos are written (and their lines printed) when it arrives, before the input ends;
    // video i is seeded as from a file
    {
        use std::io::{BufRead, BufReader, Write};
        let mut child = Command::new(env!("CARGO_BIN_EXE_t2v-turbo"))
            .args(["sample", "--models", &p("run/model"), "--prompts", "-", "--videos-per-prompt", "2", "--batch", "2", "--out", &p("streamed"), "--no-mp4"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut line = || stdout.next().expect("a line per video").unwrap();
        writeln!(stdin, "a red circle moving left").unwrap();
        let first = [line(), line()];
        assert!(first[0].contains("000_a_red_circle_moving_left.gif") && first[1].contains("001_a_red_circle_moving_left.gif") && first[1].contains("in a batch of 2"), "{first:?}");
        assert!(d.join("streamed/001_a_red_circle_moving_left.gif").exists());
        writeln!(stdin, "\na blue square moving up").unwrap();
        drop(stdin);
        let second = [line(), line()];
        assert!(second[1].contains("003_a_blue_square_moving_up.gif"), "{second:?}");
        assert!(child.wait().unwrap().success());
        let frame = |dir: &str, name: &str| std::fs::read(d.join(dir).join(name).join("frame_005.png")).unwrap();
        assert_eq!(frame("streamed", "000_a_red_circle_moving_left"), frame("videos", "000_a_red_circle_moving_left"), "video 0 streamed vs given");
        assert_ne!(frame("streamed", "000_a_red_circle_moving_left"), frame("streamed", "001_a_red_circle_moving_left"), "a prompt's two videos");
        let caps = std::fs::read_to_string(d.join("streamed/captions.jsonl")).unwrap();
        assert_eq!(caps.lines().count(), 4, "{caps}");
    }
    // an interrupted run resumed: its videos kept, the rest generated as the uninterrupted
    // run would (video 3 as in the streamed run above), another batch size allowed
    let model = p("run/model");
    let resumed = p("resumed");
    let base = ["sample", "--models", model.as_str(), "--prompt", "a red circle moving left", "--videos-per-prompt", "2", "--no-mp4", "--out", resumed.as_str()];
    let (ok, out) = t2v(&base);
    assert!(ok, "{out}");
    let (ok, out) = t2v(&base);
    assert!(!ok && out.contains("--resume to continue"), "{out}");
    let more = [&base[..], &["--prompt", "a blue square moving up", "--resume", "--batch", "2"]].concat();
    let (ok, out) = t2v(&more);
    assert!(ok && out.contains("2 videos of the earlier run kept, 2 to generate") && !out.contains("001_a_red"), "{out}");
    let frame = |dir: &str, name: &str| std::fs::read(d.join(dir).join(name).join("frame_005.png")).unwrap();
    assert_eq!(frame("resumed", "003_a_blue_square_moving_up"), frame("streamed", "003_a_blue_square_moving_up"), "a resumed run's video 3");
    let caps = std::fs::read_to_string(d.join("resumed/captions.jsonl")).unwrap();
    let names: Vec<String> = caps.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["000_a_red_circle_moving_left", "001_a_red_circle_moving_left", "002_a_blue_square_moving_up", "003_a_blue_square_moving_up"]);
    let (ok, out) = t2v(&more);
    assert!(ok && out.contains("nothing generated"), "{out}");
    let (ok, out) = t2v(&[&more[..], &["--steps", "2"]].concat());
    assert!(!ok && out.contains("made with other options") && out.contains("steps: 4 then, 2 now"), "{out}");
    // VBench's file names: the whole prompt and its video's number among that prompt's;
    // on two devices (of one adapter here), a batch on each, the one-device videos
    let (ok, out) = t2v(&["sample", "--models", &p("run/model"), "--prompt", "a red circle moving left", "--prompt", "a red circle moving left", "--names", "vbench", "--out", &p("vbench"), "--devices", "cpu,cpu"]);
    assert!(ok && out.contains("VBench reads MP4 files") && out.contains("in a batch of 1, 2 batches on 2 devices at once"), "{out}");
    let frame = |dir: &str, name: &str| std::fs::read(d.join(dir).join(name).join("frame_005.png")).unwrap();
    assert_eq!(frame("vbench", "a red circle moving left-0"), frame("videos", "000_a_red_circle_moving_left"));
    assert_eq!(frame("vbench", "a red circle moving left-1"), frame("streamed", "001_a_red_circle_moving_left"));
    assert!(d.join("vbench/a red circle moving left-1.gif").exists());
    let (ok, out) = t2v(&["sample", "--models", &p("run/model"), "--prompt", "left/right", "--names", "vbench", "--out", &p("vbench-bad")]);
    assert!(!ok && out.contains("cannot be a file name"), "{out}");
    // video-to-video from a world clip (its frame folder), and what it refuses
    let v2v = |extra: &[&str], out: &str| {
        let (model, o) = (p("run/model"), p(out));
        let mut args = vec!["sample", "--models", &model, "--prompt", "a blue square moving up", "--out", &o];
        args.extend_from_slice(extra);
        t2v(&args)
    };
    let (ok, out) = v2v(&["--init-video", &p("world/clips/00000"), "--strength", "0.5"], "v2v");
    assert!(ok && out.contains("4 consistency steps from the input video, strength 0.5") && out.contains("4/4"), "{out}");
    assert!(d.join("v2v/input.gif").exists() && d.join("v2v/000_a_blue_square_moving_up/frame_007.png").exists());
    // a still image on every frame (image-to-video)
    let (ok, out) = v2v(&["--init-video", &p("world/clips/00000/frame_003.png"), "--strength", "0.9"], "i2v");
    assert!(ok && out.contains("strength 0.9") && d.join("i2v/input.gif").exists(), "{out}");
    let (ok, out) = v2v(&["--strength", "0.5"], "v2v-a");
    assert!(!ok && out.contains("--init-video"), "{out}");
    let (ok, out) = v2v(&["--init-video", &p("world/clips/00000"), "--strength", "0"], "v2v-b");
    assert!(!ok && out.contains("outside (0, 1]"), "{out}");
    let (ok, out) = v2v(&["--init-video", &p("world/short")], "v2v-c");
    assert!(!ok && out.contains("1 frames, 8 needed"), "{out}");
    let (ok, out) = v2v(&["--init-video", &p("world/clips/00000"), "--strength", "0.01"], "v2v-d");
    assert!(!ok && out.contains("keeps 2 points of the 200-point grid, fewer than the 4 steps"), "{out}");
    // steps that cannot run on their grid
    for steps in [["--steps", "0"], ["--steps", "201"]] {
        let (ok, out) = v2v(&steps, "bad-steps");
        assert!(!ok && out.contains("the steps must be 1 ..= the grid's points"), "{out}");
    }
    let (ok, out) = t2v(&["eval", &p("videos")]);
    assert!(ok && out.contains("accuracy") && out.contains("clips                 1"), "{out}");
    // the prompts of another run's captions.jsonl, in order
    let (ok, out) = t2v(&["sample", "--models", &p("run/model"), "--prompts", &p("resumed/captions.jsonl"), "--steps", "1", "--out", &p("again")]);
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(".gif (")).collect();
    assert!(ok && lines.len() == 4 && lines[0].ends_with("\"a red circle moving left\"") && lines[3].ends_with("\"a blue square moving up\""), "{out}");
    let (ok, out) = t2v(&["eval", &p("videos"), "--against", &p("videos")]);
    assert!(ok && out.contains("of 3 judgments, 0 right only here, 0 only there; sign test p = 1.000"), "{out}");
    assert!(out.contains("  color               of 1 judgments, 0 right only here") && out.contains("  direction           of 1 judgments"), "{out}");
    // the reward models' scores (any clips), paired against the same clips: no differences
    let (ok, out) = t2v(&["eval", &p("videos"), "--no-analyser"]);
    assert!(!ok && out.contains("--no-analyser leaves nothing to measure"), "{out}");
    let (ok, out) = t2v(&["eval", &p("videos"), "--models", &m, "--no-analyser", "--per-clip", "--against", &p("videos"), "--json", &p("rewards.json")]);
    assert!(ok && !out.contains("accuracy") && out.contains("rewards (mean of 1 clips): image reward"), "{out}");
    assert!(out.contains("000_a_red_circle_moving_left: image reward") && out.contains("video reward"), "{out}");
    assert!(out.contains("paired video reward         higher here in 0 of 1 clips, there in 0; mean difference +0.0000; sign test p = 1.000"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("rewards.json")).unwrap()).unwrap();
    assert_eq!(json["rewards"]["per_clip"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json["rewards"]["mean"], json["rewards_against"]["mean"], "{json}");
    assert!(json["rewards"]["mean"]["video"].as_f64().unwrap().is_finite() && json.get("accuracy").is_none(), "{json}");
    // the reward models with their weights rounded to bf16: close to the f32 scores
    let (ok, out) = t2v(&["eval", &p("videos"), "--models", &m, "--no-analyser", "--weights-dtype", "bf16", "--json", &p("rewards16.json")]);
    assert!(ok, "{out}");
    let j16: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("rewards16.json")).unwrap()).unwrap();
    for k in ["image_weighted", "video"] {
        let (a, b) = (json["rewards"]["mean"][k].as_f64().unwrap(), j16["rewards"]["mean"][k].as_f64().unwrap());
        assert!((a - b).abs() <= 0.05 * a.abs().max(0.01), "{k}: f32 {a}, bf16 {b}");
    }
    let (ok, out) = t2v(&["eval", &p("videos"), "--models", &m, "--weights-dtype", "f8"]);
    assert!(!ok && out.contains("possible values: auto, stored, f32, f16, bf16"), "{out}");
    std::fs::create_dir_all(d.join("other")).unwrap();
    std::fs::write(d.join("other/captions.jsonl"), "{\"path\": \"../videos/000_a_red_circle_moving_left\", \"caption\": \"a blue square moving up\"}\n").unwrap();
    let (ok, out) = t2v(&["eval", &p("videos"), "--against", &p("other")]);
    assert!(!ok && out.contains("do not list the same prompts"), "{out}");
    let (ok, out) = t2v(&["sample", "--models", &m, "--prompt", "x", "--out", &p("v2")]);
    assert!(!ok && out.contains("is a teacher"), "{out}");
    let (ok, out) = t2v(&["sample", "--models", &m, "--prompt", "x", "--negative-prompt", "y", "--out", &p("v2")]);
    assert!(!ok && out.contains("--negative-prompt without --teacher") && out.contains("no unconditional branch"), "{out}");
}

#[test]
fn a_video_does_not_depend_on_the_batch_it_is_generated_in() {
    use t2v_turbo::diffusion::DdimConfig;
    use t2v_turbo::pipeline::sample::{Generator, SampleOptions};
    let (models, _) = fixture();
    let g = gpu();
    let md = ModelDir::read(models).unwrap();
    let d = tmp("batch");
    let (student, _) = load_run(&g, &md, &config(1), None).unwrap();
    let smd = t2v_turbo::pipeline::train::write_student_model(&d.join("student"), &md, &student, 0, SaveDtype::F32).unwrap();
    let v = md.video;
    // the teacher's DDIM (eta 1: a noise draw between its two steps) and the student's sampler
    for (gen, teacher) in [(Generator::from_model_dir(&g, &md).unwrap(), Some(DdimConfig { steps: 2, cfg: 7.5, eta: 1.0 })), (Generator::from_model_dir(&g, &smd).unwrap(), None)] {
        let opts = SampleOptions { steps: 2, origin: 50, w: 7.5, motion_scale: 0.05, motion_percentage: 0.5, seed: 0, frames: v.frames, height: v.height, width: v.width, fps: v.fps, teacher, negative_prompt: None, init: None };
        let items = [("a red circle moving left", 3), ("a blue square moving up", 4), ("a red circle moving left", 5)];
        let batch = gen.generate_batch(&items, &opts).unwrap();
        assert_eq!(batch.len(), 3);
        for ((p, seed), got) in items.iter().zip(&batch) {
            let one = gen.generate(p, &SampleOptions { seed: *seed, ..opts.clone() }).unwrap();
            assert_eq!(one.len(), got.len());
            let diff = one.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff <= 1e-4, "{p:?} seed {seed}, teacher {}: batched vs alone differ by {diff}", opts.teacher.is_some());
        }
        // same prompt, other seed: another video
        let diff = batch[0].iter().zip(&batch[2]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff > 1e-2, "seeds 3 and 5 gave the same video");
        if opts.teacher.is_none() {
            let e = gen.generate(items[0].0, &SampleOptions { negative_prompt: Some("blurry".into()), ..opts.clone() }).unwrap_err().to_string();
            assert!(e.contains("no unconditional branch"), "{e}");
        }
    }
}

/// The step callback sees every step of a generation counted, and stops it when it asks to:
/// the generation returns `Cancelled` and the generator generates as before afterwards.
#[test]
fn a_generation_reports_its_steps_and_can_be_cancelled() {
    use std::ops::ControlFlow;
    use t2v_turbo::diffusion::DdimConfig;
    use t2v_turbo::models::weights::WeightsError;
    use t2v_turbo::pipeline::sample::{Generator, SampleOptions};
    let (models, _) = fixture();
    let g = gpu();
    let md = ModelDir::read(models).unwrap();
    let gen = Generator::from_model_dir(&g, &md).unwrap();
    let opts = SampleOptions { teacher: Some(DdimConfig { steps: 3, cfg: 7.5, eta: 1.0 }), seed: 2, ..SampleOptions::for_models(&md) };
    let items = [("a red circle moving left", 2)];
    let mut seen = Vec::new();
    let videos = gen.generate_batch_observed(&items, &opts, &mut |done| {
        seen.push(done);
        ControlFlow::Continue(())
    });
    assert_eq!(seen, [1, 2, 3]);
    assert_eq!(videos.unwrap()[0], gen.generate(items[0].0, &opts).unwrap(), "observed vs plain generation");
    let mut seen = Vec::new();
    let stopped = gen.generate_batch_observed(&items, &opts, &mut |done| {
        seen.push(done);
        if done == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    });
    assert!(matches!(stopped, Err(WeightsError::Cancelled { done: 2, total: 3 })), "{stopped:?}");
    assert_eq!(seen, [1, 2]);
    let tensor = gen.generate_batch_tensor_observed(&items, &opts, &mut |_| ControlFlow::Break(()));
    assert!(matches!(tensor, Err(WeightsError::Cancelled { done: 1, total: 3 })), "{:?}", tensor.err());
    assert_eq!(gen.generate_batch(&items, &opts).unwrap()[0], gen.generate(items[0].0, &opts).unwrap(), "after cancelling");
}

/// A negative prompt takes the empty prompt's place in the teacher's classifier-free
/// guidance: eps = eps(neg) + cfg (eps(prompt) - eps(neg)). With the prompt itself as the
/// negative one that is eps(prompt) at any cfg — the samples of cfg 1; "" is the default.
#[test]
fn a_negative_prompt_replaces_the_teachers_unconditional_branch() {
    use t2v_turbo::diffusion::DdimConfig;
    use t2v_turbo::pipeline::sample::{Generator, SampleOptions};
    let (models, _) = fixture();
    let g = gpu();
    let md = ModelDir::read(models).unwrap();
    let gen = Generator::from_model_dir(&g, &md).unwrap();
    let v = md.video;
    let p = "a red circle moving left";
    let at = |cfg: f32, negative: Option<&str>| SampleOptions {
        teacher: Some(DdimConfig { steps: 3, cfg, eta: 0.0 }),
        negative_prompt: negative.map(String::from),
        seed: 7,
        frames: v.frames,
        height: v.height,
        width: v.width,
        fps: v.fps,
        ..SampleOptions::for_models(&md)
    };
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let default = gen.generate(p, &at(7.5, None)).unwrap();
    assert_eq!(gen.generate(p, &at(7.5, Some(""))).unwrap(), default, "the empty negative prompt is the default");
    let unguided = gen.generate(p, &at(1.0, None)).unwrap();
    let itself = gen.generate(p, &at(7.5, Some(p))).unwrap();
    let d = max_diff(&itself, &unguided);
    assert!(d <= 1e-4, "negative prompt = prompt at cfg 7.5 vs cfg 1: {d}");
    // guidance moves the sample (so the equality above is not trivially true), and another
    // negative prompt moves it elsewhere
    let guided = max_diff(&default, &unguided);
    assert!(guided > 1e-2, "cfg 7.5 vs 1 differ by only {guided}");
    let other = max_diff(&gen.generate(p, &at(7.5, Some("a blue square moving up"))).unwrap(), &default);
    assert!(other > 1e-3, "another negative prompt changed the sample by only {other}");
}

/// Models kept in half precision (`--weights-dtype`): f16 and bf16 files kept so give the
/// f32 path's results bit for bit — a UNet call, and whole training steps whose VAE and reward
/// models are half (their backward included; the student stays f32 and trains) — with about
/// half the weight memory; f32 files rounded to f16 / bf16 come close without being equal;
/// a tape that would train every weight refuses half ones.
#[test]
fn half_precision_weights() {
    use t2v_kernels::autograd::Tape;
    use t2v_kernels::Tensor;
    use t2v_turbo::models::unet3d::UnetInputs;
    use t2v_turbo::models::weights::WeightPrecision;
    let (g, md32, data) = opened_fixture();
    let d = tmp("half");
    let md16 = init_random(&g, Preset::Tiny, &d.join("models"), 0, SaveDtype::F16).unwrap();
    let values = |n: usize, seed: usize| -> Vec<f32> { (0..n).map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0).collect() };
    // (eps bits, live bytes of the loaded UNet)
    let unet_eps = |md: &ModelDir, trainable: bool| -> Result<(Vec<f32>, u64), String> {
        g.sync().unwrap();
        let before = g.memory().live_bytes;
        let unet = md.load_unet(&g).unwrap();
        g.sync().unwrap();
        let bytes = g.memory().live_bytes - before;
        let tape = Tape::new();
        tape.set_trainable(trainable);
        let c = &md.unet.1;
        let z = tape.constant(Tensor::from_slice(&g, &[1, c.in_channels, 8, 8, 8], &values(c.in_channels * 512, 1)).unwrap());
        let ctx = tape.constant(Tensor::from_slice(&g, &[1, 77, c.context_dim], &values(77 * c.context_dim, 2)).unwrap());
        let out = unet.forward(&UnetInputs { z: &z, t: &[500.0], context: &ctx, fps: &[8.0], w_embedding: None, motion_embedding: None, record_attention: false }).map_err(|e| e.to_string())?;
        Ok((out.eps.value().to_vec().unwrap(), bytes))
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let (full, full_bytes) = unet_eps(&md16, false).unwrap();
    let stored = md16.clone().with_precision(WeightPrecision::Stored);
    let (half, half_bytes) = unet_eps(&stored, false).unwrap();
    assert_eq!(bits(&half), bits(&full), "f16 weights kept f16 must give the f32 results");
    eprintln!("UNet weights: {half_bytes} B kept half, {full_bytes} B in f32");
    assert!(half_bytes * 100 < full_bytes * 60, "UNet weights: {half_bytes} B kept half, {full_bytes} B in f32");
    // a bf16 file (the fixture's UNet rounded) kept bf16: the results of its f32 widening
    let wf = t2v_turbo::models::weights::WeightFile::open(&md32.unet.0).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = wf
        .entries()
        .keys()
        .map(|k| {
            let (shape, v) = wf.host_f32(k).unwrap();
            (k.clone(), shape, v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect())
        })
        .collect();
    let views = tensors.iter().map(|(k, s, b)| (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b).unwrap()));
    std::fs::write(d.join("unet_bf16.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    let mut mdb = md32.clone();
    mdb.unet.0 = d.join("unet_bf16.safetensors");
    let (widened, wide_bytes) = unet_eps(&mdb, false).unwrap();
    let (kept, kept_bytes) = unet_eps(&mdb.clone().with_precision(WeightPrecision::Stored), false).unwrap();
    assert_eq!(bits(&kept), bits(&widened), "bf16 weights kept bf16 must give the f32 results");
    assert!(kept_bytes * 100 < wide_bytes * 60, "{kept_bytes} B kept bf16, {wide_bytes} B in f32");
    // f32 files rounded: close, not equal
    let (exact, _) = unet_eps(&md32, false).unwrap();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    for (p, tol) in [(WeightPrecision::F16, 1e-2), (WeightPrecision::BF16, 6e-2)] {
        let (r, _) = unet_eps(&md32.clone().with_precision(p), false).unwrap();
        let diff: Vec<f32> = r.iter().zip(&exact).map(|(a, b)| a - b).collect();
        let rel = norm(&diff) / norm(&exact);
        eprintln!("{p:?}: relative error {rel:e}");
        assert!(rel > 0.0 && rel < tol, "{p:?}: relative error {rel:e}");
    }
    // a tape training every weight cannot train half ones
    let e = unet_eps(&stored, true).unwrap_err();
    assert!(e.contains("cannot be trained"), "{e}");
    // training: the frozen VAE and reward models half, the student f32 (loaded so whatever
    // the folder's precision), the same steps bit for bit
    let steps = |md: &ModelDir| {
        let (student, rewards) = load_run(&g, md, &config(2), None).unwrap();
        let mut t = Trainer::new(config(2), student, &rewards, &data).unwrap();
        (0..2).map(|_| t.step().unwrap()).map(|m| (m.loss.to_bits(), m.image_reward.map(f32::to_bits), m.video_reward.map(f32::to_bits), m.grad_norm.to_bits())).collect::<Vec<_>>()
    };
    let plain = steps(&md16);
    assert!(plain.iter().any(|s| s.1.is_some() && s.2.is_some()), "no reward step in {plain:?}");
    // the student's weights got gradients (half ones would have stayed constants)
    assert!(plain.iter().all(|s| f32::from_bits(s.3) > 0.0), "no gradient: {plain:?}");
    assert_eq!(steps(&stored), plain);
}

/// `--adam8bit` (the reference's AdamW8bit): the first update equals the f32 optimizer's
/// (both moments start at zero), so the second step's loss is the same to the bit; later
/// steps stay close; the checkpoints' optimizer state shrinks to under 35% (a quarter but
/// for the tiny UNet's many weights under 4096 elements, which keep f32 states); a run with
/// the other optimizer does not resume from it.
#[test]
fn eight_bit_optimizer_states() {
    let (g, md, data) = opened_fixture();
    let train = |adam8bit: bool, out: &Path| -> Vec<StepMetrics> {
        let cfg = TrainConfig { adam8bit, lr: 1e-3, ..config(3) };
        let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
        let mut t = Trainer::new(cfg, student, &rewards, &data).unwrap();
        run(&mut t, &opts(out, None)).unwrap()
    };
    let (d32, d8) = (tmp("adam32"), tmp("adam8"));
    let (full, eight) = (train(false, &d32), train(true, &d8));
    assert_eq!(full[0].loss.to_bits(), eight[0].loss.to_bits());
    assert_eq!(full[1].loss.to_bits(), eight[1].loss.to_bits(), "the first update differs");
    let close = |a: f32, b: f32| (a - b).abs() <= 2e-2 * a.abs().max(b.abs());
    assert!(close(full[2].loss, eight[2].loss), "{} vs {}", full[2].loss, eight[2].loss);
    let size = |d: &Path| std::fs::metadata(d.join("checkpoints/step-000003/optimizer.safetensors")).unwrap().len();
    let (s32, s8) = (size(&d32), size(&d8));
    assert!(s8 * 100 < s32 * 35, "optimizer state: {s8} B with 8-bit moments, {s32} B in f32");
    // the other optimizer's checkpoint is another setting
    let cfg = TrainConfig { lr: 1e-3, ..config(4) };
    let (student, rewards) = load_run(&g, &md, &cfg, None).unwrap();
    let mut t = Trainer::new(cfg, student, &rewards, &data).unwrap();
    let e = run(&mut t, &opts(&d8, None)).unwrap_err().to_string();
    assert!(e.contains("other settings") && e.contains("adam8bit: true"), "{e}");
}

/// Video-to-video (SDEdit) with the shipped tiny models: a world clip re-generated under its
/// own caption stays near its VAE reconstruction at low strength and drifts away as the
/// strength grows, to as far as a video from noise at strength 1 — the teacher's DDIM (the
/// lowest share of its steps) and a student (its steps over the lowest share of the grid);
/// a batch gives each video what it gets alone; strengths that run no step are refused.
#[test]
fn video_to_video_keeps_more_of_the_video_the_lower_the_strength() {
    use t2v_kernels::autograd::Tape;
    use t2v_kernels::Tensor;
    use t2v_turbo::diffusion::DdimConfig;
    use t2v_turbo::pipeline::sample::{Generator, InitVideo};
    use t2v_turbo::world::{clip_spec, render};
    let g = gpu();
    let md = ModelDir::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny")).unwrap();
    let v = md.video;
    assert_eq!(v.height, v.width);
    let world = WorldConfig { frames: v.frames, size: v.height, ..Default::default() };
    let spec = clip_spec(7, 0, &world);
    let pixels: std::sync::Arc<[f32]> = render(&spec, &world).to_model_input(v.height, v.width).into();
    let caption = spec.caption();
    let mad = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    // the closest any generation can come: the VAE's reconstruction
    let recon = {
        let vae = md.load_vae(&g).unwrap();
        let tape = Tape::new();
        let x = tape.constant(Tensor::from_slice(&g, &[1, 3, v.frames, v.height, v.width], &pixels).unwrap());
        tape.no_grad(|| vae.decode_video(&vae.encode_video(&x).unwrap()).unwrap().value().to_vec().unwrap())
    };
    let floor = mad(&recon, &pixels);
    let d = tmp("v2v");
    let (student, _) = load_run(&g, &md, &config(1), None).unwrap();
    let smd = t2v_turbo::pipeline::train::write_student_model(&d.join("student"), &md, &student, 0, SaveDtype::F32).unwrap();
    let student = Generator::from_model_dir(&g, &smd).unwrap();
    let teacher = Generator::from_model_dir(&g, &md).unwrap();
    let shared = InitVideo::new(pixels.clone(), 0.5);
    for (name, gen, tc) in [("teacher", &teacher, Some(DdimConfig { steps: 10, cfg: 7.5, eta: 0.0 })), ("student", &student, None)] {
        let base = SampleOptions { steps: 4, teacher: tc, ..SampleOptions::for_models(&smd) };
        let at = |s: f32| SampleOptions { init: Some(InitVideo::new(pixels.clone(), s)), ..base.clone() };
        let dist: Vec<f32> = [0.2, 0.5, 1.0].iter().map(|&s| mad(&gen.generate(&caption, &at(s)).unwrap(), &pixels)).collect();
        let from_noise = mad(&gen.generate(&caption, &base).unwrap(), &pixels);
        let msg = format!("{name}: distance to the clip at strength 0.2 / 0.5 / 1: {dist:?}, from noise {from_noise}, VAE reconstruction {floor}");
        eprintln!("{msg}");
        assert!(dist[0] < 1.5 * floor && dist[0] <= dist[1] * 1.02, "{msg}");
        assert!(dist[1] < 0.5 * dist[2] && dist[2] > 0.8 * from_noise, "{msg}");
        // a batch: each video as alone (its own noise stream, the same input); the batch
        // reuses the input's latent kept from an earlier generation of this VAE (the other
        // model's VAE encoded it anew), the videos alone encode it afresh
        assert!(!shared.is_encoded_by(&gen.vae), "{name}: another VAE's latent taken as this one's");
        let kept = SampleOptions { init: Some(shared.clone()), ..base.clone() };
        gen.generate(&caption, &kept).unwrap();
        assert!(shared.is_encoded_by(&gen.vae), "{name}: the input's latent was not kept");
        let items = [(caption.as_str(), 3), ("a blue square moving up", 4)];
        let batch = gen.generate_batch(&items, &kept).unwrap();
        for ((p, seed), got) in items.iter().zip(&batch) {
            let one = gen.generate(p, &SampleOptions { seed: *seed, ..at(0.5) }).unwrap();
            let diff = one.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff <= 1e-4, "{name} {p:?}: batched vs alone differ by {diff}");
        }
        // no step to run: refused with the reason
        let few = if base.teacher.is_some() { 0.05 } else { 0.01 };
        let e = gen.generate(&caption, &at(few)).unwrap_err().to_string();
        assert!(e.contains("raise the strength"), "{e}");
        let e = gen.generate(&caption, &at(1.5)).unwrap_err().to_string();
        assert!(e.contains("outside (0, 1]"), "{e}");
        let e = gen.generate(&caption, &SampleOptions { frames: v.frames + 1, ..at(0.5) }).unwrap_err().to_string();
        assert!(e.contains("values"), "{e}");
    }
}

/// A group of DDIM inversions that runs out of device memory is halved for the rest of the
/// run: under a limit between what one inversion and a group of three hold at once,
/// `--inversion-batch 3` writes the shard one-at-a-time inversions write, byte for byte.
#[test]
fn a_group_of_inversions_that_runs_out_of_memory_is_split() {
    let (models, _) = fixture();
    let g = gpu();
    let md = ModelDir::read(models).unwrap();
    let d = tmp("inversion-split");
    write_dataset(&d.join("world"), 6, 4, &WorldConfig { short_fraction: 0.75, ..Default::default() }, true).unwrap();
    let (unet, vae, text) = (md.load_unet(&g).unwrap(), md.load_vae(&g).unwrap(), md.load_text(&g).unwrap());
    let tokenizer = ClipTokenizer::new().unwrap();
    let run = |name: &str, inversion_batch: usize| {
        let job = PreprocessJob {
            captions: d.join("world/captions.jsonl"),
            out: d.join(name),
            shard: (0, 1),
            shard_size: 6,
            config: ShardConfig { ddim_steps: 10, frames: 8, height: 32, width: 32, fps: 8.0, seed: 0, motion: true, motion_reference: Default::default(), negative_prompt: String::new(), draws: 1 },
            source_fps: None,
            settings: PreprocessConfig { inversion_batch, ..PreprocessConfig::default() },
            quiet: true,
        };
        std::fs::create_dir_all(&job.out).unwrap();
        let rep = preprocess_dataset(&PreprocessModels { unet: &unet, vae: &vae, text: &text, tokenizer: &tokenizer }, &job).unwrap();
        (rep, std::fs::read(d.join(name).join("shard-0of1-00000.safetensors")).unwrap())
    };
    let (one, one_file) = run("one", 1);
    let (group, _) = run("group", 3);
    assert!(one.motion_records >= 2, "{one:?}");
    assert!(group.peak_live_bytes > one.peak_live_bytes, "a group of inversions holds more: {} vs {}", group.peak_live_bytes, one.peak_live_bytes);
    g.set_memory_limit(Some((one.peak_live_bytes + group.peak_live_bytes) / 2));
    let (split, split_file) = run("split", 3);
    g.set_memory_limit(None);
    assert_eq!(split.motion_records, one.motion_records);
    assert!(split_file == one_file, "the split run's shard differs from one-at-a-time inversions'");
}
