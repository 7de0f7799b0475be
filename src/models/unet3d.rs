//! The VideoCrafter2 3D UNet (`lvdm/modules/networks/openaimodel3d.py`, `attention.py`) with
//! T2V-Turbo(-v2)'s student conditioning (`time_cond_proj`, `motion_cond_proj`,
//! `combine_proj`). Struct layout and loader paths follow the checkpoint keys
//! (`input_blocks.1.2.transformer_blocks.0.attn1.to_q.weight`, ...). Frames are folded into
//! the batch for spatial layers ((b t) c h w); temporal layers work on (b h w, t, c).
//! Forward passes run on autograd values: the student trains through them, and motion
//! guidance differentiates the recorded temporal attention maps with respect to z_t.

use std::sync::Arc;

use t2v_kernels::autograd::{self as ad, Var};
use t2v_kernels::ops::{self, Conv2d as Geo, UnaryOp};
use t2v_kernels::Tensor;

use super::layers::{Conv, GroupNorm, LayerNorm, Linear, TemporalConv};
use super::weights::{Loader, Result, WeightsError};

/// Constructor arguments of `UNetModel` (defaults: VideoCrafter2 + T2V-Turbo-v2).
#[derive(Clone, Debug, PartialEq)]
pub struct UnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub model_channels: usize,
    pub num_res_blocks: usize,
    pub attention_resolutions: Vec<usize>,
    pub channel_mult: Vec<usize>,
    pub num_head_channels: usize,
    pub transformer_depth: usize,
    pub context_dim: usize,
    pub use_linear: bool,
    pub temporal_conv: bool,
    pub temporal_attention: bool,
    pub temporal_selfatt_only: bool,
    pub use_relative_position: bool,
    pub use_causal_attention: bool,
    pub addition_attention: bool,
    pub fps_cond: bool,
    pub time_cond_proj_dim: Option<usize>,
    pub motion_cond_proj_dim: Option<usize>,
}

impl Default for UnetConfig {
    fn default() -> Self {
        UnetConfig {
            in_channels: 4,
            out_channels: 4,
            model_channels: 320,
            num_res_blocks: 2,
            attention_resolutions: vec![4, 2, 1],
            channel_mult: vec![1, 2, 4, 4],
            num_head_channels: 64,
            transformer_depth: 1,
            context_dim: 1024,
            use_linear: true,
            temporal_conv: true,
            temporal_attention: true,
            temporal_selfatt_only: true,
            use_relative_position: false,
            use_causal_attention: false,
            addition_attention: true,
            fps_cond: true,
            time_cond_proj_dim: Some(256),
            motion_cond_proj_dim: Some(256),
        }
    }
}

impl UnetConfig {
    /// Reads the reference's constructor arguments (config.json of the unet3d layout).
    pub fn from_json(v: &serde_json::Value) -> Option<UnetConfig> {
        let u = |k: &str| v[k].as_u64().map(|n| n as usize);
        let b = |k: &str, d: bool| v[k].as_bool().unwrap_or(d);
        let list = |k: &str| -> Option<Vec<usize>> { v[k].as_array()?.iter().map(|x| x.as_u64().map(|n| n as usize)).collect() };
        Some(UnetConfig {
            in_channels: u("in_channels")?,
            out_channels: u("out_channels")?,
            model_channels: u("model_channels")?,
            num_res_blocks: u("num_res_blocks")?,
            attention_resolutions: list("attention_resolutions")?,
            channel_mult: list("channel_mult")?,
            num_head_channels: u("num_head_channels")?,
            transformer_depth: u("transformer_depth").unwrap_or(1),
            context_dim: u("context_dim")?,
            use_linear: b("use_linear", true),
            temporal_conv: b("temporal_conv", true),
            temporal_attention: b("temporal_attention", true),
            temporal_selfatt_only: b("temporal_selfatt_only", true),
            use_relative_position: b("use_relative_position", false),
            use_causal_attention: b("use_causal_attention", false),
            addition_attention: b("addition_attention", false),
            fps_cond: b("fps_cond", false),
            time_cond_proj_dim: u("time_cond_proj_dim"),
            motion_cond_proj_dim: u("motion_cond_proj_dim"),
        })
    }

