//! InternVideo2-stage2 as a video-text model (T2V-Turbo-v2's video reward R_vid): the
//! vision encoder `PretrainInternVideo2` (non-flash path) with its attention-pooling
//! `clip_projector`, a BERT text encoder, and the `vision_proj` / `text_proj` heads.
//! Fields and loader paths follow the checkpoint: `vision_encoder.blocks.N.attn.qkv.weight`,
//! `text_encoder.bert.encoder.layer.N.*`, `vision_proj.weight`, ...
//!
//! Vision forward of frames (B, T, 3, S, S), already normalised:
//! - patch_embed: Conv3d with kernel = stride = (tubelet, p, p), computed as a patchify
//!   (reshape + permute) and one matmul; tokens frame-major (B, T'*g*g, D);
//! - cls token prepended, `pos_embed` added (`img_pos_embed` for a single image);
//! - blocks: x += ls1 * attn(RMSNorm1(x)); x += ls2 * mlp(RMSNorm2(x)); q and k are
//!   RMS-normalised over the full width before the heads split;
//! - clip_projector: the mean token as query, LayerNorms on q, k, v inputs, one
//!   cross-attention with q/k/v biases, projection to `clip_embed_dim`.
//!
//! Scoring: normalize(vision_proj(pooled)) . normalize(text_proj(BERT(ids, mask)[:, 0])).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use t2v_kernels::autograd::{self as ad, Var};
use t2v_kernels::Tensor;

use super::bert::{Bert, BertConfig};
use super::clip::l2_normalize;
use super::layers::{konst, run_blocks, LayerNorm, Linear};
use super::weights::{Loader, Result, WeightsError};

#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub img_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// MLP hidden width: int(embed_dim * mlp_ratio), like the reference.
    pub mlp_hidden: usize,
    pub clip_embed_dim: usize,
    pub attn_pool_num_heads: usize,
    pub num_frames: usize,
    pub tubelet_size: usize,
    pub qkv_bias: bool,
    pub qk_normalization: bool,
    /// LayerScale `ls1.gamma` / `ls2.gamma` present (init_values > 0).
    pub layer_scale: bool,
    /// A separate `img_pos_embed` for single images (else the frame mean of `pos_embed`).
    pub sep_image_video_pos_embed: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InternVideo2Config {
    pub vision: VisionConfig,
    pub text: BertConfig,
    /// Tokens per prompt (padding / truncation length of the tokenizer).
    pub max_txt_len: usize,
    /// Width of the joint video-text space.
    pub embed_dim: usize,
}

const RMS_EPS: f32 = 1e-6;
const POOL_LN_EPS: f32 = 1e-5;

impl Default for InternVideo2Config {
    /// InternVideo2-stage2 1B, 224px, 4 frames (T2V-Turbo-v2's R_vid).
    fn default() -> Self {
        InternVideo2Config {
            vision: VisionConfig {
                img_size: 224,
                patch_size: 14,
                embed_dim: 1408,
                depth: 40,
                num_heads: 16,
                mlp_hidden: 6144,
                clip_embed_dim: 768,
                attn_pool_num_heads: 16,
                num_frames: 4,
                tubelet_size: 1,
                qkv_bias: false,
                qk_normalization: true,
                layer_scale: true,
                sep_image_video_pos_embed: true,
            },
            text: BertConfig::bert_large_text(),
            max_txt_len: 40,
            embed_dim: 512,
        }
    }
}

