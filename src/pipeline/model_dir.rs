//! A model folder: every model of the method with its config, so commands take one
//! `--models DIR` instead of a dozen paths. `DIR/config.json`:
//! ```json
//! { "format": "t2v-turbo models",
//!   "unet":  { "file": "unet.safetensors", "config": { UNetModel arguments } },
//!   "vae":   { "file": "vae.safetensors",  "config": { "ddconfig": {...}, "embed_dim": 4 } },
//!   "text":  { "file": "text.safetensors", "config": { open_clip config } },
//!   "image_rewards": [ { "file": "...", "config": {...}, "preprocess": "hps" | "clipscore", "weight": 1.0 } ],
//!   "video_reward":  { "kind": "internvideo2", "file": "...", "config": {...}, "tokenizer": "vocab.txt" }
//!                    or { "kind": "clip", "file": "...", "config": { open_clip config } },
//!   "video": { "frames": 16, "height": 320, "width": 512, "fps": 8 } }
//! ```
//! Files are relative to the folder (or absolute). Each file may use the VideoCrafter2 /
//! open_clip key prefixes or none. The UNet is the teacher, or a distilled student when its
//! config has `time_cond_proj_dim`.

use std::path::{Path, PathBuf};

use t2v_kernels::Gpu;

use crate::models::clip::{Clip, ClipConfig, TextConfig, TextTower, VisionConfig};
use crate::models::internvideo2::{InternVideo2, InternVideo2Config};
use crate::models::tokenizer::{BertTokenizer, ClipTokenizer};
use crate::models::unet3d::{Unet3d, UnetConfig};
use crate::models::vae::{Vae, VaeConfig};
use crate::models::weights::{save_weight_parts, Loader, Result, SaveDtype, WeightFile, WeightPrecision, WeightsError};
use crate::reward::{ClipVideoReward, ImageTextReward, InternVideo2Reward, Preprocess, VideoTextReward};

/// The new layers of T2V-Turbo's student, absent from a teacher checkpoint.
pub const STUDENT_LAYERS: [&str; 3] = ["time_cond_proj.", "motion_cond_proj.", "combine_proj."];

/// Clip size the models were made for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VideoShape {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub fps: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RewardSpec {
    pub file: PathBuf,
    pub config: ClipConfig,
    pub preprocess: Preprocess,
    pub weight: f32,
}

/// The video-text reward model of a folder.
#[derive(Clone, Debug, PartialEq)]
pub enum VideoRewardSpec {
    /// InternVideo2-stage2 (the paper's R_vid) with its BERT vocabulary (`vocab.txt` or
    /// `tokenizer.json`).
    InternVideo2 { file: PathBuf, config: InternVideo2Config, tokenizer: PathBuf },
    /// An open_clip model over frames with temporal mean pooling.
    Clip { file: PathBuf, config: ClipConfig },
}

impl VideoRewardSpec {
    /// The files it reads (weights, then the tokenizer if it has its own).
    pub fn files(&self) -> Vec<&PathBuf> {
        match self {
            VideoRewardSpec::InternVideo2 { file, tokenizer, .. } => vec![file, tokenizer],
            VideoRewardSpec::Clip { file, .. } => vec![file],
        }
    }
    /// [`VideoRewardSpec::files`], to relocate them.
    pub fn files_mut(&mut self) -> Vec<&mut PathBuf> {
        match self {
            VideoRewardSpec::InternVideo2 { file, tokenizer, .. } => vec![file, tokenizer],
            VideoRewardSpec::Clip { file, .. } => vec![file],
        }
    }
}

/// A parsed model folder.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDir {
    pub root: PathBuf,
    pub unet: (PathBuf, UnetConfig),
    pub vae: (PathBuf, VaeConfig),
    pub text: (PathBuf, ClipConfig),
    pub image_rewards: Vec<RewardSpec>,
    pub video_reward: Option<VideoRewardSpec>,
    pub video: VideoShape,
    /// How the models loaded from the folder keep their matrix weights (not a setting of
    /// the folder: f32 when read; a student being trained is always f32).
    pub precision: WeightPrecision,
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> WeightsError {
    WeightsError::Data { path: path.display().to_string(), msg: msg.to_string() }
}

