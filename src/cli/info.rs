//! `t2v-turbo info`: adapters, features, limits, and a self-check of the chosen device.

use t2v_kernels::{list_adapters, ops, AdapterSummary, Gpu, Tensor, OPTIONAL_FEATURES};

use super::{CliError, DeviceArgs};

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Only list adapters; do not open a device and run the self-check.
    #[arg(long)]
    pub no_check: bool,
    /// Describe a checkpoint instead (safetensors, or a PyTorch file torch.save wrote):
    /// tensors, dtypes, parameter count, and which model(s) it holds.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<std::path::PathBuf>,
    /// With --weights: list every tensor (default: the first 30).
    #[arg(long)]
    pub all: bool,
    /// Describe a model folder instead: each model's file, size, parameters and dtypes,
    /// whether the UNet is a teacher or a student, the clip size, a LoRA file beside it.
    #[arg(long, value_name = "DIR")]
    pub models: Option<std::path::PathBuf>,
    /// Describe a folder of shards `preprocess` wrote instead: clip size and grid, how many
    /// records are motion-guided and carry a short caption, the draws of n and w, the
    /// negative prompt, and the videos its manifests say were skipped.
    #[arg(long, value_name = "DIR")]
    pub data: Option<std::path::PathBuf>,
    /// Describe a training run instead (its --out folder, or one of its checkpoints): the
    /// step reached, its checkpoints, the settings that differ from the defaults, the model
    /// folder it trains from, the last step's losses and rewards, the last validation.
    #[arg(long, value_name = "DIR")]
    pub run: Option<std::path::PathBuf>,
}

/// The parameters of tensors given as (dtype, shape), and their dtypes counted ("F16 x626").
fn tally<'a>(tensors: impl Iterator<Item = (String, &'a [usize])>) -> (usize, String) {
    let mut params = 0;
    let mut dtypes = std::collections::BTreeMap::new();
    for (dtype, shape) in tensors {
        params += shape.iter().product::<usize>();
        *dtypes.entry(dtype).or_insert(0usize) += 1;
    }
    (params, dtypes.iter().map(|(k, n)| format!("{k} x{n}")).collect::<Vec<_>>().join(", "))
}

/// `info --models DIR`.
fn describe_models(dir: &std::path::Path) -> Result<(), CliError> {
    use crate::pipeline::model_dir::{ModelDir, VideoRewardSpec};
    let md = ModelDir::read(dir)?;
    let v = md.video;
    println!(
        "{}: a {} model folder for {} frames of {}x{} at {} fps",
        dir.display(),
        if md.is_student() { "student's (distilled: conditioned on w and the motion scale)" } else { "teacher's" },
        v.frames,
        v.height,
        v.width,
        v.fps
    );
    let line = |what: &str, file: &std::path::Path| -> Result<String, CliError> {
        let wf = crate::models::weights::WeightFile::open(file)?;
        let (params, dt) = tally(wf.entries().values().map(|e| (format!("{:?}", e.dtype), e.shape.as_slice())));
        let bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        Ok(format!("  {what:<26} {:.1} M parameters, {dt}, {}: {}", params as f64 / 1e6, mib(bytes), file.display()))
    };
    let unet = &md.unet.1;
    println!("{}", line(&format!("UNet ({} channels)", unet.model_channels), &md.unet.0)?);
    println!("{}", line("VAE", &md.vae.0)?);
    println!("{}", line(&format!("text (width {})", md.text.1.text.width), &md.text.0)?);
    for r in &md.image_rewards {
        println!("{}", line(&format!("image reward {:?} x{}", r.preprocess, r.weight), &r.file)?);
    }
    match &md.video_reward {
        Some(VideoRewardSpec::InternVideo2 { file, tokenizer, .. }) => {
            println!("{}", line("video reward (IV2)", file)?);
            println!("  {:<26} {}", "video reward vocab", tokenizer.display());
        }
        Some(VideoRewardSpec::Clip { file, .. }) => println!("{}", line("video reward (CLIP)", file)?),
        None => println!("  {:<26} none", "video reward"),
    }
    let lora = dir.join("lora.safetensors");
    if lora.exists() {
        println!("{}", line("LoRA adapters", &lora)?);
    }
    Ok(())
}

