//! Command-line interface. Each subcommand lives in its own module. Every command also
//! takes `--config FILE.toml`: its keys are the command's long options (`steps = 4`,
//! `motion_scale = 0.1`, `prompt = ["a", "b"]`, `teacher = true`); options given on the
//! command line win over the file.

mod convert;
mod demo;
mod eval;
mod export;
mod info;
mod init;
mod parity;
mod preprocess;
mod pretrain;
mod sample;
mod sample_jobs;
mod train;
mod world;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use t2v_kernels::Gpu;

/// Options shared by every command that uses a GPU.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DeviceArgs {
    /// Adapter to use: an index from `t2v-turbo info`, a backend (vulkan, metal, dx12), a
    /// device type (discrete, integrated, cpu) or part of its name. Default: $T2V_ADAPTER,
    /// else the fastest adapter found.
    #[arg(long, global = true)]
    pub adapter: Option<String>,
    /// Run the matrix products (linears, convolutions, attention's matmuls) on the adapter's
    /// matrix units — NVIDIA tensor cores through VK_KHR_cooperative_matrix: inputs rounded
    /// to f16, sums in f32. Experimental (wgpu's cooperative matrices); fails on adapters
    /// without them. Also on with T2V_MATRIX_CORES=1.
    #[arg(long, global = true)]
    pub matrix_cores: bool,
    /// Most GPU memory the job's tensors and its pool of reusable buffers may take, e.g.
    /// 12GiB or 800MiB (plain numbers are bytes): beyond it reusable buffers are freed
    /// before allocating, and a job that needs more at once stops with an error that says
    /// so. For sharing a GPU. Default: what the device gives.
    #[arg(long, global = true, value_parser = parse_bytes)]
    pub max_memory: Option<u64>,
}

/// A size in bytes: a number with an optional K/M/G/T suffix (powers of 1024; `KiB`, `KB`,
/// `K` alike).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("{s:?}: expected a size like 12GiB, 800MiB or 1000000"))?;
    let scale = match unit.trim().to_ascii_lowercase().trim_end_matches('b').trim_end_matches('i') {
        "" => 1u64,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use KiB, MiB, GiB or TiB)")),
    };
    let bytes = v * scale as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{s:?}: not a usable size"));
    }
    Ok(bytes as u64)
}

/// The UNet, VAE and text encoder as weight files (`sample`, `init`).
#[derive(clap::Args, Debug, Clone)]
pub struct ModelFiles {
    /// One safetensors checkpoint holding UNet, VAE and text encoder (VideoCrafter2's key
    /// prefixes, e.g. its `model.ckpt` converted): the three below default to it.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// UNet weights (default: --checkpoint): a teacher's, or a student's such as
    /// T2V-Turbo-v2's, whose guidance- and motion-scale layers make it one.
    #[arg(long)]
    pub unet: Option<PathBuf>,
    /// VAE weights (default: --checkpoint).
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// OpenCLIP text-encoder weights (default: --checkpoint): open_clip's ViT-H-14 or
    /// VideoCrafter2's `cond_stage_model.`.
    #[arg(long)]
    pub text: Option<PathBuf>,
}

impl ModelFiles {
    /// (UNet, VAE, text encoder) files: each given one, else the checkpoint.
    pub fn resolved(&self) -> [Option<PathBuf>; 3] {
        [&self.unet, &self.vae, &self.text].map(|x| x.clone().or_else(|| self.checkpoint.clone()))
    }
}

/// Matrix cores round the backward's operands to f16 too, without loss scaling: gradients
/// under f16's range (~6e-8) vanish, small ones lose digits (the unet3d fixture's training
/// step: weight gradients off by up to 100% on their smallest elements).
pub(crate) fn warn_matrix_cores_in_training(gpu: &Gpu) {
    if gpu.matrix_tile().is_some() {
        eprintln!("warning: --matrix-cores rounds the backward's operands to f16 as well (no loss scaling): gradients below ~6e-8 vanish; experimental for training");
    }
}

