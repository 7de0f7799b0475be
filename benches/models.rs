//! Model costs with random weights: `cargo bench -p t2v-turbo --bench models`.
//! VideoCrafter2 sizes on a GPU; reduced sizes on a CPU adapter (lavapipe), stated in the
//! table. Every timed run reads one output value back and checks that it is finite and equal
//! to the warm-up run's (the parity tests establish the values themselves).
//! With `T2V_PROFILE=1` the UNet's, VAE's and video reward's lines are followed by the
//! per-kernel GPU times of one more run (the 40 slowest kernels and shapes; needs TIMESTAMP_QUERY).

use t2v_kernels::autograd::Tape;
use t2v_kernels::bench::{best_time, pseudo_data};
use t2v_kernels::{Gpu, GpuOptions, Tensor};
use t2v_kernels::autograd as ad;
use t2v_turbo::models::clip::{TextConfig, TextTower};
use t2v_turbo::models::internvideo2::{InternVideo2, InternVideo2Config};
use t2v_turbo::models::tokenizer::{BertTokenizer, ClipTokenizer};
use t2v_turbo::models::unet3d::{Unet3d, UnetConfig, UnetInputs};
use t2v_turbo::models::vae::{Vae, VaeConfig};
use t2v_turbo::models::weights::Loader;
use t2v_turbo::reward::{InternVideo2Reward, VideoTextReward};

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// Times `f` (which returns one output value); checks finiteness and determinism.
fn timed(gpu: &Gpu, budget: f64, f: impl Fn() -> f32) -> (f64, u64) {
    let first = f();
    assert!(first.is_finite(), "non-finite output");
    gpu.sync().unwrap();
    gpu.reset_peak_memory();
    let base = gpu.memory().live_bytes;
    let t = best_time(budget, 2, || assert_eq!(f(), first, "a repeated run gave another value"));
    (t, gpu.memory().peak_live_bytes - base)
}

/// `T2V_PROFILE=1`: per-kernel GPU times of one more run of `f`, slowest 40 first.
fn profile(gpu: &Gpu, f: impl Fn() -> f32) {
    if !std::env::var("T2V_PROFILE").is_ok_and(|v| v == "1") {
        return;
    }
    gpu.set_profiling(true).unwrap();
    let t = std::time::Instant::now();
    f();
    let wall = t.elapsed().as_secs_f64();
    let table = gpu.profile_table().unwrap();
    gpu.set_profiling(false).unwrap();
    let gpu_ms: f64 = gpu.profile().unwrap().iter().map(|r| r.total_ms).sum();
    println!("```\nprofiled run: {:.1} ms wall, {gpu_ms:.1} ms in kernels", wall * 1e3);
    for line in table.lines().take(41) {
        println!("{line}");
    }
    println!("```");
}

