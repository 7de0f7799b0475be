//! Text-to-video with the distilled student: prompt -> OpenCLIP text context -> multistep
//! consistency sampling (4/8/16 steps, no CFG: w is an input of the student) -> VAE decode;
//! or video-to-video (SDEdit): a given video, encoded and noised part of the way, re-generated
//! from there.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use t2v_kernels::autograd::{self as ad, Tape, Var};
use t2v_kernels::{ops, Gpu, Tensor};

use crate::diffusion::{consistency_sample, consistency_timesteps, ddim_sample_on, ddim_timesteps, partial_consistency_timesteps, strength_points, DdimConfig, SamplerConfig, Schedule};
use crate::models::clip::{TextConfig, TextTower};
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet3d::{Unet3d, UnetConfig};
use crate::models::vae::{Vae, VaeConfig};
use crate::models::weights::{Result, WeightPrecision, WeightsError};

/// The models of generation, each with its checkpoint key prefix detected from the file
/// (a VideoCrafter2 checkpoint holds all three under `model.diffusion_model.`,
/// `first_stage_model.` and `cond_stage_model.model.`; separate files may use none).
pub struct Generator {
    pub unet: Unet3d,
    pub vae: Vae,
    pub text: TextTower,
    pub tokenizer: ClipTokenizer,
    pub schedule: Schedule,
}

/// Weight files and configs of a [`Generator`].
pub struct GeneratorFiles<'a> {
    pub unet: &'a Path,
    pub vae: &'a Path,
    pub text: &'a Path,
    pub unet_config: UnetConfig,
    pub vae_config: VaeConfig,
    pub text_config: TextConfig,
    /// How the models keep their matrix weights.
    pub precision: WeightPrecision,
}

impl Generator {
    pub fn load(gpu: &Gpu, f: &GeneratorFiles) -> Result<Generator> {
        use crate::pipeline::model_dir::{load_text_file, load_unet_file, load_vae_file};
        let unet = load_unet_file(gpu, f.unet, &f.unet_config, None, f.precision)?.0;
        let vae = load_vae_file(gpu, f.vae, &f.vae_config, f.precision)?;
        let text = load_text_file(gpu, f.text, &f.text_config, f.precision)?;
        Generator::of(unet, vae, text)
    }

    /// The models of a model folder.
    pub fn from_model_dir(gpu: &Gpu, md: &crate::pipeline::model_dir::ModelDir) -> Result<Generator> {
        Generator::of(md.load_unet(gpu)?, md.load_vae(gpu)?, md.load_text(gpu)?)
    }

    /// Loaded models with the CLIP tokenizer and VideoCrafter2's schedule.
    fn of(unet: Unet3d, vae: Vae, text: TextTower) -> Result<Generator> {
        let tokenizer = ClipTokenizer::new().map_err(|e| WeightsError::Data { path: "tokenizer".into(), msg: e.to_string() })?;
        Ok(Generator { unet, vae, text, tokenizer, schedule: Schedule::videocrafter() })
    }

    /// Whether the UNet is a distilled student (conditioned on the guidance scale w).
    pub fn is_student(&self) -> bool {
        self.unet.config.time_cond_proj_dim.is_some()
    }

    /// The models of a folder with the adapters of a LoRA file added to its UNet, times
    /// `strength` ([`crate::pipeline::lora_file`]): a teacher's folder and a LoRA run's
    /// `lora.safetensors` make its student. The UNet is kept in f32 (the merge writes it).
    pub fn from_model_dir_with_lora(gpu: &Gpu, md: &crate::pipeline::model_dir::ModelDir, lora: &Path, strength: f32) -> Result<Generator> {
        use crate::pipeline::lora_file::{apply_lora, open_lora, student_cond_dim, student_motion_cond};
        let file = open_lora(lora)?;
        let init = match (md.is_student(), student_cond_dim(&file)) {
            (true, _) => None,
            (false, Some(dim)) => Some(crate::pipeline::model_dir::StudentInit { dim, motion: student_motion_cond(&file), seed: 0 }),
            (false, None) => return Err(WeightsError::Data { path: lora.display().to_string(), msg: format!("carries no student layers, and the UNet of {} is a teacher: a student's LoRA needs the student it was trained on", md.root.display()) }),
        };
        let (unet, params) = crate::pipeline::model_dir::load_unet_file(gpu, &md.unet.0, &md.unet.1, init, WeightPrecision::F32)?;
        apply_lora(&params, &file, strength)?;
        Generator::of(unet, md.load_vae(gpu)?, md.load_text(gpu)?)
    }

