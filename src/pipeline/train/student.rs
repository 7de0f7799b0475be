//! What a run trains and the models it scores with: the student (full UNet or LoRA
//! adapters, an optional EMA target and trained text encoder), the reward models, loading
//! them from a model folder, and writing the trained student as one.

use std::path::Path;

use t2v_kernels::autograd::{self as ad, Lora, Tape, Var};
use t2v_kernels::{Gpu, Tensor};

use super::{LoraConfig, TrainConfig, TrainError};
use crate::models::clip::TextTower;
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet3d::Unet3d;
use crate::models::vae::Vae;
use crate::models::weights::{save_weights_made, Result, SaveDtype, WeightsError};
use crate::reward::{ImageTextReward, VideoTextReward};

/// The models a run uses besides the student.
pub struct RewardModels {
    pub vae: Vae,
    pub image: Vec<(ImageTextReward, f32)>,
    pub video: Option<Box<dyn VideoTextReward>>,
    pub tokenizer: ClipTokenizer,
}

/// The trainable state: the student's UNet and, with LoRA, its adapters; an EMA target and
/// a trained text encoder when the run has them.
pub struct Student {
    pub unet: Unet3d,
    /// Named UNet weights (checkpoint keys).
    pub params: Vec<(String, Tensor)>,
    /// With LoRA: (index into `params`, adapter) for every >= 2-D weight.
    pub adapters: Vec<(usize, Lora)>,
    /// The network of the consistency targets when it is not the student itself.
    pub target: Option<EmaTarget>,
    /// The conditioning text encoder when it trains too ([`TrainConfig::text_layers`]).
    pub text: Option<TextStudent>,
}

/// The conditioning text encoder of a run that trains it ([`TrainConfig::text_layers`]):
/// the whole tower in f32, of which `params` train.
pub struct TextStudent {
    pub tower: TextTower,
    /// The trained tensors (keys of the text file, without prefix).
    pub params: Vec<(String, Tensor)>,
    /// Every tensor of the tower (`params` among them), as its file is written.
    tensors: Vec<(String, Vec<usize>, Vec<Tensor>)>,
}

/// The prefix of the text encoder's weights among the student's trainable tensors (in
/// checkpoints): VideoCrafter2's key path of its conditioning tower.
pub(super) const TEXT_PREFIX: &str = "cond_stage_model.model.";

impl TextStudent {
    /// The model folder's text tower in f32, its last `layers` resblocks (the reference's
    /// count: the last one, unread, included) and `ln_final` trainable.
    pub fn load(gpu: &Gpu, md: &crate::pipeline::model_dir::ModelDir, layers: usize) -> Result<TextStudent> {
        let (tower, tensors) = crate::pipeline::model_dir::load_text_file_tensors(gpu, &md.text.0, &md.text.1.text, crate::models::weights::WeightPrecision::F32)?;
        TextStudent::new(tower, tensors, layers).map_err(|msg| WeightsError::Data { path: md.text.0.display().to_string(), msg })
    }

    /// A loaded f32 tower and all its tensors (the loader's `all_tensors`), its last
    /// `layers` resblocks and `ln_final` trainable.
    pub fn new(tower: TextTower, tensors: Vec<(String, Vec<usize>, Vec<Tensor>)>, layers: usize) -> std::result::Result<TextStudent, String> {
        let total = tower.config.layers;
        if layers > total {
            return Err(format!("--unlocked-text-layers {layers}: the text encoder has {total} resblocks"));
        }
        // blocks [total - layers, total - 1): the penultimate-layer context reads them
        let trained = |key: &str| key.starts_with("ln_final.") || (total - layers..total.saturating_sub(1)).any(|i| key.starts_with(&format!("transformer.resblocks.{i}.")));
        let params = tensors.iter().filter(|(k, _, parts)| trained(k) && parts.len() == 1).map(|(k, _, parts)| (k.clone(), parts[0].clone())).collect();
        Ok(TextStudent { tower, params, tensors })
    }

    /// Every tensor of the tower (key, shape, row chunks), the trained ones among them.
    pub fn tensors(&self) -> &[(String, Vec<usize>, Vec<Tensor>)] {
        &self.tensors
    }

    /// Writes the whole tower (trained weights included) as a text file `load_text_file`
    /// reads.
    pub fn save(&self, path: &Path, dtype: SaveDtype, steps: u64) -> Result<()> {
        crate::models::weights::save_weight_parts(path, &self.tensors, dtype, &[("model", "t2v-turbo student text encoder".into()), ("steps", steps.to_string())])
    }
}

