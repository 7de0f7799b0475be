//! InternVideo2-stage2 (the video reward R_vid) on the fixture weights: the BERT WordPiece
//! tokenizer, the reward's preprocessing and plumbing against the model's own features,
//! gradients w.r.t. the frames, and bad input.
use std::path::{Path, PathBuf};

use t2v_kernels::autograd::{self as ad, Tape};
use t2v_kernels::{Gpu, GpuOptions, Tensor};
use t2v_turbo::models::clip::cosine;
use t2v_turbo::models::internvideo2::{InternVideo2, InternVideo2Config};
use t2v_turbo::models::preprocess::{min_side_crop, IMAGENET_MEAN, IMAGENET_STD};
use t2v_turbo::models::tokenizer::BertTokenizer;
use t2v_turbo::models::weights::WeightFile;
use t2v_turbo::models::weights::WeightPrecision;
use t2v_turbo::pipeline::model_dir::load_internvideo2_file;
use t2v_turbo::reward::{InternVideo2Reward, VideoTextReward};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/internvideo2")
}

/// The message of an expected error.
fn error_text<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn gpu() -> Gpu {
    Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).unwrap()
}

fn config() -> InternVideo2Config {
    InternVideo2Config::from_json(&serde_json::from_str(&std::fs::read_to_string(dir().join("config.json")).unwrap()).unwrap()).unwrap()
}

fn model(g: &Gpu) -> InternVideo2 {
    load_internvideo2_file(g, &dir().join("weights.safetensors"), &config(), WeightPrecision::F32).unwrap()
}

/// A BERT-style vocabulary of the fixture's size: specials at BERT's ids, then words.
fn vocab() -> Vec<String> {
    let words = ["a", "red", "fox", "jumps", "over", "the", "lazy", "dog", "cat", "##s", "un", "##aff", "##able", ",", ".", "!", "cafe"];
    let mut v: Vec<String> = (0..512).map(|i| format!("[unused{i}]")).collect();
    for (i, s) in [(0, "[PAD]"), (100, "[UNK]"), (101, "[CLS]"), (102, "[SEP]"), (103, "[MASK]")] {
        v[i] = s.to_string();
    }
    for (i, w) in words.iter().enumerate() {
        v[200 + i] = w.to_string();
    }
    v
}

fn tokenizer(max_len: usize) -> BertTokenizer {
    let v = vocab();
    BertTokenizer::from_vocab(&v.iter().map(String::as_str).collect::<Vec<_>>(), max_len).unwrap()
}

#[test]
fn wordpiece_tokenizer_lowercases_splits_pads_and_truncates() {
    let t = tokenizer(12);
    let e = t.encode("A RED Fox, jumps!").unwrap();
    // [CLS] a red fox , jumps ! [SEP] [PAD]...
    assert_eq!(e.ids, vec![101, 200, 201, 202, 213, 203, 215, 102, 0, 0, 0, 0]);
    assert_eq!(e.mask, vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]);
    assert!(!e.truncated);
    // word pieces and unknown words
    let e = t.encode("unaffable cats zebra").unwrap();
    assert_eq!(&e.ids[..7], &[101, 210, 211, 212, 208, 209, 100]);
    assert_eq!(e.ids[7], 102);
    // 12 slots: [CLS] + 10 pieces + [SEP]
    let e = t.encode("the dog the dog the dog the dog the dog the dog").unwrap();
    assert!(e.truncated);
    assert_eq!(e.ids.len(), 12);
    assert_eq!((e.ids[0], e.ids[11]), (101, 102));
    assert!(e.mask.iter().all(|&m| m == 1));
    // non-ASCII: accents stripped and lower-cased like the uncased models, unknown symbols
    let e = t.encode("CAFÉ 🐶 Café").unwrap();
    assert_eq!(&e.ids[..5], &[101, 216, 100, 216, 102]);
    // empty and whitespace-only prompts: [CLS] [SEP]
    for p in ["", "   "] {
        let e = t.encode(p).unwrap();
        assert_eq!(&e.ids[..3], &[101, 102, 0], "{p:?}");
        assert_eq!(e.mask.iter().sum::<u32>(), 2);
    }
}