impl DeviceArgs {
    /// The device these options ask for.
    pub fn gpu_options(&self, quiet: bool) -> t2v_kernels::GpuOptions {
        t2v_kernels::GpuOptions { adapter: self.adapter.clone(), quiet, matrix_cores: self.matrix_cores, memory_limit: self.max_memory, ..Default::default() }
    }

    /// The devices of a command's `--devices` list (adapter selectors), each with these
    /// options; without the list, the one device of `--adapter`.
    pub fn gpus(&self, devices: &[String]) -> Result<Vec<Gpu>, CliError> {
        if devices.is_empty() {
            return Ok(vec![Gpu::new(&self.gpu_options(false))?]);
        }
        if self.adapter.is_some() {
            return Err(CliError::Check("give --adapter or --devices, not both (--devices 0,1 runs on adapters 0 and 1)".into()));
        }
        Ok(devices.iter().map(|sel| Gpu::new(&t2v_kernels::GpuOptions { adapter: Some(sel.clone()), ..self.gpu_options(false) })).collect::<Result<Vec<_>, _>>()?)
    }
}

/// `--weights-dtype`: how models that are not trained keep their linear and conv weights on
/// the GPU (norms, biases and embeddings stay f32; compute is f32 either way).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightsDtype {
    /// `stored` on GPUs, `f32` on CPU adapters (where memory is the host's and each
    /// widening pass costs more than it saves)
    #[default]
    Auto,
    /// f16 / bf16 weights of the files stay 16-bit on the GPU (half the memory, the same
    /// results bit for bit: each is widened exactly where it is used); f32 ones stay f32
    Stored,
    /// every weight widened to f32 when loaded (no widening pass per use)
    F32,
    /// every weight rounded to f16 (half the memory of f32 checkpoints; not exact)
    F16,
    /// every weight rounded to bf16 (as f16, with f32's range and less precision)
    Bf16,
}

impl WeightsDtype {
    /// The loaders' precision on `gpu`.
    pub fn precision(self, gpu: &Gpu) -> crate::models::weights::WeightPrecision {
        use crate::models::weights::WeightPrecision as P;
        match self {
            WeightsDtype::Auto if gpu.is_cpu() => P::F32,
            WeightsDtype::Auto | WeightsDtype::Stored => P::Stored,
            WeightsDtype::F32 => P::F32,
            WeightsDtype::F16 => P::F16,
            WeightsDtype::Bf16 => P::BF16,
        }
    }
}

#[derive(Parser, Debug)]
#[command(name = "t2v-turbo", version, about = "T2V-Turbo-v2 video consistency distillation and fast sampling on any GPU (wgpu)")]
#[command(args_override_self = true)]
pub struct Cli {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// A TOML file of options for the command (keys = long option names); options on the
    /// command line override it.
    #[arg(long, global = true, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the whole method on the embedded default (tiny shipped models, moving-shapes
    /// world): preprocess, distill, sample student and teacher, evaluate, write a report.
    Demo(Box<demo::DemoArgs>),
    /// List GPU adapters with their features and key limits, and self-check the chosen one;
    /// or, with --weights, describe a checkpoint file.
    Info(info::InfoArgs),
    /// Generate videos from prompts with a distilled student (4/8/16 consistency steps) or
    /// the teacher, from noise or re-generating a given video (--init-video).
    Sample(Box<sample::SampleArgs>),
    /// Run a reference fixture folder through the project and compare every output tensor
    /// (exit status 1 on any difference beyond the tolerance).
    Parity(parity::ParityArgs),
    /// Write clips of the built-in moving-shapes world as a data set (frame folders +
    /// captions.jsonl).
    World(world::WorldArgs),
    /// Score generated clips: on moving-shapes clips color/shape/direction accuracy against
    /// the prompt, dynamic degree, jitter, flicker, subject consistency (independent of
    /// reward models); with --models the reward models' scores of any clips.
    Eval(eval::EvalArgs),
    /// Write a model folder of randomly initialised models (tiny or VideoCrafter2 size).
    Init(init::InitArgs),
    /// Algorithm 1: encode videos, draw n and w, store teacher outputs and motion-guidance
    /// gradients in shards (resumable, shardable across machines).
    Preprocess(Box<preprocess::PreprocessArgs>),
    /// Convert a PyTorch checkpoint (.ckpt/.pt/.pth/.bin, torch.save's zip format) to
    /// safetensors, without Python.
    Convert(convert::ConvertArgs),
    /// Train the embedded default's tiny VAE, teacher UNet or reward towers on the
    /// moving-shapes world.
    Pretrain(Box<pretrain::PretrainArgs>),
    /// Algorithm 2: consistency distillation with reward feedback and motion guidance on
    /// preprocessed shards (checkpoints, exact resume, metrics).
    Train(Box<train::TrainArgs>),
    /// Write a model folder from one of a training run's checkpoints (the student, or its
    /// EMA target, at that step), to sample or evaluate intermediate steps.
    Export(export::ExportArgs),
}

