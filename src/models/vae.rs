//! The ldm AutoencoderKL of VideoCrafter2 (`lvdm/modules/networks/ae_modules.py`), applied
//! per frame. Struct fields and loader paths follow the checkpoint keys
//! (`first_stage_model.encoder.down.0.block.0.norm1.weight`, ...). Forward passes run on
//! autograd values: with frozen weights (constants on the tape) the decoder is
//! differentiable with respect to its latent input, which reward feedback needs.

use std::sync::Arc;

use t2v_kernels::autograd::{self as ad, Var};
use t2v_kernels::ops::Conv2d as Geo;
use t2v_kernels::Tensor;

use super::layers::{Conv, GroupNorm};
use super::fitting::in_fitting_parts;
use super::weights::{Loader, Result};

/// `ddconfig` + `embed_dim` of the reference config (defaults: VideoCrafter2).
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub z_channels: usize,
    pub in_channels: usize,
    pub out_ch: usize,
    pub double_z: bool,
    pub attn_resolutions: Vec<usize>,
    pub resolution: usize,
    pub embed_dim: usize,
    pub scale_factor: f32,
}

impl Default for VaeConfig {
    fn default() -> Self {
        VaeConfig {
            ch: 128,
            ch_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            z_channels: 4,
            in_channels: 3,
            out_ch: 3,
            double_z: true,
            attn_resolutions: vec![],
            resolution: 256,
            embed_dim: 4,
            scale_factor: 0.18215,
        }
    }
}

impl VaeConfig {
    /// Reads the reference's config layout (`{"ddconfig": {...}, "embed_dim": 4, ...}`).
    pub fn from_json(v: &serde_json::Value) -> Option<VaeConfig> {
        let d = &v["ddconfig"];
        let u = |x: &serde_json::Value| x.as_u64().map(|n| n as usize);
        let list = |x: &serde_json::Value| -> Option<Vec<usize>> { x.as_array()?.iter().map(u).collect() };
        Some(VaeConfig {
            ch: u(&d["ch"])?,
            ch_mult: list(&d["ch_mult"])?,
            num_res_blocks: u(&d["num_res_blocks"])?,
            z_channels: u(&d["z_channels"])?,
            in_channels: u(&d["in_channels"])?,
            out_ch: u(&d["out_ch"])?,
            double_z: d["double_z"].as_bool().unwrap_or(true),
            attn_resolutions: list(&d["attn_resolutions"]).unwrap_or_default(),
            resolution: u(&d["resolution"])?,
            embed_dim: u(&v["embed_dim"])?,
            scale_factor: v["scale_factor"].as_f64().unwrap_or(0.18215) as f32,
        })
    }
}

impl VaeConfig {
    /// The layout [`VaeConfig::from_json`] reads.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ddconfig": {
                "ch": self.ch, "ch_mult": self.ch_mult, "num_res_blocks": self.num_res_blocks, "z_channels": self.z_channels,
                "in_channels": self.in_channels, "out_ch": self.out_ch, "double_z": self.double_z,
                "attn_resolutions": self.attn_resolutions, "resolution": self.resolution,
            },
            "embed_dim": self.embed_dim,
            "scale_factor": self.scale_factor,
        })
    }
}

const GN_GROUPS: usize = 32;
const GN_EPS: f32 = 1e-6;

fn norm(l: &Loader, key: &str, c: usize) -> Result<GroupNorm> {
    GroupNorm::load(l, key, c, GN_GROUPS, GN_EPS)
}

/// `ResnetBlock` without time embedding.
struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv,
    norm2: GroupNorm,
    conv2: Conv,
    nin_shortcut: Option<Conv>,
}

impl ResnetBlock {
    fn load(l: &Loader, key: &str, cin: usize, cout: usize) -> Result<ResnetBlock> {
        Ok(ResnetBlock {
            norm1: norm(l, &format!("{key}.norm1"), cin)?,
            conv1: Conv::load(l, &format!("{key}.conv1"), cin, cout, 3, Geo::new(1, 1))?,
            norm2: norm(l, &format!("{key}.norm2"), cout)?,
            conv2: Conv::load(l, &format!("{key}.conv2"), cout, cout, 3, Geo::new(1, 1))?,
            nin_shortcut: if cin != cout { Some(Conv::load(l, &format!("{key}.nin_shortcut"), cin, cout, 1, Geo::new(1, 0))?) } else { None },
        })
    }
    fn forward(&self, x: &Var) -> Result<Var> {
        let h = self.conv1.forward(&self.norm1.forward(x, true)?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h, true)?)?;
        let skip = match &self.nin_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        Ok(ad::add(&skip, &h)?)
    }
}