/// An exponential moving average of the student's weights that the consistency targets
/// come from ([`TrainConfig::ema_target`]); full fine-tuning only.
pub struct EmaTarget {
    pub unet: Unet3d,
    /// Its weights, in the order of [`Student::params`].
    pub params: Vec<Tensor>,
}

impl Student {
    /// Adds LoRA adapters (deterministic in `seed`) to every >= 2-D weight.
    pub fn with_lora(mut self, cfg: LoraConfig, seed: u64) -> Result<Student> {
        let gpu = self.unet_gpu();
        for (i, (_, w)) in self.params.iter().enumerate() {
            if w.shape().len() >= 2 {
                let o = w.shape()[0];
                self.adapters.push((i, Lora::linear(&gpu, w.numel() / o, o, cfg.rank, cfg.alpha, seed ^ (i as u64).wrapping_mul(0x9E37_79B9))?));
            }
        }
        Ok(self)
    }

    pub(super) fn unet_gpu(&self) -> Gpu {
        self.params[0].1.gpu().clone()
    }

    /// Takes targets from `unet` (a copy of the student: the same checkpoint keys and
    /// shapes), whose weights [`Student::update_target`] then moves towards the student's.
    pub fn with_ema_target(mut self, unet: Unet3d, params: Vec<(String, Tensor)>) -> Result<Student> {
        let bad = |msg: String| Err(WeightsError::Data { path: "EMA target".into(), msg });
        if !self.adapters.is_empty() {
            return bad("an EMA target needs full fine-tuning (LoRA adapters train only part of each weight)".into());
        }
        if params.len() != self.params.len() {
            return bad(format!("{} weights, the student has {}", params.len(), self.params.len()));
        }
        for ((n, t), (m, s)) in params.iter().zip(&self.params) {
            if n != m || t.shape() != s.shape() {
                return bad(format!("{n} {:?} where the student has {m} {:?}", t.shape(), s.shape()));
            }
        }
        self.target = Some(EmaTarget { unet, params: params.into_iter().map(|(_, t)| t).collect() });
        Ok(self)
    }

    /// The network the consistency targets come from, when not the student itself.
    pub fn target_unet(&self) -> Option<&Unet3d> {
        self.target.as_ref().map(|t| &t.unet)
    }

    /// target <- decay * target + (1 - decay) * student, weight by weight (the reference's
    /// `update_ema` after every optimizer step); nothing without a target.
    pub fn update_target(&self, decay: f32) -> Result<()> {
        let Some(target) = &self.target else { return Ok(()) };
        for (t, (_, s)) in target.params.iter().zip(&self.params) {
            t2v_kernels::ops::axpby_assign(t, decay, s, 1.0 - decay)?;
        }
        Ok(())
    }

    /// The EMA target's weights (empty without one), in the order of [`Student::params`].
    pub(super) fn target_params(&self) -> Vec<Tensor> {
        self.target.as_ref().map(|t| t.params.clone()).unwrap_or_default()
    }

    /// The tensors the optimizer updates: the UNet's (or its adapters), then the text
    /// encoder's when it trains.
    pub fn trainable(&self) -> Vec<Tensor> {
        let unet: Vec<Tensor> = if self.adapters.is_empty() {
            self.params.iter().map(|(_, t)| t.clone()).collect()
        } else {
            self.adapters.iter().flat_map(|(_, l)| [l.down.clone(), l.up.clone()]).collect()
        };
        unet.into_iter().chain(self.text_params().map(|(_, t)| t.clone())).collect()
    }

    /// Names of [`Student::trainable`] in checkpoints (the text encoder's under
    /// VideoCrafter2's `cond_stage_model.model.`).
    pub fn trainable_names(&self) -> Vec<String> {
        let unet: Vec<String> = if self.adapters.is_empty() {
            self.params.iter().map(|(n, _)| n.clone()).collect()
        } else {
            self.adapters.iter().flat_map(|(i, _)| [format!("{}.lora_down", self.params[*i].0), format!("{}.lora_up", self.params[*i].0)]).collect()
        };
        unet.into_iter().chain(self.text_params().map(|(n, _)| format!("{TEXT_PREFIX}{n}"))).collect()
    }

