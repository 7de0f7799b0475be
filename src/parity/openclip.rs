//! The `openclip/` layout: config.json, weights.safetensors (open_clip names, f16),
//! io.safetensors (see ../shared/fixtures/openclip/README.md).

use std::path::Path;

use t2v_kernels::autograd::Tape;
use t2v_kernels::Gpu;

use super::{Check, ParityError, Reference};
use crate::models::clip::{cosine, Clip, ClipConfig};
use crate::models::preprocess;
use crate::models::weights::{Loader, WeightFile};

pub fn run(dir: &Path, gpu: &Gpu) -> Result<Vec<Check>, ParityError> {
    let cfg_path = dir.join("config.json");
    let bad = |msg: String| ParityError::Bad { path: cfg_path.display().to_string(), msg };
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    let config = ClipConfig::from_json(&cfg).ok_or_else(|| bad("needs embed_dim, text {width, heads, layers}, vision {width, layers, image_size, patch_size}".into()))?;
    let wf = WeightFile::open(&dir.join("weights.safetensors"))?;
    let loader = Loader::new(&wf, gpu, "");
    let clip = Clip::load(&loader, &config)?;
    loader.finish()?;
    let mut r = Reference::open(&dir.join("io.safetensors"))?;
    let tape = Tape::new();
    let (ishape, ids) = r.io.host_i64("in.ids")?;
    let ctx = ishape.last().copied().unwrap_or(0);
    let rows: Vec<Vec<u32>> = ids.chunks(ctx.max(1)).map(|r| r.iter().map(|&x| x as u32).collect()).collect();
    r.compare("out.penultimate", clip.text.penultimate(&tape, &rows)?.value(), None)?;
    let text = clip.text.features(&tape, &rows)?;
    r.compare("out.text_features", text.value(), None)?;
    let images = tape.constant(r.io.tensor(gpu, "in.images")?);
    let image = clip.vision.features(&images)?;
    r.compare("out.image_features", image.value(), None)?;
    r.compare("out.cosine", cosine(&image, &text)?.value(), Some(1e-4))?;
    if r.io.entries().contains_key("in.frame_u8") {
        // Resampling kernels differ between libraries: the README's tolerance is on the
        // mean abs error (2e-2).
        let (shape, frame) = r.io.host_f32("in.frame_u8")?;
        let img: Vec<f32> = frame.iter().map(|v| v / 255.0).collect();
        let x = tape.constant(t2v_kernels::Tensor::from_slice(gpu, &[1, shape[0], shape[1], shape[2]], &img)?);
        let size = config.vision.image_size;
        for (name, y) in [("out.preprocess_hps", preprocess::hps(&x, size)?), ("out.preprocess_clipscore", preprocess::clipscore(&x, size)?)] {
            let (rshape, want) = r.io.host_f32(name)?;
            let got = y.value().to_vec()?;
            if got.len() != want.len() {
                return Err(ParityError::Bad { path: r.io.path.display().to_string(), msg: format!("{name}: reference shape {rshape:?}, ours {:?}", y.shape()) });
            }
            r.checks.push(Check::mean_abs(name, &got, &want, 2e-2));
        }
    }
    Ok(r.checks)
}