fn main() {
    let gpu = Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).expect("a wgpu adapter");
    let cpu = gpu.is_cpu();
    let info = gpu.adapter_info().clone();
    let gemms = gpu.gemm_mode();
    println!("device: {} ({:?}, {:?}); GEMMs: {gemms}", info.name, info.backend, info.device_type);
    println!("| model | size | best ms | peak activation MiB |");
    println!("|---|---|---:|---:|");
    let budget = if cpu { 5.0 } else { 2.0 };

    // 3D UNet (one call, student conditioning)
    let (cfg, f, h, w, what) = if cpu {
        (UnetConfig { model_channels: 64, num_head_channels: 32, context_dim: 256, ..Default::default() }, 4, 16, 16, "reduced: 64 channels, 4x16x16 latent")
    } else {
        (UnetConfig::default(), 16, 40, 64, "VideoCrafter2: 320 channels, 16x40x64 latent")
    };
    let unet = Unet3d::load(&Loader::random(&gpu, 1), &cfg).unwrap();
    let z = Tensor::from_slice(&gpu, &[1, 4, f, h, w], &pseudo_data(4 * f * h * w, 2)).unwrap();
    let ctx = Tensor::from_slice(&gpu, &[1, 77, cfg.context_dim], &pseudo_data(77 * cfg.context_dim, 3)).unwrap();
    let emb = Tensor::from_slice(&gpu, &[1, 256], &pseudo_data(256, 4)).unwrap();
    let call = || {
        let tape = Tape::new();
        let (zv, cv, e) = (tape.constant(z.clone()), tape.constant(ctx.clone()), tape.constant(emb.clone()));
        let out = unet
            .forward(&UnetInputs { z: &zv, t: &[499.0], context: &cv, fps: &[8.0], w_embedding: Some(&e), motion_embedding: Some(&e), record_attention: false })
            .unwrap();
        out.eps.value().item_at(7).unwrap()
    };
    let (t, peak) = timed(&gpu, budget, call);
    println!("| 3D UNet forward | {what} | {:.1} | {:.1} |", t * 1e3, mib(peak));
    profile(&gpu, call);

    // VAE decoder per frame
    let (vcfg, lh, lw, what) = if cpu { (VaeConfig::default(), 8, 8, "VideoCrafter2 VAE, 1 frame 64x64") } else { (VaeConfig::default(), 40, 64, "VideoCrafter2 VAE, 1 frame 320x512") };
    let vae = Vae::load(&Loader::random(&gpu, 5), &vcfg).unwrap();
    let lat = Tensor::from_slice(&gpu, &[1, 4, lh, lw], &pseudo_data(4 * lh * lw, 6)).unwrap();
    let call = || {
        let tape = Tape::new();
        vae.decode(&tape.constant(lat.clone())).unwrap().value().item_at(11).unwrap()
    };
    let (t, peak) = timed(&gpu, budget, call);
    println!("| VAE decoder | {what} | {:.1} | {:.1} |", t * 1e3, mib(peak));
    profile(&gpu, call);
    // a video's frames in as few passes as the bindings allow vs one frame per pass
    // (`sample --vae-frames-per-pass 1`): the memory that saves, the time it costs
    let frames = if cpu { 4 } else { 16 };
    let lat = Tensor::from_slice(&gpu, &[frames, 4, lh, lw], &pseudo_data(frames * 4 * lh * lw, 8)).unwrap();
    let mut first_time = f64::NAN;
    for (per, vae) in [("as many frames per pass as a binding holds", vae), ("1 frame per pass", Vae::load(&Loader::random(&gpu, 5), &vcfg).unwrap().with_images_per_pass(1))] {
        let call = || {
            let tape = Tape::new();
            tape.no_grad(|| vae.decode(&tape.constant(lat.clone())).unwrap().value().item_at(11).unwrap())
        };
        let (t, peak) = timed(&gpu, budget, call);
        if first_time.is_nan() {
            first_time = t;
        }
        println!("| VAE decoder, {frames} frames, {per} | {what} each | {:.1} ({:.2}x) | {:.1} |", t * 1e3, t / first_time, mib(peak));
    }

    // Text tower (penultimate context of two prompts)
    let (tcfg, what) = if cpu {
        (TextConfig { context_length: 77, vocab_size: 49408, width: 512, heads: 8, layers: 12 }, "reduced: width 512, 12 layers, 2 prompts")
    } else {
        (TextConfig { context_length: 77, vocab_size: 49408, width: 1024, heads: 16, layers: 24 }, "OpenCLIP ViT-H text, 2 prompts")
    };
    let text = TextTower::load(&Loader::random(&gpu, 7), &tcfg, None).unwrap();
    let tok = ClipTokenizer::new().unwrap();
    let ids: Vec<Vec<u32>> = ["a red fox running through snow", "a teddy bear skating in Times Square"].iter().map(|p| tok.encode(p).unwrap().ids).collect();
    let (t, peak) = timed(&gpu, budget, || {
        let tape = Tape::new();
        text.penultimate(&tape, &ids).unwrap().value().item_at(5).unwrap()
    });
    println!("| text tower | {what} | {:.1} | {:.1} |", t * 1e3, mib(peak));

    // Video reward: InternVideo2-stage2 score of one 4-frame video and its gradient w.r.t.
    // the frames (how training uses it)
    let full = InternVideo2Config::default();
    let (icfg, vh, vw, what) = if cpu {
        let mut c = full.clone();
        (c.vision.depth, c.vision.embed_dim, c.vision.num_heads, c.vision.mlp_hidden, c.vision.clip_embed_dim) = (4, 384, 6, 1536, 384);
        (c.text.layers, c.text.hidden_size, c.text.heads, c.text.intermediate_size, c.text.vocab_size) = (4, 256, 4, 1024, 1000);
        (c, 64, 96, "reduced: ViT width 384, 4 blocks, BERT width 256, 4 layers; 4 frames 64x96 -> 224")
    } else {
        (full, 320, 512, "InternVideo2-stage2 1B + BERT-large text; 4 frames 320x512 -> 224")
    };
    let vocab = t2v_turbo::pipeline::model_dir::world_vocab(icfg.text.vocab_size);
    let reward = InternVideo2Reward {
        model: InternVideo2::load(&Loader::random(&gpu, 9), &icfg).unwrap(),
        tokenizer: BertTokenizer::from_vocab(&vocab.iter().map(String::as_str).collect::<Vec<_>>(), icfg.max_txt_len).unwrap(),
    };
    let nf = icfg.vision.num_frames;
    let video = Tensor::from_slice(&gpu, &[1, 3, nf, vh, vw], &pseudo_data(3 * nf * vh * vw, 10)).unwrap();
    let call = || {
        let tape = Tape::new();
        let x = tape.leaf(video.clone());
        let s = ad::sum_all(&reward.score(&x, &["a small red circle moves quickly from left to right"], 0.5).unwrap()).unwrap();
        tape.backward(&s).unwrap().get(&x).unwrap().item_at(13).unwrap()
    };
    let (t, peak) = timed(&gpu, budget, call);
    println!("| video reward score + backward | {what} | {:.1} | {:.1} |", t * 1e3, mib(peak));
    profile(&gpu, call);
}