/// `info --data DIR`.
fn describe_data(dir: &std::path::Path) -> Result<(), CliError> {
    let shards = crate::pipeline::shards::open_dataset(dir)?;
    let records: Vec<&crate::pipeline::shards::RecordMeta> = shards.iter().flat_map(|s| &s.records).collect();
    let c = &shards[0].config;
    println!(
        "{}: {} shard files, {} records of {} frames {}x{} at {} fps, on a DDIM grid of {} points",
        dir.display(),
        shards.len(),
        records.len(),
        c.frames,
        c.height,
        c.width,
        c.fps,
        c.ddim_steps
    );
    let guided = records.iter().filter(|r| r.motion_energy.is_some()).count();
    use crate::pipeline::preprocess::MotionReference;
    let references: std::collections::BTreeSet<String> = shards
        .iter()
        .map(|s| match s.config.motion_reference {
            MotionReference::Inversion => "DDIM inversion".to_string(),
            MotionReference::Noised { t } => format!("noised to t = {t}"),
        })
        .collect();
    println!("  motion-guided        {guided} of {} (reference: {})", records.len(), references.into_iter().collect::<Vec<_>>().join(", "));
    let draws: std::collections::BTreeSet<usize> = shards.iter().map(|s| s.config.draws).collect();
    println!("  draws per clip       {}", draws.iter().map(usize::to_string).collect::<Vec<_>>().join(", "));
    let short = records.iter().filter(|r| r.short_caption.is_some()).count();
    println!("  short captions       {short} of {} ({})", records.len(), if short > 0 { "the records rewards score" } else { "none: rewards score the captions" });
    let range = |v: Vec<f64>| v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    if !records.is_empty() {
        let (lo, hi) = range(records.iter().map(|r| r.index as f64).collect());
        let upper = records.iter().filter(|r| 2 * r.index >= c.ddim_steps).count();
        println!("  grid index n         {lo}..{hi} ({upper} in the upper half)");
        let (lo, hi) = range(records.iter().map(|r| r.w as f64).collect());
        println!("  guidance scale w     {lo:.2}..{hi:.2}");
    }
    let negatives: std::collections::BTreeSet<&str> = shards.iter().map(|s| s.config.negative_prompt.as_str()).collect();
    println!("  negative prompt      {}", negatives.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", "));
    let seeds: std::collections::BTreeSet<u64> = shards.iter().map(|s| s.config.seed).collect();
    println!("  seeds                {}", seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", "));
    // what each machine's manifest says it skipped
    let mut skipped = Vec::new();
    let mut manifests = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| CliError::Check(format!("{}: {e}", dir.display())))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("manifest-") && name.ends_with(".json")) {
            continue;
        }
        manifests += 1;
        let listed = crate::pipeline::shards::manifest_skipped_videos(&entry.path()).ok_or_else(|| CliError::Check(format!("{}: not a readable manifest", entry.path().display())))?;
        skipped.extend(listed.into_iter().map(|(path, why)| format!("{path}: {why}")));
    }
    skipped.sort();
    println!("  skipped videos       {} (in {manifests} manifest(s))", skipped.len());
    for s in skipped.iter().take(10) {
        println!("    {s}");
    }
    if skipped.len() > 10 {
        println!("    … and {} more", skipped.len() - 10);
    }
    Ok(())
}

/// `info --run DIR`.
fn describe_run(dir: &std::path::Path) -> Result<(), CliError> {
    use crate::pipeline::train::{list_checkpoints, read_checkpoint, read_jsonl, resolve_checkpoint, StepMetrics, TrainConfig};
    use crate::pipeline::validation::ValidationRow;
    let fail = |e: crate::pipeline::train::TrainError| CliError::Check(e.to_string());
    let ckpt = resolve_checkpoint(dir).map_err(fail)?;
    let info = read_checkpoint(&ckpt).map_err(fail)?;
    // the run folder: RUN/checkpoints/step-N -> RUN
    let run = ckpt.parent().and_then(|c| c.parent()).unwrap_or(dir).to_path_buf();
    let all: Vec<String> = list_checkpoints(&run.join("checkpoints")).iter().filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
    println!("{}: step {} of {} ({})", run.display(), info.state.step, info.config.steps, ckpt.display());
    println!("  checkpoints          {}", all.join(", "));
    match &info.models {
        Some(m) => println!("  trains from          {}", m.display()),
        None => println!("  trains from          (not recorded)"),
    }
    // the settings that differ from the defaults, as the checkpoint stores them
    let (set, default) = (serde_json::to_value(&info.config).expect("json"), serde_json::to_value(TrainConfig::default()).expect("json"));
    let changed: Vec<String> = set.as_object().into_iter().flatten().filter(|(k, v)| k.as_str() != "steps" && default.get(k.as_str()) != Some(v)).map(|(k, v)| format!("{k} = {}", setting(v))).collect();
    println!("  settings             {}", if changed.is_empty() { "the defaults".to_string() } else { changed.join(", ") });
    let metrics: Vec<StepMetrics> = read_jsonl(&run.join("metrics.jsonl"));
    if let Some(m) = metrics.last() {
        let reward = |r: Option<f32>| r.map_or("-".to_string(), |r| format!("{r:.4}"));
        let recent = &metrics[metrics.len().saturating_sub(10)..];
        println!(
            "  last step            {}: loss {:.5}, consistency {:.5}, image reward {}, video reward {}, gradient norm {:.3}, lr {:e}",
            m.step,
            m.loss,
            m.cd_loss,
            reward(m.image_reward),
            reward(m.video_reward),
            m.grad_norm,
            m.lr
        );
        println!(
            "  time and memory      {:.2} s a step (the last {}), peak {:.0} MiB in tensors",
            recent.iter().map(|m| m.seconds).sum::<f32>() / recent.len() as f32,
            recent.len(),
            metrics.iter().map(|m| m.peak_live_mib).fold(0.0, f32::max)
        );
    }
    let validations: Vec<ValidationRow> = read_jsonl(&run.join("validation.jsonl"));
    if let Some(v) = validations.last() {
        println!("  {}", crate::pipeline::validation::describe(v));
    }
    if run.join("model/config.json").exists() {
        println!("  student model folder {}", run.join("model").display());
    }
    Ok(())
}