impl ModelDir {
    /// Every file the folder's config names (weights, tokenizer files).
    pub fn files(&self) -> Vec<&PathBuf> {
        let mut f = vec![&self.unet.0, &self.vae.0, &self.text.0];
        f.extend(self.image_rewards.iter().map(|r| &r.file));
        f.extend(self.video_reward.iter().flat_map(|v| v.files()));
        f
    }
    /// [`ModelDir::files`], to copy or relocate them.
    pub fn files_mut(&mut self) -> Vec<&mut PathBuf> {
        let mut f = vec![&mut self.unet.0, &mut self.vae.0, &mut self.text.0];
        f.extend(self.image_rewards.iter_mut().map(|r| &mut r.file));
        f.extend(self.video_reward.iter_mut().flat_map(|v| v.files_mut()));
        f
    }

    pub fn read(root: &Path) -> Result<ModelDir> {
        let cfg_path = root.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
            // a training run or one of its checkpoints given where a model folder goes
            let hint = if root.join("checkpoints").is_dir() || root.join("state.json").exists() {
                format!("{} is a training run or checkpoint, not a model folder: use its final student, RUN/model, or write one from a checkpoint with `t2v-turbo export {} --out DIR`", root.display(), root.display())
            } else {
                "a model folder needs config.json; `t2v-turbo init` writes one".to_string()
            };
            bad(&cfg_path, format!("{e} ({hint})"))
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&cfg_path, e))?;
        let path_of = |sec: &serde_json::Value, name: &str, key: &str| -> Result<PathBuf> {
            let f = sec[key].as_str().ok_or_else(|| bad(&cfg_path, format!("{name}.{key} missing")))?;
            Ok(if Path::new(f).is_absolute() { PathBuf::from(f) } else { root.join(f) })
        };
        let file = |sec: &serde_json::Value, name: &str| path_of(sec, name, "file");
        let clip = |sec: &serde_json::Value, name: &str| ClipConfig::from_json(&sec["config"]).ok_or_else(|| bad(&cfg_path, format!("{name}.config is not an open_clip config")));
        let unet = (file(&v["unet"], "unet")?, UnetConfig::from_json(&v["unet"]["config"]).ok_or_else(|| bad(&cfg_path, "unet.config is not a UNetModel config"))?);
        let vae = (file(&v["vae"], "vae")?, VaeConfig::from_json(&v["vae"]["config"]).ok_or_else(|| bad(&cfg_path, "vae.config is not a VAE config"))?);
        let text_model = (file(&v["text"], "text")?, clip(&v["text"], "text")?);
        let mut image_rewards = Vec::new();
        for (i, r) in v["image_rewards"].as_array().cloned().unwrap_or_default().iter().enumerate() {
            let name = format!("image_rewards[{i}]");
            let preprocess = match r["preprocess"].as_str().unwrap_or("clipscore") {
                "hps" => Preprocess::Hps,
                "clipscore" => Preprocess::ClipScore,
                other => return Err(bad(&cfg_path, format!("{name}.preprocess {other:?}: use \"hps\" or \"clipscore\""))),
            };
            image_rewards.push(RewardSpec { file: file(r, &name)?, config: clip(r, &name)?, preprocess, weight: r["weight"].as_f64().unwrap_or(1.0) as f32 });
        }
        let video_reward = match v.get("video_reward").filter(|x| !x.is_null()) {
            Some(r) => Some(match r["kind"].as_str().unwrap_or("clip") {
                "internvideo2" => VideoRewardSpec::InternVideo2 {
                    file: file(r, "video_reward")?,
                    config: InternVideo2Config::from_json(&r["config"]).ok_or_else(|| bad(&cfg_path, "video_reward.config is not an InternVideo2 config (vision {...}, text {...}, embed_dim)"))?,
                    tokenizer: path_of(r, "video_reward", "tokenizer")?,
                },
                "clip" => VideoRewardSpec::Clip { file: file(r, "video_reward")?, config: clip(r, "video_reward")? },
                other => return Err(bad(&cfg_path, format!("video_reward.kind {other:?}: use \"internvideo2\" or \"clip\""))),
            }),
            None => None,
        };
        let vs = &v["video"];
        let u = |k: &str, d: usize| vs[k].as_u64().map(|x| x as usize).unwrap_or(d);
        let video = VideoShape { frames: u("frames", 16), height: u("height", 320), width: u("width", 512), fps: vs["fps"].as_f64().unwrap_or(8.0) as f32 };
        Ok(ModelDir { root: root.to_path_buf(), unet, vae, text: text_model, image_rewards, video_reward, video, precision: WeightPrecision::F32 })
    }

    /// config.json for this folder (paths written relative to `root` when inside it).
    pub fn to_json(&self) -> serde_json::Value {
        let rel = |p: &Path| p.strip_prefix(&self.root).unwrap_or(p).display().to_string();
        serde_json::json!({
            "format": "t2v-turbo models",
            "unet": { "file": rel(&self.unet.0), "config": self.unet.1.to_json() },
            "vae": { "file": rel(&self.vae.0), "config": self.vae.1.to_json() },
            "text": { "file": rel(&self.text.0), "config": self.text.1.to_json() },
            "image_rewards": self.image_rewards.iter().map(|r| serde_json::json!({
                "file": rel(&r.file), "config": r.config.to_json(),
                "preprocess": match r.preprocess { Preprocess::Hps => "hps", Preprocess::ClipScore => "clipscore" },
                "weight": r.weight,
            })).collect::<Vec<_>>(),
            "video_reward": self.video_reward.as_ref().map(|r| match r {
                VideoRewardSpec::InternVideo2 { file, config, tokenizer } => serde_json::json!({ "kind": "internvideo2", "file": rel(file), "config": config.to_json(), "tokenizer": rel(tokenizer) }),
                VideoRewardSpec::Clip { file, config } => serde_json::json!({ "kind": "clip", "file": rel(file), "config": config.to_json() }),
            }),
            "video": { "frames": self.video.frames, "height": self.video.height, "width": self.video.width, "fps": self.video.fps },
        })
    }

    pub fn write_config(&self) -> Result<()> {
        let p = self.root.join("config.json");
        t2v_kernels::io::write_atomic(&p, serde_json::to_string_pretty(&self.to_json()).expect("json").as_bytes())?;
        Ok(())
    }

    /// The folder with its models loaded in `precision` (see [`WeightPrecision`]).
    pub fn with_precision(mut self, precision: WeightPrecision) -> ModelDir {
        self.precision = precision;
        self
    }

    /// Is the UNet a distilled student (conditioned on w)?
    pub fn is_student(&self) -> bool {
        self.unet.1.time_cond_proj_dim.is_some()
    }

    /// The UNet as stored.
    pub fn load_unet(&self, gpu: &Gpu) -> Result<Unet3d> {
        Ok(load_unet_file(gpu, &self.unet.0, &self.unet.1, None, self.precision)?.0)
    }

    pub fn load_vae(&self, gpu: &Gpu) -> Result<Vae> {
        load_vae_file(gpu, &self.vae.0, &self.vae.1, self.precision)
    }

    /// The conditioning text tower (penultimate layer; no projection needed).
    pub fn load_text(&self, gpu: &Gpu) -> Result<TextTower> {
        load_text_file(gpu, &self.text.0, &self.text.1.text, self.precision)
    }

    pub fn load_image_rewards(&self, gpu: &Gpu) -> Result<Vec<(ImageTextReward, f32)>> {
        self.image_rewards.iter().map(|r| Ok((ImageTextReward { clip: load_clip(gpu, &r.file, &r.config, self.precision)?, mode: r.preprocess }, r.weight))).collect()
    }

    pub fn load_video_reward(&self, gpu: &Gpu) -> Result<Option<Box<dyn VideoTextReward>>> {
        let Some(spec) = &self.video_reward else { return Ok(None) };
        let tok_err = |p: &Path, e: crate::models::tokenizer::TokenizerError| bad(p, e);
        Ok(Some(match spec {
            VideoRewardSpec::InternVideo2 { file, config, tokenizer } => Box::new(InternVideo2Reward {
                model: load_internvideo2_file(gpu, file, config, self.precision)?,
                tokenizer: BertTokenizer::from_file(tokenizer, config.max_txt_len).map_err(|e| tok_err(tokenizer, e))?,
            }),
            VideoRewardSpec::Clip { file, config } => Box::new(ClipVideoReward { clip: load_clip(gpu, file, config, self.precision)?, tokenizer: ClipTokenizer::new().map_err(|e| tok_err(file, e))? }),
        }))
    }
}