    /// The trained text encoder's tensors (none when it does not train).
    fn text_params(&self) -> impl Iterator<Item = &(String, Tensor)> {
        self.text.iter().flat_map(|t| &t.params)
    }

    /// Puts the student on `tape`: trainable weights, or frozen weights with their
    /// adapters attached (tracked through the adapters).
    pub(super) fn attach(&self, tape: &Tape) -> Result<Vec<Var>> {
        if self.adapters.is_empty() {
            tape.train_only(&self.trainable());
            return Ok(vec![]);
        }
        let mut leaves = Vec::new();
        for (i, l) in &self.adapters {
            // linear and conv layers apply it next to the weight, others read it merged
            let vars = l.attach(tape, &self.params[*i].1)?;
            leaves.push(vars.down);
            leaves.push(vars.up);
        }
        Ok(leaves)
    }

    /// Puts the student on a tape for sampling: with LoRA, the adapters merged into the
    /// weights it reads, untracked (nothing to do without adapters).
    pub(crate) fn attach_for_sampling(&self, tape: &Tape) -> Result<()> {
        if !self.adapters.is_empty() {
            tape.no_grad(|| self.attach(tape))?;
        }
        Ok(())
    }

    /// Gradients of [`Student::trainable`] (zeros where none).
    pub(super) fn grads(&self, tape: &Tape, grads: &ad::Grads, leaves: &[Var]) -> Result<Vec<Tensor>> {
        let zero = |t: &Tensor| Tensor::zeros(t.gpu(), t.shape());
        let param = |p: &Tensor| Ok(match tape.param_grad(grads, p)? { Some(g) => g, None => zero(p)? });
        if self.adapters.is_empty() {
            return self.trainable().iter().map(param).collect();
        }
        leaves.iter().map(|v| Ok(match grads.get(v) { Some(g) => g.reshape(v.shape())?, None => zero(v.value())? })).collect()
    }

    /// The UNet weights with adapters merged (what a sampler loads).
    pub fn merged_params(&self) -> Result<Vec<(String, Tensor)>> {
        (0..self.params.len()).map(|i| Ok((self.params[i].0.clone(), self.merged_param(i)?))).collect()
    }

    /// UNet weight `i` with its adapter merged (the weight itself without one).
    fn merged_param(&self, i: usize) -> Result<Tensor> {
        let w = &self.params[i].1;
        Ok(match self.adapters.iter().find(|(k, _)| *k == i) {
            Some((_, l)) => l.merge(w)?,
            None => w.clone(),
        })
    }
}

/// Loads what a run needs from a model folder: the student (from the folder's UNet: a
/// teacher gets the student's new layers, deterministic in the seed; with LoRA, adapters),
/// the VAE, reward models (image-reward weights overridden by `reward_weights`) and the
/// tokenizer.
pub fn load_run(gpu: &Gpu, md: &crate::pipeline::model_dir::ModelDir, config: &TrainConfig, reward_weights: Option<&[f32]>) -> std::result::Result<(Student, RewardModels), TrainError> {
    let student = load_student(gpu, md, config)?;
    let models = RewardModels::load(gpu, md, reward_weights)?;
    models.set_checkpointing(config.recompute);
    Ok((student, models))
}

/// The trainable part of [`load_run`]: the student (with its LoRA adapters, trained text
/// encoder and EMA target as `config` asks), without the reward models.
pub fn load_student(gpu: &Gpu, md: &crate::pipeline::model_dir::ModelDir, config: &TrainConfig) -> std::result::Result<Student, TrainError> {
    config.check().map_err(TrainError::Setup)?;
    if md.is_student() && !config.motion_cond && md.unet.1.motion_cond_proj_dim.is_some() {
        return Err(TrainError::Setup(format!(
            "the UNet of {} is a student with a motion-scale embedding; --no-motion-cond makes a student conditioned on w alone from a teacher's folder",
            md.root.display()
        )));
    }
    let init = (!md.is_student()).then_some(crate::pipeline::model_dir::StudentInit { dim: config.cond_dim, motion: config.motion_cond, seed: config.seed });
    let load = || crate::pipeline::model_dir::load_unet_file(gpu, &md.unet.0, &md.unet.1, init, crate::models::weights::WeightPrecision::F32);
    let (mut unet, params) = load()?;
    unet.set_checkpointing(config.recompute);
    let mut student = Student { unet, params, adapters: vec![], target: None, text: None };
    if let Some(l) = config.lora {
        student = student.with_lora(l, config.seed)?;
    }
    if let Some(layers) = config.text_layers {
        student.text = Some(TextStudent::load(gpu, md, layers)?);
    }
    if config.ema_target.is_some() {
        // the same file and initialisation: the target starts as the student
        let (unet, params) = load()?;
        student = student.with_ema_target(unet, params)?;
    }
    Ok(student)
}

