//! Reward heads on the OpenCLIP fixture weights: consistency and differentiability.
use std::path::Path;

use t2v_kernels::autograd::{self as ad, Tape};
use t2v_kernels::{Gpu, GpuOptions, Tensor};
use t2v_turbo::models::clip::{Clip, ClipConfig};
use t2v_turbo::models::tokenizer::ClipTokenizer;
use t2v_turbo::models::weights::{Loader, WeightFile};
use t2v_turbo::reward::{ClipVideoReward, ImageTextReward, Preprocess, VideoTextReward};

fn clip(g: &Gpu) -> Clip {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openclip");
    let cfg = ClipConfig::from_json(&serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()).unwrap();
    let wf = WeightFile::open(&dir.join("weights.safetensors")).unwrap();
    let l = Loader::new(&wf, g, "");
    let c = Clip::load(&l, &cfg).unwrap();
    l.finish().unwrap();
    c
}

fn frame(seed: u32, h: usize, w: usize) -> Vec<f32> {
    (0..3 * h * w).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed * 977) >> 20) as f32 / 2048.0 - 1.0).collect()
}

#[test]
fn video_of_identical_frames_scores_like_the_frame() {
    let g = Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).unwrap();
    let ids = vec![ClipTokenizer::new().unwrap().encode("a red fox in the snow").unwrap().ids];
    let (h, w) = (20, 36);
    let f = frame(1, h, w);
    let tape = Tape::new();
    let img = ImageTextReward { clip: clip(&g), mode: Preprocess::ClipScore };
    let s_img = img.score(&tape.constant(Tensor::from_slice(&g, &[1, 3, h, w], &f).unwrap()), &ids).unwrap().value().item_at(0).unwrap();
    // (1, 3, F=4, h, w) with the same frame 4 times
    let mut video = vec![0f32; 3 * 4 * h * w];
    for c in 0..3 {
        for t in 0..4 {
            video[(c * 4 + t) * h * w..(c * 4 + t + 1) * h * w].copy_from_slice(&f[c * h * w..(c + 1) * h * w]);
        }
    }
    let vid = ClipVideoReward { clip: clip(&g), tokenizer: ClipTokenizer::new().unwrap() };
    let s_vid = vid.score(&tape.constant(Tensor::from_slice(&g, &[1, 3, 4, h, w], &video).unwrap()), &["a red fox in the snow"], 0.5).unwrap().value().item_at(0).unwrap();
    assert!((s_img - s_vid).abs() < 1e-5, "{s_img} vs {s_vid}");
    assert!(s_img.abs() <= 1.0 && s_img != 0.0);
    let hps = ImageTextReward { clip: clip(&g), mode: Preprocess::Hps };
    let s_hps = hps.score(&tape.constant(Tensor::from_slice(&g, &[1, 3, h, w], &f).unwrap()), &ids).unwrap().value().item_at(0).unwrap();
    assert!(s_hps.abs() <= 1.0 && (s_hps - s_img).abs() > 1e-6, "the two preprocessings differ");
}

#[test]
fn reward_gradients_reach_the_frames() {
    let g = Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).unwrap();
    let ids: Vec<Vec<u32>> = ["a cat", "a dog"].iter().map(|p| ClipTokenizer::new().unwrap().encode(p).unwrap().ids).collect();
    let r = ImageTextReward { clip: clip(&g), mode: Preprocess::Hps };
    let (h, w) = (12, 16);
    let x: Vec<f32> = frame(3, h, w).into_iter().chain(frame(4, h, w)).collect();
    let run = |v: &[f32]| -> (f32, Option<Vec<f32>>) {
        let tape = Tape::new();
        let xv = tape.leaf(Tensor::from_slice(&g, &[2, 3, h, w], v).unwrap());
        let s = ad::sum_all(&r.score(&xv, &ids).unwrap()).unwrap();
        let val = s.value().item_at(0).unwrap();
        (val, tape.backward(&s).unwrap().get(&xv).map(|t| t.to_vec().unwrap()))
    };
    let (_, grad) = run(&x);
    let grad = grad.expect("gradient w.r.t. the frames");
    for e in [5, 300, 700, 1100] {
        let (mut p, mut m) = (x.clone(), x.clone());
        p[e] += 2e-2;
        m[e] -= 2e-2;
        let num = (run(&p).0 - run(&m).0) / 4e-2;
        assert!((grad[e] - num).abs() <= 0.05 * num.abs().max(2e-3), "d score / d x[{e}]: {} vs {num}", grad[e]);
    }
}