/// `AttnBlock`: single-head self-attention over the h*w positions with 1x1 projections.
struct AttnBlock {
    norm: GroupNorm,
    q: Conv,
    k: Conv,
    v: Conv,
    proj_out: Conv,
}

impl AttnBlock {
    fn load(l: &Loader, key: &str, c: usize) -> Result<AttnBlock> {
        let p = |n: &str| Conv::load(l, &format!("{key}.{n}"), c, c, 1, Geo::new(1, 0));
        Ok(AttnBlock { norm: norm(l, &format!("{key}.norm"), c)?, q: p("q")?, k: p("k")?, v: p("v")?, proj_out: p("proj_out")? })
    }
    fn forward(&self, x: &Var) -> Result<Var> {
        let s = x.shape().to_vec();
        let (b, c, hw) = (s[0], s[1], s[2] * s[3]);
        let h = self.norm.forward(x, false)?;
        // (b, c, h, w) -> (b, h*w, c) tokens
        let tokens = |v: Var| -> Result<Var> { Ok(ad::permute(&ad::reshape(&v, &[b, c, hw])?, &[0, 2, 1])?) };
        let (q, k, v) = (tokens(self.q.forward(&h)?)?, tokens(self.k.forward(&h)?)?, tokens(self.v.forward(&h)?)?);
        let a = ad::attention(&q, &k, &v, (c as f32).powf(-0.5))?;
        let a = ad::reshape(&ad::permute(&a, &[0, 2, 1])?, &s)?;
        Ok(ad::add(x, &self.proj_out.forward(&a)?)?)
    }
}

struct Level {
    blocks: Vec<ResnetBlock>,
    attns: Vec<AttnBlock>,
    /// Downsample (encoder) or Upsample (decoder) conv.
    resample: Option<Conv>,
}

