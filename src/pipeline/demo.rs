//! `t2v-turbo demo`: the whole method on the embedded default, end to end:
//! world -> preprocess (with motion guidance) -> distill students (consistency + rewards +
//! motion, and ablations) -> sample held-out prompts with each 4-step student and with the
//! teacher's 50-step DDIM -> the reward-independent analyser -> a Markdown report with
//! side-by-side GIFs, training curves, a table of accuracy, motion and time per video, and
//! which attributes the reward models see (the reward check).

use std::path::Path;
use std::time::Instant;

use t2v_kernels::Gpu;

use crate::diffusion::DdimConfig;
use crate::eval::{paired_on, score, Report};
use crate::models::tokenizer::ClipTokenizer;
use crate::models::weights::{Result, WeightsError};
use crate::pipeline::model_dir::ModelDir;
use crate::pipeline::progress::Progress;
use crate::pipeline::preprocess::{preprocess_dataset, MotionReference, PreprocessConfig, PreprocessJob, PreprocessModels};
use crate::pipeline::sample::{Generator, SampleOptions};
use crate::pipeline::shards::{open_dataset, ShardConfig};
use crate::pipeline::train::{load_run, run as run_training, write_student_model, RewardInput, RewardModels, RunOptions, StepMetrics, TrainConfig, Trainer};
use crate::pipeline::validation::sample_rewards;
use crate::pipeline::video_io::{write_frames, write_gif, Frames};
use crate::pretrain::reward_check::{self, reward_sensitivity, AttributeScore};
use crate::world::{held_out_prompts, prompt_grid, write_dataset, WorldConfig};

/// A student variant: which parts of T2V-Turbo-v2 it is trained with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Variant {
    pub name: &'static str,
    pub rewards: bool,
    pub motion: bool,
}

pub const FULL: Variant = Variant { name: "t2v-turbo-v2", rewards: true, motion: true };
pub const CD_ONLY: Variant = Variant { name: "cd-only", rewards: false, motion: false };
pub const NO_MOTION: Variant = Variant { name: "no-motion", rewards: true, motion: false };
pub const NO_REWARD: Variant = Variant { name: "no-reward", rewards: false, motion: true };

/// Settings of a demo run.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Training clips of the world.
    pub clips: usize,
    /// Held-out prompts sampled by every method.
    pub prompts: usize,
    /// Fraction of training clips with a short caption (reward feedback uses only those).
    pub short_fraction: f32,
    /// Also sample every student on this many prompts of [`prompt_grid`] (24: every color x
    /// direction once; 48: all of it; 0: none): with 72-144 attribute judgments per student
    /// instead of the held-out prompts' 24, the comparisons between students rest on a
    /// balanced, larger sample (the teacher, at 50 steps with CFG, samples only the
    /// held-out prompts).
    pub grid: usize,
    /// Distillation steps per student.
    pub steps: u64,
    pub lr: f32,
    /// DDIM grid of preprocessing and distillation.
    pub ddim_steps: usize,
    pub student_steps: usize,
    pub teacher_steps: usize,
    pub teacher_cfg: f32,
    /// Videos per sampling batch.
    pub sample_batch: usize,
    /// Motion-guidance scale lambda of the motion-guided students, in distillation and
    /// sampling (the reference code's default: 0.05).
    pub motion_gs: f32,
    /// What reward feedback scores (the demo: the one-step generation from noise; the
    /// reference: the data's consistency output).
    pub reward_input: RewardInput,
    /// Where preprocessing takes the motion reference from (the reference: DDIM inversion).
    pub motion_reference: MotionReference,
    pub variants: Vec<Variant>,
    pub seed: u64,
    pub quiet: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            clips: 20,
            prompts: 8,
            short_fraction: 1.0,
            grid: 48,
            steps: 70,
            lr: 1e-4,
            ddim_steps: 50,
            student_steps: 4,
            teacher_steps: 50,
            teacher_cfg: 7.5,
            sample_batch: 8,
            motion_gs: 0.05,
            reward_input: RewardInput::Noise,
            motion_reference: MotionReference::Inversion,
            variants: vec![FULL, CD_ONLY],
            seed: 0,
            quiet: false,
        }
    }
}

