//! Command-line interface. Each subcommand lives in its own module.

mod info;

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
    /// List GPU adapters with their features and key limits, and self-check the chosen one.
    Info(info::InfoArgs),
}

/// Errors of the command line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Kernels(#[from] t2v_kernels::Error),
    #[error("{0}")]
    Check(String),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Info(args) => info::run(&cli.device, &args),
    }
}
