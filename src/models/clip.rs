//! OpenCLIP text and vision towers (open_clip.model.CLIP): the text tower gives
//! VideoCrafter2's conditioning (penultimate layer context) and, with the vision tower, the
//! image-text scores of HPSv2.1 and CLIPScore. Fields and loader paths follow open_clip's
//! state-dict names (`transformer.resblocks.N.attn.in_proj_weight`, `visual.conv1.weight`,
//! ...); a VideoCrafter2 checkpoint puts the text tower under `cond_stage_model.model.`.
//! Forward passes run on autograd values, so rewards can be backpropagated to images.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use t2v_kernels::autograd::{self as ad, Var};
use t2v_kernels::ops::Conv2d;
use t2v_kernels::Tensor;

use super::layers::{run_blocks, LayerNorm, Linear};
use super::weights::{Loader, Result, WeightsError};

#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub context_length: usize,
    pub vocab_size: usize,
    pub width: usize,
    pub heads: usize,
    pub layers: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub width: usize,
    pub layers: usize,
    pub head_width: usize,
    pub image_size: usize,
    pub patch_size: usize,
}

/// open_clip model config (defaults: ViT-H-14, the text encoder of VideoCrafter2, HPSv2.1
/// and CLIPScore).
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    pub embed_dim: usize,
    pub text: TextConfig,
    pub vision: VisionConfig,
}

impl Default for ClipConfig {
    fn default() -> Self {
        ClipConfig {
            embed_dim: 1024,
            text: TextConfig { context_length: 77, vocab_size: 49408, width: 1024, heads: 16, layers: 24 },
            vision: VisionConfig { width: 1280, layers: 32, head_width: 80, image_size: 224, patch_size: 14 },
        }
    }
}

impl ClipConfig {
    /// Reads `{"embed_dim", "text": {...}, "vision": {...}}` (open_clip's model config keys).
    pub fn from_json(v: &serde_json::Value) -> Option<ClipConfig> {
        let u = |x: &serde_json::Value| x.as_u64().map(|n| n as usize);
        let (t, vi) = (&v["text"], &v["vision"]);
        Some(ClipConfig {
            embed_dim: u(&v["embed_dim"])?,
            text: TextConfig {
                context_length: u(&t["context_length"]).unwrap_or(77),
                vocab_size: u(&t["vocab_size"]).unwrap_or(49408),
                width: u(&t["width"])?,
                heads: u(&t["heads"])?,
                layers: u(&t["layers"])?,
            },
            vision: VisionConfig {
                width: u(&vi["width"])?,
                layers: u(&vi["layers"])?,
                head_width: u(&vi["head_width"]).unwrap_or(64),
                image_size: u(&vi["image_size"])?,
                patch_size: u(&vi["patch_size"])?,
            },
        })
    }
}

impl ClipConfig {
    /// The layout [`ClipConfig::from_json`] reads.
    pub fn to_json(&self) -> serde_json::Value {
        let (t, v) = (&self.text, &self.vision);
        serde_json::json!({
            "embed_dim": self.embed_dim,
            "text": { "context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads, "layers": t.layers },
            "vision": { "width": v.width, "layers": v.layers, "head_width": v.head_width, "image_size": v.image_size, "patch_size": v.patch_size },
        })
    }
}

const LN_EPS: f32 = 1e-5;

/// `ResidualAttentionBlock`: pre-LN multi-head self-attention and GELU MLP.
struct ResBlock {
    ln_1: LayerNorm,
    in_proj: Linear,
    out_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
}

impl ResBlock {
    fn load(l: &Loader, key: &str, w: usize) -> Result<ResBlock> {
        Ok(ResBlock {
            ln_1: LayerNorm::load(l, &format!("{key}.ln_1"), w, LN_EPS)?,
            in_proj: Linear { w: l.get_weight(&format!("{key}.attn.in_proj_weight"), &[3 * w, w])?, b: Some(l.get(&format!("{key}.attn.in_proj_bias"), &[3 * w])?) },
            out_proj: Linear::load(l, &format!("{key}.attn.out_proj"), w, w, true)?,
            ln_2: LayerNorm::load(l, &format!("{key}.ln_2"), w, LN_EPS)?,
            c_fc: Linear::load(l, &format!("{key}.mlp.c_fc"), w, 4 * w, true)?,
            c_proj: Linear::load(l, &format!("{key}.mlp.c_proj"), 4 * w, w, true)?,
        })
    }

