//! The `internvideo2/` layout: config.json, weights.safetensors (the stage-2 checkpoint's
//! names), io.safetensors (see ../shared/fixtures/internvideo2/README.md).

use std::path::Path;

use t2v_kernels::autograd::Tape;
use t2v_kernels::Gpu;

use super::{Check, ParityError, Reference};
use crate::models::clip::cosine;
use crate::models::internvideo2::InternVideo2Config;
use crate::pipeline::model_dir::load_internvideo2_file;

pub fn run(dir: &Path, gpu: &Gpu) -> Result<Vec<Check>, ParityError> {
    let cfg_path = dir.join("config.json");
    let bad = |msg: String| ParityError::Bad { path: cfg_path.display().to_string(), msg };
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    let config = InternVideo2Config::from_json(&cfg).ok_or_else(|| {
        bad("needs vision {img_size, patch_size, embed_dim, depth, num_heads, clip_embed_dim, num_frames}, text {vocab_size, hidden_size, text_layers, num_attention_heads, intermediate_size}, embed_dim".into())
    })?;
    let model = load_internvideo2_file(gpu, &dir.join("weights.safetensors"), &config, crate::models::weights::WeightPrecision::F32)?;
    let mut r = Reference::open(&dir.join("io.safetensors"))?;
    let tape = Tape::new();
    let frames = tape.constant(r.io.tensor(gpu, "in.frames")?);
    let tokens = model.vision.tokens(&frames)?;
    r.compare("out.vision_tokens", tokens.value(), None)?;
    let pooled = model.vision.pool(&tokens)?;
    r.compare("out.vision_pooled", pooled.value(), None)?;
    let video = model.video_features(&frames)?;
    r.compare("out.video_features", video.value(), None)?;
    let rows = |key: &str| -> Result<Vec<Vec<u32>>, ParityError> {
        let (shape, v) = r.io.host_i64(key)?;
        let l = shape.last().copied().unwrap_or(0).max(1);
        Ok(v.chunks(l).map(|r| r.iter().map(|&x| x as u32).collect()).collect())
    };
    let (ids, mask) = (rows("in.input_ids")?, rows("in.attention_mask")?);
    r.compare("out.text_cls", model.text_cls(&tape, &ids, &mask)?.value(), None)?;
    let text = model.text_features(&tape, &ids, &mask)?;
    r.compare("out.text_features", text.value(), None)?;
    r.compare("out.score", cosine(&video, &text)?.value(), Some(1e-4))?;
    Ok(r.checks)
}