/// The layers a teacher's UNet gets to become a student ([`load_unet_file`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StudentInit {
    /// Width of the guidance- (and motion-) scale embeddings (256).
    pub dim: usize,
    /// Also the motion-scale embedding (`motion_cond_proj`, `combine_proj`): T2V-Turbo-v2's
    /// student; without it, T2V-Turbo (v1)'s, conditioned on w alone.
    pub motion: bool,
    /// Seed of the new layers' initialisation.
    pub seed: u64,
}

/// A UNet from `path`. With `student`, the config gets the student's conditioning
/// (the guidance-scale embedding and, unless left out, the motion-scale one) and layers
/// the file lacks are initialised (deterministic in the seed), like the reference's
/// `strict=False` load. Returns the named parameters too (checkpoint keys without prefix;
/// f32 weights only, so a UNet to train is loaded with `WeightPrecision::F32`).
pub fn load_unet_file(gpu: &Gpu, path: &Path, config: &UnetConfig, student: Option<StudentInit>, precision: WeightPrecision) -> Result<(Unet3d, Vec<(String, t2v_kernels::Tensor)>)> {
    let f = WeightFile::open(path)?;
    let l = Loader::new(&f, gpu, &f.prefix_among(&["model.diffusion_model."])).ignoring(&["first_stage_model.", "cond_stage_model."]).with_precision(precision);
    let (l, config) = match student {
        Some(s) => {
            let mut c = config.clone();
            c.time_cond_proj_dim = c.time_cond_proj_dim.or(Some(s.dim));
            if s.motion {
                c.motion_cond_proj_dim = c.motion_cond_proj_dim.or(Some(s.dim));
            }
            (l.init_missing(&STUDENT_LAYERS, s.seed), c)
        }
        None => (l, config.clone()),
    };
    let unet = Unet3d::load(&l, &config)?;
    let params = l.params();
    l.finish()?;
    Ok((unet, params))
}