/// The vision layers recomputed in the backward pass (`train --recompute`): the same score
/// and frame gradients, with less memory held at the peak.
#[test]
fn recomputed_vision_layers_give_the_same_gradients_with_less_memory() {
    let g = Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).unwrap();
    let ids: Vec<Vec<u32>> = (0..6).map(|i| ClipTokenizer::new().unwrap().encode(&format!("a cat number {i}")).unwrap().ids).collect();
    let r = ImageTextReward { clip: clip(&g), mode: Preprocess::Hps };
    let (h, w) = (24, 40);
    let x: Vec<f32> = (0..6).flat_map(|i| frame(10 + i, h, w)).collect();
    let run = |recompute: bool| -> (f32, Vec<f32>, u64) {
        r.clip.vision.set_checkpointing(recompute);
        g.sync().unwrap();
        g.reset_peak_memory();
        let tape = Tape::new();
        let xv = tape.leaf(Tensor::from_slice(&g, &[6, 3, h, w], &x).unwrap());
        let s = ad::sum_all(&r.score(&xv, &ids).unwrap()).unwrap();
        let grad = tape.backward(&s).unwrap().get(&xv).expect("gradient w.r.t. the frames").to_vec().unwrap();
        (s.value().item_at(0).unwrap(), grad, g.memory().peak_live_bytes)
    };
    let (s0, g0, m0) = run(false);
    let (s1, g1, m1) = run(true);
    assert!((s0 - s1).abs() <= 1e-6 * s0.abs().max(1.0), "score {s0} stored, {s1} recomputed");
    let scale = g0.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = g0.iter().zip(&g1).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(scale > 0.0 && worst <= 1e-4 * scale, "frame gradients differ by {worst} (largest {scale})");
    assert!(m1 < m0, "peak memory {m1} recomputed, {m0} stored");
    eprintln!("peak live memory: {m0} -> {m1} bytes");
}

/// `eval --models`: a clip's scores are the shipped reward models' own scores of the frames
/// picked from it — each image reward's mean over evenly spaced frames, weighted by the
/// folder's weights, and the video reward of its model's number of strided frames (centre
/// crop) — against the clip's prompt; a clip shorter than the video reward's frames is
/// refused with both counts.
#[test]
fn reward_scores_of_clips_are_the_models_scores_of_their_frames() {
    use t2v_turbo::pipeline::model_dir::ModelDir;
    use t2v_turbo::pipeline::reward_scores::RewardScorer;
    use t2v_turbo::pipeline::video_io::Frames;
    let g = Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).unwrap();
    let md = ModelDir::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny")).unwrap();
    let scorer = RewardScorer::load(&g, &md, 3).unwrap();
    // 7 distinct frames of 24 x 40 (odd count, not square, not the models' size)
    let (f, h, w) = (7, 24, 40);
    let clip = Frames { width: w, height: h, frames: (0..f).map(|t| (0..h * w * 3).map(|i| ((i * 37 + t * 101) % 256) as u8).collect()).collect() };
    let prompt = "a red circle moving left";
    let got = scorer.score(&g, &clip, prompt).unwrap();
    // the same frames built here: (N, 3, H, W) or (1, 3, N, H, W) in [-1, 1]
    let px = |t: usize, c: usize, i: usize| clip.frames[t][i * 3 + c] as f32 / 127.5 - 1.0;
    let images = |picks: &[usize]| -> Vec<f32> { picks.iter().flat_map(|&t| (0..3).flat_map(move |c| (0..h * w).map(move |i| px(t, c, i)))).collect() };
    let video = |picks: &[usize]| -> Vec<f32> { (0..3).flat_map(|c| picks.iter().flat_map(move |&t| (0..h * w).map(move |i| px(t, c, i)))).collect() };
    let tape = Tape::new();
    let ids = vec![ClipTokenizer::new().unwrap().encode(prompt).unwrap().ids; 3];
    let x = tape.constant(Tensor::from_slice(&g, &[3, 3, h, w], &images(&[0, 2, 4])).unwrap());
    let rewards = md.load_image_rewards(&g).unwrap();
    assert_eq!(rewards.len(), 2);
    let mut weighted = 0.0;
    for (i, (model, weight)) in rewards.iter().enumerate() {
        let s = model.score(&x, &ids).unwrap().value().to_vec().unwrap();
        let mean = s.iter().sum::<f32>() / 3.0;
        assert!((got.image[i] - mean).abs() <= 1e-5, "image reward {i}: {} vs {mean}", got.image[i]);
        weighted += weight * mean;
    }
    assert!((got.image_weighted.unwrap() - weighted).abs() <= 1e-5);
    let vr = md.load_video_reward(&g).unwrap().unwrap();
    assert_eq!(vr.frames(), Some(4));
    let v = vr.score(&tape.constant(Tensor::from_slice(&g, &[1, 3, 4, h, w], &video(&[0, 1, 3, 5])).unwrap()), &[prompt], 0.5).unwrap().value().item_at(0).unwrap();
    assert!((got.video.unwrap() - v).abs() <= 1e-5, "video reward {:?} vs {v}", got.video);
    // the prompt counts
    let other = scorer.score(&g, &clip, "a blue square moving up").unwrap();
    assert!(other.image != got.image && other.video != got.video, "{other:?} vs {got:?}");
    // a batch of clips of one size: each clip's own scores
    let second = Frames { frames: clip.frames.iter().rev().cloned().collect(), ..clip.clone() };
    let (a, b) = (clip.to_model_input(h, w), second.to_model_input(h, w));
    let batch = scorer.set().score(&g, &[&a, &b], &[prompt, "a blue square moving up"], (f, h, w), &[0, 2, 4], 4).unwrap();
    for (got, want) in batch.iter().zip([got.clone(), scorer.score(&g, &second, "a blue square moving up").unwrap()]) {
        let close = |x: f32, y: f32| (x - y).abs() <= 1e-5;
        assert!(got.image.iter().zip(&want.image).all(|(x, y)| close(*x, *y)) && close(got.video.unwrap(), want.video.unwrap()), "{got:?} vs {want:?}");
    }
    let short = Frames { frames: clip.frames[..3].to_vec(), ..clip };
    let e = scorer.score(&g, &short, prompt).unwrap_err().to_string();
    assert!(e.contains("3 frames; the video reward scores 4"), "{e}");
}

