//! `t2v-turbo demo`: the whole method on the embedded default (see `pipeline::demo`).

use std::path::PathBuf;

use t2v_kernels::Gpu;

use super::{ensure_new_dir, CliError, DeviceArgs};
use crate::pipeline::demo::{run_demo, DemoConfig, CD_ONLY, FULL, NO_MOTION, NO_REWARD};
use crate::pipeline::model_dir::ModelDir;
use crate::pipeline::train::RewardInput;

/// The shipped tiny models of the embedded default.
pub fn default_models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/tiny")
}

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Model folder (default: the shipped tiny models in assets/tiny).
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Output folder (must not exist or be empty): report.md, gifs/, samples/, students/.
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Training clips.
    #[arg(long, default_value_t = 20)]
    pub clips: usize,
    /// Held-out prompts sampled by every method.
    #[arg(long, default_value_t = 8)]
    pub prompts: usize,
    /// Fraction of training clips that also carry a short caption, the only ones reward
    /// feedback uses (the paper's data decoupling: long-caption data for consistency
    /// distillation alone, short-caption data for both). 1: every clip, so every step
    /// has reward feedback (the world's clips all have both captions; 0.5 mirrors the
    /// paper's data mix).
    #[arg(long, default_value_t = 1.0)]
    pub short_fraction: f32,
    /// Prompts of the evaluation grid (every color x direction, two shapes each) that each
    /// student also samples, for the comparisons between students: 48 = all (48 color
    /// judgments per student), 24 = every color x direction once, 0 = none.
    #[arg(long, default_value_t = 48)]
    pub grid: usize,
    /// Distillation steps per student.
    #[arg(long, default_value_t = 70)]
    pub steps: u64,
    /// Distillation learning rate (the reference's is 1e-5, at which 70 steps barely move
    /// the tiny students; at 1e-4 plain consistency distillation collapses them onto one
    /// color, which reward feedback prevents: see README).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f32,
    /// Points of the DDIM grid (50: T2V-Turbo v1's, cheaper inversion on a CPU; 200: v2's).
    #[arg(long, default_value_t = 50)]
    pub ddim_steps: usize,
    /// Teacher DDIM steps.
    #[arg(long, default_value_t = 50)]
    pub teacher_steps: usize,
    /// Videos sampled per batch (the teacher's CFG doubles it); a video does not depend on
    /// its batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Motion-guidance scale lambda of the motion-guided students (distillation and
    /// sampling; the reference code's default).
    #[arg(long, default_value_t = 0.05)]
    pub motion_gs: f32,
    /// What the rewards score: `noise` (the student's one-step generation from fresh noise,
    /// where sampling starts; not in the reference, see `train --reward-input`) or `data`
    /// (the reference: the consistency output from a noised training clip, which on these
    /// tiny models does not raise the students' alignment, see README) or `sample` (the
    /// students' whole 4-step samples, gradients through every step; see README).
    #[arg(long, value_enum, default_value_t = RewardInput::Noise)]
    pub reward_input: RewardInput,
    /// Where preprocessing takes the motion reference from: `inversion` (T2V-Turbo-v2's) or
    /// `noised` (MotionClone's current way, one forward noising to --reference-t; see
    /// `preprocess --motion-reference`).
    #[arg(long, value_enum, default_value_t = super::preprocess::ReferenceKind::Inversion)]
    pub motion_reference: super::preprocess::ReferenceKind,
    /// --motion-reference noised: the timestep the clips are noised to (default 400).
    #[arg(long)]
    pub reference_t: Option<usize>,
    /// Also train the ablations without rewards and without motion guidance.
    #[arg(long)]
    pub ablations: bool,
    /// A shortened run (a few clips, prompts and steps) that checks everything works.
    #[arg(long)]
    pub quick: bool,
    /// Seed of everything the demo draws: the world's clips, preprocessing, training, the
    /// held-out prompts and the sampling noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(dev: &DeviceArgs, a: &DemoArgs) -> Result<(), CliError> {
    let models = a.models.clone().unwrap_or_else(default_models);
    let md = ModelDir::read(&models).map_err(|e| CliError::Check(format!("{e}\n(the shipped models are in assets/tiny of the repository; or give --models DIR, e.g. from `t2v-turbo init`)")))?;
    if a.batch == 0 {
        return Err(CliError::Check("--batch must be at least 1".into()));
    }
    if !(a.motion_gs.is_finite() && a.motion_gs >= 0.0) {
        return Err(CliError::Check(format!("--motion-gs must be a finite number >= 0, not {}", a.motion_gs)));
    }
    let motion_reference = super::preprocess::motion_reference(a.motion_reference, a.reference_t)?;
    crate::world::check_short_fraction(a.short_fraction).map_err(|e| CliError::Check(format!("--short-fraction {e}")))?;
    ensure_new_dir(&a.out, false)?;
    let mut c = DemoConfig { clips: a.clips, prompts: a.prompts, short_fraction: a.short_fraction, grid: a.grid, steps: a.steps, lr: a.lr, ddim_steps: a.ddim_steps, teacher_steps: a.teacher_steps, sample_batch: a.batch, motion_gs: a.motion_gs, reward_input: a.reward_input, motion_reference, seed: a.seed, ..DemoConfig::default() };
    if a.ablations {
        c.variants = vec![FULL, NO_REWARD, NO_MOTION, CD_ONLY];
    }
    if a.quick {
        (c.clips, c.prompts, c.grid, c.steps, c.ddim_steps, c.teacher_steps) = (4, 2, c.grid.min(4), 3, 10, 10);
    }
    let gpu = Gpu::new(&dev.gpu_options(false))?;
    super::warn_matrix_cores_in_training(&gpu);
    let md = md.with_precision(super::WeightsDtype::Auto.precision(&gpu));
    let results = run_demo(&gpu, &md, &a.out, &c)?;
    println!("{:<40} {:>10} {:>9} {:>8} {:>10}", "method", "accuracy%", "dynamic", "flicker", "s/video");
    for r in &results {
        println!("{:<40} {:>10.1} {:>9.2} {:>8.4} {:>10.2}", r.name, r.report.accuracy, r.report.dynamic_degree, r.report.flicker, r.seconds_per_video);
    }
    println!("report: {}", a.out.join("report.md").display());
    Ok(())
}
