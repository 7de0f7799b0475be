//! The moving-shapes world, the analyser, captions files, video input and TOML configs
//! (no GPU).
mod common;
use common::Scratch;

use t2v_turbo::eval::{analyse, paired, paired_on, score, sign_test};
use t2v_turbo::pipeline::captions::{read_captions, CaptionRow};
use t2v_turbo::pipeline::video_io::{read_video, write_frames, Frames};
use t2v_turbo::world::{clip_spec, parse_prompt, prompt_grid, render, write_dataset, WorldConfig, COLORS, DIRECTIONS, SHAPES};

fn tmp(name: &str) -> Scratch {
    Scratch::new("world", name)
}

fn world(n: u64, cfg: &WorldConfig) -> Vec<(Frames, String)> {
    (0..n).map(|i| clip_spec(7, i, cfg)).map(|s| (render(&s, cfg), s.caption())).collect()
}

#[test]
fn the_world_is_deterministic_and_varied() {
    let cfg = WorldConfig::default();
    let a: Vec<_> = (0..40).map(|i| clip_spec(1, i, &cfg)).collect();
    let b: Vec<_> = (0..40).map(|i| clip_spec(1, i, &cfg)).collect();
    assert_eq!(a, b);
    assert_eq!(render(&a[3], &cfg).frames, render(&b[3], &cfg).frames);
    assert_ne!(a, (0..40).map(|i| clip_spec(2, i, &cfg)).collect::<Vec<_>>(), "the seed matters");
    // every attribute value occurs in 40 clips
    for (k, n) in [(0, 6), (1, 3), (2, 4)] {
        let seen: std::collections::BTreeSet<usize> = a.iter().map(|s| [s.color, s.shape, s.direction][k]).collect();
        assert_eq!(seen.len(), n, "attribute {k}: {seen:?}");
    }
    let shorts = a.iter().filter(|s| s.has_short).count();
    assert!((8..=32).contains(&shorts), "short captions on about half: {shorts}");
    // captions name what is drawn
    for s in &a {
        let p = parse_prompt(&s.caption());
        assert_eq!((p.color, p.shape, p.direction), (Some(s.color), Some(s.shape), Some(s.direction)), "{}", s.caption());
        let q = parse_prompt(&s.short_caption());
        assert_eq!((q.color, q.shape, q.direction), (Some(s.color), Some(s.shape), Some(s.direction)), "{}", s.short_caption());
    }
    // every clip gets a short caption at fraction 1; a fraction outside 0..1 writes nothing
    assert!((0..40).all(|i| clip_spec(1, i, &WorldConfig { short_fraction: 1.0, ..cfg.clone() }).has_short));
    let d = tmp("bad-fraction");
    let err = write_dataset(&d.join("w"), 1, 2, &WorldConfig { short_fraction: 1.5, ..cfg }, true).unwrap_err();
    assert!(err.to_string().contains("must be within 0..1") && !d.join("w").exists(), "{err}");
}