    /// The keys [`UnetConfig::from_json`] reads.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "in_channels": self.in_channels, "out_channels": self.out_channels, "model_channels": self.model_channels,
            "num_res_blocks": self.num_res_blocks, "attention_resolutions": self.attention_resolutions,
            "channel_mult": self.channel_mult, "num_head_channels": self.num_head_channels,
            "transformer_depth": self.transformer_depth, "context_dim": self.context_dim, "use_linear": self.use_linear,
            "temporal_conv": self.temporal_conv, "temporal_attention": self.temporal_attention,
            "temporal_selfatt_only": self.temporal_selfatt_only, "use_relative_position": self.use_relative_position,
            "use_causal_attention": self.use_causal_attention, "addition_attention": self.addition_attention,
            "fps_cond": self.fps_cond, "time_cond_proj_dim": self.time_cond_proj_dim, "motion_cond_proj_dim": self.motion_cond_proj_dim,
        })
    }

    fn check(&self) -> Result<()> {
        let unsupported = |what: &str| Err(WeightsError::Gpu(t2v_kernels::Error::Shape { op: "unet3d config", msg: format!("{what} is not supported (VideoCrafter2 does not use it)") }));
        if !self.use_linear {
            return unsupported("use_linear = false");
        }
        if self.use_relative_position {
            return unsupported("use_relative_position = true");
        }
        if !self.temporal_selfatt_only {
            return unsupported("temporal_selfatt_only = false");
        }
        Ok(())
    }
}

const GN_RES_EPS: f32 = 1e-5; // lvdm `normalization` and TemporalConvBlock
const GN_ATTN_EPS: f32 = 1e-6; // Spatial/TemporalTransformer
const LN_EPS: f32 = 1e-5;

/// (N, L, H*d) -> (N*H, L, d)
fn split_heads(x: &Var, heads: usize) -> Result<Var> {
    let (n, l, c) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    Ok(ad::reshape(&ad::permute(&ad::reshape(x, &[n, l, heads, c / heads])?, &[0, 2, 1, 3])?, &[n * heads, l, c / heads])?)
}

/// (N*H, L, d) -> (N, L, H*d)
fn merge_heads(x: &Var, heads: usize) -> Result<Var> {
    let (nh, l, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    Ok(ad::reshape(&ad::permute(&ad::reshape(x, &[nh / heads, heads, l, d])?, &[0, 2, 1, 3])?, &[nh / heads, l, heads * d])?)
}

/// `CrossAttention`: bias-free q/k/v, `to_out.0` with bias.
struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    dim_head: usize,
}

impl CrossAttention {
    fn load(l: &Loader, key: &str, dim: usize, ctx_dim: usize, heads: usize, dim_head: usize) -> Result<CrossAttention> {
        let inner = heads * dim_head;
        Ok(CrossAttention {
            to_q: Linear::load(l, &format!("{key}.to_q"), dim, inner, false)?,
            to_k: Linear::load(l, &format!("{key}.to_k"), ctx_dim, inner, false)?,
            to_v: Linear::load(l, &format!("{key}.to_v"), ctx_dim, inner, false)?,
            to_out: Linear::load(l, &format!("{key}.to_out.0"), inner, dim, true)?,
            heads,
            dim_head,
        })
    }

    /// Returns the output and, when `record`, the probabilities (N*heads, L, Lk).
    fn forward(&self, x: &Var, context: Option<&Var>, causal: bool, record: bool) -> Result<(Var, Option<Var>)> {
        let ctx = context.unwrap_or(x);
        let q = split_heads(&self.to_q.forward(x)?, self.heads)?;
        let k = split_heads(&self.to_k.forward(ctx)?, self.heads)?;
        let v = split_heads(&self.to_v.forward(ctx)?, self.heads)?;
        let scale = (self.dim_head as f32).powf(-0.5);
        let probs = if record { Some(ad::attention_probs(&q, &k, scale)?) } else { None };
        let o = ad::attention_masked(&q, &k, &v, scale, causal)?;
        Ok((self.to_out.forward(&merge_heads(&o, self.heads)?)?, probs))
    }
}

/// `BasicTransformerBlock` with a GEGLU feed-forward.
struct TransformerBlock {
    attn1: CrossAttention,
    attn2: CrossAttention,
    ff_proj: Linear,
    ff_out: Linear,
    norm1: LayerNorm,
    norm2: LayerNorm,
    norm3: LayerNorm,
}