    /// One video (3, F, H, W) in [-1, 1] for `prompt`, with noise seeded by `opts.seed`.
    pub fn generate(&self, prompt: &str, opts: &SampleOptions) -> Result<Vec<f32>> {
        Ok(self.generate_batch(&[(prompt, opts.seed)], opts)?.pop().expect("one video"))
    }

    /// Several videos in one batch, (prompt, seed) each: one UNet call per step for the
    /// whole batch (the teacher's CFG doubles it). Every video draws its noise from its own
    /// seeded stream, so it is the same video whatever batch it is generated in.
    pub fn generate_batch(&self, items: &[(&str, u64)], opts: &SampleOptions) -> Result<Vec<Vec<f32>>> {
        self.models().generate_batch(&Tape::new(), items, opts)
    }

    /// [`Generator::generate_batch`], calling `on_step` with the number of steps done after
    /// each sampling step (of [`SampleOptions::sampling_steps`]; for progress bars: the
    /// device is synced at most once a second, so the count follows the computation, not
    /// only the recording). `ControlFlow::Break(())` cancels the generation: it stops
    /// there and returns [`WeightsError::Cancelled`].
    pub fn generate_batch_observed(&self, items: &[(&str, u64)], opts: &SampleOptions, on_step: &mut dyn FnMut(usize) -> ControlFlow<()>) -> Result<Vec<Vec<f32>>> {
        self.models().run_batch(&Tape::new(), items, opts, Some(on_step))
    }

    /// Several videos as one tensor (B, 3, F, H, W) of values in [-1, 1], left on the
    /// device (nothing is read back): for applications that use the frames on the GPU.
    pub fn generate_batch_tensor(&self, items: &[(&str, u64)], opts: &SampleOptions) -> Result<Tensor> {
        self.models().run_tensor(&Tape::new(), items, opts, None)
    }

    /// [`Generator::generate_batch_tensor`] with [`Generator::generate_batch_observed`]'s
    /// per-step callback (progress, cancellation).
    pub fn generate_batch_tensor_observed(&self, items: &[(&str, u64)], opts: &SampleOptions, on_step: &mut dyn FnMut(usize) -> ControlFlow<()>) -> Result<Tensor> {
        self.models().run_tensor(&Tape::new(), items, opts, Some(on_step))
    }

    /// Generates `items` and writes their frames into layers `first_layer ..` of a texture
    /// the application owns (video b's frame f into layer `first_layer + b * F + f`; the
    /// formats and usage [`ops::video_to_texture`] takes). Returns once the work is
    /// submitted, without waiting: the application's later submissions on the queue see
    /// the frames.
    pub fn generate_into_texture(&self, items: &[(&str, u64)], opts: &SampleOptions, texture: &wgpu::Texture, first_layer: u32) -> Result<()> {
        let video = self.generate_batch_tensor(items, opts)?;
        Ok(ops::video_to_texture(&video, texture, first_layer)?)
    }

    /// The models, borrowed.
    pub fn models(&self) -> SamplerModels<'_> {
        SamplerModels { unet: &self.unet, vae: &self.vae, text: &self.text, tokenizer: &self.tokenizer, schedule: &self.schedule }
    }
}

/// The models of generation, borrowed: what [`Generator`] owns, or a student in training
/// (whose tape may carry LoRA adapters) with the run's VAE and text tower.
#[derive(Clone, Copy)]
pub struct SamplerModels<'a> {
    pub unet: &'a Unet3d,
    pub vae: &'a Vae,
    pub text: &'a TextTower,
    pub tokenizer: &'a ClipTokenizer,
    pub schedule: &'a Schedule,
}