#[test]
fn the_analyser_scores_ground_truth_high_and_broken_clips_low() {
    for cfg in [WorldConfig::default(), WorldConfig { frames: 16, size: 64, short_fraction: 0.5 }, WorldConfig { frames: 5, size: 27, short_fraction: 0.0 }] {
        let clips = world(60, &cfg);
        let r = score(&clips);
        assert!(r.color_accuracy >= 98.0 && r.shape_accuracy >= 95.0 && r.direction_accuracy >= 98.0, "{cfg:?}: {r:?}");
        assert!(r.flicker < 0.01 && r.subject_consistency > 0.85 && r.dynamic_degree > 1.0, "{cfg:?}: {r:?}");
        // steady motion: steps close to the fitted velocity
        assert!(r.jitter < 0.25 * r.dynamic_degree, "{cfg:?}: {r:?}");

        // frames in a scrambled order: the subject jumps around
        let scrambled: Vec<_> = clips.iter().map(|(v, p)| (Frames { frames: (0..v.frames.len()).map(|i| v.frames[(i * 3) % v.frames.len()].clone()).collect(), ..*v }, p.clone())).collect();
        let rj = score(&scrambled);
        assert!(rj.jitter > 4.0 * r.jitter.max(0.1) && rj.jitter > rj.dynamic_degree, "scrambled {rj:?} vs {r:?}");

        // static clips (the first frame repeated): no direction, no motion
        let frozen: Vec<_> = clips.iter().map(|(v, p)| (Frames { frames: vec![v.frames[0].clone(); v.frames.len()], ..*v }, p.clone())).collect();
        let rf = score(&frozen);
        assert!(rf.direction_accuracy == 0.0 && rf.dynamic_degree < 0.01 && rf.jitter < 0.01, "{rf:?}");

        // frames in reverse: every direction is wrong
        let reversed: Vec<_> = clips.iter().map(|(v, p)| (Frames { frames: v.frames.iter().rev().cloned().collect(), ..*v }, p.clone())).collect();
        assert_eq!(score(&reversed).direction_accuracy, 0.0);

        // another clip's prompt: near chance
        let shifted: Vec<_> = clips.iter().enumerate().map(|(i, (v, _))| (Frames { frames: v.frames.clone(), ..*v }, clips[(i + 1) % clips.len()].1.clone())).collect();
        let rs = score(&shifted);
        assert!(rs.accuracy < 55.0, "{rs:?}");

        // noise on every frame: flicker rises
        let mut seed = 1u32;
        let noisy: Vec<_> = clips
            .iter()
            .map(|(v, p)| {
                let frames = v
                    .frames
                    .iter()
                    .map(|f| {
                        f.iter()
                            .map(|&x| {
                                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                                x.saturating_add((seed >> 27) as u8)
                            })
                            .collect()
                    })
                    .collect();
                (Frames { frames, ..*v }, p.clone())
            })
            .collect();
        assert!(score(&noisy).flicker > 3.0 * r.flicker.max(0.002), "{:?} vs {r:?}", score(&noisy));
    }
}

#[test]
fn the_prompt_grid_covers_every_attribute_equally() {
    let grid = prompt_grid(48);
    assert_eq!(grid.len(), COLORS.len() * DIRECTIONS.len() * 2);
    let mut seen = std::collections::HashSet::new();
    let (mut colors, mut shapes, mut directions) = (vec![0; COLORS.len()], vec![0; SHAPES.len()], vec![0; DIRECTIONS.len()]);
    let mut pairs = std::collections::HashSet::new();
    for p in &grid {
        assert!(seen.insert(p.clone()), "repeated {p}");
        let a = parse_prompt(p);
        let (c, s, d) = (a.color.unwrap(), a.shape.unwrap(), a.direction.unwrap());
        colors[c] += 1;
        shapes[s] += 1;
        directions[d] += 1;
        pairs.insert((c, d));
    }
    assert_eq!(pairs.len(), COLORS.len() * DIRECTIONS.len(), "every color x direction");
    assert!(colors.iter().all(|&n| n == 8) && directions.iter().all(|&n| n == 12) && shapes.iter().all(|&n| n == 16), "{colors:?} {shapes:?} {directions:?}");
    // half of it: every color x direction once, shapes still balanced
    let half = prompt_grid(24);
    let attrs: Vec<_> = half.iter().map(|p| parse_prompt(p)).collect();
    let pairs: std::collections::HashSet<_> = attrs.iter().map(|a| (a.color.unwrap(), a.direction.unwrap())).collect();
    assert_eq!((half.len(), pairs.len()), (24, 24));
    for s in 0..SHAPES.len() {
        assert_eq!(attrs.iter().filter(|a| a.shape == Some(s)).count(), 8, "{half:?}");
    }
    assert_eq!(prompt_grid(0).len(), 0);
    assert_eq!(prompt_grid(100), grid);
}