impl TransformerBlock {
    fn load(l: &Loader, key: &str, dim: usize, heads: usize, dim_head: usize, ctx_dim: Option<usize>) -> Result<TransformerBlock> {
        let inner = dim * 4;
        Ok(TransformerBlock {
            attn1: CrossAttention::load(l, &format!("{key}.attn1"), dim, dim, heads, dim_head)?,
            attn2: CrossAttention::load(l, &format!("{key}.attn2"), dim, ctx_dim.unwrap_or(dim), heads, dim_head)?,
            ff_proj: Linear::load(l, &format!("{key}.ff.net.0.proj"), dim, 2 * inner, true)?,
            ff_out: Linear::load(l, &format!("{key}.ff.net.2"), inner, dim, true)?,
            norm1: LayerNorm::load(l, &format!("{key}.norm1"), dim, LN_EPS)?,
            norm2: LayerNorm::load(l, &format!("{key}.norm2"), dim, LN_EPS)?,
            norm3: LayerNorm::load(l, &format!("{key}.norm3"), dim, LN_EPS)?,
        })
    }

    fn forward(&self, x: &Var, context: Option<&Var>, causal: bool, record: bool) -> Result<(Var, Option<Var>)> {
        let (a1, probs) = self.attn1.forward(&self.norm1.forward(x)?, None, causal, record)?;
        let x = ad::add(&a1, x)?;
        let (a2, _) = self.attn2.forward(&self.norm2.forward(&x)?, context, causal && context.is_none(), false)?;
        let x = ad::add(&a2, &x)?;
        let h = self.ff_proj.forward(&self.norm3.forward(&x)?)?;
        // GEGLU: value * gelu(gate), the two halves of ff.net.0.proj's output
        let geglu = ad::gated(&h, UnaryOp::Gelu)?;
        Ok((ad::add(&self.ff_out.forward(&geglu)?, &x)?, probs))
    }
}

/// `SpatialTransformer` (use_linear): over (b t) c h w with cross-attention to the text.
struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<TransformerBlock>,
    proj_out: Linear,
}

impl SpatialTransformer {
    fn load(l: &Loader, key: &str, c: usize, heads: usize, dim_head: usize, depth: usize, ctx_dim: usize) -> Result<SpatialTransformer> {
        let inner = heads * dim_head;
        Ok(SpatialTransformer {
            norm: GroupNorm::load(l, &format!("{key}.norm"), c, 32, GN_ATTN_EPS)?,
            proj_in: Linear::load(l, &format!("{key}.proj_in"), c, inner, true)?,
            blocks: (0..depth).map(|d| TransformerBlock::load(l, &format!("{key}.transformer_blocks.{d}"), inner, heads, dim_head, Some(ctx_dim))).collect::<Result<_>>()?,
            proj_out: Linear::load(l, &format!("{key}.proj_out"), inner, c, true)?,
        })
    }

    fn forward(&self, x: &Var, context: &Var) -> Result<Var> {
        let s = x.shape().to_vec();
        let (n, c, hw) = (s[0], s[1], s[2] * s[3]);
        let h = ad::permute(&ad::reshape(&self.norm.forward(x, false)?, &[n, c, hw])?, &[0, 2, 1])?;
        let mut h = self.proj_in.forward(&h)?;
        for b in &self.blocks {
            h = b.forward(&h, Some(context), false, false)?.0;
        }
        let h = self.proj_out.forward(&h)?;
        let h = ad::reshape(&ad::permute(&h, &[0, 2, 1])?, &s)?;
        Ok(ad::add(&h, x)?)
    }
}

/// `TemporalTransformer` (self-attention only) over b c t h w.
struct TemporalTransformer {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<TransformerBlock>,
    proj_out: Linear,
    causal: bool,
    /// Paths of the attn1 layers whose probabilities are recorded.
    record: Option<String>,
}

impl TemporalTransformer {
    #[allow(clippy::too_many_arguments)]
    fn load(l: &Loader, key: &str, c: usize, heads: usize, dim_head: usize, depth: usize, conv1d: bool, causal: bool, record: bool) -> Result<TemporalTransformer> {
        let inner = heads * dim_head;
        let proj = |name: &str, i: usize, o: usize| if conv1d { Linear::load_conv1x1(l, &format!("{key}.{name}"), i, o) } else { Linear::load(l, &format!("{key}.{name}"), i, o, true) };
        Ok(TemporalTransformer {
            norm: GroupNorm::load(l, &format!("{key}.norm"), c, 32, GN_ATTN_EPS)?,
            proj_in: proj("proj_in", c, inner)?,
            blocks: (0..depth).map(|d| TransformerBlock::load(l, &format!("{key}.transformer_blocks.{d}"), inner, heads, dim_head, None)).collect::<Result<_>>()?,
            proj_out: proj("proj_out", inner, c)?,
            causal,
            record: record.then(|| key.to_string()),
        })
    }