struct Mid {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl Mid {
    fn load(l: &Loader, key: &str, c: usize) -> Result<Mid> {
        Ok(Mid {
            block_1: ResnetBlock::load(l, &format!("{key}.block_1"), c, c)?,
            attn_1: AttnBlock::load(l, &format!("{key}.attn_1"), c)?,
            block_2: ResnetBlock::load(l, &format!("{key}.block_2"), c, c)?,
        })
    }
    fn forward(&self, x: &Var) -> Result<Var> {
        self.block_2.forward(&self.attn_1.forward(&self.block_1.forward(x)?)?)
    }
}

/// `post_quant_conv` and `decoder.*`: scaled latents to images.
struct Decoder {
    scale_factor: f32,
    post_quant_conv: Conv,
    conv_in: Conv,
    mid: Mid,
    /// Indexed like the checkpoint: `up.0` is the highest resolution (run last).
    up: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl Decoder {
    fn decode(&self, z: &Var) -> Result<Var> {
        let z = ad::scale(z, 1.0 / self.scale_factor)?;
        let mut h = self.conv_in.forward(&self.post_quant_conv.forward(&z)?)?;
        h = self.mid.forward(&h)?;
        for lv in self.up.iter().rev() {
            h = run_level(lv, h, true)?;
        }
        self.conv_out.forward(&self.norm_out.forward(&h, true)?)
    }
}

fn run_level(lv: &Level, mut h: Var, up: bool) -> Result<Var> {
    for (i, b) in lv.blocks.iter().enumerate() {
        h = b.forward(&h)?;
        if let Some(a) = lv.attns.get(i) {
            h = a.forward(&h)?;
        }
    }
    if let Some(r) = &lv.resample {
        if up {
            h = ad::upsample_nearest2x(&h)?;
        }
        h = r.forward(&h)?;
    }
    Ok(h)
}

/// Encoder + decoder + (post_)quant_conv.
/// [`Vae::id`]'s source.
static NEXT_VAE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub struct Vae {
    pub config: VaeConfig,
    /// Unique to this loaded VAE in the process ([`Vae::id`]).
    id: u64,
    enc_conv_in: Conv,
    enc_down: Vec<Level>,
    enc_mid: Mid,
    enc_norm_out: GroupNorm,
    enc_conv_out: Conv,
    quant_conv: Conv,
    /// Shared with the decoder's recomputation checkpoints ([`Vae::decode_checkpointed`]).
    dec: Arc<Decoder>,
    /// The most bytes one activation of an encoder or decoder pass may take: batches are
    /// split into passes of fewer images to stay below it (default: the device's binding
    /// limit; [`Vae::with_pass_bytes`] lowers it, which also lowers peak memory).
    pass_bytes: u64,
    /// At most this many images per pass ([`Vae::with_images_per_pass`]).
    max_images: usize,
}

impl Vae {
    /// Builds the model from `l` (whose prefix is e.g. `first_stage_model.`); call
    /// `l.finish()` afterwards for the strict key check.
    pub fn load(l: &Loader, config: &VaeConfig) -> Result<Vae> {
        let c = config;
        let nres = c.ch_mult.len();
        let zc = if c.double_z { 2 * c.z_channels } else { c.z_channels };
        let mut curr = c.resolution;
        let mut down = Vec::new();
        let mut block_in = c.ch;
        for i in 0..nres {
            let block_out = c.ch * c.ch_mult[i];
            let (mut blocks, mut attns) = (Vec::new(), Vec::new());
            for j in 0..c.num_res_blocks {
                blocks.push(ResnetBlock::load(l, &format!("encoder.down.{i}.block.{j}"), block_in, block_out)?);
                block_in = block_out;
                if c.attn_resolutions.contains(&curr) {
                    attns.push(AttnBlock::load(l, &format!("encoder.down.{i}.attn.{j}"), block_in)?);
                }
            }
            let resample = if i != nres - 1 {
                curr /= 2;
                Some(Conv::load(l, &format!("encoder.down.{i}.downsample.conv"), block_in, block_in, 3, Geo { stride: (2, 2), padding: (0, 1, 0, 1) })?)
            } else {
                None
            };
            down.push(Level { blocks, attns, resample });
        }
        let enc_mid = Mid::load(l, "encoder.mid", block_in)?;
        let enc_norm_out = norm(l, "encoder.norm_out", block_in)?;
        let enc_conv_out = Conv::load(l, "encoder.conv_out", block_in, zc, 3, Geo::new(1, 1))?;
        let quant_conv = Conv::load(l, "quant_conv", 2 * c.z_channels, 2 * c.embed_dim, 1, Geo::new(1, 0))?;
        let post_quant_conv = Conv::load(l, "post_quant_conv", c.embed_dim, c.z_channels, 1, Geo::new(1, 0))?;

        let mut block_in = c.ch * c.ch_mult[nres - 1];
        let mut curr = c.resolution >> (nres - 1);
        let dec_conv_in = Conv::load(l, "decoder.conv_in", c.z_channels, block_in, 3, Geo::new(1, 1))?;
        let dec_mid = Mid::load(l, "decoder.mid", block_in)?;
        let mut up: Vec<Option<Level>> = (0..nres).map(|_| None).collect();
        for i in (0..nres).rev() {
            let block_out = c.ch * c.ch_mult[i];
            let (mut blocks, mut attns) = (Vec::new(), Vec::new());
            for j in 0..=c.num_res_blocks {
                blocks.push(ResnetBlock::load(l, &format!("decoder.up.{i}.block.{j}"), block_in, block_out)?);
                block_in = block_out;
                if c.attn_resolutions.contains(&curr) {
                    attns.push(AttnBlock::load(l, &format!("decoder.up.{i}.attn.{j}"), block_in)?);
                }
            }
            let resample = if i != 0 {
                curr *= 2;
                Some(Conv::load(l, &format!("decoder.up.{i}.upsample.conv"), block_in, block_in, 3, Geo::new(1, 1))?)
            } else {
                None
            };
            up[i] = Some(Level { blocks, attns, resample });
        }
        Ok(Vae {
            id: NEXT_VAE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            pass_bytes: l.gpu().max_binding_bytes(),
            max_images: usize::MAX,
            config: c.clone(),
            enc_conv_in: Conv::load(l, "encoder.conv_in", c.in_channels, c.ch, 3, Geo::new(1, 1))?,
            enc_down: down,
            enc_mid,
            enc_norm_out,
            enc_conv_out,
            quant_conv,
            dec: Arc::new(Decoder {
                scale_factor: c.scale_factor,
                post_quant_conv,
                conv_in: dec_conv_in,
                mid: dec_mid,
                up: up.into_iter().map(|l| l.expect("every level built")).collect(),
                norm_out: norm(l, "decoder.norm_out", block_in)?,
                conv_out: Conv::load(l, "decoder.conv_out", block_in, c.out_ch, 3, Geo::new(1, 1))?,
            }),
        })
    }