#[test]
fn paired_judgments_and_the_sign_test() {
    // exact values: 2 * sum_{i <= min} C(n, i) / 2^n
    assert!((sign_test(10, 0) - 2.0 / 1024.0).abs() < 1e-12);
    assert!((sign_test(3, 7) - 2.0 * (1.0 + 10.0 + 45.0 + 120.0) / 1024.0).abs() < 1e-12);
    assert_eq!(sign_test(5, 5), 1.0);
    assert_eq!(sign_test(0, 0), 1.0);
    assert!(sign_test(300, 200) < 1e-5 && sign_test(300, 200) > 0.0, "{}", sign_test(300, 200));

    // ground truth against the same clips played backwards: every direction judgment is
    // right only with the first, colors and shapes agree
    let cfg = WorldConfig::default();
    let clips = world(12, &cfg);
    let reversed: Vec<_> = clips.iter().map(|(v, p)| (Frames { frames: v.frames.iter().rev().cloned().collect(), ..*v }, p.clone())).collect();
    let (a, b) = (score(&clips), score(&reversed));
    let p = paired(&a, &b).unwrap();
    assert_eq!((p.only_a, p.only_b, p.judgments), (12, 0, 36));
    assert!((p.p_value - 2.0 / 4096.0).abs() < 1e-12, "{p:?}");
    let q = paired(&b, &a).unwrap();
    assert_eq!((q.only_a, q.only_b), (0, 12));
    // per attribute: the directions carry the whole split, colors none of it
    let d = paired_on(&a, &b, &[2]).unwrap();
    assert_eq!((d.only_a, d.only_b, d.judgments), (12, 0, 12));
    let c = paired_on(&a, &b, &[0]).unwrap();
    assert_eq!((c.only_a, c.only_b, c.judgments, c.p_value), (0, 0, 12, 1.0));
    assert!(paired_on(&a, &b, &[3]).is_none());
    // other prompts or another number of clips do not pair
    assert!(paired(&a, &score(&clips[..11])).is_none());
    let colorless: Vec<_> = clips.iter().map(|(v, _)| (Frames { frames: v.frames.clone(), ..*v }, "a circle moving up".to_string())).collect();
    assert!(paired(&a, &score(&colorless)).is_none());
}

#[test]
fn an_empty_clip_has_no_subject() {
    let v = Frames { width: 16, height: 16, frames: vec![vec![90u8; 16 * 16 * 3]; 4] };
    let a = analyse(&v);
    assert_eq!((a.color, a.shape, a.direction), (None, None, None));
    assert_eq!(a.subject_consistency, 0.0);
}

#[test]
fn captions_files_csv_and_jsonl() {
    let d = tmp("captions");
    let csv = d.join("c.csv");
    std::fs::write(&csv, "videoid,name,short_text\nv1.mp4,\"A red, round \"\"ball\"\"\",red ball\nsub/v2,plain caption,\n").unwrap();
    let rows = read_captions(&csv).unwrap();
    assert_eq!(
        rows,
        vec![
            CaptionRow { path: "v1.mp4".into(), caption: "A red, round \"ball\"".into(), short_caption: Some("red ball".into()) },
            CaptionRow { path: "sub/v2".into(), caption: "plain caption".into(), short_caption: None },
        ]
    );
    assert_eq!(rows[1].resolve(&csv), d.join("sub/v2"));
    let jl = d.join("c.jsonl");
    std::fs::write(&jl, "{\"path\": \"a\", \"caption\": \"x\", \"short_caption\": \"y\"}\n\n{\"video\": \"b\", \"text\": \"z\"}\n").unwrap();
    let rows = read_captions(&jl).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].short_caption, None);
    // a byte-order mark (spreadsheet exports) and CRLF line ends
    let bom = d.join("bom.csv");
    std::fs::write(&bom, "\u{feff}path,caption\r\nclip1,a red ball\r\n").unwrap();
    assert_eq!(read_captions(&bom).unwrap(), vec![CaptionRow { path: "clip1".into(), caption: "a red ball".into(), short_caption: None }]);
    let bom = d.join("bom.jsonl");
    std::fs::write(&bom, "\u{feff}{\"path\": \"a\", \"caption\": \"x\"}\r\n").unwrap();
    assert_eq!(read_captions(&bom).unwrap()[0].caption, "x");

    let err = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        read_captions(&p).unwrap_err().to_string()
    };
    assert!(err("nopath.csv", "file_name,caption\na,b\n").contains("no path column"));
    assert!(err("nocap.csv", "path,title\na,b\n").contains("no caption column"));
    assert!(err("ragged.csv", "path,caption\na,b,c\n").contains("row 2: 3 fields"));
    assert!(err("quote.csv", "path,caption\na,\"b\n").contains("unterminated quote"));
    assert!(err("bad.jsonl", "{\"path\": \"a\"}\n").contains("line 1: no caption field"));
    assert!(err("empty.jsonl", "\n").contains("no rows"));
    assert!(err("x.txt", "a").contains("unknown format"));
    assert!(read_captions(&d.join("missing.csv")).unwrap_err().to_string().contains("missing.csv"));
}

