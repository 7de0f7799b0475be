//! Command-line interface. Each subcommand lives in its own module.

mod info;
mod parity;
mod sample;

use clap::{Parser, Subcommand};

/// Options shared by every command that uses a GPU.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DeviceArgs {
    /// Adapter to use: an index from `t2v-turbo info`, a backend (vulkan, metal, dx12), a
    /// device type (discrete, integrated, cpu) or part of its name. Default: $T2V_ADAPTER,
    /// else the fastest adapter found.
    #[arg(long, global = true)]
    pub adapter: Option<String>,
}

#[derive(Parser, Debug)]
#[command(name = "t2v-turbo", version, about = "T2V-Turbo-v2 video consistency distillation and fast sampling on any GPU (wgpu)")]
pub struct Cli {
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List GPU adapters with their features and key limits, and self-check the chosen one;
    /// or, with --weights, describe a checkpoint file.
    Info(info::InfoArgs),
    /// Generate videos from prompts with a distilled student (4/8/16 consistency steps).
    Sample(Box<sample::SampleArgs>),
    /// Run a reference fixture folder through the project and compare every output tensor
    /// (exit status 1 on any difference beyond the tolerance).
    Parity(parity::ParityArgs),
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
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Info(args) => info::run(&cli.device, &args),
        Command::Parity(args) => parity::run(&cli.device, &args),
        Command::Sample(args) => sample::run(&cli.device, &args),
    }
}