    /// Images per pass of the encoder (`decoder` false) or decoder at `full_pixels` = H*W of
    /// the images, so that the widest activation of a pass fits in one GPU binding: the 16
    /// frames of a 320x512 video do not (the decoder's last upsampling output alone is
    /// 2.5 GiB, above the 2 GiB an NVIDIA adapter binds). Encoder level i holds
    /// ch*ch_mult[i] channels at full/4^i pixels; the decoder's level i >= 1 upsamples its
    /// ch*ch_mult[i] channels to full/4^(i-1).
    fn images_per_pass(&self, full_pixels: usize, decoder: bool) -> usize {
        let c = &self.config;
        let widest = c.ch_mult.iter().enumerate().map(|(i, m)| {
            let level = if decoder { i.max(1) - 1 } else { i };
            c.ch * m * (full_pixels >> (2 * level))
        });
        let floats = widest.max().unwrap_or(0).max(c.in_channels.max(c.out_ch) * full_pixels).max(1);
        (self.pass_bytes as usize / (4 * floats)).clamp(1, self.max_images.max(1))
    }

    /// Splits batches into passes whose widest activation takes at most `bytes` (capped at
    /// the device's binding limit): less peak memory for the same result.
    pub fn with_pass_bytes(mut self, bytes: u64) -> Vae {
        self.pass_bytes = bytes.min(self.gpu().max_binding_bytes());
        self
    }

    /// Encodes and decodes at most `n` (>= 1) images (video frames) per pass: less peak
    /// memory (1: the least) for the same result, up to the rounding of other batch sizes;
    /// more per pass may keep a large GPU busier.
    pub fn with_images_per_pass(mut self, n: usize) -> Vae {
        self.max_images = n.max(1);
        self
    }

    /// Runs `pass` on chunks of at most `per` images of `x` (N, ...) along N and
    /// concatenates each of its outputs (one pass when N fits); differentiable like `pass`.
    /// A pass of several images that runs out of device memory without recording anything
    /// on the tape (sampling, preprocessing: nothing kept for a backward pass) is split in
    /// halves, and the rest of the batch goes in passes of that size: the same images up
    /// to the rounding of other batch sizes.
    fn in_passes<const K: usize>(x: &Var, per: usize, pass: impl Fn(&Var) -> Result<[Var; K]>) -> Result<[Var; K]> {
        let n = x.shape()[0];
        let tape = x.tape();
        let recorded = tape.len();
        let limit = std::sync::atomic::AtomicUsize::new(per);
        let mut parts = in_fitting_parts(n, &limit, &|| tape.len() == recorded, &mut |_, _| {}, |r| {
            if r.len() == n {
                pass(x)
            } else {
                pass(&ad::slice(x, 0, r.start, r.len())?)
            }
        })?;
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one part"));
        }
        let out = (0..K).map(|k| Ok(ad::concat(&parts.iter().map(|p| &p[k]).collect::<Vec<_>>(), 0)?)).collect::<Result<Vec<Var>>>()?;
        Ok(out.try_into().ok().expect("K outputs"))
    }

    /// Posterior moments (mean, logvar clamped to [-30, 20]) of images (N, 3, H, W) in [-1, 1],
    /// in as many passes as the device's binding size needs.
    pub fn encode_moments(&self, x: &Var) -> Result<(Var, Var)> {
        let s = x.shape();
        let per = self.images_per_pass(s[2] * s[3], false);
        let [mean, logvar] = Self::in_passes(x, per, |x| {
            let (m, l) = self.encode_moments_pass(x)?;
            Ok([m, l])
        })?;
        Ok((mean, logvar))
    }