/// One method's results.
pub struct MethodResult {
    pub name: String,
    pub report: Report,
    /// The reward models' scores of the held-out samples (weighted image rewards, video
    /// reward; None without such models): what reward feedback optimises, beside the
    /// analyser's accuracy, which it cannot see.
    pub rewards: (Option<f32>, Option<f32>),
    pub seconds_per_video: f64,
    pub videos: Vec<Frames>,
    /// Students with [`DemoConfig::grid`]: the analyser's report on the prompt grid.
    pub grid: Option<Report>,
}

/// An error of one stage, named by the file or folder it concerns.
fn io(p: &Path, e: impl std::fmt::Display) -> WeightsError {
    WeightsError::Data { path: p.display().to_string(), msg: e.to_string() }
}

fn say(quiet: bool, msg: String) {
    if !quiet {
        eprintln!("== {msg}");
    }
}

/// Runs the demo into `out` (an empty or new folder); returns the results per method.
pub fn run_demo(gpu: &Gpu, models: &ModelDir, out: &Path, c: &DemoConfig) -> Result<Vec<MethodResult>> {
    let t_all = Instant::now();
    // (stage, seconds) for the report
    let mut stages: Vec<(String, f64)> = Vec::new();
    let v = models.video;
    let world = WorldConfig { frames: v.frames, size: v.height, short_fraction: c.short_fraction };
    if v.height != v.width {
        return Err(io(&models.root, "the demo's world makes square clips: the model folder's height and width must be equal"));
    }
    // 1. the data set
    say(c.quiet, format!("world: {} clips of {} frames {}x{}", c.clips, v.frames, v.height, v.width));
    write_dataset(&out.join("world"), c.seed, c.clips, &world, c.quiet).map_err(|e| io(&out.join("world"), e))?;

    // 2. Algorithm 1
    let t = Instant::now();
    let shard_cfg = ShardConfig { ddim_steps: c.ddim_steps, frames: v.frames, height: v.height, width: v.width, fps: v.fps, seed: c.seed, motion: true, motion_reference: c.motion_reference, negative_prompt: String::new(), draws: 1 };
    {
        let (unet, vae, text) = (models.load_unet(gpu)?, models.load_vae(gpu)?, models.load_text(gpu)?);
        let tokenizer = ClipTokenizer::new().map_err(|e| io(Path::new("tokenizer"), e))?;
        let job = PreprocessJob {
            captions: out.join("world/captions.jsonl"),
            out: out.join("shards"),
            shard: (0, 1),
            shard_size: 64,
            config: shard_cfg,
            source_fps: None,
            settings: PreprocessConfig { reference: c.motion_reference, ..PreprocessConfig::default() },
            quiet: c.quiet,
        };
        std::fs::create_dir_all(&job.out).map_err(|e| io(&job.out, e))?;
        let rep = preprocess_dataset(&PreprocessModels { unet: &unet, vae: &vae, text: &text, tokenizer: &tokenizer }, &job).map_err(|e| io(&job.out, e))?;
        let secs = t.elapsed().as_secs_f64();
        say(c.quiet, format!("preprocess: {} clips ({} motion-guided) in {secs:.0} s", rep.records, rep.motion_records));
        stages.push(("preprocess".into(), secs));
    }
    let shards = open_dataset(&out.join("shards"))?;

    // 3. Algorithm 2, one student per variant
    let mut curves: Vec<(String, Vec<StepMetrics>)> = Vec::new();
    let mut students = Vec::new();
    for var in &c.variants {
        let t = Instant::now();
        let cfg = TrainConfig {
            steps: c.steps,
            lr: c.lr,
            use_motion: var.motion,
            motion_gs: c.motion_gs,
            beta_img: if var.rewards { 0.2 } else { 0.0 },
            beta_vid: if var.rewards { 0.5 } else { 0.0 },
            reward_input: c.reward_input,
            reward_sample_steps: c.student_steps,
            // the clips with a short caption are the reward data (--short-fraction), as in
            // the paper's mix, whatever their share
            reward_captions: crate::pipeline::train::RewardCaptions::Short,
            seed: c.seed,
            ..TrainConfig::default()
        };
        let (student, rewards) = load_run(gpu, models, &cfg, None).map_err(|e| io(&models.root, e))?;
        let mut trainer = Trainer::new(cfg, student, &rewards, &shards).map_err(|e| io(&models.root, e))?;
        let dir = out.join("students").join(var.name);
        let ms = run_training(&mut trainer, &RunOptions { out: dir.clone(), validation: None, checkpoint_every: c.steps.max(1), keep_checkpoints: 1, stop_after: None, quiet: c.quiet }).map_err(|e| io(&dir, e))?;
        let md = write_student_model(&dir.join("model"), models, &trainer.student, trainer.state.step, crate::models::weights::SaveDtype::F32)?;
        let secs = t.elapsed().as_secs_f64();
        say(c.quiet, format!("distill {}: {} steps in {secs:.0} s", var.name, c.steps));
        stages.push((format!("distill {}", var.name), secs));
        curves.push((var.name.to_string(), ms));
        students.push((var.name.to_string(), md, var.motion));
    }

    // 4. sampling held-out prompts (another world seed)
    let prompts = held_out_prompts(c.seed, c.prompts, &world);
    // a student samples with the motion scale it was distilled with (0 without motion
    // guidance: it never saw another); the teacher ignores it
    let opts = |teacher: Option<DdimConfig>, steps: usize, motion_scale: f32| SampleOptions {
        steps,
        origin: c.ddim_steps,
        w: 7.5,
        motion_scale,
        motion_percentage: 0.5,
        seed: c.seed,
        frames: v.frames,
        height: v.height,
        width: v.width,
        fps: v.fps,
        teacher,
        negative_prompt: None,
        init: None,
    };
    let mut methods: Vec<(String, Generator, SampleOptions)> = Vec::new();
    methods.push((
        format!("teacher ({} DDIM steps, CFG {})", c.teacher_steps, c.teacher_cfg),
        Generator::from_model_dir(gpu, models)?,
        opts(Some(DdimConfig { steps: c.teacher_steps, cfg: c.teacher_cfg, eta: 0.0 }), c.teacher_steps, 0.0),
    ));
    for (name, md, motion) in &students {
        let lambda = if *motion { c.motion_gs } else { 0.0 };
        methods.push((format!("{name} ({} steps)", c.student_steps), Generator::from_model_dir(gpu, md)?, opts(None, c.student_steps, lambda)));
    }
    // the samples are also scored by the reward models
    let reward_models = RewardModels::load(gpu, models, None).map_err(|e| io(&models.root, e))?;
    // prompt i with seed + i, in batches, written as a folder `t2v-turbo eval` reads; also
    // returns the generation's seconds per video (without the writing)
    let sample_into = |label: &str, gen: &Generator, o: &SampleOptions, prompts: &[String], dir: &Path| -> Result<(Vec<Vec<f32>>, Vec<Frames>, f64)> {
        let t = Instant::now();
        let items: Vec<(&str, u64)> = prompts.iter().enumerate().map(|(i, p)| (p.as_str(), c.seed + i as u64)).collect();
        let batches = items.chunks(c.sample_batch.max(1));
        let mut progress = Progress::new(label, batches.len() * o.sampling_steps()).quiet(c.quiet);
        let mut raw = Vec::new();
        for chunk in batches {
            raw.extend(gen.generate_batch_observed(chunk, o, &mut |_| {
                progress.advance(1, "steps");
                std::ops::ControlFlow::Continue(())
            })?);
        }
        let secs = t.elapsed().as_secs_f64() / prompts.len().max(1) as f64;
        let videos: Vec<Frames> = raw.iter().map(|x| Frames::from_chw(x, v.frames, v.height, v.width)).collect();
        for (i, f) in videos.iter().enumerate() {
            write_frames(&dir.join(format!("{i:03}")), f).map_err(|e| io(dir, e))?;
        }
        let rows: Vec<_> = prompts.iter().enumerate().map(|(i, p)| crate::pipeline::captions::CaptionRow { path: format!("{i:03}"), caption: p.clone(), short_caption: None }).collect();
        crate::pipeline::captions::write_jsonl(&dir.join("captions.jsonl"), &rows)?;
        Ok((raw, videos, secs))
    };
    let scored = |videos: &[Frames], prompts: &[String]| score(&videos.iter().cloned().zip(prompts.iter().cloned()).collect::<Vec<_>>());
    let grid = prompt_grid(c.grid);
    let mut results = Vec::new();
    for (k, (name, gen, o)) in methods.iter().enumerate() {
        let t = Instant::now();
        let short = name.split(" (").next().unwrap_or(name);
        let (raw, videos, secs) = sample_into(&format!("sample {short}"), gen, o, &prompts, &out.join("samples").join(format!("{k}")))?;
        let rewards = sample_rewards(&reward_models, TrainConfig::default().vid_frames, &raw, &prompts, (v.frames, v.height, v.width))?;
        let report = scored(&videos, &prompts);
        say(c.quiet, format!("sample {name}: {secs:.2} s per video, accuracy {:.1} %", report.accuracy));
        stages.push((format!("sample {name}"), t.elapsed().as_secs_f64()));
        // the students (every method after the teacher) also on the prompt grid
        let grid_report = if !grid.is_empty() && k > 0 {
            let t = Instant::now();
            let (_, gv, _) = sample_into(&format!("grid {short}"), gen, o, &grid, &out.join("samples").join(format!("grid-{k}")))?;
            let r = scored(&gv, &grid);
            say(c.quiet, format!("sample {name} on the {}-prompt grid: accuracy {:.1} %", grid.len(), r.accuracy));
            stages.push((format!("grid {name}"), t.elapsed().as_secs_f64()));
            Some(r)
        } else {
            None
        };
        results.push(MethodResult { name: name.clone(), report, rewards, seconds_per_video: secs, videos, grid: grid_report });
    }

    // 5. which attributes the reward models see (what reward feedback can teach)
    let t = Instant::now();
    let seen = reward_sensitivity(gpu, models, &world, c.seed ^ 0xC4EC, 32)?;
    stages.push(("reward check".into(), t.elapsed().as_secs_f64()));

    // 6. the report
    stages.push(("total".into(), t_all.elapsed().as_secs_f64()));
    let info = gpu.adapter_info();
    let device = format!(
        "{} ({:?}); GEMMs: {}",
        info.name,
        info.backend,
        gpu.gemm_mode()
    );
    write_report(out, c, &prompts, &results, &curves, models, &stages, &seen, &device)?;
    Ok(results)
}