    /// x (N, L, W) -> same.
    fn forward(&self, x: &Var, heads: usize, causal: bool) -> Result<Var> {
        let (n, l, w) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let d = w / heads;
        let qkv = self.in_proj.forward(&self.ln_1.forward(x)?)?; // (N, L, 3W)
        // (N, L, W) -> (N*H, L, D)
        let split = |i: usize| -> Result<Var> {
            let t = ad::slice(&qkv, 2, i * w, w)?;
            Ok(ad::reshape(&ad::permute(&ad::reshape(&t, &[n, l, heads, d])?, &[0, 2, 1, 3])?, &[n * heads, l, d])?)
        };
        let a = ad::attention_masked(&split(0)?, &split(1)?, &split(2)?, (d as f32).powf(-0.5), causal)?;
        let a = ad::reshape(&ad::permute(&ad::reshape(&a, &[n, heads, l, d])?, &[0, 2, 1, 3])?, &[n, l, w])?;
        let x = ad::add(x, &self.out_proj.forward(&a)?)?;
        let h = self.c_proj.forward(&ad::gelu(&self.c_fc.forward(&self.ln_2.forward(&x)?)?)?)?;
        Ok(ad::add(&x, &h)?)
    }
}

/// (N, E) rows scaled to unit length.
pub fn l2_normalize(x: &Var) -> Result<Var> {
    let n = x.shape()[0];
    let norm = ad::sqrt(&ad::sum(&ad::square(x)?, -1)?)?;
    Ok(ad::div(x, &ad::reshape(&norm, &[n, 1])?)?)
}

/// The text tower.
pub struct TextTower {
    pub config: TextConfig,
    /// (vocab, width) in row chunks that fit a storage binding (one on GPUs).
    token_embedding: Vec<Tensor>,
    positional_embedding: Tensor,
    resblocks: Vec<ResBlock>,
    ln_final: LayerNorm,
    text_projection: Option<Tensor>,
}

impl TextTower {
    /// Loads under the loader's prefix; `embed_dim` None skips `text_projection` (a
    /// VideoCrafter2 checkpoint's conditioning tower).
    pub fn load(l: &Loader, cfg: &TextConfig, embed_dim: Option<usize>) -> Result<TextTower> {
        let w = cfg.width;
        Ok(TextTower {
            config: cfg.clone(),
            token_embedding: l.get_row_chunks("token_embedding.weight", &[cfg.vocab_size, w])?,
            positional_embedding: l.get("positional_embedding", &[cfg.context_length, w])?,
            resblocks: (0..cfg.layers).map(|i| ResBlock::load(l, &format!("transformer.resblocks.{i}"), w)).collect::<Result<_>>()?,
            ln_final: LayerNorm::load(l, "ln_final", w, LN_EPS)?,
            text_projection: match embed_dim {
                Some(e) => Some(l.get("text_projection", &[w, e])?),
                None => None,
            },
        })
    }

