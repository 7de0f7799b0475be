//! The `tokenizer/` layout: prompts.json (prompts, ids from open_clip.tokenize) and
//! optionally a tokenizer.json to use instead of the shipped one. Ids must be identical.

use std::path::Path;

use super::{Check, ParityError};
use crate::models::tokenizer::ClipTokenizer;

pub fn run(dir: &Path) -> Result<Vec<Check>, ParityError> {
    let path = dir.join("prompts.json");
    let bad = |msg: String| ParityError::Bad { path: path.display().to_string(), msg };
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    let prompts = v["prompts"].as_array().ok_or_else(|| bad("no `prompts` list".into()))?;
    let ids = v["ids"].as_array().ok_or_else(|| bad("no `ids` list".into()))?;
    if prompts.len() != ids.len() {
        return Err(bad(format!("{} prompts but {} id lists", prompts.len(), ids.len())));
    }
    let tok_file = dir.join("tokenizer.json");
    let tok = if tok_file.exists() { ClipTokenizer::from_file(&tok_file) } else { ClipTokenizer::new() }.map_err(|e| bad(e.to_string()))?;
    let mut checks = Vec::new();
    for (i, (p, want)) in prompts.iter().zip(ids).enumerate() {
        let p = p.as_str().ok_or_else(|| bad(format!("prompt {i} is not a string")))?;
        let want: Vec<u32> = want.as_array().ok_or_else(|| bad(format!("ids {i} is not a list")))?.iter().map(|x| x.as_u64().unwrap_or(u64::MAX) as u32).collect();
        let got = tok.encode(p).map_err(|e| bad(e.to_string()))?.ids;
        let wrong = got.len().abs_diff(want.len()) + got.iter().zip(&want).filter(|(a, b)| a != b).count();
        let mut name: String = p.chars().take(22).collect();
        if name.chars().count() < p.chars().count() {
            name.push('…');
        }
        checks.push(Check { name: format!("ids {i:>2} {name:?}"), max_abs: wrong as f32, max_rel: 0.0, tolerance: 0.0 });
    }
    Ok(checks)
}