impl RewardModels {
    /// The VAE, reward models (image-reward weights overridden by `reward_weights`) and
    /// tokenizer of a model folder.
    pub fn load(gpu: &Gpu, md: &crate::pipeline::model_dir::ModelDir, reward_weights: Option<&[f32]>) -> std::result::Result<RewardModels, TrainError> {
        let mut image = md.load_image_rewards(gpu)?;
        if let Some(ws) = reward_weights {
            if ws.len() != image.len() {
                return Err(TrainError::Setup(format!("{} reward weights given, the model folder has {} image rewards", ws.len(), image.len())));
            }
            for (r, w) in image.iter_mut().zip(ws) {
                r.1 = *w;
            }
        }
        let tokenizer = ClipTokenizer::new().map_err(|e| TrainError::Setup(e.to_string()))?;
        Ok(RewardModels { vae: md.load_vae(gpu)?, image, video: md.load_video_reward(gpu)?, tokenizer })
    }

    /// Recompute the reward models' vision layers in the backward pass instead of keeping
    /// their activations (`train --recompute`; the reward frames' VAE decoding follows
    /// [`TrainConfig::recompute`]).
    pub fn set_checkpointing(&self, on: bool) {
        for (r, _) in &self.image {
            r.clip.vision.set_checkpointing(on);
        }
        if let Some(v) = &self.video {
            v.set_checkpointing(on);
        }
    }

    /// Whether some image reward weighs anything (a model of weight 0 is not run).
    pub fn has_image_reward(&self) -> bool {
        self.image.iter().any(|(_, w)| *w != 0.0)
    }

    /// R_img: the weighted sum over the image rewards of their mean score of `images`
    /// (N, 3, H, W) in [-1, 1] against `ids` (one per image), models of weight 0 left out
    /// (not run); None without image rewards.
    pub fn image_reward(&self, images: &Var, ids: &[Vec<u32>]) -> Result<Option<Var>> {
        let mut r: Option<Var> = None;
        for (model, weight) in self.image.iter().filter(|(_, w)| *w != 0.0) {
            let s = ad::scale(&ad::mean_all(&model.score(images, ids)?)?, *weight)?;
            r = Some(match r {
                Some(r) => ad::add(&r, &s)?,
                None => s,
            });
        }
        Ok(r)
    }
}

/// Writes the student as a model folder the sampler reads: its UNet (adapters merged) and
/// a config.json whose other models are the source folder's files (absolute paths).
pub fn write_student_model(dir: &Path, source: &crate::pipeline::model_dir::ModelDir, student: &Student, steps: u64, dtype: SaveDtype) -> Result<crate::pipeline::model_dir::ModelDir> {
    std::fs::create_dir_all(dir).map_err(|e| WeightsError::Write { path: dir.display().to_string(), msg: e.to_string() })?;
    let unet = dir.join("unet.safetensors");
    // each weight merged with its adapter as it is written: never the whole merged UNet
    // next to the student on the device
    let named: Vec<(String, Vec<usize>)> = student.params.iter().map(|(n, t)| (n.clone(), t.shape().to_vec())).collect();
    save_weights_made(&unet, &named, dtype, &[("model", "t2v-turbo student unet3d".into()), ("steps", steps.to_string())], |i| student.merged_param(i))?;
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut md = source.clone();
    md.root = dir.to_path_buf();
    for f in md.files_mut() {
        *f = abs(f);
    }
    md.unet = (unet, student.unet.config.clone());
    if let Some(text) = &student.text {
        let file = dir.join("text.safetensors");
        text.save(&file, dtype, steps)?;
        md.text.0 = file;
    }
    md.write_config()?;
    // a LoRA run's adapters also on their own: a small file that makes the student from
    // the teacher's folder
    if !student.adapters.is_empty() {
        crate::pipeline::lora_file::write_lora(&dir.join("lora.safetensors"), student, dtype)?;
    }
    Ok(md)
}