/// Frames of several videos side by side (same size and length), 2 px gaps.
fn side_by_side(vs: &[&Frames]) -> Frames {
    let (w, h, gap) = (vs[0].width, vs[0].height, 2);
    let total = vs.len() * w + (vs.len() - 1) * gap;
    let frames = (0..vs[0].frames.len())
        .map(|t| {
            let mut rgb = vec![255u8; total * h * 3];
            for (k, v) in vs.iter().enumerate() {
                for y in 0..h {
                    let dst = (y * total + k * (w + gap)) * 3;
                    rgb[dst..dst + w * 3].copy_from_slice(&v.frames[t][y * w * 3..(y + 1) * w * 3]);
                }
            }
            rgb
        })
        .collect();
    Frames { width: total, height: h, frames }
}

#[allow(clippy::too_many_arguments)]
fn write_report(out: &Path, c: &DemoConfig, prompts: &[String], results: &[MethodResult], curves: &[(String, Vec<StepMetrics>)], models: &ModelDir, stages: &[(String, f64)], seen: &[AttributeScore], device: &str) -> Result<()> {
    let gifs = out.join("gifs");
    std::fs::create_dir_all(&gifs).map_err(|e| io(&gifs, e))?;
    let mut md = String::new();
    md += "# t2v-turbo demo\n\n";
    md += &format!(
        "Models: `{}`. World: {} training clips (fraction {} with a short caption, the ones reward feedback uses); {} held-out prompts, sampled in batches of up to {}; DDIM grid {} points; {} distillation steps per student (lr {}); motion-guidance scale {}, motion reference {}; rewards scored on {}.\n\nDevice: {device}. Time: {}.\n\n",
        models.root.display(),
        c.clips,
        c.short_fraction,
        prompts.len(),
        c.sample_batch,
        c.ddim_steps,
        c.steps,
        c.lr,
        c.motion_gs,
        match c.motion_reference {
            MotionReference::Inversion => "DDIM inversion of each clip (the reference)".to_string(),
            MotionReference::Noised { t } => format!("each clip noised forward to t = {t} (`--motion-reference noised`, MotionClone's current way, not the reference)"),
        },
        match c.reward_input {
            RewardInput::Data => "the consistency output from noised training clips (the reference)".to_string(),
            RewardInput::Noise => "the students' one-step generations from fresh noise (`--reward-input noise`, not the reference)".to_string(),
            RewardInput::Sample => format!("the students' {}-step samples from fresh noise, gradients through every step (`--reward-input sample`, not the reference)", c.student_steps),
        },
        stages.iter().map(|(n, t)| format!("{n} {t:.0} s")).collect::<Vec<_>>().join(", ")
    );
    md += "## Evaluation (reward-independent analyser, `t2v-turbo eval`)\n\n";
    md += "| method | accuracy % | color % | shape % | direction % | dynamic degree | jitter | flicker | subject consistency | image reward | video reward | s / video | speed-up |\n";
    md += "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    let base = results.first().map(|r| r.seconds_per_video).unwrap_or(1.0);
    for r in results {
        let p = &r.report;
        let score = |x: Option<f32>| x.map_or("-".to_string(), |x| format!("{x:.3}"));
        md += &format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.4} | {:.3} | {} | {} | {:.2} | {:.1}x |\n",
            r.name,
            p.accuracy,
            p.color_accuracy,
            p.shape_accuracy,
            p.direction_accuracy,
            p.dynamic_degree,
            p.jitter,
            p.flicker,
            p.subject_consistency,
            score(r.rewards.0),
            score(r.rewards.1),
            r.seconds_per_video,
            base / r.seconds_per_video.max(1e-9)
        );
    }
    md += &targets(results);
    md += &grid_table(results);
    md += "\nAccuracy: color, shape and direction of the subject against the prompt. Dynamic degree: subject speed in % of the frame width per frame. Jitter: how far the subject's steps between frames stray from that steady speed, same unit (the world's subjects move steadily; lower is better) — high jitter means the dynamic degree is wobble rather than motion. Flicker: mean background change between frames (lower is better). Image / video reward: the run's reward models scoring the same held-out samples against their prompts (middle frame, weighted sum of the image rewards; 4 strided frames) — what reward feedback raises, while the analyser's accuracy shows whether that is text alignment or reward hacking.\n\n";
    md += &reward_table(seen);
    md += "## Videos (left to right: ";
    md += &results.iter().map(|r| r.name.clone()).collect::<Vec<_>>().join(" | ");
    md += ")\n\n";
    for (i, p) in prompts.iter().enumerate() {
        let row: Vec<&Frames> = results.iter().map(|r| &r.videos[i]).collect();
        let name = format!("{i:03}.gif");
        write_gif(&gifs.join(&name), &side_by_side(&row), models.video.fps).map_err(|e| io(&gifs, e))?;
        md += &format!("**{p}**\n\n![{p}](gifs/{name})\n\n");
    }
    md += "## Training curves\n\n";
    for (name, _) in curves {
        md += &format!("### {name}\n\n![{name}](students/{name}/metrics.png)\n\n");
    }
    let path = out.join("report.md");
    t2v_kernels::io::write_atomic(&path, md.as_bytes())?;
    Ok(())
}