    /// x (B, C, T, H, W) -> same; records the attn1 maps into `maps` when enabled.
    fn forward(&self, x: &Var, maps: &mut Vec<(String, Var)>, recording: bool) -> Result<Var> {
        let s = x.shape().to_vec();
        let (b, c, t, h, w) = (s[0], s[1], s[2], s[3], s[4]);
        // b c t h w -> (b h w) t c
        let y = ad::reshape(&ad::permute(&self.norm.forward(x, false)?, &[0, 3, 4, 2, 1])?, &[b * h * w, t, c])?;
        let mut y = self.proj_in.forward(&y)?;
        for (d, blk) in self.blocks.iter().enumerate() {
            let rec = recording && self.record.is_some();
            let (out, probs) = blk.forward(&y, None, self.causal, rec)?;
            if let (Some(p), Some(key)) = (probs, &self.record) {
                maps.push((format!("{key}.transformer_blocks.{d}.attn1"), p));
            }
            y = out;
        }
        let y = self.proj_out.forward(&y)?;
        let y = ad::permute(&ad::reshape(&y, &[b, h, w, t, c])?, &[0, 4, 3, 1, 2])?;
        Ok(ad::add(&y, x)?)
    }
}

/// `TemporalConvBlock`: four (GroupNorm, SiLU, Conv3d (3,1,1)) with a residual.
struct TemporalConvBlock {
    layers: Vec<(GroupNorm, TemporalConv)>,
}

impl TemporalConvBlock {
    fn load(l: &Loader, key: &str, c: usize) -> Result<TemporalConvBlock> {
        let layers = (1..=4)
            .map(|i| {
                let conv_idx = if i == 1 { 2 } else { 3 }; // conv1 has no Dropout before its conv
                Ok((GroupNorm::load(l, &format!("{key}.conv{i}.0"), c, 32, GN_RES_EPS)?, TemporalConv::load(l, &format!("{key}.conv{i}.{conv_idx}"), c, c)?))
            })
            .collect::<Result<_>>()?;
        Ok(TemporalConvBlock { layers })
    }
    fn forward(&self, x: &Var) -> Result<Var> {
        let mut h = x.clone();
        for (n, conv) in &self.layers {
            h = conv.forward(&n.forward(&h, true)?)?;
        }
        Ok(ad::add(&h, x)?)
    }
}

/// (b t) c h w <-> b c t h w
fn to_video(x: &Var, b: usize) -> Result<Var> {
    let s = x.shape();
    let (t, c, h, w) = (s[0] / b, s[1], s[2], s[3]);
    Ok(ad::permute(&ad::reshape(x, &[b, t, c, h, w])?, &[0, 2, 1, 3, 4])?)
}
fn to_frames(x: &Var) -> Result<Var> {
    let s = x.shape().to_vec();
    Ok(ad::reshape(&ad::permute(x, &[0, 2, 1, 3, 4])?, &[s[0] * s[2], s[1], s[3], s[4]])?)
}

struct ResBlock {
    in_norm: GroupNorm,
    in_conv: Conv,
    emb: Linear,
    out_norm: GroupNorm,
    out_conv: Conv,
    skip: Option<Conv>,
    temporal: Option<TemporalConvBlock>,
}

impl ResBlock {
    fn load(l: &Loader, key: &str, cin: usize, cout: usize, emb_dim: usize, temporal: bool) -> Result<ResBlock> {
        Ok(ResBlock {
            in_norm: GroupNorm::load(l, &format!("{key}.in_layers.0"), cin, 32, GN_RES_EPS)?,
            in_conv: Conv::load(l, &format!("{key}.in_layers.2"), cin, cout, 3, Geo::new(1, 1))?,
            emb: Linear::load(l, &format!("{key}.emb_layers.1"), emb_dim, cout, true)?,
            out_norm: GroupNorm::load(l, &format!("{key}.out_layers.0"), cout, 32, GN_RES_EPS)?,
            out_conv: Conv::load(l, &format!("{key}.out_layers.3"), cout, cout, 3, Geo::new(1, 1))?,
            skip: if cin != cout { Some(Conv::load(l, &format!("{key}.skip_connection"), cin, cout, 1, Geo::new(1, 0))?) } else { None },
            temporal: if temporal { Some(TemporalConvBlock::load(l, &format!("{key}.temopral_conv"), cout)?) } else { None },
        })
    }