impl InternVideo2Config {
    /// Reads `{"vision": {img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio,
    /// clip_embed_dim, attn_pool_num_heads, num_frames, tubelet_size, qkv_bias,
    /// qk_normalization, layer_scale, sep_image_video_pos_embed}, "text": {vocab_size,
    /// hidden_size, text_layers, num_attention_heads, intermediate_size,
    /// max_position_embeddings, layer_norm_eps, max_txt_len}, "embed_dim"}` (the layout of
    /// the internvideo2 fixture's config.json); absent optional keys take the 1B model's
    /// values.
    pub fn from_json(v: &serde_json::Value) -> Option<InternVideo2Config> {
        let d = InternVideo2Config::default();
        let u = |x: &serde_json::Value| x.as_u64().map(|n| n as usize);
        let b = |x: &serde_json::Value, def: bool| x.as_bool().unwrap_or(def);
        let (vi, t) = (&v["vision"], &v["text"]);
        let embed = u(&vi["embed_dim"])?;
        let mlp_hidden = match u(&vi["mlp_hidden"]) {
            Some(h) => h,
            // int(dim * ratio); the small epsilon keeps 1408 * 48/11 at 6144
            None => (embed as f64 * vi["mlp_ratio"].as_f64().unwrap_or(48.0 / 11.0) + 1e-9).floor() as usize,
        };
        Some(InternVideo2Config {
            vision: VisionConfig {
                img_size: u(&vi["img_size"])?,
                patch_size: u(&vi["patch_size"])?,
                embed_dim: embed,
                depth: u(&vi["depth"])?,
                num_heads: u(&vi["num_heads"])?,
                mlp_hidden,
                clip_embed_dim: u(&vi["clip_embed_dim"])?,
                attn_pool_num_heads: u(&vi["attn_pool_num_heads"]).unwrap_or(d.vision.attn_pool_num_heads),
                num_frames: u(&vi["num_frames"])?,
                tubelet_size: u(&vi["tubelet_size"]).unwrap_or(1),
                qkv_bias: b(&vi["qkv_bias"], false),
                qk_normalization: b(&vi["qk_normalization"], true),
                layer_scale: b(&vi["layer_scale"], true),
                sep_image_video_pos_embed: b(&vi["sep_image_video_pos_embed"], true),
            },
            text: BertConfig {
                vocab_size: u(&t["vocab_size"])?,
                hidden_size: u(&t["hidden_size"])?,
                layers: u(&t["text_layers"])?,
                heads: u(&t["num_attention_heads"])?,
                intermediate_size: u(&t["intermediate_size"])?,
                max_position_embeddings: u(&t["max_position_embeddings"]).unwrap_or(512),
                type_vocab_size: u(&t["type_vocab_size"]).unwrap_or(2),
                layer_norm_eps: t["layer_norm_eps"].as_f64().unwrap_or(1e-12) as f32,
            },
            max_txt_len: u(&t["max_txt_len"]).unwrap_or(d.max_txt_len),
            embed_dim: u(&v["embed_dim"])?,
        })
    }

    /// The layout [`InternVideo2Config::from_json`] reads.
    pub fn to_json(&self) -> serde_json::Value {
        let (v, t) = (&self.vision, &self.text);
        serde_json::json!({
            "vision": {
                "img_size": v.img_size, "patch_size": v.patch_size, "embed_dim": v.embed_dim, "depth": v.depth,
                "num_heads": v.num_heads, "mlp_hidden": v.mlp_hidden, "clip_embed_dim": v.clip_embed_dim,
                "attn_pool_num_heads": v.attn_pool_num_heads, "num_frames": v.num_frames, "tubelet_size": v.tubelet_size,
                "qkv_bias": v.qkv_bias, "qk_normalization": v.qk_normalization, "layer_scale": v.layer_scale,
                "sep_image_video_pos_embed": v.sep_image_video_pos_embed,
            },
            "text": {
                "vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "text_layers": t.layers,
                "num_attention_heads": t.heads, "intermediate_size": t.intermediate_size,
                "max_position_embeddings": t.max_position_embeddings, "type_vocab_size": t.type_vocab_size,
                "layer_norm_eps": t.layer_norm_eps.to_string().parse::<f64>().unwrap_or(1e-12), "max_txt_len": self.max_txt_len,
            },
            "embed_dim": self.embed_dim,
        })
    }
}

/// 1-D sine-cosine embedding of `dim` (even) channels for each position: `dim / 2` sines
/// then `dim / 2` cosines of pos * 10000^(-i / (dim / 2)).
fn sincos_1d(dim: usize, pos: &[f32]) -> Vec<Vec<f32>> {
    let half = dim / 2;
    pos.iter()
        .map(|&p| {
            let angles: Vec<f32> = (0..half).map(|i| p / 10000f32.powf(i as f32 / half as f32)).collect();
            angles.iter().map(|a| a.sin()).chain(angles.iter().map(|a| a.cos())).collect()
        })
        .collect()
}