    /// Token + positional embeddings, then the first `layers` resblocks (causal mask).
    fn run(&self, tape: &ad::Tape, ids: &[Vec<u32>], layers: usize) -> Result<Var> {
        let (n, ctx, w) = (ids.len(), self.config.context_length, self.config.width);
        if let Some(bad) = ids.iter().find(|r| r.len() != ctx) {
            return Err(WeightsError::Gpu(t2v_kernels::Error::Shape { op: "text tower", msg: format!("token rows must have {ctx} ids, got {}", bad.len()) }));
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let tables: Vec<Var> = self.token_embedding.iter().map(|t| tape.param(t)).collect();
        let x = ad::reshape(&ad::embedding_chunked(&tables.iter().collect::<Vec<_>>(), &flat)?, &[n, ctx, w])?;
        let mut x = ad::add(&x, &tape.param(&self.positional_embedding))?;
        for b in &self.resblocks[..layers] {
            x = b.forward(&x, self.config.heads, true)?;
        }
        Ok(x)
    }

    /// VideoCrafter2's context (FrozenOpenCLIPEmbedder, layer "penultimate"): all resblocks
    /// but the last, then ln_final -> (N, 77, width).
    pub fn penultimate(&self, tape: &ad::Tape, ids: &[Vec<u32>]) -> Result<Var> {
        let layers = self.resblocks.len().saturating_sub(1);
        self.ln_final.forward(&self.run(tape, ids, layers)?)
    }

    /// encode_text: all resblocks, ln_final, the end token's row (highest id) projected
    /// and L2-normalised -> (N, embed_dim).
    pub fn features(&self, tape: &ad::Tape, ids: &[Vec<u32>]) -> Result<Var> {
        let proj = self.text_projection.as_ref().ok_or_else(|| WeightsError::Missing { path: "(text tower)".into(), key: "text_projection".into() })?;
        let x = self.ln_final.forward(&self.run(tape, ids, self.resblocks.len())?)?;
        let (n, ctx, w) = (ids.len(), self.config.context_length, self.config.width);
        // argmax of the ids (first occurrence, like torch.argmax)
        let rows: Vec<u32> = ids
            .iter()
            .enumerate()
            .map(|(i, r)| (i * ctx + r.iter().enumerate().fold(0, |best, (j, &v)| if v > r[best] { j } else { best })) as u32)
            .collect();
        let pooled = ad::embedding(&ad::reshape(&x, &[n * ctx, w])?, &rows)?;
        l2_normalize(&ad::matmul(&pooled, &tape.param(proj))?)
    }
}

/// The ViT image tower.
pub struct VisionTower {
    pub config: VisionConfig,
    conv1: Tensor,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    resblocks: Vec<Arc<ResBlock>>,
    ln_post: LayerNorm,
    proj: Tensor,
    checkpointing: AtomicBool,
}

impl VisionTower {
    /// Loads `visual.*` keys relative to the loader's prefix.
    pub fn load(l: &Loader, cfg: &VisionConfig, embed_dim: usize) -> Result<VisionTower> {
        let (w, p) = (cfg.width, cfg.patch_size);
        let grid = cfg.image_size / p;
        Ok(VisionTower {
            config: cfg.clone(),
            conv1: l.get("visual.conv1.weight", &[w, 3, p, p])?,
            class_embedding: l.get("visual.class_embedding", &[w])?,
            positional_embedding: l.get("visual.positional_embedding", &[grid * grid + 1, w])?,
            ln_pre: LayerNorm::load(l, "visual.ln_pre", w, LN_EPS)?,
            resblocks: (0..cfg.layers).map(|i| Ok(Arc::new(ResBlock::load(l, &format!("visual.transformer.resblocks.{i}"), w)?))).collect::<Result<_>>()?,
            ln_post: LayerNorm::load(l, "visual.ln_post", w, LN_EPS)?,
            proj: l.get("visual.proj", &[w, embed_dim])?,
            checkpointing: AtomicBool::new(false),
        })
    }

    /// Recompute each transformer layer in the backward pass instead of keeping its
    /// activations (the gradient of a reward with respect to the frames). A setting of
    /// shared models: a run may turn it on between steps.
    pub fn set_checkpointing(&self, on: bool) {
        self.checkpointing.store(on, Relaxed);
    }

    /// encode_image of normalised images (N, 3, S, S) -> (N, embed_dim), L2-normalised.
    pub fn features(&self, images: &Var) -> Result<Var> {
        let tape = images.tape().clone();
        let (n, w, p) = (images.shape()[0], self.config.width, self.config.patch_size);
        let x = ad::conv2d(images, &tape.param(&self.conv1), None, Conv2d::new(p, 0))?; // (N, W, g, g)
        let g2 = x.shape()[2] * x.shape()[3];
        let tokens = ad::permute(&ad::reshape(&x, &[n, w, g2])?, &[0, 2, 1])?; // (N, g*g, W)
        let cls = ad::broadcast_to(&ad::reshape(&tape.param(&self.class_embedding), &[1, 1, w])?, &[n, 1, w])?;
        let x = ad::add(&ad::concat(&[&cls, &tokens], 1)?, &tape.param(&self.positional_embedding))?;
        let heads = w / self.config.head_width;
        let x = run_blocks(self.ln_pre.forward(&x)?, &self.resblocks, self.checkpointing.load(Relaxed), move |b: &ResBlock, x: &Var| b.forward(x, heads, false))?;
        let cls_out = ad::reshape(&ad::slice(&x, 1, 0, 1)?, &[n, w])?;
        l2_normalize(&ad::matmul(&self.ln_post.forward(&cls_out)?, &tape.param(&self.proj))?)
    }
}

/// image_features @ text_features^T: how HPSv2.1 and CLIPScore score (no logit scale).
pub fn cosine(image_features: &Var, text_features: &Var) -> Result<Var> {
    Ok(ad::matmul_ex(image_features, text_features, false, true, 1.0, None)?)
}

/// A whole open_clip CLIP: both towers and the logit scale.
pub struct Clip {
    pub text: TextTower,
    pub vision: VisionTower,
    pub logit_scale: Tensor,
}

impl Clip {
    pub fn load(l: &Loader, cfg: &ClipConfig) -> Result<Clip> {
        Ok(Clip {
            text: TextTower::load(l, &cfg.text, Some(cfg.embed_dim))?,
            vision: VisionTower::load(l, &cfg.vision, cfg.embed_dim)?,
            logit_scale: l.get("logit_scale", &[])?,
        })
    }
}