/// The reward check as a table: per reward model and caption kind, how often the clip's own
/// caption beats the same caption with one attribute changed.
fn reward_table(seen: &[AttributeScore]) -> String {
    if seen.is_empty() {
        return String::new();
    }
    let attributes: Vec<&str> = reward_check::attributes().collect();
    let mut md = String::from("## What the reward models see\n\nOn fresh clips of the world, how often each reward model scores the clip's own caption above the same caption with one attribute changed (about half: it does not see that attribute, so reward feedback cannot teach it).\n\n");
    md += &format!("| reward model | caption | {} |\n|---|---|{}\n", attributes.join(" | "), "---:|".repeat(attributes.len()));
    let mut rows: Vec<(&str, &str)> = Vec::new();
    for a in seen {
        if !rows.contains(&(a.model.as_str(), a.caption)) {
            rows.push((a.model.as_str(), a.caption));
        }
    }
    for (model, caption) in rows {
        let cell = |attr: &str| seen.iter().find(|a| a.model == model && a.caption == caption && a.attribute == attr).map(|a| format!("{}/{}", a.wins, a.clips)).unwrap_or_default();
        md += &format!("| {model} | {caption} | {} |\n", attributes.iter().map(|a| cell(a)).collect::<Vec<_>>().join(" | "));
    }
    md + "\n"
}

