//! `t2v-turbo world`: writes clips of the built-in moving-shapes world as a data set that
//! `t2v-turbo preprocess` reads (frame folders + captions.jsonl).

use std::path::PathBuf;

use super::{ensure_new_dir, CliError};
use crate::world::{check_short_fraction, write_dataset, WorldConfig};

#[derive(clap::Args, Debug)]
pub struct WorldArgs {
    /// Output folder (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of clips.
    #[arg(long, default_value_t = 64)]
    pub count: usize,
    /// Seed of the world (clip i is the same for every count).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Frames per clip.
    #[arg(long, default_value_t = 8)]
    pub frames: usize,
    /// Frame size (square), pixels.
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Fraction of clips that also get a short (WebVid-style) caption.
    #[arg(long, default_value_t = 0.5)]
    pub short_fraction: f32,
}

pub fn run(a: &WorldArgs) -> Result<(), CliError> {
    if a.size < 8 || a.frames < 2 {
        return Err(CliError::Check("--size must be at least 8 and --frames at least 2".into()));
    }
    check_short_fraction(a.short_fraction).map_err(|e| CliError::Check(format!("--short-fraction {e}")))?;
    ensure_new_dir(&a.out, false)?;
    let cfg = WorldConfig { frames: a.frames, size: a.size, short_fraction: a.short_fraction };
    let rows = write_dataset(&a.out, a.seed, a.count, &cfg, false).map_err(|e| CliError::Check(e.to_string()))?;
    println!("{} clips of {} frames {}x{} in {} (captions: {})", rows.len(), a.frames, a.size, a.size, a.out.display(), a.out.join("captions.jsonl").display());
    Ok(())
}
