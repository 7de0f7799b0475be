//! Pipeline costs with random weights:
//! `cargo bench -p t2v-turbo --bench pipeline [-- --once] [--sections a,b] [--grid N]`.
//! The embedded default's tiny size on a CPU adapter (lavapipe); VideoCrafter2 size on a
//! GPU. Each line is one measured operation with its ratio to a baseline measured in the
//! same run. Every timed run reads its result back and checks it is finite and equal to the
//! warm-up run's (the parity tests establish the values themselves).
//!
//! `--once` times each operation by a single run after a warm-up has compiled the shaders
//! (no warm-up run per operation, no repeats): for a device lent for minutes, where the
//! teacher's 50 steps with CFG or a 200-step inversion at VideoCrafter2 size would
//! otherwise run three times each. `--sections` picks what runs (of sample, preprocess,
//! train, teacher); `--grid` sets the DDIM grid (default 200 on GPUs, 50 on CPU adapters),
//! whose upper half the motion-guided clip's inversion runs over.

use t2v_kernels::autograd::Tape;
use t2v_kernels::bench::{best_time, pseudo_data};
use t2v_kernels::optim::state_bytes;
use t2v_kernels::{Gpu, GpuOptions, Tensor};
use t2v_turbo::diffusion::{DdimConfig, DdimSolver, Schedule};
use t2v_turbo::models::clip::{Clip, TextTower};
use t2v_turbo::models::internvideo2::InternVideo2;
use t2v_turbo::models::tokenizer::{BertTokenizer, ClipTokenizer};
use t2v_turbo::models::unet3d::Unet3d;
use t2v_turbo::models::vae::Vae;
use t2v_turbo::models::weights::{Loader, WeightPrecision};
use t2v_turbo::pipeline::model_dir::{world_vocab, Preset};
use t2v_turbo::pipeline::preprocess::{preprocess_clip, MotionReference, PreprocessConfig};
use t2v_turbo::pipeline::sample::{Gaussian, Generator, InitVideo, SampleOptions};
use t2v_turbo::pipeline::shards::{open_dataset, write_shard, RecordMeta, RecordTensors, ShardConfig};
use t2v_turbo::pipeline::train::{RewardModels, Student, TextStudent, TrainConfig, Trainer};
use t2v_turbo::reward::{ImageTextReward, InternVideo2Reward, Preprocess};

/// What `--sections` can name (default: all, in this order).
const SECTIONS: [&str; 4] = ["sample", "preprocess", "train", "teacher"];

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// Best time of `f` and the peak memory above the start; `f` returns one result value,
/// which must be finite and the same on every run. `once`: a single timed run, no warm-up.
fn timed(gpu: &Gpu, budget: f64, once: bool, f: impl Fn() -> f32) -> (f64, u64) {
    let first = (!once).then(&f);
    assert!(first.is_none_or(f32::is_finite), "non-finite result");
    gpu.sync().unwrap();
    // what earlier operations left in the pool is not this one's memory
    gpu.trim_pool();
    gpu.reset_peak_memory();
    let base = gpu.memory().live_bytes;
    let t = match first {
        None => {
            let t = std::time::Instant::now();
            assert!(f().is_finite(), "non-finite result");
            t.elapsed().as_secs_f64()
        }
        Some(v) => best_time(budget, 1, || assert_eq!(f(), v, "a repeated run gave another value")),
    };
    (t, gpu.memory().peak_total_bytes.saturating_sub(base))
}