/// A setting as JSON, its f32 numbers written shortest (0.95, not 0.949999988079071).
fn setting(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => (n.as_f64().unwrap_or(f64::NAN) as f32).to_string(),
        serde_json::Value::Array(items) => format!("[{}]", items.iter().map(setting).collect::<Vec<_>>().join(", ")),
        serde_json::Value::Object(fields) => format!("{{{}}}", fields.iter().map(|(k, v)| format!("{k}: {}", setting(v))).collect::<Vec<_>>().join(", ")),
        _ => v.to_string(),
    }
}

/// Known checkpoint key prefixes and what they hold.
const MODELS: &[(&str, &str)] = &[
    ("model.diffusion_model.", "VideoCrafter2 / T2V-Turbo 3D UNet"),
    ("first_stage_model.", "VAE (ldm AutoencoderKL)"),
    ("cond_stage_model.model.", "OpenCLIP text tower (VideoCrafter2 conditioning)"),
    ("visual.", "OpenCLIP vision tower (HPSv2.1 / CLIPScore)"),
    ("token_embedding.", "OpenCLIP text tower"),
    ("encoder.", "VAE encoder (no prefix)"),
    ("decoder.", "VAE decoder (no prefix)"),
    ("input_blocks.", "3D UNet (no prefix)"),
    ("vision_encoder.", "InternVideo2 vision encoder"),
    ("text_encoder.", "InternVideo2 BERT text encoder"),
];

fn describe_weights(path: &std::path::Path, all: bool) -> Result<(), CliError> {
    use crate::models::torch_checkpoint::{zip::is_zip, TorchCheckpoint};
    // (name, dtype, shape) of every tensor, and lines that say what the file is
    let mut magic = [0u8; 4];
    let zipped = std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok() && is_zip(&magic);
    let (tensors, notes): (Vec<(String, String, Vec<usize>)>, Vec<String>) = if zipped {
        let ck = TorchCheckpoint::open(path)?;
        let (entry, list) = ck.tensors(None)?;
        let keys = ck.top_keys().join(", ");
        let notes = vec![
            format!("a PyTorch checkpoint (torch.save); top-level keys: {keys}"),
            format!("tensors of entry {entry:?} below; `t2v-turbo convert {} --out FILE.safetensors` writes them for the loaders (--entry, --only)", path.display()),
        ];
        (list.into_iter().map(|(k, t)| (k, t.storage.dtype.safetensors().to_string(), t.shape)).collect(), notes)
    } else {
        let wf = crate::models::weights::WeightFile::open(path)?;
        let mut notes = if wf.metadata.is_empty() { vec![] } else { vec![format!("metadata: {:?}", wf.metadata)] };
        if wf.metadata.get("format").map(String::as_str) == Some(crate::pipeline::lora_file::LORA_FORMAT) {
            let n = wf.entries().keys().filter(|k| k.ends_with(".lora_down")).count();
            notes.insert(0, format!("a LoRA file of `t2v-turbo train --lora-rank`: {n} adapters (W.lora_down / W.lora_up) and the student's own layers (student.*); `t2v-turbo sample --models TEACHER --lora {}` adds them", path.display()));
        }
        (wf.entries().iter().map(|(k, e)| (k.clone(), format!("{:?}", e.dtype), e.shape.clone())).collect(), notes)
    };
    let (total, dtypes) = tally(tensors.iter().map(|t| (t.1.clone(), t.2.as_slice())));
    println!("{}: {} tensors, {} parameters ({:.1} M)", path.display(), tensors.len(), total, total as f64 / 1e6);
    println!("dtypes: {dtypes}");
    let mut found = Vec::new();
    for (prefix, what) in MODELS {
        let (n, p): (usize, usize) = tensors.iter().filter(|t| t.0.starts_with(prefix)).fold((0, 0), |(n, p), t| (n + 1, p + t.2.iter().product::<usize>()));
        if n > 0 {
            found.push(format!("  {what}: {n} tensors under {prefix:?}, {:.1} M parameters", p as f64 / 1e6));
        }
    }
    if found.is_empty() {
        println!("models: none recognised by key prefix");
    } else {
        println!("models:\n{}", found.join("\n"));
    }
    for n in notes {
        println!("{n}");
    }
    let shown = if all { tensors.len() } else { tensors.len().min(30) };
    for (k, d, shape) in tensors.iter().take(shown) {
        println!("  {k:<70} {d} {shape:?}");
    }
    if shown < tensors.len() {
        println!("  ... {} more (--all lists every tensor)", tensors.len() - shown);
    }
    Ok(())
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
}