/// A VAE from `path` (VideoCrafter2's `first_stage_model.` prefix or none).
pub fn load_vae_file(gpu: &Gpu, path: &Path, config: &VaeConfig, precision: WeightPrecision) -> Result<Vae> {
    let f = WeightFile::open(path)?;
    let l = Loader::new(&f, gpu, &f.prefix_among(&["first_stage_model."])).ignoring(&["model.", "cond_stage_model."]).with_precision(precision);
    let vae = Vae::load(&l, config)?;
    l.finish()?;
    Ok(vae)
}

/// The conditioning text tower from `path` (VideoCrafter2's `cond_stage_model.model.`
/// prefix, an open_clip file, or none); the rest of an open_clip model is ignored.
pub fn load_text_file(gpu: &Gpu, path: &Path, config: &TextConfig, precision: WeightPrecision) -> Result<TextTower> {
    Ok(load_text_file_tensors(gpu, path, config, precision)?.0)
}

/// [`load_text_file`], with every tensor of the tower as [`save_weight_parts`] writes them
/// (keys without prefix; the tower reads these very tensors).
pub fn load_text_file_tensors(gpu: &Gpu, path: &Path, config: &TextConfig, precision: WeightPrecision) -> Result<(TextTower, Vec<(String, Vec<usize>, Vec<t2v_kernels::Tensor>)>)> {
    let f = WeightFile::open(path)?;
    let l = Loader::new(&f, gpu, &f.prefix_among(&["cond_stage_model.model."]))
        .ignoring(&["visual.", "text_projection", "logit_scale", "model.diffusion_model.", "first_stage_model."])
        .with_precision(precision);
    let t = TextTower::load(&l, config, None)?;
    let tensors = l.all_tensors();
    l.finish()?;
    Ok((t, tensors))
}

pub fn load_clip(gpu: &Gpu, path: &Path, config: &ClipConfig, precision: WeightPrecision) -> Result<Clip> {
    let f = WeightFile::open(path)?;
    let l = Loader::new(&f, gpu, "").with_precision(precision);
    let c = Clip::load(&l, config)?;
    l.finish()?;
    Ok(c)
}