    /// x (b t) c h w, emb_silu = SiLU(emb) (b t, E)
    fn forward(&self, x: &Var, emb_silu: &Var, b: usize) -> Result<Var> {
        let h = self.in_conv.forward(&self.in_norm.forward(x, true)?)?;
        let e = self.emb.forward(emb_silu)?;
        let (n, c) = (e.shape()[0], e.shape()[1]);
        let h = ad::add(&h, &ad::reshape(&e, &[n, c, 1, 1])?)?;
        let h = self.out_conv.forward(&self.out_norm.forward(&h, true)?)?;
        let skip = match &self.skip {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        let h = ad::add(&skip, &h)?;
        match &self.temporal {
            Some(tc) => to_frames(&tc.forward(&to_video(&h, b)?)?),
            None => Ok(h),
        }
    }
}

#[allow(clippy::large_enum_variant)] // built once per model
enum Layer {
    Res(ResBlock),
    Spatial(SpatialTransformer),
    Temporal(TemporalTransformer),
    /// conv_in and the stride-2 downsampling convs
    Conv(Conv),
    /// nearest 2x then conv
    Up(Conv),
}

struct Ctx<'a> {
    emb_silu: &'a Var,
    context: &'a Var,
    b: usize,
    recording: bool,
}

fn run_block(block: &[Layer], mut h: Var, cx: &Ctx, maps: &mut Vec<(String, Var)>) -> Result<Var> {
    for layer in block {
        h = match layer {
            Layer::Res(r) => r.forward(&h, cx.emb_silu, cx.b)?,
            Layer::Spatial(s) => s.forward(&h, cx.context)?,
            Layer::Temporal(t) => to_frames(&t.forward(&to_video(&h, cx.b)?, maps, cx.recording)?)?,
            Layer::Conv(c) => c.forward(&h)?,
            Layer::Up(c) => c.forward(&ad::upsample_nearest2x(&h)?)?,
        };
    }
    Ok(h)
}

/// Conditioning of one UNet call.
pub struct UnetInputs<'a> {
    /// (B, C, T, H, W)
    pub z: &'a Var,
    /// Diffusion timestep per sample.
    pub t: &'a [f32],
    /// (B, 77, context_dim)
    pub context: &'a Var,
    /// fps per sample (fps_cond models).
    pub fps: &'a [f32],
    /// Student: guidance-scale embedding (B, time_cond_proj_dim).
    pub w_embedding: Option<&'a Var>,
    /// Student: motion-scale embedding (B, motion_cond_proj_dim).
    pub motion_embedding: Option<&'a Var>,
    /// Record the decoder temporal attn1 probabilities.
    pub record_attention: bool,
}

/// Output of a UNet call.
pub struct UnetOutput {
    /// eps prediction (B, C, T, H, W)
    pub eps: Var,
    /// (module path, probabilities (B*h*w*heads, T, T)) of each recorded layer, in order.
    pub attention: Vec<(String, Var)>,
}

pub struct Unet3d {
    pub config: UnetConfig,
    time_embed: (Linear, Linear),
    fps_embedding: Option<(Linear, Linear)>,
    time_cond_proj: Option<Linear>,
    motion_cond_proj: Option<Linear>,
    combine_proj: Option<Linear>,
    input_blocks: Vec<Arc<Vec<Layer>>>,
    init_attn: Option<TemporalTransformer>,
    middle_block: Arc<Vec<Layer>>,
    output_blocks: Vec<Arc<Vec<Layer>>>,
    /// Recompute each block during the backward pass instead of keeping its activations.
    checkpointing: bool,
    out_norm: GroupNorm,
    out_conv: Conv,
}