impl SamplerModels<'_> {
    /// [`Generator::generate_batch`] on `tape` (run without gradients; a tape with LoRA
    /// adapters attached samples the adapted weights).
    pub fn generate_batch(&self, tape: &Tape, items: &[(&str, u64)], opts: &SampleOptions) -> Result<Vec<Vec<f32>>> {
        self.run_batch(tape, items, opts, None)
    }

    /// The generation, with [`Generator::generate_batch_observed`]'s per-step callback,
    /// read back: one (3, F, H, W) video per item.
    fn run_batch(&self, tape: &Tape, items: &[(&str, u64)], opts: &SampleOptions, on_step: Option<&mut dyn FnMut(usize) -> ControlFlow<()>>) -> Result<Vec<Vec<f32>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let video = self.run_tensor(tape, items, opts, on_step)?.to_vec()?;
        let per = video.len() / items.len();
        Ok(video.chunks(per).map(<[f32]>::to_vec).collect())
    }

    /// The generation on the device: (B, 3, F, H, W).
    fn run_tensor(&self, tape: &Tape, items: &[(&str, u64)], opts: &SampleOptions, mut on_step: Option<&mut dyn FnMut(usize) -> ControlFlow<()>>) -> Result<Tensor> {
        let gpu = self.vae.gpu();
        let b = items.len();
        if b == 0 {
            return Err(WeightsError::Gpu(t2v_kernels::Error::Shape { op: "sample", msg: "no prompts to generate".into() }));
        }
        if opts.teacher.is_none() && opts.negative_prompt.is_some() {
            return Err(WeightsError::Data { path: "sampling options".into(), msg: NO_STUDENT_NEGATIVE.into() });
        }
        tape.no_grad(|| -> Result<Tensor> {
            let tokenize = |p: &str| -> Result<Vec<u32>> { Ok(self.tokenizer.encode_warn(p).map_err(|e| WeightsError::Data { path: "prompt".into(), msg: e.to_string() })?.ids) };
            let ids = items.iter().map(|(p, _)| tokenize(p)).collect::<Result<Vec<_>>>()?;
            let context = self.text.penultimate(tape, &ids)?;
            let f = 1usize << (self.vae.config.ch_mult.len() - 1);
            if opts.height % (f * 2) != 0 || opts.width % (f * 2) != 0 {
                return Err(WeightsError::Gpu(t2v_kernels::Error::Shape { op: "sample", msg: format!("height and width must be multiples of {}", f * 2) }));
            }
            let one = [1, self.unet.config.in_channels, opts.frames, opts.height / f, opts.width / f];
            let n: usize = one.iter().product();
            let shape = [b, one[1], one[2], one[3], one[4]];
            // (B, C, F, h, w) noise: video k's block from stream k
            let mut rngs: Vec<Gaussian> = items.iter().map(|&(_, seed)| Gaussian::new(seed)).collect();
            let mut draw = || -> Result<Tensor> {
                let v: Vec<f32> = rngs.iter_mut().flat_map(|r| r.take(n)).collect();
                Ok(Tensor::from_slice(gpu, &shape, &v)?)
            };
            let noise = tape.constant(draw()?);
            // video-to-video: the given video's latent, noised to the first timestep run
            let clean = opts.init.as_ref().map(|iv| self.encode_init(tape, iv, b, opts)).transpose()?;
            let start = |t: usize| -> Result<Var> {
                match &clean {
                    Some(z0) => self.schedule.add_noise(z0, &noise, t),
                    None => Ok(noise.clone()),
                }
            };
            let fps = vec![opts.fps; b];
            // progress: the device is synced at most once a second, so the steps reported
            // are computed ones (give or take a second of recording) without costing the
            // overlap of recording and computing on every step
            let mut synced = Instant::now();
            let (mut done, total) = (0, opts.sampling_steps());
            let step = || -> Result<()> {
                done += 1;
                if let Some(f) = on_step.as_mut() {
                    if synced.elapsed().as_secs_f64() >= 1.0 {
                        gpu.sync()?;
                        synced = Instant::now();
                    }
                    if f(done).is_break() {
                        return Err(WeightsError::Cancelled { done, total });
                    }
                }
                Ok(())
            };
            let latent = match &opts.teacher {
                Some(tc) => {
                    // CFG's other branch: the negative prompt's context (VideoCrafter2: "")
                    let uncond = self.text.penultimate(tape, &[tokenize(opts.negative_prompt.as_deref().unwrap_or(""))?])?;
                    let grid = opts.teacher_grid(self.schedule.len(), tc)?;
                    let init = start(*grid.last().expect("a grid point"))?;
                    ddim_sample_on(self.unet, self.schedule, &grid, &init, &context, &uncond, &fps, tc, |_| draw(), step)?
                }
                None => {
                    let cfg = SamplerConfig {
                        timesteps: opts.consistency_timesteps(self.schedule.len())?,
                        w: opts.w,
                        motion_scale: opts.motion_scale,
                        motion_percentage: opts.motion_percentage,
                    };
                    let init = start(cfg.timesteps[0])?;
                    let out = consistency_sample(self.unet, self.schedule, &init, &context, &fps, &cfg, |_| draw(), step)?;
                    out.last().expect("at least one step").clone()
                }
            };
            Ok(self.vae.decode_video(&latent)?.value().clone())
        })
    }

    /// The scaled latent of a video-to-video run's video, once per item: (B, C, F, h, w).
    fn encode_init(&self, tape: &Tape, iv: &InitVideo, b: usize, opts: &SampleOptions) -> Result<Var> {
        let bad = |msg: String| WeightsError::Data { path: "init video".into(), msg };
        iv.checked_strength()?;
        let shape = [1, 3, opts.frames, opts.height, opts.width];
        if iv.pixels.len() != shape.iter().product::<usize>() {
            return Err(bad(format!("{} values, but (3, F, H, W) = (3, {}, {}, {}) needs {}", iv.pixels.len(), opts.frames, opts.height, opts.width, shape.iter().product::<usize>())));
        }
        let encode = || -> Result<Tensor> {
            let x = tape.constant(Tensor::from_slice(self.vae.gpu(), &shape, &iv.pixels)?);
            Ok(self.vae.encode_video(&x)?.value().clone())
        };
        let z0 = tape.constant(iv.latent(self.vae, &shape, encode)?);
        Ok(if b == 1 { z0 } else { ad::concat(&vec![&z0; b], 0)? })
    }
}