fn main() {
    let gpu = Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).expect("a wgpu adapter");
    let cpu = gpu.is_cpu();
    let args: Vec<String> = std::env::args().collect();
    let once = args.iter().any(|a| a == "--once");
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let sections: Vec<String> = value("--sections").map_or(SECTIONS.iter().map(|s| s.to_string()).collect(), |s| s.split(',').map(String::from).collect());
    if let Some(bad) = sections.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
        panic!("unknown section {bad:?}: --sections takes a comma-separated subset of {SECTIONS:?}");
    }
    let want = |s: &str| sections.iter().any(|x| x == s);
    let info = gpu.adapter_info().clone();
    let preset = if cpu { Preset::Tiny } else { Preset::Videocrafter2 };
    let (ucfg, vcfg, tcfg, rcfg, shape) = preset.configs();
    let gemms = gpu.gemm_mode();
    println!("device: {} ({:?}, {:?}); GEMMs: {gemms}; models: {preset:?} (random weights), {} frames {}x{}", info.name, info.backend, info.device_type, shape.frames, shape.height, shape.width);
    println!("| operation | best s | peak MiB | ratio | baseline |");
    println!("|---|---:|---:|---:|---|");
    let budget = if cpu { 10.0 } else { 5.0 };
    let before = gpu.memory().live_bytes;
    let teacher = Unet3d::load(&Loader::random(&gpu, 1), &ucfg).unwrap();
    // what the teacher's weights take: resident during the training line, whose command
    // (`train`) does not load it
    let teacher_bytes = gpu.memory().live_bytes - before;
    let student_cfg = { let mut c = ucfg.clone(); c.time_cond_proj_dim = Some(256); c.motion_cond_proj_dim = Some(256); c };
    let student_loader = Loader::random(&gpu, 1);
    let student = Unet3d::load(&student_loader, &student_cfg).unwrap();
    let vae = Vae::load(&Loader::random(&gpu, 2), &vcfg).unwrap();
    let text = TextTower::load(&Loader::random(&gpu, 3), &tcfg.text, None).unwrap();
    let tok = ClipTokenizer::new().unwrap();
    let sched = Schedule::videocrafter();
    let grid = value("--grid").map_or(if cpu { 50 } else { 200 }, |g| g.parse().expect("--grid takes a number of DDIM grid points"));
    let solver = DdimSolver::new(&sched, grid);
    let f = 1usize << (vcfg.ch_mult.len() - 1);
    let lat = [1, 4, shape.frames, shape.height / f, shape.width / f];
    let n: usize = lat.iter().product();
    let z0 = Tensor::from_slice(&gpu, &lat, &pseudo_data(n, 4)).unwrap();
    let tape = Tape::new();
    let ids = vec![tok.encode("a red circle moves from left to right").unwrap().ids];
    let ctx = tape.no_grad(|| text.penultimate(&tape, &ids).unwrap().value().clone());
    let unc = tape.no_grad(|| text.penultimate(&tape, &[tok.encode("").unwrap().ids]).unwrap().value().clone());

    // the baseline of the sampling and training lines: one student forward (the warm-up
    // run compiles the UNet's shaders)
    let (t_fwd, _) = timed(&gpu, budget, false, || {
        let tape = Tape::new();
        let z = tape.constant(z0.clone());
        let c = tape.constant(ctx.clone());
        let e = tape.constant(t2v_turbo::diffusion::guidance_scale_embedding(&gpu, &[7.5], 256).unwrap());
        student.forward(&t2v_turbo::models::unet3d::UnetInputs { z: &z, t: &[499.0], context: &c, fps: &[shape.fps], w_embedding: Some(&e), motion_embedding: Some(&e), record_attention: false }).unwrap().eps.value().item_at(1).unwrap()
    });
    println!("| one student UNet forward (baseline) | {t_fwd:.3} | | 1.00x | itself |");

    // sampling: 4/8/16 consistency steps (the teacher's 50 DDIM steps with CFG come last:
    // the most expensive line)
    let loader = |seed, precision| Loader::random(&gpu, seed).with_precision(precision);
    let gen = |unet: Unet3d, p: WeightPrecision| Generator { unet, vae: Vae::load(&loader(2, p), &vcfg).unwrap(), text: TextTower::load(&loader(3, p), &tcfg.text, None).unwrap(), tokenizer: ClipTokenizer::new().unwrap(), schedule: Schedule::videocrafter() };
    let opts = |steps: usize, teacher: bool| SampleOptions {
        steps,
        origin: grid,
        w: 7.5,
        motion_scale: 0.05,
        motion_percentage: 0.5,
        seed: 1,
        frames: shape.frames,
        height: shape.height,
        width: shape.width,
        fps: shape.fps,
        teacher: teacher.then_some(DdimConfig { steps: 50, cfg: 7.5, eta: 0.0 }),
        negative_prompt: None,
        init: None,
    };
    let mut t_four = f64::NAN;
    if want("sample") {
        // (the pool counts buffers as they are made and dropped: no need to wait for the GPU)
        let live = || gpu.memory().live_bytes;
        let before = live();
        let sg = gen(Unet3d::load(&Loader::random(&gpu, 1), &student_cfg).unwrap(), WeightPrecision::F32);
        let full_bytes = live() - before;
        if once {
            // compiles the VAE's and text tower's shaders before anything is timed
            sg.generate("a red circle moving left", &opts(4, false)).unwrap();
        }
        for steps in [4, 8, 16] {
            let (t, m) = timed(&gpu, budget, once, || sg.generate("a red circle moving left", &opts(steps, false)).unwrap()[5]);
            if steps == 4 {
                t_four = t;
            }
            println!("| sample 1 video, {steps} consistency steps + VAE decode | {t:.3} | {:.0} | {:.1}x | one student forward |", mib(m), t / t_fwd);
        }
        // video-to-video: the same 4 steps from an encoded video (one VAE encode more)
        let n = 3 * shape.frames * shape.height * shape.width;
        let pixels: std::sync::Arc<[f32]> = Gaussian::new(5).take(n).iter().map(|v| (v / 3.0).clamp(-1.0, 1.0)).collect();
        // (a fresh InitVideo each time: one keeps its encoding for later generations)
        let v2v = || SampleOptions { init: Some(InitVideo::new(pixels.clone(), 0.6)), ..opts(4, false) };
        let (t, m) = timed(&gpu, budget, once, || sg.generate("a red circle moving left", &v2v()).unwrap()[5]);
        println!("| video-to-video 1 video, 4 consistency steps at strength 0.6 + VAE encode and decode | {t:.3} | {:.0} | {:.2}x | the 4-step sample |", mib(m), t / t_four);
        let kept = v2v();
        sg.generate("a red circle moving left", &kept).unwrap();
        let (t, m) = timed(&gpu, budget, once, || sg.generate("a red circle moving left", &kept).unwrap()[5]);
        println!("| video-to-video, the input's encoding kept from an earlier video (`sample --batch 1` with several prompts) | {t:.3} | {:.0} | {:.2}x | the 4-step sample |", mib(m), t / t_four);
        // the same with the three models' matrix weights kept in f16 (`--weights-dtype f16`):
        // the weight memory that saves, and what widening them at every use costs
        drop(sg);
        let before = live();
        let hg = gen(Unet3d::load(&loader(1, WeightPrecision::F16), &student_cfg).unwrap(), WeightPrecision::F16);
        let half_bytes = live() - before;
        if once {
            hg.generate("a red circle moving left", &opts(4, false)).unwrap();
        }
        let (t, m) = timed(&gpu, budget, once, || hg.generate("a red circle moving left", &opts(4, false)).unwrap()[5]);
        println!(
            "| sample 1 video, 4 consistency steps + VAE decode, weights kept in f16 (UNet + VAE + text encoder: {:.0} MiB, f32: {:.0} MiB) | {t:.3} | {:.0} | {:.2}x | the 4-step sample in f32 |",
            mib(half_bytes),
            mib(full_bytes),
            mib(m),
            t / t_four
        );
    }


    // preprocessing one clip: without motion guidance (2 teacher calls) and with it (DDIM
    // inversion up to n, 2 captured calls and one backward), n in the upper half
    let drawn = std::cell::Cell::new(0);
    let pre = |motion: bool, reference: MotionReference| {
        let cfg = PreprocessConfig { motion, index_range: if motion { (0.5, 1.0) } else { (0.0, 0.5) }, reference, ..PreprocessConfig::default() };
        timed(&gpu, budget, once, || {
            let mut rng = Gaussian::new(7);
            let r = preprocess_clip(&teacher, &sched, &solver, &z0, &ctx, &unc, &[shape.fps], &cfg, &mut rng).unwrap();
            drawn.set(r.index);
            r.score.as_ref().unwrap_or(&r.cond_eps).item_at(3).unwrap()
        })
    };
    if want("preprocess") {
        let (t_plain, m_plain) = pre(false, MotionReference::Inversion);
        println!("| preprocess 1 clip, no motion guidance ({grid}-point grid) | {t_plain:.3} | {:.0} | 1.00x | itself |", mib(m_plain));
        let (t_motion, m_motion) = pre(true, MotionReference::Inversion);
        println!("| preprocess 1 clip with motion guidance (n = {} of {grid}: {} inversion steps) | {t_motion:.3} | {:.0} | {:.2}x | no motion guidance |", drawn.get(), drawn.get(), mib(m_motion), t_motion / t_plain);
        let (t_noised, m_noised) = pre(true, MotionReference::Noised { t: 400 });
        println!("| preprocess 1 clip with motion guidance, reference noised to t = 400 (MotionClone's; not the reference) | {t_noised:.3} | {:.0} | {:.2}x | no motion guidance |", mib(m_noised), t_noised / t_plain);
    }
    if !want("train") && !want("teacher") {
        return;
    }

    if want("train") {
        // one training step (batch 1) with both rewards on a short-caption record, against one
        // student forward
        let dir = std::env::temp_dir().join(format!("t2v-bench-shards-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut rng = Gaussian::new(9);
        let rec = preprocess_clip(&teacher, &sched, &solver, &z0, &ctx, &unc, &[shape.fps], &PreprocessConfig { index_range: (0.5, 1.0), ..PreprocessConfig::default() }, &mut rng).unwrap();
        let meta = RecordMeta { row: 0, path: "bench".into(), caption: "a red circle moves from left to right".into(), short_caption: Some("a red circle moving right".into()), index: rec.index, w: rec.w, motion_energy: rec.energy };
        let sc = ShardConfig { ddim_steps: grid, frames: shape.frames, height: shape.height, width: shape.width, fps: shape.fps, seed: 0, motion: true, motion_reference: Default::default(), negative_prompt: String::new(), draws: 1 };
        write_shard(&dir.join("shard-0of1-00000.safetensors"), &sc, &[(meta, RecordTensors { z_t: rec.z_t, cond_eps: rec.cond_eps, uncond_eps: rec.uncond_eps, context: ctx.clone(), score: rec.score })]).unwrap();
        let shards = open_dataset(&dir).unwrap();
        let clip = |seed| Clip::load(&Loader::random(&gpu, seed), &rcfg).unwrap();
        let iv2 = preset.video_reward_config();
        let vocab = world_vocab(iv2.text.vocab_size);
        let rewards = RewardModels {
            vae,
            image: vec![(ImageTextReward { clip: clip(10), mode: Preprocess::Hps }, 1.0), (ImageTextReward { clip: clip(11), mode: Preprocess::ClipScore }, 1.0)],
            video: Some(Box::new(InternVideo2Reward {
                model: InternVideo2::load(&Loader::random(&gpu, 12), &iv2).unwrap(),
                tokenizer: BertTokenizer::from_vocab(&vocab.iter().map(String::as_str).collect::<Vec<_>>(), iv2.max_txt_len).unwrap(),
            })),
            tokenizer: ClipTokenizer::new().unwrap(),
        };
        let params = student_loader.params();
        // what 8-bit AdamW states (`train --adam8bit`) would save of this run's f32 ones
        let q8_saving: u64 = params.iter().map(|(_, t)| state_bytes(t.numel(), false) - state_bytes(t.numel(), true)).sum();
        let st = Student { unet: student, params, adapters: vec![], target: None, text: None };
        // lr 0: the weights stay, so every step computes the same loss; at VideoCrafter2
        // size with recomputation checkpoints (--recompute), as such a run would train
        gpu.trim_pool();
        gpu.reset_peak_memory();
        let recompute = !cpu;
        let config = TrainConfig { steps: u64::MAX, lr: 0.0, recompute, ..TrainConfig::default() };
        // the best time of a step (the first compiled the backward's shaders; `once`: one
        // more step, timed)
        let time_steps = |trainer: &mut Trainer| -> f64 {
            let t0 = std::time::Instant::now();
            let first = trainer.step().unwrap();
            let mut best = t0.elapsed().as_secs_f64();
            let start = std::time::Instant::now();
            let mut runs = 0;
            while runs < 1 || !once && start.elapsed().as_secs_f64() < budget {
                runs += 1;
                let t = std::time::Instant::now();
                let m = trainer.step().unwrap();
                // (an EMA target of the unchanged student moves by rounding only)
                assert!((m.cd_loss - first.cd_loss).abs() <= 1e-5 * first.cd_loss.abs(), "a repeated step gave another loss: {} vs {}", m.cd_loss, first.cd_loss);
                best = best.min(t.elapsed().as_secs_f64());
            }
            best
        };
        let mut trainer = Trainer::new(config.clone(), st, &rewards, &shards).unwrap();
        let best = time_steps(&mut trainer);
        let how = if recompute { ", recomputation checkpoints" } else { "" };
        // peak: every model resident (the teacher too), the AdamW state and the pool; the
        // live peak is what the tensors held at once, the device memory a run needs
        let mem = gpu.memory();
        println!(
            "| train step: consistency loss + 2 image rewards + video reward, backward, AdamW{how} (live peak {:.0} MiB, {:.0} MiB of it the bench's teacher; 8-bit AdamW states would take {:.0} MiB less) | {best:.3} | {:.0} | {:.1}x | one student forward |",
            mib(mem.peak_live_bytes),
            mib(teacher_bytes),
            mib(q8_saving),
            mib(mem.peak_total_bytes),
            best / t_fwd
        );
        drop(trainer);
        // with an EMA target (`train --ema-target`): a second UNet, the target's forward from
        // it and one EMA update per step (lr 0: the target stays the student)
        let unet = |seed| {
            let l = Loader::random(&gpu, seed);
            (Unet3d::load(&l, &student_cfg).unwrap(), l.params())
        };
        let (s_unet, s_params) = unet(1);
        let (t_unet, t_params) = unet(1);
        let st = Student { unet: s_unet, params: s_params, adapters: vec![], target: None, text: None }.with_ema_target(t_unet, t_params).unwrap();
        gpu.trim_pool();
        gpu.reset_peak_memory();
        let mut trainer = Trainer::new(TrainConfig { ema_target: Some(0.95), ..config.clone() }, st, &rewards, &shards).unwrap();
        let with_ema = time_steps(&mut trainer);
        let mem_ema = gpu.memory();
        println!(
            "| train step, the same with an EMA target (live peak {:.0} MiB) | {with_ema:.3} | {:.0} | {:.2}x | the step without |",
            mib(mem_ema.peak_live_bytes),
            mib(mem_ema.peak_total_bytes),
            with_ema / best
        );
        drop(trainer);
        // training the text encoder's last blocks too (`train --train-text-encoder`, the
        // reference's 4 of VideoCrafter2's 24; the tiny encoder has 2): its forward and
        // backward per record, the blocks' gradients and AdamW state
        let (s_unet, s_params) = unet(1);
        let l = Loader::random(&gpu, 3);
        let tower = TextTower::load(&l, &tcfg.text, None).unwrap();
        let layers = 4.min(tcfg.text.layers);
        let text = TextStudent::new(tower, l.all_tensors(), layers).unwrap();
        let text_weights: usize = text.params.iter().map(|(_, t)| t.numel()).sum();
        let st = Student { unet: s_unet, params: s_params, adapters: vec![], target: None, text: Some(text) };
        gpu.trim_pool();
        gpu.reset_peak_memory();
        let mut trainer = Trainer::new(TrainConfig { text_layers: Some(layers), ..config }, st, &rewards, &shards).unwrap();
        let with_text = time_steps(&mut trainer);
        let mem_text = gpu.memory();
        println!(
            "| train step, the same training the text encoder's last {layers} of {} blocks ({:.2} M weights; live peak {:.0} MiB) | {with_text:.3} | {:.0} | {:.2}x | the step without |",
            tcfg.text.layers,
            text_weights as f64 / 1e6,
            mib(mem_text.peak_live_bytes),
            mib(mem_text.peak_total_bytes),
            with_text / best
        );
        drop(trainer);
        let _ = std::fs::remove_dir_all(&dir);
    }
    if !want("teacher") {
        return;
    }

    let tg = gen(Unet3d::load(&Loader::random(&gpu, 1), &ucfg).unwrap(), WeightPrecision::F32);
    let (t_teacher, m_teacher) = timed(&gpu, budget, once, || tg.generate("a red circle moving left", &opts(50, true)).unwrap()[5]);
    println!("| sample 1 video, teacher 50 DDIM steps + CFG | {t_teacher:.3} | {:.0} | {:.1}x | the 4-step sample |", mib(m_teacher), t_teacher / t_four);
}
