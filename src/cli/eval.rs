//! `t2v-turbo eval`: scores a folder of clips listed in a captions file (what `world` and
//! `sample` write): the reward-independent analyser of moving-shapes clips, and with
//! `--models` the reward models' scores of any clips against their prompts.

use std::path::PathBuf;

use t2v_kernels::Gpu;

use super::{CliError, DeviceArgs, WeightsDtype};
use crate::eval::{analyse, paired, paired_on, score, sign_test};
use crate::pipeline::captions::read_captions;
use crate::pipeline::model_dir::ModelDir;
use crate::pipeline::reward_scores::{ClipRewards, RewardScorer};
use crate::pipeline::video_io::{read_video, Frames};

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
    /// of the two, and an exact sign test of that split, in all and per attribute; with
    /// --models also per reward: clips scored higher here or there, the mean difference and
    /// a sign test.
    #[arg(long)]
    pub against: Option<PathBuf>,
    /// A model folder whose reward models also score every clip against its prompt: each
    /// image reward (HPS-style, CLIP-style) averaged over --image-frames evenly spaced frames,
    /// their weighted sum R_img, and the video reward R_vid of evenly strided frames.
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// --models: frames of each clip the image rewards score (evenly spaced; all when fewer).
    #[arg(long, default_value_t = 8)]
    pub image_frames: usize,
    /// --models: how the reward models keep their linear and conv weights on the GPU.
    #[arg(long, value_enum, default_value_t = WeightsDtype::Auto)]
    pub weights_dtype: WeightsDtype,
    /// Skip the moving-shapes analyser (its measures only mean something for clips of the
    /// built-in world); needs --models.
    #[arg(long)]
    pub no_analyser: bool,
}