/// InternVideo2-stage2 from `path` (the stage-2 checkpoint's keys, optionally under
/// `module.`): the parts scoring does not use (distillation heads, the MLM and ITM heads,
/// BERT's fusion layers past the text layers) are skipped.
pub fn load_internvideo2_file(gpu: &Gpu, path: &Path, config: &InternVideo2Config, precision: WeightPrecision) -> Result<InternVideo2> {
    Ok(load_internvideo2_with(gpu, path, config, precision)?.0)
}

/// [`load_internvideo2_file`] in f32, with the named weights (checkpoint keys without
/// prefix), to train it.
pub fn load_internvideo2_params(gpu: &Gpu, path: &Path, config: &InternVideo2Config) -> Result<(InternVideo2, Vec<(String, t2v_kernels::Tensor)>)> {
    load_internvideo2_with(gpu, path, config, WeightPrecision::F32)
}

fn load_internvideo2_with(gpu: &Gpu, path: &Path, config: &InternVideo2Config, precision: WeightPrecision) -> Result<(InternVideo2, Vec<(String, t2v_kernels::Tensor)>)> {
    let f = WeightFile::open(path)?;
    let mut skip: Vec<String> = [
        "vision_encoder.clip_decoder.",
        "vision_encoder.final_clip_decoder.",
        "vision_encoder.clip_pos_embed",
        "vision_encoder.clip_img_pos_embed",
        "text_encoder.cls.",
        "text_encoder.bert.pooler.",
        "text_encoder.bert.embeddings.position_ids",
        "itm_head.",
        "temp",
    ]
    .map(String::from)
    .to_vec();
    let prefix = f.prefix_among(&["module."]);
    // fusion layers: encoder.layer.N with N >= the text layers
    let layer_key = format!("{prefix}text_encoder.bert.encoder.layer.");
    for k in f.entries().keys() {
        if let Some(n) = k.strip_prefix(&layer_key).and_then(|r| r.split('.').next()).and_then(|n| n.parse::<usize>().ok()) {
            if n >= config.text.layers {
                skip.push(format!("text_encoder.bert.encoder.layer.{n}."));
            }
        }
    }
    skip.sort();
    skip.dedup();
    let l = Loader::new(&f, gpu, &prefix).ignoring(&skip.iter().map(String::as_str).collect::<Vec<_>>()).with_precision(precision);
    let m = InternVideo2::load(&l, config)?;
    let params = l.params();
    l.finish()?;
    Ok((m, params))
}

/// Built-in model sizes for `t2v-turbo init`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// The embedded default's size: 8 frames of 32x32, a few MB per model.
    Tiny,
    /// VideoCrafter2 + OpenCLIP ViT-H-14 (random weights: benchmarks, memory planning).
    Videocrafter2,
}

impl Preset {
    /// (teacher UNet, VAE, text encoder, reward CLIP, clip shape).
    pub fn configs(self) -> (UnetConfig, VaeConfig, ClipConfig, ClipConfig, VideoShape) {
        match self {
            Preset::Tiny => {
                let text = TextConfig { context_length: 77, vocab_size: 49408, width: 64, heads: 4, layers: 2 };
                let unet = UnetConfig {
                    model_channels: 32,
                    channel_mult: vec![1, 2],
                    num_res_blocks: 1,
                    attention_resolutions: vec![1, 2],
                    num_head_channels: 16,
                    context_dim: text.width,
                    time_cond_proj_dim: None,
                    motion_cond_proj_dim: None,
                    ..UnetConfig::default()
                };
                let vae = VaeConfig { ch: 32, ch_mult: vec![1, 2, 2], num_res_blocks: 1, resolution: 32, ..VaeConfig::default() };
                let vision = VisionConfig { width: 64, layers: 2, head_width: 32, image_size: 32, patch_size: 8 };
                // reward towers: a narrower text tower (its 49408-token table dominates the size)
                let clip = ClipConfig { embed_dim: 64, text: TextConfig { width: 32, heads: 2, ..text.clone() }, vision };
                let text_model = ClipConfig { embed_dim: 64, text, vision: clip.vision.clone() };
                (unet, vae, text_model, clip, VideoShape { frames: 8, height: 32, width: 32, fps: 8.0 })
            }
            Preset::Videocrafter2 => {
                let unet = UnetConfig { time_cond_proj_dim: None, motion_cond_proj_dim: None, ..UnetConfig::default() };
                (unet, VaeConfig::default(), ClipConfig::default(), ClipConfig::default(), VideoShape { frames: 16, height: 320, width: 512, fps: 8.0 })
            }
        }
    }
}