/// The targets, read off the results: student vs teacher, and the ablations.
fn targets(results: &[MethodResult]) -> String {
    let find = |prefix: &str| results.iter().find(|r| r.name.starts_with(prefix));
    let mut out = String::from("\n### Against the targets\n\n");
    let teacher = find("teacher");
    let full = find(FULL.name);
    if let (Some(t), Some(f)) = (teacher, full) {
        let gap = t.report.accuracy - f.report.accuracy;
        let speed = t.seconds_per_video / f.seconds_per_video.max(1e-9);
        let rel = if gap >= 0.0 { format!("{gap:.1} points behind") } else { format!("{:.1} points ahead", -gap) };
        out += &format!(
            "- 4-step student within 5 points of the teacher's accuracy at >= 10x less time: {rel}, {speed:.1}x faster — {}.\n",
            if gap <= 5.0 && speed >= 10.0 { "met" } else { "not met" }
        );
        // chance: 1/6 colors, 1/3 shapes, 1/4 directions
        let chance = 100.0 * (1.0 / 6.0 + 1.0 / 3.0 + 1.0 / 4.0) / 3.0;
        if t.report.accuracy < 1.5 * chance {
            out += &format!(
                "- Caution: the teacher's accuracy ({:.1}%) is near chance ({chance:.0}%), and {} prompts make a small sample: these comparisons say little until the teacher is better trained.\n",
                t.report.accuracy,
                t.report.clips
            );
        }
    }
    // students are compared on the prompt grid when they sampled it, else on the held-out
    // prompts
    fn on(r: &MethodResult) -> &Report {
        r.grid.as_ref().unwrap_or(&r.report)
    }
    let sample = |a: &MethodResult| if a.grid.is_some() { format!("{} grid prompts", on(a).clips) } else { format!("{} held-out prompts", a.report.clips) };
    let compare = |a: &MethodResult, b: &MethodResult, what: &str, f: &dyn Fn(&Report) -> f32| {
        let (x, y) = (f(on(a)), f(on(b)));
        format!("- {what} ({}): {} {x:.2} vs {} {y:.2} — {}", sample(a), a.name, b.name, if x > y { "raised" } else { "not raised" })
    };
    let line = |a: &MethodResult, b: &MethodResult, what: &str, f: &dyn Fn(&Report) -> f32| compare(a, b, what, f) + ".\n";
    // accuracy lines also say whether the difference stands out of the sample's noise:
    // the paired sign test on the judgments of `attributes`
    let judged_line = |a: &MethodResult, b: &MethodResult, what: &str, f: &dyn Fn(&Report) -> f32, attributes: &[usize]| {
        let mut l = compare(a, b, what, f);
        match paired_on(on(a), on(b), attributes) {
            Some(p) => l += &format!(
                "; of {} attribute judgments {} are right only with {} and {} only with {} (sign test p = {:.2}{}).\n",
                p.judgments,
                p.only_a,
                a.name,
                p.only_b,
                b.name,
                p.p_value,
                if p.p_value < 0.05 { "" } else { ": within the sample's noise" }
            ),
            None => l += ".\n",
        }
        l
    };
    let accuracy_line = |a: &MethodResult, b: &MethodResult, what: &str| judged_line(a, b, what, &|r| r.accuracy, &[0, 1, 2]);
    if let (Some(f), Some(c)) = (full, find(CD_ONLY.name)) {
        out += &accuracy_line(f, c, "rewards + motion raise text alignment (accuracy) over plain consistency distillation");
        out += &judged_line(f, c, "color accuracy (the attribute the reward models see)", &|r| r.color_accuracy, &[0]);
        out += &line(f, c, "dynamic degree (rewards and motion guidance against neither)", &|r| r.dynamic_degree);
        if find(NO_MOTION.name).is_none() {
            out += "- (rewards change the motion too: the student without motion guidance of `demo --ablations` isolates its effect.)\n";
        }
        out += &format!("- flicker {} {:.4} vs {} {:.4} (lower is better).\n", f.name, on(f).flicker, c.name, on(c).flicker);
        if let (Some(x), Some(y)) = (f.rewards.0, c.rewards.0) {
            out += &format!("- the held-out image reward (what the image rewards optimise): {} {x:.3} vs {} {y:.3} — {}.\n", f.name, c.name, if x > y { "raised" } else { "not raised" });
        }
    }
    if let (Some(f), Some(n)) = (full, find(NO_REWARD.name)) {
        out += &accuracy_line(f, n, "reward feedback raises text alignment (accuracy)");
    }
    if let (Some(f), Some(n)) = (full, find(NO_MOTION.name)) {
        out += &line(f, n, "motion guidance raises dynamic degree", &|r| r.dynamic_degree);
        out += &format!("- flicker with motion guidance {:.4} vs without {:.4}.\n", on(f).flicker, on(n).flicker);
        out += &format!("- jitter with motion guidance {:.2} vs without {:.2} (lower: steadier motion).\n", on(f).jitter, on(n).jitter);
    }
    out
}

/// The students on the prompt grid (when sampled): the firmer comparison between them.
fn grid_table(results: &[MethodResult]) -> String {
    let rows: Vec<(&str, &Report)> = results.iter().filter_map(|r| r.grid.as_ref().map(|g| (r.name.as_str(), g))).collect();
    let Some((_, first)) = rows.first() else { return String::new() };
    let mut md = format!(
        "\n### The students on the prompt grid\n\nPrompts of the evaluation grid, in which every color, shape and direction is equally represented ({} prompts, {} attribute judgments per student; `samples/grid-*`):\n\n| method | accuracy % | color % | shape % | direction % | dynamic degree | jitter | flicker |\n|---|---|---|---|---|---|---|---|\n",
        first.clips,
        first.judgments.iter().flatten().flatten().count()
    );
    for (name, p) in &rows {
        md += &format!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.4} |\n",
            p.accuracy, p.color_accuracy, p.shape_accuracy, p.direction_accuracy, p.dynamic_degree, p.jitter, p.flicker
        );
    }
    md
}