/// Why a student refuses a negative prompt.
pub const NO_STUDENT_NEGATIVE: &str = "a negative prompt needs the teacher's classifier-free guidance: the distilled student has no unconditional branch (its guidance is distilled into one call, conditioned on w); sample the teacher, or drop the negative prompt";

/// A video-to-video run's start (SDEdit): the video is encoded, noised to the first timestep
/// the sampler runs, and re-generated from there under the prompt. The encoding is kept
/// (shared by clones), so later batches with the same VAE do not encode the video again.
#[derive(Clone)]
pub struct InitVideo {
    /// (3, F, H, W) in [-1, 1] at the options' frames, height and width (e.g.
    /// [`crate::pipeline::video_io::Frames::to_model_input`]).
    pub pixels: Arc<[f32]>,
    /// How much of the trajectory is re-generated, in (0, 1]: the student's steps are spread
    /// over the lowest `strength` of its grid, the teacher runs the lowest `strength` of its
    /// DDIM steps (diffusers' img2img). Lower keeps more of the video.
    pub strength: f32,
    encoded: Arc<Mutex<Option<EncodedInit>>>,
}

/// An [`InitVideo`]'s latent (1, C, F, h, w), with what it was computed from.
struct EncodedInit {
    vae: u64,
    pixels: Arc<[f32]>,
    shape: [usize; 5],
    z0: Tensor,
}

impl InitVideo {
    pub fn new(pixels: impl Into<Arc<[f32]>>, strength: f32) -> InitVideo {
        InitVideo { pixels: pixels.into(), strength, encoded: Arc::default() }
    }

    fn checked_strength(&self) -> Result<f32> {
        let s = self.strength;
        if s > 0.0 && s <= 1.0 {
            Ok(s)
        } else {
            Err(WeightsError::Data { path: "init video".into(), msg: format!("strength {s} is outside (0, 1]") })
        }
    }

    /// The latent of `pixels` shaped `shape` under `vae`: the kept one when it was made from
    /// these pixels (the same allocation) at this shape by this VAE, else `encode`'s, kept.
    fn latent(&self, vae: &Vae, shape: &[usize; 5], encode: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
        let mut kept = self.encoded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = kept.as_ref().filter(|e| e.vae == vae.id() && Arc::ptr_eq(&e.pixels, &self.pixels) && e.shape == *shape) {
            return Ok(e.z0.clone());
        }
        let z0 = encode()?;
        *kept = Some(EncodedInit { vae: vae.id(), pixels: self.pixels.clone(), shape: *shape, z0: z0.clone() });
        Ok(z0)
    }

    /// Whether the latent kept is `vae`'s encoding of these pixels (after a generation).
    pub fn is_encoded_by(&self, vae: &Vae) -> bool {
        let kept = self.encoded.lock().unwrap_or_else(|e| e.into_inner());
        kept.as_ref().is_some_and(|e| e.vae == vae.id() && Arc::ptr_eq(&e.pixels, &self.pixels))
    }
}

impl std::fmt::Debug for InitVideo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InitVideo {{ {} values, strength {} }}", self.pixels.len(), self.strength)
    }
}

/// Options of one generation.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub steps: usize,
    pub origin: usize,
    pub w: f32,
    pub motion_scale: f32,
    pub motion_percentage: f32,
    pub seed: u64,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub fps: f32,
    /// Sample with the teacher's DDIM + CFG instead of the student.
    pub teacher: Option<DdimConfig>,
    /// The teacher's classifier-free guidance steers away from this prompt instead of the
    /// empty one (None: "", as VideoCrafter2 samples): eps = eps(neg) + cfg (eps(prompt) -
    /// eps(neg)), for every video of a batch. The student has no such branch (its guidance
    /// was distilled into one call with w): refused there.
    pub negative_prompt: Option<String>,
    /// Start from this video instead of noise (video-to-video).
    pub init: Option<InitVideo>,
}

