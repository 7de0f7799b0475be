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