#[test]
fn frame_folders_round_trip_and_resize_crop() {
    let d = tmp("frames");
    let cfg = WorldConfig { frames: 6, size: 20, short_fraction: 0.0 };
    let v = render(&clip_spec(0, 0, &cfg), &cfg);
    write_frames(&d.join("clip"), &v).unwrap();
    let back = read_video(&d.join("clip"), 8.0, 1, 100).unwrap();
    assert_eq!((back.width, back.height, &back.frames), (20, 20, &v.frames));
    // stride and frame limit
    let strided = read_video(&d.join("clip"), 8.0, 2, 2).unwrap();
    assert_eq!(strided.frames, vec![v.frames[0].clone(), v.frames[2].clone()]);
    // same size: the identity in [-1, 1]
    let x = back.to_model_input(20, 20);
    let (f, h, w) = (6, 20, 20);
    for (t, y, xx, c) in [(0, 0, 0, 0), (5, 19, 19, 2), (3, 7, 11, 1)] {
        let want = v.frames[t][(y * w + xx) * 3 + c] as f32 / 127.5 - 1.0;
        assert!((x[((c * f + t) * h + y) * w + xx] - want).abs() < 1e-5);
    }
    // a 2:1 frame center-cropped to a square keeps the middle columns
    let wide = Frames { width: 8, height: 4, frames: vec![(0..8 * 4 * 3).map(|i| ((i / 3) % 8 * 30) as u8).collect()] };
    let sq = wide.to_model_input(4, 4);
    let col = |x: usize| sq[x]; // channel 0, frame 0, row 0
    for (x, src) in [(0, 2), (1, 3), (2, 4), (3, 5)] {
        assert!((col(x) - (src as f32 * 30.0 / 127.5 - 1.0)).abs() < 1e-5, "column {x}: {}", col(x));
    }
    // downscale by 2: bilinear at pixel centres averages 2x2 blocks
    let big = Frames { width: 4, height: 4, frames: vec![(0..16).flat_map(|i| [(i * 10) as u8; 3]).collect()] };
    let small = big.to_model_input(2, 2);
    let want = (0.0 + 10.0 + 40.0 + 50.0) / 4.0 / 127.5 - 1.0;
    assert!((small[0] - want).abs() < 1e-5, "{} vs {want}", small[0]);
}