    fn encode_moments_pass(&self, x: &Var) -> Result<(Var, Var)> {
        let t = x.tape().clone();
        let mut h = self.enc_conv_in.forward(x)?;
        for lv in &self.enc_down {
            h = run_level(lv, h, false)?;
        }
        h = self.enc_mid.forward(&h)?;
        h = self.enc_conv_out.forward(&self.enc_norm_out.forward(&h, true)?)?;
        let m = self.quant_conv.forward(&h)?;
        let e = self.config.embed_dim;
        let mean = ad::slice(&m, 1, 0, e)?;
        let logvar = ad::slice(&m, 1, e, e)?;
        // clamp(logvar, -30, 20) = min(max(x, -30), 20); applied on the value (no gradient
        // flows through the log-variance in the method)
        let lv = t2v_kernels::ops::minimum(&t2v_kernels::ops::maximum(logvar.value(), &Tensor::full(x.value().gpu(), &[1], -30.0)?)?, &Tensor::full(x.value().gpu(), &[1], 20.0)?)?;
        Ok((mean, t.constant(lv)))
    }

    /// The deterministic scaled latent the pipeline uses: mean * scale_factor.
    pub fn encode(&self, x: &Var) -> Result<Var> {
        let (mean, _) = self.encode_moments(x)?;
        Ok(ad::scale(&mean, self.config.scale_factor)?)
    }

    /// Images (N, out_ch, H, W) from scaled latents (N, embed_dim, h, w): differentiable
    /// with respect to the latent; in as many passes as the device's binding size needs.
    pub fn decode(&self, z: &Var) -> Result<Var> {
        let s = z.shape();
        let up = 1usize << (2 * (self.config.ch_mult.len() - 1));
        let per = self.images_per_pass(s[2] * s[3] * up, true);
        let [images] = Self::in_passes(z, per, |z| Ok([self.dec.decode(z)?]))?;
        Ok(images)
    }

    /// [`Vae::decode`] with one recomputation checkpoint per image: the forward keeps none
    /// of the decoder's activations and the backward re-runs one image's decode at a time,
    /// so the gradient costs one image's activations at most. (A training step's reward
    /// frames at 320x512 otherwise keep every decoder activation of every frame.)
    pub fn decode_checkpointed(&self, z: &Var) -> Result<Var> {
        let [images] = Self::in_passes(z, 1, |zi| {
            let dec = self.dec.clone();
            Ok([zi.tape().checkpoint(&[zi], move |v| Ok(dec.decode(&v[0])?))?])
        })?;
        Ok(images)
    }

    /// The device the weights live on.
    pub fn gpu(&self) -> &t2v_kernels::Gpu {
        self.enc_conv_in.w.gpu()
    }

    /// Identifies this loaded VAE among those of the process: what caches of its encodings
    /// are keyed to (another VAE, or this one's weights loaded again, has another id).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Videos (B, 3, F, H, W) in [-1, 1] -> scaled latents (B, embed_dim, F, h, w), frame by
    /// frame (VideoCrafter2's `encode_first_stage`).
    pub fn encode_video(&self, x: &Var) -> Result<Var> {
        let b = x.shape()[0];
        unfold_frames(&self.encode(&fold_frames(x)?)?, b)
    }

    /// Scaled latents (B, C, F, h, w) -> videos (B, 3, F, H, W), frame by frame,
    /// differentiable with respect to the latents.
    pub fn decode_video(&self, z: &Var) -> Result<Var> {
        let b = z.shape()[0];
        unfold_frames(&self.decode(&fold_frames(z)?)?, b)
    }
}

/// (B, C, F, H, W) -> (B*F, C, H, W)
fn fold_frames(x: &Var) -> Result<Var> {
    let s = x.shape().to_vec();
    Ok(ad::reshape(&ad::permute(x, &[0, 2, 1, 3, 4])?, &[s[0] * s[2], s[1], s[3], s[4]])?)
}

/// (B*F, C, H, W) -> (B, C, F, H, W)
fn unfold_frames(x: &Var, b: usize) -> Result<Var> {
    let s = x.shape().to_vec();
    Ok(ad::permute(&ad::reshape(x, &[b, s[0] / b, s[1], s[2], s[3]])?, &[0, 2, 1, 3, 4])?)
}