/// The reference's fixed position tables (InternVideo2's `init_pos_embed`, after MAE/MVD),
/// row-major with a zero cls row first: the video table (1 + t*g*g, dim), frame-major, each
/// row [temporal (dim/4) | x (3dim/8) | y (3dim/8)]; with `t` None the image table
/// (1 + g*g, dim), rows [x (dim/2) | y (dim/2)]. None when `dim` does not split evenly
/// (a multiple of 16 for video, 4 for images).
pub fn sincos_pos_embed(dim: usize, grid: usize, t: Option<usize>) -> Option<Vec<f32>> {
    let (temporal, spatial) = match t {
        Some(_) if dim % 16 == 0 => (dim / 4, dim / 4 * 3),
        None if dim % 4 == 0 => (0, dim),
        _ => return None,
    };
    let xs: Vec<f32> = (0..grid * grid).map(|k| (k % grid) as f32).collect();
    let ys: Vec<f32> = (0..grid * grid).map(|k| (k / grid) as f32).collect();
    let (ex, ey) = (sincos_1d(spatial / 2, &xs), sincos_1d(spatial / 2, &ys));
    let et = sincos_1d(temporal, &(0..t.unwrap_or(1)).map(|f| f as f32).collect::<Vec<_>>());
    let mut out = vec![0.0; dim]; // cls
    for time in &et {
        for (x, y) in ex.iter().zip(&ey) {
            out.extend(time);
            out.extend(x);
            out.extend(y);
        }
    }
    Some(out)
}

fn shape_error(msg: String) -> WeightsError {
    WeightsError::Gpu(t2v_kernels::Error::Shape { op: "internvideo2", msg })
}

/// RMSNorm over the last axis: w * x / sqrt(mean(x^2) + eps).
struct RmsNorm {
    w: Tensor,
}

impl RmsNorm {
    fn load(l: &Loader, key: &str, n: usize) -> Result<RmsNorm> {
        Ok(RmsNorm { w: l.get(&format!("{key}.weight"), &[n])? })
    }
    fn forward(&self, x: &Var) -> Result<Var> {
        let mut keep = x.shape().to_vec();
        *keep.last_mut().expect("rank >= 1") = 1;
        let inv = ad::rsqrt(&ad::affine(&ad::mean(&ad::square(x)?, -1)?, 1.0, RMS_EPS)?)?;
        Ok(ad::mul(&ad::mul(x, &ad::reshape(&inv, &keep)?)?, &konst(&self.w, x))?)
    }
}

/// `ls.gamma` * x, or x without layer scale.
fn layer_scale(gamma: &Option<Tensor>, x: Var) -> Result<Var> {
    Ok(match gamma {
        Some(g) => ad::mul(&x, &konst(g, &x))?,
        None => x,
    })
}