impl Preset {
    /// The video reward: InternVideo2-stage2 (the 1B model of the paper, or a tiny one
    /// whose text side reads the moving-shapes world's vocabulary).
    pub fn video_reward_config(self) -> InternVideo2Config {
        let full = InternVideo2Config::default();
        match self {
            Preset::Tiny => InternVideo2Config {
                vision: crate::models::internvideo2::VisionConfig {
                    img_size: 32,
                    patch_size: 8,
                    embed_dim: 64,
                    depth: 2,
                    num_heads: 4,
                    mlp_hidden: 279, // int(64 * 48/11), the 1B model's ratio
                    clip_embed_dim: 64,
                    attn_pool_num_heads: 4,
                    ..full.vision
                },
                text: crate::models::bert::BertConfig {
                    vocab_size: crate::world::bert_vocabulary().len(),
                    hidden_size: 32,
                    layers: 2,
                    heads: 2,
                    intermediate_size: 64,
                    max_position_embeddings: full.max_txt_len,
                    ..full.text
                },
                embed_dim: 64,
                ..full
            },
            Preset::Videocrafter2 => full,
        }
    }
}

/// A BERT vocabulary for randomly initialised InternVideo2 text towers: the world's words,
/// padded with `[unusedN]` up to `size` entries (real weights come with their own
/// `vocab.txt`).
pub fn world_vocab(size: usize) -> Vec<String> {
    let mut v = crate::world::bert_vocabulary();
    let n = v.len();
    v.extend((n..size).map(|i| format!("[unused{i}]")));
    v
}

/// Writes a model folder of randomly initialised models of `preset` (deterministic in
/// `seed`): teacher UNet, VAE, text encoder, one HPS-style and one CLIP-style image reward
/// and an InternVideo2 video reward with its vocabulary.
pub fn init_random(gpu: &Gpu, preset: Preset, root: &Path, seed: u64, dtype: SaveDtype) -> Result<ModelDir> {
    init_random_with(gpu, preset, root, seed, dtype, preset.video_reward_config())
}

/// [`init_random`] with another configuration of the video reward, e.g. the tiny one with
/// `tubelet_size` 2 (tokens that each see two frames), which can learn the direction of
/// motion where the 1B model's single-frame tokens stayed blind to it.
pub fn init_random_with(gpu: &Gpu, preset: Preset, root: &Path, seed: u64, dtype: SaveDtype, iv2: InternVideo2Config) -> Result<ModelDir> {
    init_folder(gpu, preset, root, seed, dtype, iv2, &GivenFiles::default())
}

/// Weight files a new model folder refers to instead of random weights (`t2v-turbo init
/// --checkpoint/--unet/...`): absent ones are made at random.
#[derive(Clone, Debug, Default)]
pub struct GivenFiles {
    pub unet: Option<PathBuf>,
    pub vae: Option<PathBuf>,
    pub text: Option<PathBuf>,
    /// The HPS-style image reward (open_clip; HPS v2.1).
    pub hps: Option<PathBuf>,
    /// The CLIP-score image reward (open_clip).
    pub clip: Option<PathBuf>,
    /// The video reward (InternVideo2-stage2) and its BERT vocabulary.
    pub video_reward: Option<(PathBuf, PathBuf)>,
}

