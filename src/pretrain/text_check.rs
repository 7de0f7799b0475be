//! Does the conditioning text encoder tell the world's words apart? For fresh world clips,
//! how far the teacher's context (the penultimate token states its cross-attention reads)
//! moves when one word of the caption changes: another color (far or near in hue), another
//! shape, the opposite direction — the reward check's changes. A teacher can only learn to
//! follow a word whose change moves its context; a text encoder trained against single
//! frames leaves the direction words nearly equal.

use serde::Serialize;
use t2v_kernels::autograd::Tape;

use super::draw_clips;
use super::reward_check::CHANGES;
use crate::models::clip::TextTower;
use crate::models::tokenizer::ClipTokenizer;
use crate::models::weights::{Result, WeightsError};
use crate::pipeline::sample::Gaussian;
use crate::world::{ClipSpec, WorldConfig};

/// One caption kind, one changed word.
#[derive(Clone, Debug, Serialize)]
pub struct WordChange {
    /// "short" or "long".
    pub caption: &'static str,
    /// "color", "near color", "shape" or "direction" (the reward check's changes).
    pub attribute: &'static str,
    /// Mean over clips of |context(changed) - context(own)| / |context(own)|, percent
    /// (Frobenius norms over the 77 token rows).
    pub context_change: f64,
}

/// Runs the check on the captions of `clips` fresh clips of the world of `world_seed`.
pub fn word_sensitivity(text: &TextTower, world: &WorldConfig, world_seed: u64, clips: usize) -> Result<Vec<WordChange>> {
    let tok = ClipTokenizer::new().map_err(|e| WeightsError::Data { path: "tokenizer".into(), msg: e.to_string() })?;
    let mut rng = Gaussian::new(world_seed ^ 0x7E47_C4EC);
    let specs = draw_clips(&mut rng, world_seed, clips, world);
    let tape = Tape::new();
    let context = |s: &[ClipSpec], caption: fn(&ClipSpec) -> String| -> Result<Vec<f32>> {
        let texts: Vec<String> = s.iter().map(caption).collect();
        tape.no_grad(|| Ok(text.penultimate(&tape, &super::objectives::tokenize(&tok, &texts)?)?.value().to_vec()?))
    };
    let mut out = Vec::new();
    for (kind, caption) in [("short", ClipSpec::short_caption as fn(&ClipSpec) -> String), ("long", ClipSpec::caption)] {
        let own = context(&specs, caption)?;
        let per = own.len() / clips.max(1);
        for (attribute, change) in CHANGES {
            let changed = context(&specs.iter().map(change).collect::<Vec<_>>(), caption)?;
            let mut sum = 0.0;
            for (a, b) in own.chunks(per).zip(changed.chunks(per)) {
                let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
                let n: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
                sum += (d / n.max(1e-30)).sqrt();
            }
            out.push(WordChange { caption: kind, attribute, context_change: 100.0 * sum / clips.max(1) as f64 });
        }
    }
    Ok(out)
}

/// Lines for the terminal.
pub fn describe(changes: &[WordChange]) -> String {
    let mut s = String::from("text check (how far the teacher's context moves when one word changes; relative, percent):\n");
    for kind in ["short", "long"] {
        s += &format!("  {kind:<5} caption:");
        for c in changes.iter().filter(|c| c.caption == kind) {
            s += &format!("  {} {:.2} %", c.attribute, c.context_change);
        }
        s += "\n";
    }
    let of = |a: &str| changes.iter().filter(|c| c.attribute == a).map(|c| c.context_change).fold(0.0, f64::max);
    if of("direction") < 0.25 * of("color") {
        s += "  the direction words move the context far less than the color words: a teacher will hardly learn to follow them \
              (train the text encoder on several frames, `pretrain text --frames 4 --reversed-pairs`)\n";
    }
    s
}