#[test]
fn tokenizer_files_and_bad_vocabularies() {
    let d = std::env::temp_dir().join(format!("t2v-bert-vocab-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let path = d.join("vocab.txt");
    std::fs::write(&path, vocab().join("\n") + "\n").unwrap();
    let t = BertTokenizer::from_file(&path, 40).unwrap();
    assert_eq!(t.encode("a lazy dog.").unwrap().ids[..6], [101, 200, 206, 207, 214, 102]);
    let bad = d.join("bad.txt");
    std::fs::write(&bad, "a\nb\n[UNK]\n").unwrap();
    let err = error_text(BertTokenizer::from_file(&bad, 40));
    assert!(err.contains("[CLS]") && err.contains("bad.txt"), "{err}");
    let err = error_text(BertTokenizer::from_file(&d.join("missing.txt"), 40));
    assert!(err.contains("missing.txt"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

/// The fixture's normalised frames (B, T, 3, S, S) mapped back to [-1, 1] videos
/// (B, 3, T, S, S), the layout of generated videos.
fn fixture_video() -> (Vec<usize>, Vec<f32>) {
    let io = WeightFile::open(&dir().join("io.safetensors")).unwrap();
    let (s, v) = io.host_f32("in.frames").unwrap();
    let (b, t, hw) = (s[0], s[1], s[3] * s[4]);
    let mut out = vec![0f32; v.len()];
    for bi in 0..b {
        for ti in 0..t {
            for c in 0..3 {
                for p in 0..hw {
                    let x = v[((bi * t + ti) * 3 + c) * hw + p] * IMAGENET_STD[c] + IMAGENET_MEAN[c];
                    out[((bi * 3 + c) * t + ti) * hw + p] = 2.0 * x - 1.0;
                }
            }
        }
    }
    (vec![b, 3, t, s[3], s[4]], out)
}

#[test]
fn reward_scores_equal_the_models_features_of_the_same_frames_and_prompts() {
    let g = gpu();
    let prompts = ["a red fox jumps over the lazy dog", "a cat"];
    let tape = Tape::new();
    // reference path: the fixture's normalised frames straight into the model
    let m = model(&g);
    let io = WeightFile::open(&dir().join("io.safetensors")).unwrap();
    let vid = m.video_features(&tape.constant(io.tensor(&g, "in.frames").unwrap())).unwrap();
    let tok = tokenizer(config().max_txt_len);
    let (ids, mask) = tok.encode_batch(&prompts).unwrap();
    let want = cosine(&vid, &m.text_features(&tape, &ids, &mask).unwrap()).unwrap().value().to_vec().unwrap();
    // the reward: [-1, 1] videos (B, 3, T, S, S) and prompts
    let r = InternVideo2Reward { model: m, tokenizer: tok };
    let (shape, video) = fixture_video();
    let got = r.score(&tape.constant(Tensor::from_slice(&g, &shape, &video).unwrap()), &prompts, 0.5).unwrap().value().to_vec().unwrap();
    assert_eq!(got.len(), 2);
    for i in 0..2 {
        assert!((got[i] - want[i * 2 + i]).abs() < 1e-5, "video {i}: reward {} vs features {}", got[i], want[i * 2 + i]);
    }
    assert!(got.iter().all(|s| s.abs() <= 1.0 && *s != 0.0));
}

#[test]
fn reward_gradients_reach_the_frames() {
    let g = gpu();
    let r = InternVideo2Reward { model: model(&g), tokenizer: tokenizer(config().max_txt_len) };
    let (shape, x) = fixture_video();
    // one video of the batch, at a size that needs the resize and a crop: 36 x 50
    let (h, w) = (36, 50);
    let t = shape[2];
    let x: Vec<f32> = (0..3 * t * h * w).map(|i| x[i % (x.len() / 2)] * 0.9).collect();
    let run = |v: &[f32]| -> (f32, Option<Vec<f32>>) {
        let tape = Tape::new();
        let xv = tape.leaf(Tensor::from_slice(&g, &[1, 3, t, h, w], v).unwrap());
        let s = ad::sum_all(&r.score(&xv, &["a lazy cat"], 0.3).unwrap()).unwrap();
        let val = s.value().item_at(0).unwrap();
        (val, tape.backward(&s).unwrap().get(&xv).map(|t| t.to_vec().unwrap()))
    };
    let (_, grad) = run(&x);
    let grad = grad.expect("gradient w.r.t. the frames");
    let big = (0..grad.len()).max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs())).unwrap();
    for e in [big, 5, 3 * h * w + 17, x.len() - 40] {
        let (mut p, mut m) = (x.clone(), x.clone());
        p[e] += 1e-2;
        m[e] -= 1e-2;
        let num = (run(&p).0 - run(&m).0) / 2e-2;
        assert!((grad[e] - num).abs() <= 0.05 * num.abs().max(2e-3), "d score / d x[{e}]: {} vs {num}", grad[e]);
    }
    assert!(grad[big].abs() > 1e-4, "the score depends on the frames");
}

/// The vision blocks recomputed in the backward pass (`train --recompute`): the same
/// score and frame gradients, with less memory held at the peak.
#[test]
fn recomputed_vision_blocks_give_the_same_gradients_with_less_memory() {
    let g = gpu();
    let r = InternVideo2Reward { model: model(&g), tokenizer: tokenizer(config().max_txt_len) };
    let (shape, x) = fixture_video();
    let (h, w, t) = (30, 44, shape[2]);
    let x: Vec<f32> = (0..3 * 3 * t * h * w).map(|i| x[(i * 7) % x.len()] * 0.8).collect();
    let run = |recompute: bool| -> (Vec<f32>, Vec<f32>, u64) {
        r.set_checkpointing(recompute);
        g.sync().unwrap();
        g.reset_peak_memory();
        let tape = Tape::new();
        let xv = tape.leaf(Tensor::from_slice(&g, &[3, 3, t, h, w], &x).unwrap());
        let s = r.score(&xv, &["a lazy cat", "a dog", "waves"], 0.3).unwrap();
        let grad = tape.backward(&ad::sum_all(&s).unwrap()).unwrap().get(&xv).expect("gradient w.r.t. the frames").to_vec().unwrap();
        (s.value().to_vec().unwrap(), grad, g.memory().peak_live_bytes)
    };
    let (s0, g0, m0) = run(false);
    let (s1, g1, m1) = run(true);
    for (a, b) in s0.iter().zip(&s1) {
        assert!((a - b).abs() <= 1e-6, "scores {s0:?} stored, {s1:?} recomputed");
    }
    let scale = g0.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = g0.iter().zip(&g1).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(scale > 0.0 && worst <= 1e-4 * scale, "frame gradients differ by {worst} (largest {scale})");
    assert!(m1 < m0, "peak memory {m1} recomputed, {m0} stored");
    eprintln!("peak live memory: {m0} -> {m1} bytes");
}

#[test]
fn min_side_crop_resizes_the_shorter_side_and_crops_where_asked() {
    let g = gpu();
    let tape = Tape::new();
    let (h, w) = (8, 13);
    let img: Vec<f32> = (0..3 * h * w).map(|i| (i % 17) as f32 / 16.0).collect();
    let x = tape.constant(Tensor::from_slice(&g, &[1, 3, h, w], &img).unwrap());
    // the shorter side is the size already: no resize, an 8x8 window at column 0 or 5
    for (at, col) in [(0.0, 0), (1.0, 5), (0.5, 3)] {
        let y = min_side_crop(&x, 8, at).unwrap().value().to_vec().unwrap();
        for c in 0..3 {
            for r in 0..8 {
                for q in 0..8 {
                    let want = (img[(c * h + r) * w + q + col] - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
                    assert!((y[(c * 8 + r) * 8 + q] - want).abs() < 1e-5, "crop at {at}: ({c},{r},{q})");
                }
            }
        }
    }
    // a resize: 8x13 -> shorter side 4 (4x7 after rounding 6.5), then a 4x4 window
    let y = min_side_crop(&x, 4, 0.5).unwrap();
    assert_eq!(y.shape(), &[1, 3, 4, 4]);
    // a constant image stays constant through the resampling
    let ones = tape.constant(Tensor::from_slice(&g, &[1, 3, h, w], &vec![0.5; 3 * h * w]).unwrap());
    let y = min_side_crop(&ones, 4, 0.5).unwrap().value().to_vec().unwrap();
    for (i, v) in y.iter().enumerate() {
        let c = i / 16;
        assert!((v - (0.5 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]).abs() < 1e-5);
    }
}

#[test]
fn wrong_frame_counts_sizes_and_token_ids_are_refused() {
    let g = gpu();
    let m = model(&g);
    let tape = Tape::new();
    let c = config();
    let s = c.vision.img_size;
    let frames = |t: usize, size: usize| tape.constant(Tensor::zeros(&g, &[1, t, 3, size, size]).unwrap());
    let err = error_text(m.video_features(&frames(c.vision.num_frames + 1, s)));
    assert!(err.contains("num_frames"), "{err}");
    let err = error_text(m.video_features(&frames(c.vision.num_frames, s + 2)));
    assert!(err.contains("img_size"), "{err}");
    // a single image goes through img_pos_embed
    let img = m.video_features(&frames(1, s)).unwrap();
    assert_eq!(img.shape(), &[1, c.embed_dim]);
    let err = error_text(m.text_features(&tape, &[vec![101, 9999]], &[vec![1, 1]]));
    assert!(err.contains("9999"), "{err}");
    let err = error_text(m.text_features(&tape, &[vec![101, 5]], &[vec![1]]));
    assert!(err.contains("mask"), "{err}");
}

#[test]
fn missing_and_extra_checkpoint_keys_are_reported_together() {
    let g = gpu();
    let f = WeightFile::open(&dir().join("weights.safetensors")).unwrap();
    // drop one vision and one text key, add an unknown one; keep the unused heads
    let mut tensors = Vec::new();
    for k in f.entries().keys() {
        if k == "vision_encoder.blocks.1.attn.q_norm.weight" || k == "text_encoder.bert.encoder.layer.0.output.dense.bias" {
            continue;
        }
        tensors.push((k.clone(), f.tensor(&g, k).unwrap()));
    }
    tensors.push(("vision_encoder.surprise".into(), Tensor::zeros(&g, &[2]).unwrap()));
    let d = std::env::temp_dir().join(format!("t2v-iv2-keys-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("w.safetensors");
    t2v_turbo::models::weights::save_weights(&p, &tensors, t2v_turbo::models::weights::SaveDtype::F32, &[]).unwrap();
    let err = error_text(load_internvideo2_file(&g, &p, &config(), WeightPrecision::F32));
    for k in ["vision_encoder.blocks.1.attn.q_norm.weight", "text_encoder.bert.encoder.layer.0.output.dense.bias", "vision_encoder.surprise"] {
        assert!(err.contains(k), "{k} not named in: {err}");
    }
    assert!(!err.contains("clip_decoder"), "unused distillation heads are not unexpected: {err}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn sincos_position_tables_follow_the_reference_layout() {
    use t2v_turbo::models::internvideo2::sincos_pos_embed;
    let (dim, grid, frames) = (32, 3, 4);
    let v = sincos_pos_embed(dim, grid, Some(frames)).unwrap();
    assert_eq!(v.len(), (1 + frames * grid * grid) * dim);
    assert!(v[..dim].iter().all(|&x| x == 0.0), "the cls row is zero");
    // row of frame t, grid cell (y, x): [temporal dim/4 | x 3dim/8 | y 3dim/8], each part
    // sin(p w_i) for i < n/2 then cos(p w_i), w_i = 10000^(-i / (n/2))
    let part = |n: usize, p: f64| -> Vec<f64> {
        let w: Vec<f64> = (0..n / 2).map(|i| 10000f64.powf(-(i as f64) / (n / 2) as f64)).collect();
        w.iter().map(|w| (p * w).sin()).chain(w.iter().map(|w| (p * w).cos())).collect()
    };
    for (t, y, x) in [(0, 0, 0), (1, 2, 0), (3, 1, 2)] {
        let row = &v[(1 + (t * grid + y) * grid + x) * dim..][..dim];
        let want: Vec<f64> = [part(dim / 4, t as f64), part(dim * 3 / 8, x as f64), part(dim * 3 / 8, y as f64)].concat();
        for (k, (a, b)) in row.iter().zip(&want).enumerate() {
            assert!((*a as f64 - b).abs() < 1e-5, "frame {t} cell ({y}, {x}) channel {k}: {a} vs {b}");
        }
    }
    // the image table: [x dim/2 | y dim/2]
    let img = sincos_pos_embed(dim, grid, None).unwrap();
    assert_eq!(img.len(), (1 + grid * grid) * dim);
    let row = &img[(1 + grid + 2) * dim..][..dim];
    let want = [part(dim / 2, 2.0), part(dim / 2, 1.0)].concat();
    assert!(row.iter().zip(&want).all(|(a, b)| (*a as f64 - b).abs() < 1e-5));
    assert!(sincos_pos_embed(24, grid, Some(frames)).is_none() && sincos_pos_embed(24, grid, None).is_some());
    // `init` starts the video reward from these tables
    use t2v_turbo::pipeline::model_dir::{init_random, Preset, VideoRewardSpec};
    let g = Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).unwrap();
    let d = std::env::temp_dir().join(format!("t2v-iv2-init-{}", std::process::id()));
    let md = init_random(&g, Preset::Tiny, &d, 1, t2v_turbo::models::weights::SaveDtype::F32).unwrap();
    let Some(VideoRewardSpec::InternVideo2 { file, config, .. }) = &md.video_reward else { panic!() };
    let c = &config.vision;
    let f = WeightFile::open(file).unwrap();
    assert_eq!(f.host_f32("vision_encoder.pos_embed").unwrap().1, sincos_pos_embed(c.embed_dim, c.img_size / c.patch_size, Some(c.num_frames / c.tubelet_size)).unwrap());
    assert_eq!(f.host_f32("vision_encoder.img_pos_embed").unwrap().1, sincos_pos_embed(c.embed_dim, c.img_size / c.patch_size, None).unwrap());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn tubelet_tokens_equal_a_host_conv3d() {
    // kernel = stride = (tubelet, p, p) over frames (N, T, 3, S, S): each token sees
    // `tubelet` consecutive frames (the tiny video reward's 2); S = 13 leaves a remainder
    // the Conv3d drops. No blocks: the tokens are cls + patches plus the position table.
    use t2v_turbo::models::internvideo2::{VisionConfig, VisionEncoder};
    use t2v_turbo::models::weights::Loader;
    let g = gpu();
    let c = VisionConfig {
        img_size: 13,
        patch_size: 4,
        embed_dim: 8,
        depth: 0,
        num_heads: 2,
        mlp_hidden: 16,
        clip_embed_dim: 8,
        attn_pool_num_heads: 2,
        num_frames: 4,
        tubelet_size: 2,
        qkv_bias: false,
        qk_normalization: true,
        layer_scale: true,
        sep_image_video_pos_embed: true,
    };
    let l = Loader::random(&g, 7);
    let enc = VisionEncoder::load(&l, "v", &c).unwrap();
    let param = |k: &str| l.params().into_iter().find(|(n, _)| n == k).unwrap().1.to_vec().unwrap();
    let (w, b, cls, pos) = (param("v.patch_embed.proj.weight"), param("v.patch_embed.proj.bias"), param("v.cls_token"), param("v.pos_embed"));
    let (n, t, s, p, d, tb, grid) = (2, 4, 13, 4, 8, 2, 3);
    let frames: Vec<f32> = (0..n * t * 3 * s * s).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let tape = Tape::new();
    let x = tape.constant(Tensor::from_slice(&g, &[n, t, 3, s, s], &frames).unwrap());
    let got = enc.tokens(&x).unwrap().value().to_vec().unwrap();
    let tokens = 1 + t / tb * grid * grid;
    assert_eq!(got.len(), n * tokens * d);
    for ni in 0..n {
        for l in 0..tokens {
            for di in 0..d {
                let want = if l == 0 {
                    cls[di] + pos[di]
                } else {
                    let (tt, gy, gx) = ((l - 1) / (grid * grid), (l - 1) / grid % grid, (l - 1) % grid);
                    let mut v = b[di] as f64;
                    for ch in 0..3 {
                        for k in 0..tb {
                            for py in 0..p {
                                for px in 0..p {
                                    let wv = w[(((di * 3 + ch) * tb + k) * p + py) * p + px] as f64;
                                    let fv = frames[(((ni * t + tt * tb + k) * 3 + ch) * s + gy * p + py) * s + gx * p + px] as f64;
                                    v += wv * fv;
                                }
                            }
                        }
                    }
                    (v + pos[l * d + di] as f64) as f32
                };
                let got = got[(ni * tokens + l) * d + di];
                assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "video {ni} token {l} channel {di}: {got} vs {want}");
            }
        }
    }
    // the same frames in reverse order: other tokens (each sees its frames in order)
    let rev: Vec<f32> = (0..n).flat_map(|ni| (0..t).rev().flat_map(move |ti| (0..3 * s * s).map(move |j| (ni * t + ti) * 3 * s * s + j))).map(|i| frames[i]).collect();
    let back = enc.tokens(&tape.constant(Tensor::from_slice(&g, &[n, t, 3, s, s], &rev).unwrap())).unwrap().value().to_vec().unwrap();
    assert!(back.iter().zip(&got).any(|(a, b)| (a - b).abs() > 1e-2));
}