impl Unet3d {
    /// Recomputation checkpoints: each input, middle and output block keeps only its input
    /// and is run again during the backward pass (less activation memory for training,
    /// about one more forward of time). Not applied while attention is recorded.
    pub fn set_checkpointing(&mut self, on: bool) {
        self.checkpointing = on;
    }

    /// Builds the model (loader prefix e.g. `model.diffusion_model.`); call `l.finish()`
    /// afterwards for the strict key check.
    pub fn load(l: &Loader, config: &UnetConfig) -> Result<Unet3d> {
        config.check()?;
        let c = config;
        let mc = c.model_channels;
        let ed = 4 * mc;
        let two = |key: &str, i: usize| -> Result<(Linear, Linear)> { Ok((Linear::load(l, &format!("{key}.0"), i, ed, true)?, Linear::load(l, &format!("{key}.2"), ed, ed, true)?)) };
        let heads_for = |ch: usize| (ch / c.num_head_channels, c.num_head_channels);
        let attn_layers = |key: &str, ch: usize, record: bool| -> Result<Vec<Layer>> {
            let (heads, dh) = heads_for(ch);
            let mut v = vec![Layer::Spatial(SpatialTransformer::load(l, &format!("{key}.1"), ch, heads, dh, c.transformer_depth, c.context_dim)?)];
            if c.temporal_attention {
                v.push(Layer::Temporal(TemporalTransformer::load(l, &format!("{key}.2"), ch, heads, dh, c.transformer_depth, false, c.use_causal_attention, record)?));
            }
            Ok(v)
        };
        let mut input_blocks = vec![vec![Layer::Conv(Conv::load(l, "input_blocks.0.0", c.in_channels, mc, 3, Geo::new(1, 1))?)]];
        let mut chans = vec![mc];
        let (mut ch, mut ds) = (mc, 1);
        for (level, &mult) in c.channel_mult.iter().enumerate() {
            for _ in 0..c.num_res_blocks {
                let key = format!("input_blocks.{}", input_blocks.len());
                let mut layers = vec![Layer::Res(ResBlock::load(l, &format!("{key}.0"), ch, mult * mc, ed, c.temporal_conv)?)];
                ch = mult * mc;
                if c.attention_resolutions.contains(&ds) {
                    layers.extend(attn_layers(&key, ch, false)?);
                }
                input_blocks.push(layers);
                chans.push(ch);
            }
            if level != c.channel_mult.len() - 1 {
                let key = format!("input_blocks.{}.0.op", input_blocks.len());
                input_blocks.push(vec![Layer::Conv(Conv::load(l, &key, ch, ch, 3, Geo::new(2, 1))?)]);
                chans.push(ch);
                ds *= 2;
            }
        }
        let (heads, dh) = heads_for(ch);
        let mut middle_block = vec![Layer::Res(ResBlock::load(l, "middle_block.0", ch, ch, ed, c.temporal_conv)?)];
        middle_block.push(Layer::Spatial(SpatialTransformer::load(l, "middle_block.1", ch, heads, dh, c.transformer_depth, c.context_dim)?));
        let mut next = 2;
        if c.temporal_attention {
            middle_block.push(Layer::Temporal(TemporalTransformer::load(l, "middle_block.2", ch, heads, dh, c.transformer_depth, false, c.use_causal_attention, false)?));
            next = 3;
        }
        middle_block.push(Layer::Res(ResBlock::load(l, &format!("middle_block.{next}"), ch, ch, ed, c.temporal_conv)?));
        let mut output_blocks = Vec::new();
        for (level, &mult) in c.channel_mult.iter().enumerate().rev() {
            for i in 0..=c.num_res_blocks {
                let ich = chans.pop().expect("one skip per input block");
                let key = format!("output_blocks.{}", output_blocks.len());
                let mut layers = vec![Layer::Res(ResBlock::load(l, &format!("{key}.0"), ch + ich, mult * mc, ed, c.temporal_conv)?)];
                ch = mult * mc;
                if c.attention_resolutions.contains(&ds) {
                    layers.extend(attn_layers(&key, ch, true)?);
                }
                if level > 0 && i == c.num_res_blocks {
                    let idx = layers.len();
                    layers.push(Layer::Up(Conv::load(l, &format!("{key}.{idx}.conv"), ch, ch, 3, Geo::new(1, 1))?));
                    ds /= 2;
                }
                output_blocks.push(layers);
            }
        }
        Ok(Unet3d {
            config: c.clone(),
            time_embed: two("time_embed", mc)?,
            fps_embedding: if c.fps_cond { Some(two("fps_embedding", mc)?) } else { None },
            time_cond_proj: match c.time_cond_proj_dim {
                Some(d) => Some(Linear::load(l, "time_cond_proj", d, mc, false)?),
                None => None,
            },
            motion_cond_proj: match c.motion_cond_proj_dim {
                Some(d) => Some(Linear::load(l, "motion_cond_proj", d, mc, false)?),
                None => None,
            },
            combine_proj: if c.motion_cond_proj_dim.is_some() { Some(Linear::load(l, "combine_proj", 2 * mc, mc, false)?) } else { None },
            input_blocks: input_blocks.into_iter().map(Arc::new).collect(),
            init_attn: if c.addition_attention {
                Some(TemporalTransformer::load(l, "init_attn.0", mc, 8, c.num_head_channels, c.transformer_depth, true, c.use_causal_attention, false)?)
            } else {
                None
            },
            middle_block: Arc::new(middle_block),
            output_blocks: output_blocks.into_iter().map(Arc::new).collect(),
            checkpointing: false,
            out_norm: GroupNorm::load(l, "out.0", mc, 32, GN_RES_EPS)?,
            out_conv: Conv::load(l, "out.2", mc, c.out_channels, 3, Geo::new(1, 1))?,
        })
    }