fn describe(a: &AdapterSummary) -> String {
    let f = |flag: wgpu::Features, name: &str| format!("{name} {}", if a.features.contains(flag) { "yes" } else { "no" });
    let l = &a.limits;
    format!(
        "{}\n      features: {}, {}, {}; matrix cores: {}\n      limits: buffer {}, storage binding {}, workgroup memory {} KiB, \
         invocations/workgroup {}, workgroups/dim {}, subgroup size {}..{}",
        a.line(),
        f(wgpu::Features::SHADER_F16, "SHADER_F16"),
        f(wgpu::Features::SUBGROUP, "SUBGROUP"),
        f(wgpu::Features::TIMESTAMP_QUERY, "TIMESTAMP_QUERY"),
        match &a.matrix_cores {
            Ok(t) => format!("{t}x{t} f16 -> f32 fragments (--matrix-cores)"),
            Err(_) => "none usable".into(),
        },
        mib(l.max_buffer_size),
        mib(l.max_storage_buffer_binding_size),
        l.max_compute_workgroup_storage_size / 1024,
        l.max_compute_invocations_per_workgroup,
        l.max_compute_workgroups_per_dimension,
        a.info.subgroup_min_size,
        a.info.subgroup_max_size,
    )
}

pub fn run(dev: &DeviceArgs, args: &InfoArgs) -> Result<(), CliError> {
    if let Some(w) = &args.weights {
        return describe_weights(w, args.all);
    }
    if let Some(d) = &args.models {
        return describe_models(d);
    }
    if let Some(d) = &args.data {
        return describe_data(d);
    }
    if let Some(d) = &args.run {
        return describe_run(d);
    }
    let adapters = list_adapters();
    println!("t2v-turbo {} — {} adapter(s):", env!("CARGO_PKG_VERSION"), adapters.len());
    for a in &adapters {
        println!("  {}", describe(a));
    }
    // several GPUs of one kind: say how to use them together
    let gpus: Vec<String> = adapters.iter().filter(|a| matches!(a.info.device_type, wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu)).map(|a| a.index.to_string()).collect();
    if gpus.len() > 1 {
        println!("several GPUs: `train --devices {0}`, `sample --devices {0}` and `preprocess --devices {0}` use them together", gpus.join(","));
    }
    if args.no_check {
        return Ok(());
    }
    let gpu = Gpu::new(&dev.gpu_options(true))?;
    let info = gpu.adapter_info();
    let enabled: Vec<String> = (gpu.features() & OPTIONAL_FEATURES).iter_names().map(|(n, _)| n.to_string()).collect();
    println!(
        "chosen: {} ({:?}, {:?}); optional features enabled: {}; largest tensor {}; 3x3 convolutions: {:?} (T2V_CONV_PATH); GEMMs: {}",
        info.name,
        info.backend,
        info.device_type,
        if enabled.is_empty() { "none".into() } else { enabled.join(", ") },
        mib(gpu.max_binding_bytes()),
        gpu.conv_path(),
        gpu.gemm_mode()
    );
    // Self-check: a small matmul and softmax against the host.
    let (m, k, n) = (37usize, 53usize, 29usize);
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0).collect();
    let c = ops::matmul(&Tensor::from_slice(&gpu, &[m, k], &a)?, &Tensor::from_slice(&gpu, &[k, n], &b)?)?;
    let got = c.to_vec()?;
    let mut worst = 0f64;
    for i in 0..m {
        for j in 0..n {
            let want: f64 = (0..k).map(|l| a[i * k + l] as f64 * b[l * n + j] as f64).sum();
            worst = worst.max((got[i * n + j] as f64 - want).abs());
        }
    }
    if worst > 1e-4 {
        return Err(CliError::Check(format!("self-check failed: matmul differs from the CPU by {worst:e}")));
    }
    println!("self-check: matmul {m}x{k}x{n} matches the CPU (max error {worst:.1e}) — ok");
    Ok(())
}