/// Errors of the command line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Kernels(#[from] t2v_kernels::Error),
    #[error("{0}")]
    Check(String),
    #[error(transparent)]
    Weights(#[from] crate::models::weights::WeightsError),
    #[error(transparent)]
    Torch(#[from] crate::models::torch_checkpoint::TorchError),
}

/// A prompts file: one prompt per line, blank lines skipped, a leading byte-order mark
/// (spreadsheet and Windows editor exports) dropped. `what` names it in errors.
pub(crate) fn read_prompt_lines(path: &std::path::Path, what: &str) -> Result<Vec<String>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::Check(format!("{what}{}: {e}", path.display())))?;
    Ok(text.trim_start_matches('\u{feff}').lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

impl CliError {
    /// Did a device run out of memory (or over its `--max-memory`)?
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            CliError::Kernels(e) => e.is_out_of_memory(),
            CliError::Weights(e) => e.is_out_of_memory(),
            _ => false,
        }
    }
}

/// An out-of-memory error followed by what would make the run need less: `options` (those
/// of its options it does not use yet), else `otherwise`.
fn memory_advice(e: &dyn std::fmt::Display, options: &[&str], several_devices: bool, otherwise: &str) -> String {
    let each = if several_devices { " (on every device)" } else { "" };
    if options.is_empty() {
        return format!("{e}\nEvery memory-saving option is on{each}: {otherwise}.");
    }
    format!("{e}\nTo need less memory{each}, add: {}; or {otherwise}.", options.join(", "))
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Info(args) => info::run(&cli.device, &args),
        Command::Demo(args) => demo::run(&cli.device, &args),
        Command::Parity(args) => parity::run(&cli.device, &args),
        Command::Sample(args) => sample::run(&cli.device, &args),
        Command::World(args) => world::run(&args),
        Command::Eval(args) => eval::run(&cli.device, &args),
        Command::Init(args) => init::run(&cli.device, &args),
        Command::Preprocess(args) => preprocess::run(&cli.device, &args),
        Command::Train(args) => train::run(&cli.device, &args),
        Command::Pretrain(args) => pretrain::run(&cli.device, &args),
        Command::Convert(args) => convert::run(&args),
        Command::Export(args) => export::run(&cli.device, &args),
    }
}

/// Whether `dir` exists and is not empty (or cannot be listed).
pub fn holds_files(dir: &Path) -> bool {
    dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true)
}

/// An output folder that must not hold anything yet (created). With `overwrite` an
/// existing non-empty folder is accepted (files in it get replaced).
pub fn ensure_new_dir(dir: &Path, overwrite: bool) -> Result<(), CliError> {
    if holds_files(dir) && !overwrite {
        return Err(CliError::Check(format!("{} exists and is not empty; choose another output folder (nothing was overwritten)", dir.display())));
    }
    std::fs::create_dir_all(dir).map_err(|e| CliError::Check(format!("{}: {e}", dir.display())))
}