#[test]
fn unreadable_videos_give_clear_errors() {
    let d = tmp("bad-video");
    std::fs::create_dir_all(d.join("empty")).unwrap();
    std::fs::write(d.join("broken").with_extension("png"), b"not a png").unwrap();
    std::fs::create_dir_all(d.join("dir_with_broken")).unwrap();
    std::fs::write(d.join("dir_with_broken/frame_000.png"), b"not a png").unwrap();
    assert!(read_video(&d.join("nothing"), 8.0, 1, 8).unwrap_err().to_string().contains("no such file"));
    assert!(read_video(&d.join("empty"), 8.0, 1, 8).unwrap().frames.is_empty());
    assert!(read_video(&d.join("dir_with_broken"), 8.0, 1, 8).unwrap_err().to_string().contains("frame_000.png"));
    // a video file without ffmpeg: says how to get it
    std::fs::write(d.join("v.mp4"), b"....").unwrap();
    std::env::set_var("T2V_FFMPEG", "/nonexistent/ffmpeg");
    let e = read_video(&d.join("v.mp4"), 8.0, 1, 8).unwrap_err().to_string();
    assert!(e.contains("install ffmpeg") && e.contains("frame folders"), "{e}");
}

#[test]
fn toml_configs_expand_to_options_that_the_command_line_overrides() {
    use clap::Parser;
    use t2v_turbo::cli::{expand_config, Cli};
    let d = tmp("config");
    let cfg = d.join("sample.toml");
    std::fs::write(&cfg, "steps = 8\nmotion_scale = 0.1\nteacher = false\nprompt = [\"a red circle\", \"a blue square\"]\nout = \"x\"\n").unwrap();
    let args: Vec<std::ffi::OsString> = ["t2v-turbo", "sample", "--config", cfg.to_str().unwrap(), "--steps", "16"].iter().map(|s| s.into()).collect();
    let expanded = expand_config(args).unwrap();
    let text: Vec<String> = expanded.iter().map(|s| s.to_string_lossy().into()).collect();
    assert!(text.contains(&"--steps=8".to_string()) && text.contains(&"--prompt=a blue square".to_string()), "{text:?}");
    let cli = Cli::try_parse_from(expanded).unwrap();
    let dbg = format!("{:?}", cli.command);
    assert!(dbg.contains("steps: 16") && dbg.contains("motion_scale: 0.1") && dbg.contains("\"a red circle\", \"a blue square\""), "{dbg}");
    // an unknown key is an error that names it
    std::fs::write(&cfg, "stepz = 8\n").unwrap();
    let args: Vec<std::ffi::OsString> = ["t2v-turbo", "sample", "--config", cfg.to_str().unwrap()].iter().map(|s| s.into()).collect();
    let e = Cli::try_parse_from(expand_config(args).unwrap()).unwrap_err().to_string();
    assert!(e.contains("--stepz"), "{e}");
    std::fs::write(&cfg, "steps = [\n").unwrap();
    let args: Vec<std::ffi::OsString> = ["t2v-turbo", "sample", "--config", cfg.to_str().unwrap()].iter().map(|s| s.into()).collect();
    assert!(expand_config(args).unwrap_err().to_string().contains("sample.toml"));
}

#[test]
fn a_reversed_clip_plays_the_same_path_backwards() {
    let cfg = WorldConfig::default();
    for i in 0..12 {
        let s = clip_spec(5, i, &cfg);
        let r = s.reversed(&cfg);
        assert_eq!(r.direction, s.direction ^ 1, "the opposite direction");
        assert_eq!((r.color, r.shape, r.size, r.speed, r.background), (s.color, s.shape, s.size, s.speed, s.background));
        assert_ne!(r.caption(), s.caption());
        let (a, b) = (render(&s, &cfg).frames, render(&r, &cfg).frames);
        for f in 0..cfg.frames {
            let (x, y) = (&a[f], &b[cfg.frames - 1 - f]);
            let worst = x.iter().zip(y).map(|(p, q)| p.abs_diff(*q)).max().unwrap();
            assert!(worst <= 2, "clip {i}, frame {f}: the reversed clip's frame differs by up to {worst}");
        }
        assert_eq!(r.reversed(&cfg).direction, s.direction);
    }
}