impl SampleOptions {
    /// `t2v-turbo sample`'s defaults for the models of a folder, at its clip size: a
    /// student's 4 consistency steps from the 200-point grid (w 7.5, motion scale 0.05 over
    /// the first half), a teacher's DDIM as VideoCrafter2 samples ([`DdimConfig::default`]);
    /// seed 0.
    pub fn for_models(md: &crate::pipeline::model_dir::ModelDir) -> SampleOptions {
        let v = md.video;
        SampleOptions {
            steps: 4,
            origin: 200,
            w: 7.5,
            motion_scale: 0.05,
            motion_percentage: 0.5,
            seed: 0,
            frames: v.frames,
            height: v.height,
            width: v.width,
            fps: v.fps,
            teacher: (!md.is_student()).then(DdimConfig::default),
            negative_prompt: None,
            init: None,
        }
    }

    /// UNet steps of one generation: the teacher's DDIM steps (those a video-to-video run
    /// takes) or the student's.
    pub fn sampling_steps(&self) -> usize {
        self.teacher.as_ref().map_or(self.steps, |t| self.init.as_ref().map_or(t.steps, |iv| strength_points(t.steps, iv.strength)))
    }

    /// The student's timesteps, from the top of the grid or (video-to-video) from the
    /// strength's point of it.
    pub fn consistency_timesteps(&self, n_train: usize) -> Result<Vec<usize>> {
        if self.steps == 0 || self.origin == 0 || self.origin > n_train || self.steps > self.origin {
            return Err(WeightsError::Data {
                path: "sampling options".into(),
                msg: format!("{} steps on a {}-point grid: the steps must be 1 ..= the grid's points, the grid 1 ..= {n_train} points", self.steps, self.origin),
            });
        }
        let Some(iv) = &self.init else {
            return Ok(consistency_timesteps(n_train, self.origin, self.steps));
        };
        let s = iv.checked_strength()?;
        partial_consistency_timesteps(n_train, self.origin, self.steps, s).ok_or_else(|| WeightsError::Data {
            path: "init video".into(),
            msg: format!(
                "strength {s} keeps {} points of the {}-point grid, fewer than the {} steps: raise the strength or lower the steps",
                strength_points(self.origin, s),
                self.origin,
                self.steps
            ),
        })
    }

    /// The teacher's DDIM grid, ascending: all `steps` points, or a video-to-video run's
    /// lowest ones.
    pub fn teacher_grid(&self, n_train: usize, tc: &DdimConfig) -> Result<Vec<usize>> {
        if tc.steps == 0 || tc.steps > n_train {
            return Err(WeightsError::Data { path: "sampling options".into(), msg: format!("{} DDIM steps: 1 ..= {n_train} are possible", tc.steps) });
        }
        let mut grid = ddim_timesteps(n_train, tc.steps);
        if let Some(iv) = &self.init {
            let s = iv.checked_strength()?;
            let k = strength_points(grid.len(), s);
            if k == 0 {
                return Err(WeightsError::Data { path: "init video".into(), msg: format!("strength {s} runs none of the teacher's {} DDIM steps: raise the strength or the steps", tc.steps) });
            }
            grid.truncate(k);
        }
        Ok(grid)
    }
}

/// Standard normal samples (splitmix64 + Box-Muller), deterministic in the seed.
pub struct Gaussian(u64);

impl Gaussian {
    pub fn new(seed: u64) -> Gaussian {
        Gaussian(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    /// The generator's whole state (to checkpoint and resume a stream exactly).
    pub fn state(&self) -> u64 {
        self.0
    }
    pub fn from_state(state: u64) -> Gaussian {
        Gaussian(state)
    }
    /// A uniform draw in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn take(&mut self, n: usize) -> Vec<f32> {
        let mut v = Vec::with_capacity(n + 1);
        while v.len() < n {
            let (u1, u2) = (self.uniform(), self.uniform());
            let r = (-2.0 * u1.ln()).sqrt();
            v.push((r * (2.0 * std::f64::consts::PI * u2).cos()) as f32);
            v.push((r * (2.0 * std::f64::consts::PI * u2).sin()) as f32);
        }
        v.truncate(n);
        v
    }
}