/// Expands `--config FILE` in a command line: the file's keys become `--key=value`
/// options placed right after the subcommand, so options written later on the command
/// line override them.
pub fn expand_config(args: Vec<OsString>) -> Result<Vec<OsString>, CliError> {
    let pos = args.iter().position(|a| a == "--config" || a.to_string_lossy().starts_with("--config="));
    let Some(pos) = pos else { return Ok(args) };
    let mut args = args;
    let file = match args[pos].to_string_lossy().strip_prefix("--config=") {
        Some(f) => {
            let f = PathBuf::from(f);
            args.remove(pos);
            f
        }
        None => {
            if pos + 1 >= args.len() {
                return Err(CliError::Check("--config needs a file".into()));
            }
            let f = PathBuf::from(args.remove(pos + 1));
            args.remove(pos);
            f
        }
    };
    let text = std::fs::read_to_string(&file).map_err(|e| CliError::Check(format!("config {}: {e}", file.display())))?;
    let table: toml::Table = text.parse().map_err(|e| CliError::Check(format!("config {}: {e}", file.display())))?;
    let mut extra = Vec::new();
    for (key, value) in &table {
        let flag = format!("--{}", key.replace('_', "-"));
        let scalar = |v: &toml::Value| -> Result<String, CliError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                other => Err(CliError::Check(format!("config {}: {key} = {other} is not a string or number", file.display()))),
            }
        };
        match value {
            toml::Value::Boolean(true) => extra.push(OsString::from(flag)),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for v in items {
                    extra.push(OsString::from(format!("{flag}={}", scalar(v)?)));
                }
            }
            v => extra.push(OsString::from(format!("{flag}={}", scalar(v)?))),
        }
    }
    // after the subcommand: the first argument that is neither an option nor its value
    let mut sub = 1;
    while sub < args.len() {
        let a = args[sub].to_string_lossy();
        if a == "--adapter" {
            sub += 2;
        } else if a.starts_with('-') {
            sub += 1;
        } else {
            break;
        }
    }
    let at = (sub + 1).min(args.len());
    args.splice(at..at, extra);
    Ok(args)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Options (and subcommands) of `cmd` and below without a line in `--help`.
    fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id != "help" && id != "version" && a.get_help().is_none() && a.get_long_help().is_none() {
                out.push(format!("{path} --{}", a.get_long().unwrap_or(id)));
            }
        }
        for sub in cmd.get_subcommands() {
            let p = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                out.push(p.clone());
            }
            undocumented(sub, &p, out);
        }
    }

    /// `--help` documents every command and every option (the pipeline issue's point 6).
    #[test]
    fn help_documents_every_option() {
        let mut missing = Vec::new();
        undocumented(&super::Cli::command(), "t2v-turbo", &mut missing);
        assert!(missing.is_empty(), "options without help text:\n{}", missing.join("\n"));
    }

    #[test]
    fn prompt_files_drop_blank_lines_and_a_byte_order_mark() {
        let path = std::env::temp_dir().join(format!("t2v-prompts-{}.txt", std::process::id()));
        std::fs::write(&path, "\u{feff}a red fox\r\n\n  a blue square moving up  \n").unwrap();
        let got = super::read_prompt_lines(&path, "").unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(got, ["a red fox", "a blue square moving up"]);
        let e = super::read_prompt_lines(&path, "--validate-prompts ").unwrap_err().to_string();
        assert!(e.starts_with("--validate-prompts ") && e.contains("t2v-prompts-"), "{e}");
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        let p = super::parse_bytes;
        assert_eq!(p("12GiB"), Ok(12 << 30));
        assert_eq!(p("800MiB"), Ok(800 << 20));
        assert_eq!(p("1.5G"), Ok(3 << 29));
        assert_eq!(p("64 kb"), Ok(64 << 10));
        assert_eq!(p("1000000"), Ok(1_000_000));
        for bad in ["", "GiB", "12 parsecs", "0", "-3G", "1e3"] {
            assert!(p(bad).is_err(), "{bad:?} accepted");
        }
    }
}