/// (N, L, heads*d) -> (N*heads, L, d) and back.
fn heads_split(x: &Var, heads: usize) -> Result<Var> {
    let (n, l, w) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    Ok(ad::reshape(&ad::permute(&ad::reshape(x, &[n, l, heads, w / heads])?, &[0, 2, 1, 3])?, &[n * heads, l, w / heads])?)
}
fn heads_merge(x: &Var, n: usize) -> Result<Var> {
    let (nh, l, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let heads = nh / n;
    Ok(ad::reshape(&ad::permute(&ad::reshape(x, &[n, heads, l, d])?, &[0, 2, 1, 3])?, &[n, l, heads * d])?)
}

struct Block {
    norm1: RmsNorm,
    qkv: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    proj: Linear,
    ls1: Option<Tensor>,
    norm2: RmsNorm,
    fc1: Linear,
    fc2: Linear,
    ls2: Option<Tensor>,
}

impl Block {
    fn load(l: &Loader, key: &str, c: &VisionConfig) -> Result<Block> {
        let d = c.embed_dim;
        let qk = |n: &str| -> Result<Option<RmsNorm>> { c.qk_normalization.then(|| RmsNorm::load(l, &format!("{key}.attn.{n}"), d)).transpose() };
        let ls = |n: &str| -> Result<Option<Tensor>> { c.layer_scale.then(|| l.get(&format!("{key}.{n}.gamma"), &[d])).transpose() };
        Ok(Block {
            norm1: RmsNorm::load(l, &format!("{key}.norm1"), d)?,
            qkv: Linear::load(l, &format!("{key}.attn.qkv"), d, 3 * d, c.qkv_bias)?,
            q_norm: qk("q_norm")?,
            k_norm: qk("k_norm")?,
            proj: Linear::load(l, &format!("{key}.attn.proj"), d, d, true)?,
            ls1: ls("ls1")?,
            norm2: RmsNorm::load(l, &format!("{key}.norm2"), d)?,
            fc1: Linear::load(l, &format!("{key}.mlp.fc1"), d, c.mlp_hidden, true)?,
            fc2: Linear::load(l, &format!("{key}.mlp.fc2"), c.mlp_hidden, d, true)?,
            ls2: ls("ls2")?,
        })
    }

    /// x (N, L, D) -> same.
    fn forward(&self, x: &Var, heads: usize) -> Result<Var> {
        let (n, d) = (x.shape()[0], x.shape()[2]);
        let qkv = self.qkv.forward(&self.norm1.forward(x)?)?; // (N, L, 3D)
        let part = |i: usize, norm: &Option<RmsNorm>| -> Result<Var> {
            let t = ad::slice(&qkv, 2, i * d, d)?;
            let t = match norm {
                Some(nm) => nm.forward(&t)?,
                None => t,
            };
            heads_split(&t, heads)
        };
        let (q, k, v) = (part(0, &self.q_norm)?, part(1, &self.k_norm)?, part(2, &None)?);
        let a = ad::attention(&q, &k, &v, ((d / heads) as f32).powf(-0.5))?;
        let x = ad::add(x, &layer_scale(&self.ls1, self.proj.forward(&heads_merge(&a, n)?)?)?)?;
        let h = self.fc2.forward(&ad::gelu(&self.fc1.forward(&self.norm2.forward(&x)?)?)?)?;
        Ok(ad::add(&x, &layer_scale(&self.ls2, h)?)?)
    }
}

/// `clip_projector`: AttentionPoolingBlock (mean-token query, one cross-attention).
struct AttentionPool {
    norm1_q: LayerNorm,
    norm1_k: LayerNorm,
    norm1_v: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    proj: Linear,
    heads: usize,
}

impl AttentionPool {
    fn load(l: &Loader, key: &str, c: &VisionConfig) -> Result<AttentionPool> {
        let d = c.embed_dim;
        let lin = |n: &str| -> Result<Linear> { Ok(Linear { w: l.get_weight(&format!("{key}.cross_attn.{n}.weight"), &[d, d])?, b: Some(l.get(&format!("{key}.cross_attn.{n}_bias"), &[d])?) }) };
        Ok(AttentionPool {
            norm1_q: LayerNorm::load(l, &format!("{key}.norm1_q"), d, POOL_LN_EPS)?,
            norm1_k: LayerNorm::load(l, &format!("{key}.norm1_k"), d, POOL_LN_EPS)?,
            norm1_v: LayerNorm::load(l, &format!("{key}.norm1_v"), d, POOL_LN_EPS)?,
            q: lin("q")?,
            k: lin("k")?,
            v: lin("v")?,
            proj: Linear::load(l, &format!("{key}.cross_attn.proj"), d, c.clip_embed_dim, true)?,
            heads: c.attn_pool_num_heads,
        })
    }

    /// x (N, L, D) -> (N, clip_embed_dim).
    fn forward(&self, x: &Var) -> Result<Var> {
        let (n, l, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let mean = ad::reshape(&ad::mean(x, 1)?, &[n, 1, d])?;
        let q = heads_split(&self.q.forward(&self.norm1_q.forward(&mean)?)?, self.heads)?;
        let k = heads_split(&self.k.forward(&self.norm1_k.forward(x)?)?, self.heads)?;
        let v = heads_split(&self.v.forward(&self.norm1_v.forward(x)?)?, self.heads)?;
        debug_assert_eq!(k.shape()[1], l);
        let a = ad::attention(&q, &k, &v, ((d / self.heads) as f32).powf(-0.5))?;
        let out = self.proj.forward(&heads_merge(&a, n)?)?; // (N, 1, E)
        Ok(ad::reshape(&out, &[n, out.shape()[2]])?)
    }
}

/// The vision encoder (`vision_encoder.*`).
pub struct VisionEncoder {
    pub config: VisionConfig,
    patch_w: Tensor,
    patch_b: Tensor,
    cls_token: Tensor,
    pos_embed: Tensor,
    img_pos_embed: Option<Tensor>,
    blocks: Vec<Arc<Block>>,
    clip_projector: AttentionPool,
    checkpointing: AtomicBool,
}

impl VisionEncoder {
    pub fn load(l: &Loader, key: &str, c: &VisionConfig) -> Result<VisionEncoder> {
        let (d, p, t) = (c.embed_dim, c.patch_size, c.tubelet_size);
        if p == 0 || t == 0 || c.img_size < p || c.num_frames % t != 0 || c.embed_dim % c.num_heads != 0 || c.embed_dim % c.attn_pool_num_heads != 0 {
            return Err(shape_error(format!("inconsistent vision config {c:?}: need img_size >= patch_size > 0, tubelet_size dividing num_frames, heads dividing embed_dim")));
        }
        let grid = c.img_size / p;
        let tokens = c.num_frames / t * grid * grid;
        let w = l.get(&format!("{key}.patch_embed.proj.weight"), &[d, 3, t, p, p])?;
        Ok(VisionEncoder {
            config: c.clone(),
            patch_w: w.reshape(&[d, 3 * t * p * p])?,
            patch_b: l.get(&format!("{key}.patch_embed.proj.bias"), &[d])?,
            cls_token: l.get(&format!("{key}.cls_token"), &[1, 1, d])?,
            pos_embed: l.get(&format!("{key}.pos_embed"), &[1, tokens + 1, d])?,
            img_pos_embed: c.sep_image_video_pos_embed.then(|| l.get(&format!("{key}.img_pos_embed"), &[1, grid * grid + 1, d])).transpose()?,
            blocks: (0..c.depth).map(|i| Ok(Arc::new(Block::load(l, &format!("{key}.blocks.{i}"), c)?))).collect::<Result<_>>()?,
            clip_projector: AttentionPool::load(l, &format!("{key}.clip_projector"), c)?,
            checkpointing: AtomicBool::new(false),
        })
    }

    /// Recompute each block in the backward pass instead of keeping its activations (the
    /// gradient of the video reward with respect to the frames). A setting of shared
    /// models: a run may turn it on between steps.
    pub fn set_checkpointing(&self, on: bool) {
        self.checkpointing.store(on, Relaxed);
    }

    /// Tokens after the blocks (N, 1 + T'*g*g, D) of normalised frames (N, T, 3, S, S),
    /// T = `num_frames` (a video) or 1 (an image).
    pub fn tokens(&self, frames: &Var) -> Result<Var> {
        let c = &self.config;
        let s = frames.shape().to_vec();
        if s.len() != 5 || s[2] != 3 {
            return Err(shape_error(format!("frames must be (N, T, 3, S, S), got {s:?}")));
        }
        let (n, t, h, w) = (s[0], s[1], s[3], s[4]);
        let (p, tb, d) = (c.patch_size, c.tubelet_size, c.embed_dim);
        let image = t == 1 && c.num_frames != 1;
        if (t != c.num_frames && !image) || h != c.img_size || w != c.img_size {
            return Err(shape_error(format!(
                "frames {s:?}: the model takes {} frames (or 1 image) of {}x{} (num_frames / img_size in its config)",
                c.num_frames, c.img_size, c.img_size
            )));
        }
        let tb = if image { 1 } else { tb };
        if image && c.tubelet_size != 1 {
            return Err(shape_error("single images need tubelet_size 1".into()));
        }
        let g = h / p;
        // Conv3d with kernel = stride = (tb, p, p) drops a remainder: crop to g*p first.
        let x = if g * p != h { ad::slice(&ad::slice(frames, 3, 0, g * p)?, 4, 0, g * p)? } else { frames.clone() };
        // (N, T/tb, tb, 3, g, p, g, p) -> (N, T/tb, g, g, 3, tb, p, p): one patch per row
        let x = ad::reshape(&x, &[n, t / tb, tb, 3, g, p, g, p])?;
        let x = ad::permute(&x, &[0, 1, 4, 6, 3, 2, 5, 7])?;
        let l = t / tb * g * g;
        let x = ad::reshape(&x, &[n, l, 3 * tb * p * p])?;
        let x = ad::linear(&x, &konst(&self.patch_w, frames), Some(&konst(&self.patch_b, frames)))?; // (N, L, D)
        let cls = ad::broadcast_to(&konst(&self.cls_token, &x), &[n, 1, d])?;
        let pos = match (image, &self.img_pos_embed) {
            (false, _) => konst(&self.pos_embed, &x),
            (true, Some(ip)) => konst(ip, &x),
            (true, None) => {
                // cls position, then the mean over frames of each spatial position
                let pe = konst(&self.pos_embed, &x);
                let per_frame = ad::reshape(&ad::slice(&pe, 1, 1, c.num_frames / c.tubelet_size * g * g)?, &[c.num_frames / c.tubelet_size, g * g, d])?;
                let spatial = ad::reshape(&ad::mean(&per_frame, 0)?, &[1, g * g, d])?;
                ad::concat(&[&ad::slice(&pe, 1, 0, 1)?, &spatial], 1)?
            }
        };
        let heads = c.num_heads;
        run_blocks(ad::add(&ad::concat(&[&cls, &x], 1)?, &pos)?, &self.blocks, self.checkpointing.load(Relaxed), move |b: &Block, x: &Var| b.forward(x, heads))
    }

    /// The attention-pooled output (N, clip_embed_dim) of [`VisionEncoder::tokens`].
    pub fn pool(&self, tokens: &Var) -> Result<Var> {
        self.clip_projector.forward(tokens)
    }
}

/// The whole video-text model.
pub struct InternVideo2 {
    pub config: InternVideo2Config,
    pub vision: VisionEncoder,
    pub text: Bert,
    vision_proj: Linear,
    text_proj: Linear,
}

impl InternVideo2 {
    /// Loads `vision_encoder.*`, `text_encoder.bert.*`, `vision_proj.*`, `text_proj.*`
    /// (relative to the loader's prefix).
    pub fn load(l: &Loader, c: &InternVideo2Config) -> Result<InternVideo2> {
        Ok(InternVideo2 {
            config: c.clone(),
            vision: VisionEncoder::load(l, "vision_encoder", &c.vision)?,
            text: Bert::load(l, "text_encoder.bert", &c.text)?,
            vision_proj: Linear::load(l, "vision_proj", c.vision.clip_embed_dim, c.embed_dim, true)?,
            text_proj: Linear::load(l, "text_proj", c.text.hidden_size, c.embed_dim, true)?,
        })
    }

    /// Unit-length video features (N, embed_dim) of normalised frames (N, T, 3, S, S).
    pub fn video_features(&self, frames: &Var) -> Result<Var> {
        l2_normalize(&self.vision_proj.forward(&self.vision.pool(&self.vision.tokens(frames)?)?)?)
    }

    /// The CLS row of the text encoder's output (N, hidden).
    pub fn text_cls(&self, tape: &ad::Tape, ids: &[Vec<u32>], mask: &[Vec<u32>]) -> Result<Var> {
        let x = self.text.forward(tape, ids, mask)?;
        let (n, h) = (ids.len(), self.config.text.hidden_size);
        Ok(ad::reshape(&ad::slice(&x, 1, 0, 1)?, &[n, h])?)
    }

    /// Unit-length text features (N, embed_dim).
    pub fn text_features(&self, tape: &ad::Tape, ids: &[Vec<u32>], mask: &[Vec<u32>]) -> Result<Var> {
        l2_normalize(&self.text_proj.forward(&self.text_cls(tape, ids, mask)?)?)
    }
}
