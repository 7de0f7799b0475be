//! `t2v-turbo eval`: the reward-independent analyser of moving-shapes clips on a folder of
//! clips listed in a captions file (what `world` and `sample` write).

use std::path::PathBuf;

use super::CliError;
use crate::eval::{analyse, paired, paired_on, score};
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
    /// Another method's clips of the same prompts (a folder with captions.jsonl, same rows
    /// in the same order): also prints a paired comparison — judgments right with only one
    /// of the two, and an exact sign test of that split, in all and per attribute.
    #[arg(long)]
    pub against: Option<PathBuf>,
}

/// Reads the clips a captions file lists, with their prompts.
fn read_clips(file: &std::path::Path, per_clip: bool) -> Result<Vec<(crate::pipeline::video_io::Frames, String)>, CliError> {
    let rows = read_captions(file).map_err(|e| CliError::Check(e.to_string()))?;
    let mut clips = Vec::new();
    for r in &rows {
        let v = read_video(&r.resolve(file), 8.0, 1, usize::MAX).map_err(|e| CliError::Check(e.to_string()))?;
        if per_clip {
            println!("{}: {:?}", r.path, analyse(&v));
        }
        clips.push((v, r.caption.clone()));
    }
    Ok(clips)
}

pub fn run(a: &EvalArgs) -> Result<(), CliError> {
    let file = a.captions.clone().unwrap_or_else(|| a.dir.join("captions.jsonl"));
    let clips = read_clips(&file, a.per_clip)?;
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
    if let Some(other) = &a.against {
        let other_file = other.join("captions.jsonl");
        let others = read_clips(&other_file, false)?;
        if others.len() != clips.len() || others.iter().zip(&clips).any(|(x, y)| x.1 != y.1) {
            return Err(CliError::Check(format!("{} and {} do not list the same prompts in the same order: a paired comparison needs both methods' clips of the same prompts", file.display(), other_file.display())));
        }
        let theirs = score(&others);
        let p = paired(&rep, &theirs).ok_or_else(|| CliError::Check("the two folders' clips were not scored on the same attributes".into()))?;
        println!("against {}: accuracy {:.1} %  (color {:.1}, shape {:.1}, direction {:.1})", other.display(), theirs.accuracy, theirs.color_accuracy, theirs.shape_accuracy, theirs.direction_accuracy);
        println!("paired                of {} judgments, {} right only here, {} only there; sign test p = {:.3}", p.judgments, p.only_a, p.only_b, p.p_value);
        for (i, name) in ["color", "shape", "direction"].iter().enumerate() {
            if let Some(q) = paired_on(&rep, &theirs, &[i]) {
                println!("  {name:<19} of {} judgments, {} right only here, {} only there; sign test p = {:.3}", q.judgments, q.only_a, q.only_b, q.p_value);
            }
        }
    }
    Ok(())
}