/// Reads the clips a captions file lists, with their prompts.
fn read_clips(file: &std::path::Path, per_clip: bool) -> Result<Vec<(Frames, String)>, CliError> {
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

pub fn run(dev: &DeviceArgs, a: &EvalArgs) -> Result<(), CliError> {
    if a.no_analyser && a.models.is_none() {
        return Err(CliError::Check("--no-analyser leaves nothing to measure without --models DIR (the reward models' scores)".into()));
    }
    // the reward models first: a bad folder fails before any clip is read
    let scorer = match &a.models {
        Some(dir) => {
            let gpu = Gpu::new(&dev.gpu_options(false))?;
            let scorer = RewardScorer::load(&gpu, &ModelDir::read(dir)?.with_precision(a.weights_dtype.precision(&gpu)), a.image_frames)?;
            Some((gpu, scorer))
        }
        None => None,
    };
    let file = a.captions.clone().unwrap_or_else(|| a.dir.join("captions.jsonl"));
    let clips = read_clips(&file, a.per_clip && !a.no_analyser)?;
    let others = match &a.against {
        Some(other) => {
            let other_file = other.join("captions.jsonl");
            let others = read_clips(&other_file, false)?;
            if others.len() != clips.len() || others.iter().zip(&clips).any(|(x, y)| x.1 != y.1) {
                return Err(CliError::Check(format!("{} and {} do not list the same prompts in the same order: a paired comparison needs both methods' clips of the same prompts", file.display(), other_file.display())));
            }
            Some((other, others))
        }
        None => None,
    };
    let mut json = serde_json::json!({ "clips": clips.len() });
    if !a.no_analyser {
        let rep = score(&clips);
        println!("clips                 {}", rep.clips);
        println!("accuracy              {:.1} %  (color {:.1}, shape {:.1}, direction {:.1})", rep.accuracy, rep.color_accuracy, rep.shape_accuracy, rep.direction_accuracy);
        println!("dynamic degree        {:.2} % of the width per frame", rep.dynamic_degree);
        println!("jitter                {:.2} % of the width per frame  (lower is better)", rep.jitter);
        println!("flicker               {:.4}  (lower is better)", rep.flicker);
        println!("subject consistency   {:.3}", rep.subject_consistency);
        for (k, v) in [
            ("accuracy", rep.accuracy),
            ("color_accuracy", rep.color_accuracy),
            ("shape_accuracy", rep.shape_accuracy),
            ("direction_accuracy", rep.direction_accuracy),
            ("dynamic_degree", rep.dynamic_degree),
            ("jitter", rep.jitter),
            ("flicker", rep.flicker),
            ("subject_consistency", rep.subject_consistency),
        ] {
            json[k] = serde_json::json!(v);
        }
        if let Some((other, others)) = &others {
            let theirs = score(others);
            let p = paired(&rep, &theirs).ok_or_else(|| CliError::Check("the two folders' clips were not scored on the same attributes".into()))?;
            println!("against {}: accuracy {:.1} %  (color {:.1}, shape {:.1}, direction {:.1})", other.display(), theirs.accuracy, theirs.color_accuracy, theirs.shape_accuracy, theirs.direction_accuracy);
            println!("paired                of {} judgments, {} right only here, {} only there; sign test p = {:.3}", p.judgments, p.only_a, p.only_b, p.p_value);
            for (i, name) in ["color", "shape", "direction"].iter().enumerate() {
                if let Some(q) = paired_on(&rep, &theirs, &[i]) {
                    println!("  {name:<19} of {} judgments, {} right only here, {} only there; sign test p = {:.3}", q.judgments, q.only_a, q.only_b, q.p_value);
                }
            }
        }
    }
    if let Some((gpu, scorer)) = &scorer {
        let rows = caption_rows(&file)?;
        let ours = score_all(gpu, scorer, &clips, a.per_clip.then_some(&rows[..]))?;
        json["rewards"] = print_rewards(scorer, &ours, "");
        if let Some((other, others)) = &others {
            let theirs = score_all(gpu, scorer, others, None)?;
            json["rewards_against"] = print_rewards(scorer, &theirs, &format!("against {}: ", other.display()));
            print_paired_rewards(scorer, &ours, &theirs);
        }
    }
    if let Some(p) = &a.json {
        t2v_kernels::io::write_atomic(p, serde_json::to_string_pretty(&json).expect("json").as_bytes())?;
    }
    Ok(())
}

/// The clips' paths as the captions file lists them (for per-clip lines).
fn caption_rows(file: &std::path::Path) -> Result<Vec<String>, CliError> {
    Ok(read_captions(file).map_err(|e| CliError::Check(e.to_string()))?.into_iter().map(|r| r.path).collect())
}

/// Every clip's reward scores (printed per clip when `names` are given).
fn score_all(gpu: &Gpu, scorer: &RewardScorer, clips: &[(Frames, String)], names: Option<&[String]>) -> Result<Vec<ClipRewards>, CliError> {
    let mut out = Vec::with_capacity(clips.len());
    for (i, (frames, prompt)) in clips.iter().enumerate() {
        let r = scorer.score(gpu, frames, prompt)?;
        if let Some(names) = names {
            println!("{}: {}", names[i], describe(scorer, &r));
        }
        out.push(r);
    }
    Ok(out)
}

/// The reward scores of a clip (or their means) on one line.
fn describe(scorer: &RewardScorer, r: &ClipRewards) -> String {
    let mut parts = Vec::new();
    if let Some(w) = r.image_weighted {
        let each: Vec<String> = scorer.image_rewards().iter().zip(&r.image).map(|((n, _), s)| format!("{n} {s:.4}")).collect();
        parts.push(format!("image reward {w:.4} ({})", each.join(", ")));
    }
    if let Some(v) = r.video {
        parts.push(format!("video reward {v:.4}"));
    }
    parts.join(", ")
}

/// The mean of each score over the clips (one per clip each; `n` > 0).
fn mean_rewards(rs: &[ClipRewards]) -> ClipRewards {
    let n = rs.len().max(1) as f32;
    let mean = |f: &dyn Fn(&ClipRewards) -> Option<f32>| -> Option<f32> { rs.iter().map(f).sum::<Option<f32>>().map(|s| s / n) };
    let k = rs.first().map_or(0, |r| r.image.len());
    ClipRewards { image: (0..k).map(|i| rs.iter().map(|r| r.image[i]).sum::<f32>() / n).collect(), image_weighted: mean(&|r| r.image_weighted), video: mean(&|r| r.video) }
}

/// Prints the clips' mean scores after `prefix`; returns them (and every clip's) as JSON.
fn print_rewards(scorer: &RewardScorer, rs: &[ClipRewards], prefix: &str) -> serde_json::Value {
    let m = mean_rewards(rs);
    let weights: Vec<String> = scorer.image_rewards().iter().map(|(n, w)| format!("{n} {w}")).collect();
    println!("{prefix}rewards (mean of {} clips): {}{}", rs.len(), describe(scorer, &m), if weights.is_empty() { String::new() } else { format!("; image weights {}", weights.join(", ")) });
    let clip_json = |r: &ClipRewards| serde_json::json!({ "image": r.image, "image_weighted": r.image_weighted, "video": r.video });
    let names: Vec<&str> = scorer.image_rewards().iter().map(|(n, _)| *n).collect();
    serde_json::json!({ "image_rewards": names, "mean": clip_json(&m), "per_clip": rs.iter().map(clip_json).collect::<Vec<_>>() })
}

/// Per score: clips scored higher here and there, the mean difference and a sign test.
fn print_paired_rewards(scorer: &RewardScorer, ours: &[ClipRewards], theirs: &[ClipRewards]) {
    let mut scores: Vec<(String, Box<dyn Fn(&ClipRewards) -> Option<f32>>)> = Vec::new();
    if !scorer.image_rewards().is_empty() {
        scores.push(("image reward".into(), Box::new(|r: &ClipRewards| r.image_weighted)));
        for (i, (n, _)) in scorer.image_rewards().iter().enumerate() {
            scores.push((format!("  {n}"), Box::new(move |r: &ClipRewards| r.image.get(i).copied())));
        }
    }
    if scorer.has_video_reward() {
        scores.push(("video reward".into(), Box::new(|r: &ClipRewards| r.video)));
    }
    for (name, get) in &scores {
        let pairs: Vec<(f32, f32)> = ours.iter().zip(theirs).filter_map(|(a, b)| Some((get(a)?, get(b)?))).collect();
        let (here, there) = (pairs.iter().filter(|(a, b)| a > b).count(), pairs.iter().filter(|(a, b)| a < b).count());
        let diff = pairs.iter().map(|(a, b)| a - b).sum::<f32>() / pairs.len().max(1) as f32;
        println!("paired {name:<20} higher here in {here} of {} clips, there in {there}; mean difference {diff:+.4}; sign test p = {:.3}", pairs.len(), sign_test(here, there));
    }
}