/// On a device whose storage bindings hold less than the text tower's vocabulary (49408 x
/// 64 f32, 12 MiB; here 4 MiB, as lavapipe's 128 MiB against VideoCrafter2's 49408 x 1024),
/// the table is loaded in row chunks and the text features are the same.
#[test]
fn a_vocabulary_larger_than_a_binding_is_read_in_chunks() {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor { backends: wgpu::Backends::PRIMARY, ..wgpu::InstanceDescriptor::new_without_display_handle() });
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default())).unwrap();
    let limits = wgpu::Limits { max_storage_buffer_binding_size: 4 << 20, ..adapter.limits() };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor { required_limits: limits, ..Default::default() })).unwrap();
    let small = Gpu::from_device(device, queue);
    assert_eq!(small.max_binding_bytes(), 4 << 20);
    let big = Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).unwrap();
    let tok = ClipTokenizer::new().unwrap();
    let ids: Vec<Vec<u32>> = ["a red circle moving left", "the quick brown fox"].iter().map(|p| tok.encode(p).unwrap().ids).collect();
    let features = |g: &Gpu| -> Vec<f32> {
        let tape = Tape::new();
        tape.no_grad(|| Ok::<_, t2v_turbo::models::weights::WeightsError>(clip(g).text.features(&tape, &ids)?.value().to_vec()?)).unwrap()
    };
    let (chunked, whole) = (features(&small), features(&big));
    assert_eq!(chunked.len(), 2 * 32);
    for (a, b) in chunked.iter().zip(&whole) {
        assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
    }
    // the chunks are saved as the one table they are
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openclip");
    let wf = WeightFile::open(&dir.join("weights.safetensors")).unwrap();
    let l = Loader::new(&wf, &small, "");
    let cfg = ClipConfig::from_json(&serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()).unwrap();
    Clip::load(&l, &cfg).unwrap();
    let all = l.all_tensors();
    let table = all.iter().find(|t| t.0 == "token_embedding.weight").unwrap();
    assert_eq!((table.1.as_slice(), table.2.len()), (&[49408, 64][..], 4));
    assert!(!l.params().iter().any(|p| p.0 == "token_embedding.weight"), "a chunked table is not a trainable parameter");
    let out = std::env::temp_dir().join(format!("t2v-chunked-{}.safetensors", std::process::id()));
    t2v_turbo::models::weights::save_weight_parts(&out, &all, t2v_turbo::models::weights::SaveDtype::F32, &[]).unwrap();
    let saved = WeightFile::open(&out).unwrap();
    assert_eq!(saved.host_f32("token_embedding.weight").unwrap(), wf.host_f32("token_embedding.weight").unwrap());
    assert_eq!(saved.entries().len(), wf.entries().len());
    std::fs::remove_file(&out).unwrap();
}
