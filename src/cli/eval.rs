//! `t2v-turbo eval`: the reward-independent analyser of moving-shapes clips on a folder of
//! clips listed in a captions file (what `world` and `sample` write).

use std::path::PathBuf;

use super::CliError;
use crate::eval::{analyse, score};
use crate::pipeline::captions::read_captions;
use crate::pipeline::video_io::read_video;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Folder with captions.jsonl (or give --captions).
    pub dir: PathBuf,
    /// Captions file (CSV or JSONL: path, caption) listing the clips and their prompts.
    #[arg(long)]
    pub captions: Option<PathBuf>,
    /// Also print each clip's measurements.
    #[arg(long)]
    pub per_clip: bool,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(a: &EvalArgs) -> Result<(), CliError> {
    let file = a.captions.clone().unwrap_or_else(|| a.dir.join("captions.jsonl"));
    let rows = read_captions(&file).map_err(|e| CliError::Check(e.to_string()))?;
    let mut clips = Vec::new();
    for r in &rows {
        let v = read_video(&r.resolve(&file), 8.0, 1, usize::MAX).map_err(|e| CliError::Check(e.to_string()))?;
        if a.per_clip {
            println!("{}: {:?}", r.path, analyse(&v));
        }
        clips.push((v, r.caption.clone()));
    }
    let rep = score(&clips);
    println!("clips                 {}", rep.clips);
    println!("accuracy              {:.1} %  (color {:.1}, shape {:.1}, direction {:.1})", rep.accuracy, rep.color_accuracy, rep.shape_accuracy, rep.direction_accuracy);
    println!("dynamic degree        {:.2} % of the width per frame", rep.dynamic_degree);
    println!("jitter                {:.2} % of the width per frame  (lower is better)", rep.jitter);
    println!("flicker               {:.4}  (lower is better)", rep.flicker);
    println!("subject consistency   {:.3}", rep.subject_consistency);
    if let Some(p) = &a.json {
        let v = serde_json::json!({
            "clips": rep.clips, "accuracy": rep.accuracy, "color_accuracy": rep.color_accuracy, "shape_accuracy": rep.shape_accuracy,
            "direction_accuracy": rep.direction_accuracy, "dynamic_degree": rep.dynamic_degree, "jitter": rep.jitter, "flicker": rep.flicker,
            "subject_consistency": rep.subject_consistency,
        });
        t2v_kernels::io::write_atomic(p, serde_json::to_string_pretty(&v).expect("json").as_bytes())?;
    }
    Ok(())
}