/// A model folder at the sizes of `preset`: the models of `given` refer to those files
/// (absolute paths; a UNet file with T2V-Turbo's guidance-scale layers is taken as a
/// student), the others get random weights (seeded) written into the folder.
pub fn init_folder(gpu: &Gpu, preset: Preset, root: &Path, seed: u64, dtype: SaveDtype, iv2: InternVideo2Config, given: &GivenFiles) -> Result<ModelDir> {
    let (mut unet, vae, text, clip, video) = preset.configs();
    std::fs::create_dir_all(root).map_err(|e| bad(root, e))?;
    let abs = |p: &Path| std::fs::canonicalize(p).map_err(|e| bad(p, e));
    let meta = |what: &str| vec![("model", what.to_string()), ("init", format!("random, seed {seed}"))];
    // a random model's file in the folder, or the given one
    let file = |given: &Option<PathBuf>, name: &str, what: &str, seed: u64, load: &dyn Fn(&Loader) -> Result<()>| -> Result<PathBuf> {
        if let Some(p) = given {
            return abs(p);
        }
        let l = Loader::random(gpu, seed);
        load(&l)?;
        save_weight_parts(&root.join(name), &l.all_tensors(), dtype, &meta(what))?;
        Ok(root.join(name))
    };
    if let Some(p) = &given.unet {
        // a student's file carries the guidance- and motion-scale layers: their widths
        let f = WeightFile::open(p)?;
        let width = |layer: &str| f.entries().iter().find(|(k, _)| k.ends_with(&format!("{layer}.weight"))).and_then(|(_, e)| e.shape.last().copied());
        unet.time_cond_proj_dim = width("time_cond_proj");
        unet.motion_cond_proj_dim = width("motion_cond_proj");
    }
    let unet_file = file(&given.unet, "unet.safetensors", "unet3d", seed, &|l| Unet3d::load(l, &unet).map(drop))?;
    let vae_file = file(&given.vae, "vae.safetensors", "vae", seed + 1, &|l| Vae::load(l, &vae).map(drop))?;
    let text_file = file(&given.text, "text.safetensors", "openclip text", seed + 2, &|l| TextTower::load(l, &text.text, None).map(drop))?;
    let hps = file(&given.hps, "reward_hps.safetensors", "openclip", seed + 3, &|l| Clip::load(l, &clip).map(drop))?;
    let clip_file = file(&given.clip, "reward_clip.safetensors", "openclip", seed + 4, &|l| Clip::load(l, &clip).map(drop))?;
    let (video_file, vocab) = match &given.video_reward {
        Some((f, vocab)) => (abs(f)?, abs(vocab)?),
        None => {
            let l = Loader::random(gpu, seed + 5);
            InternVideo2::load(&l, &iv2)?;
            // the position tables start as the reference's fixed sine-cosine ones, which tell
            // the frames apart from the start (small random ones leave the model almost blind
            // to order)
            let v = &iv2.vision;
            let grid = v.img_size / v.patch_size;
            for (name, t) in l.params() {
                let table = match name.as_str() {
                    "vision_encoder.pos_embed" => crate::models::internvideo2::sincos_pos_embed(v.embed_dim, grid, Some(v.num_frames / v.tubelet_size)),
                    "vision_encoder.img_pos_embed" => crate::models::internvideo2::sincos_pos_embed(v.embed_dim, grid, None),
                    _ => None,
                };
                if let Some(table) = table {
                    t.write(&table)?;
                }
            }
            save_weight_parts(&root.join("reward_video.safetensors"), &l.all_tensors(), dtype, &meta("internvideo2"))?;
            t2v_kernels::io::write_atomic(&root.join("bert_vocab.txt"), (world_vocab(iv2.text.vocab_size).join("\n") + "\n").as_bytes())?;
            (root.join("reward_video.safetensors"), root.join("bert_vocab.txt"))
        }
    };
    let dir = ModelDir {
        root: root.to_path_buf(),
        unet: (unet_file, unet),
        vae: (vae_file, vae),
        text: (text_file, text),
        image_rewards: vec![
            RewardSpec { file: hps, config: clip.clone(), preprocess: Preprocess::Hps, weight: 1.0 },
            RewardSpec { file: clip_file, config: clip.clone(), preprocess: Preprocess::ClipScore, weight: 1.0 },
        ],
        video_reward: Some(VideoRewardSpec::InternVideo2 { file: video_file, config: iv2, tokenizer: vocab }),
        video,
        precision: WeightPrecision::F32,
    };
    dir.write_config()?;
    Ok(dir)
}