    /// The checkpoint paths of its TemporalTransformer modules (`input_blocks.1.2`,
    /// `middle_block.2`, `init_attn.0`, …): a block's layers sit at their module indices.
    pub fn temporal_transformer_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.init_attn.iter().map(|_| "init_attn.0".to_string()).collect();
        let blocks = self.input_blocks.iter().enumerate().map(|(i, b)| (format!("input_blocks.{i}"), b));
        let blocks = blocks.chain(std::iter::once(("middle_block".to_string(), &self.middle_block)));
        let blocks = blocks.chain(self.output_blocks.iter().enumerate().map(|(i, b)| (format!("output_blocks.{i}"), b)));
        for (key, layers) in blocks {
            paths.extend(layers.iter().enumerate().filter(|(_, l)| matches!(l, Layer::Temporal(_))).map(|(j, _)| format!("{key}.{j}")));
        }
        paths
    }

    /// One call: eps prediction (and recorded attention maps).
    pub fn forward(&self, inp: &UnetInputs) -> Result<UnetOutput> {
        self.forward_blocks(inp, self.checkpointing)
    }

    /// [`Unet3d::forward`] with recomputation checkpoints whatever the model's setting, also
    /// while recording attention maps: each block keeps its input (and its output and
    /// maps), and is re-run in the backward pass. Motion guidance takes the gradient of
    /// recorded maps through the whole UNet, whose stored activations are tens of GB at
    /// VideoCrafter2's size.
    pub fn forward_checkpointed(&self, inp: &UnetInputs) -> Result<UnetOutput> {
        self.forward_blocks(inp, true)
    }

    fn forward_blocks(&self, inp: &UnetInputs, recompute: bool) -> Result<UnetOutput> {
        let z = inp.z;
        let tape = z.tape().clone();
        let s = z.shape().to_vec();
        let (b, t) = (s[0], s[2]);
        let gpu = z.value().gpu();
        let mc = self.config.model_channels;
        let shape_err = |msg: String| WeightsError::Gpu(t2v_kernels::Error::Shape { op: "unet3d", msg });
        if inp.t.len() != b || (self.fps_embedding.is_some() && inp.fps.len() != b) {
            return Err(shape_err(format!("need {b} timesteps and fps values, got {} and {}", inp.t.len(), inp.fps.len())));
        }
        let sinus = |v: &[f32]| -> Result<Var> { Ok(tape.constant(ops::sinusoidal_embedding(&Tensor::from_slice(gpu, &[v.len()], v)?, mc, 10000.0)?)) };
        let mut e = sinus(inp.t)?;
        if let Some(w) = inp.w_embedding {
            let proj = self.time_cond_proj.as_ref().ok_or_else(|| shape_err("w_embedding given to a model without time_cond_proj".into()))?;
            let tc = proj.forward(w)?;
            let cond = match (inp.motion_embedding, &self.motion_cond_proj, &self.combine_proj) {
                (Some(m), Some(mp), Some(cp)) => cp.forward(&ad::concat(&[&tc, &mp.forward(m)?], 1)?)?,
                (Some(_), _, _) => return Err(shape_err("motion_embedding given to a model without motion_cond_proj".into())),
                _ => tc,
            };
            e = ad::add(&e, &cond)?;
        }
        let mut emb = self.time_embed.1.forward(&ad::silu(&self.time_embed.0.forward(&e)?)?)?;
        if let Some((f0, f2)) = &self.fps_embedding {
            emb = ad::add(&emb, &f2.forward(&ad::silu(&f0.forward(&sinus(inp.fps)?)?)?)?)?;
        }
        // repeat_interleave over frames: (B, E) -> (B*T, E); context likewise
        let ed = emb.shape()[1];
        let emb = ad::reshape(&ad::broadcast_to(&ad::reshape(&emb, &[b, 1, ed])?, &[b, t, ed])?, &[b * t, ed])?;
        let emb_silu = ad::silu(&emb)?;
        let cs = inp.context.shape().to_vec();
        let context = ad::reshape(&ad::broadcast_to(&ad::reshape(inp.context, &[cs[0], 1, cs[1], cs[2]])?, &[b, t, cs[1], cs[2]])?, &[b * t, cs[1], cs[2]])?;
        let cx = Ctx { emb_silu: &emb_silu, context: &context, b, recording: inp.record_attention };
        let mut maps = Vec::new();
        let mut h = to_frames(z)?;
        let mut hs = Vec::new();
        let step = |block: &Arc<Vec<Layer>>, h: Var, maps: &mut Vec<(String, Var)>| -> Result<Var> {
            if !recompute {
                return run_block(block, h, &cx, maps);
            }
            // a checkpoint has one output: a block that records maps returns its output and
            // its maps flattened into one vector, split again below (names and shapes of
            // the pieces from the block's run)
            let (blk, b, recording) = (block.clone(), cx.b, cx.recording);
            let pieces: Arc<std::sync::Mutex<Vec<(String, Vec<usize>)>>> = Arc::default();
            let seen = pieces.clone();
            let out = tape.checkpoint_params(&[&h, cx.emb_silu, cx.context], move |v| {
                let cx = Ctx { emb_silu: &v[1], context: &v[2], b, recording };
                let mut block_maps = Vec::new();
                let y = run_block(&blk, v[0].clone(), &cx, &mut block_maps)?;
                if block_maps.is_empty() {
                    return Ok(y);
                }
                let mut shapes = vec![(String::new(), y.shape().to_vec())];
                shapes.extend(block_maps.iter().map(|(k, m)| (k.clone(), m.shape().to_vec())));
                *seen.lock().unwrap() = shapes;
                let flat = std::iter::once(&y).chain(block_maps.iter().map(|(_, m)| m)).map(|t| ad::reshape(t, &[t.value().numel()])).collect::<t2v_kernels::Result<Vec<_>>>()?;
                ad::concat(&flat.iter().collect::<Vec<_>>(), 0)
            })?;
            let pieces = std::mem::take(&mut *pieces.lock().unwrap());
            if pieces.is_empty() {
                return Ok(out);
            }
            let mut at = 0;
            let mut parts = pieces.into_iter().map(|(key, shape)| -> Result<(String, Var)> {
                let n: usize = shape.iter().product();
                at += n;
                Ok((key, ad::reshape(&ad::slice(&out, 0, at - n, n)?, &shape)?))
            });
            let (_, y) = parts.next().expect("the block's output comes first")?;
            for part in parts {
                maps.push(part?);
            }
            Ok(y)
        };
        for (i, block) in self.input_blocks.iter().enumerate() {
            h = step(block, h, &mut maps)?;
            if i == 0 {
                if let Some(ia) = &self.init_attn {
                    h = to_frames(&ia.forward(&to_video(&h, b)?, &mut maps, false)?)?;
                }
            }
            hs.push(h.clone());
        }
        h = step(&self.middle_block, h, &mut maps)?;
        for block in &self.output_blocks {
            let skip = hs.pop().expect("one skip per output block");
            h = step(block, ad::concat(&[&h, &skip], 1)?, &mut maps)?;
        }
        let y = self.out_conv.forward(&self.out_norm.forward(&h, true)?)?;
        Ok(UnetOutput { eps: to_video(&y, b)?, attention: maps })
    }
}
