//! The embedded "moving shapes" video world: one saturated colored shape moving in a
//! straight line over a low-saturation textured background. Every clip comes with a long
//! dense caption (like VidGen/OpenVid) and, for a fraction of clips, a short one (like
//! WebVid). Deterministic in the seed; the attributes are kept so that the analyser of
//! `crate::eval` can be checked against ground truth.

use crate::pipeline::sample::Gaussian;
use crate::pipeline::video_io::Frames;

pub const COLORS: [(&str, [u8; 3]); 6] =
    [("red", [230, 40, 40]), ("yellow", [235, 220, 40]), ("green", [40, 200, 60]), ("cyan", [40, 215, 225]), ("blue", [50, 70, 235]), ("magenta", [225, 50, 215])];
pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
pub const DIRECTIONS: [&str; 4] = ["left", "right", "up", "down"];
pub const SIZES: [&str; 2] = ["small", "large"];
pub const SPEEDS: [&str; 2] = ["slowly", "quickly"];
pub const BACKGROUNDS: [&str; 3] = ["a plain dark background", "a gray checkered background", "a striped gray background"];

/// Settings of the world.
#[derive(Clone, Debug)]
pub struct WorldConfig {
    pub frames: usize,
    /// Square frames of `size` x `size` pixels.
    pub size: usize,
    /// Fraction of clips that carry a short caption.
    pub short_fraction: f32,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig { frames: 8, size: 32, short_fraction: 0.5 }
    }
}

/// Checks a short-caption fraction (`world --short-fraction`, `demo --short-fraction`).
pub fn check_short_fraction(f: f32) -> Result<(), String> {
    if (0.0..=1.0).contains(&f) {
        Ok(())
    } else {
        Err(format!("must be within 0..1, not {f}"))
    }
}

/// The attributes of one clip.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipSpec {
    pub color: usize,
    pub shape: usize,
    pub direction: usize,
    pub size: usize,
    pub speed: usize,
    pub background: usize,
    /// Centre at frame 0, pixels.
    pub start: (f32, f32),
    pub has_short: bool,
}

impl ClipSpec {
    /// Half extent of the shape in pixels.
    pub fn radius(&self, img: usize) -> f32 {
        img as f32 * [0.14, 0.22][self.size]
    }
    /// Displacement per frame in pixels along the direction.
    pub fn step(&self, cfg: &WorldConfig) -> f32 {
        // over the clip a slow shape travels a quarter of the frame, a quick one half
        let travel = cfg.size as f32 * [0.25, 0.5][self.speed];
        travel / (cfg.frames.max(2) - 1) as f32
    }
    pub fn velocity(&self, cfg: &WorldConfig) -> (f32, f32) {
        let s = self.step(cfg);
        [(-s, 0.0), (s, 0.0), (0.0, -s), (0.0, s)][self.direction]
    }
    pub fn caption(&self) -> String {
        let (shape, color) = (SHAPES[self.shape], COLORS[self.color].0);
        let phrase = ["from right to left", "from left to right", "upward", "downward"][self.direction];
        format!(
            "A {} {color} {shape} moves {} {phrase} across {}. The {shape} keeps its {color} color and its size while the camera stays still.",
            SIZES[self.size], SPEEDS[self.speed], BACKGROUNDS[self.background]
        )
    }
    /// The same path travelled the other way: the opposite direction, starting where this
    /// clip ends (its frames are this clip's in reverse order, so only the direction of
    /// motion tells the two apart).
    pub fn reversed(&self, cfg: &WorldConfig) -> ClipSpec {
        let (vx, vy) = self.velocity(cfg);
        let n = (cfg.frames.max(1) - 1) as f32;
        ClipSpec { direction: self.direction ^ 1, start: (self.start.0 + vx * n, self.start.1 + vy * n), ..self.clone() }
    }
    pub fn short_caption(&self) -> String {
        format!("a {} {} moving {}", COLORS[self.color].0, SHAPES[self.shape], DIRECTIONS[self.direction])
    }
}

/// A BERT WordPiece vocabulary (one token per line, index = id) covering every word and
/// punctuation mark of the world's captions, lower-cased, after BERT's special tokens:
/// the text side of the tiny InternVideo2 video reward.
pub fn bert_vocabulary() -> Vec<String> {
    let mut words = std::collections::BTreeSet::new();
    for color in 0..COLORS.len() {
        for shape in 0..SHAPES.len() {
            for direction in 0..DIRECTIONS.len() {
                for (size, speed, background) in [(0, 0, 0), (1, 1, 1), (0, 1, 2)] {
                    let spec = ClipSpec { color, shape, direction, size, speed, background, start: (0.0, 0.0), has_short: true };
                    for text in [spec.caption(), spec.short_caption()] {
                        for w in text.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
                            words.insert(w.to_string());
                        }
                    }
                }
            }
        }
    }
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","].map(String::from).to_vec();
    v.extend(words);
    v
}

/// `n` held-out prompts (short captions) for a run whose training world has seed `seed`:
/// drawn from another world seed, so they are not the training clips' (the demo's and
/// `train --validate-every`'s default prompts).
pub fn held_out_prompts(seed: u64, n: usize, cfg: &WorldConfig) -> Vec<String> {
    (0..n as u64).map(|i| clip_spec(seed ^ 0xE7A1, i, cfg).short_caption()).collect()
}

/// The evaluation grid: every color x direction, each with two shapes (rotating through
/// the three, so each shape appears equally often) — 48 short-caption prompts in which every
/// color, shape and direction is equally represented, so that accuracies and paired
/// comparisons on it do not depend on which attributes a random draw happened to favour.
/// `n` < 48 takes every (48 / n)-th prompt: 24 = every color x direction once, shapes still
/// balanced.
pub fn prompt_grid(n: usize) -> Vec<String> {
    let mut all = Vec::with_capacity(COLORS.len() * DIRECTIONS.len() * 2);
    for color in 0..COLORS.len() {
        for direction in 0..DIRECTIONS.len() {
            let k = color * DIRECTIONS.len() + direction;
            for shape in [k % SHAPES.len(), (k + 1) % SHAPES.len()] {
                let spec = ClipSpec { color, shape, direction, size: 0, speed: 0, background: 0, start: (0.0, 0.0), has_short: true };
                all.push(spec.short_caption());
            }
        }
    }
    let n = n.min(all.len());
    (0..n).map(|i| all[i * all.len() / n].clone()).collect()
}

/// Draws clip `index` of the world of `seed` (each clip has its own stream, so clips can
/// be generated in any order or in parallel).
pub fn clip_spec(seed: u64, index: u64, cfg: &WorldConfig) -> ClipSpec {
    let mut rng = Gaussian::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut pick = |n: usize| ((rng.uniform() * n as f64) as usize).min(n - 1);
    let mut spec = ClipSpec {
        color: pick(COLORS.len()),
        shape: pick(SHAPES.len()),
        direction: pick(DIRECTIONS.len()),
        size: pick(SIZES.len()),
        speed: pick(SPEEDS.len()),
        background: pick(BACKGROUNDS.len()),
        start: (0.0, 0.0),
        has_short: false,
    };
    let img = cfg.size as f32;
    let r = spec.radius(cfg.size);
    let (vx, vy) = spec.velocity(cfg);
    let n = (cfg.frames.max(1) - 1) as f32;
    // keep the whole shape inside the frame at both ends of the path
    let range = |v: f32, u: f64| -> f32 {
        let lo = r + 0.5 - (v * n).min(0.0);
        let hi = img - r - 0.5 - (v * n).max(0.0);
        lo + (hi - lo).max(0.0) * u as f32
    };
    spec.start = (range(vx, rng.uniform()), range(vy, rng.uniform()));
    spec.has_short = rng.uniform() < cfg.short_fraction as f64;
    spec
}

/// Background intensity (gray, 0..255) at a pixel.
fn background(kind: usize, x: usize, y: usize, img: usize) -> u8 {
    let cell = (img / 8).max(2);
    match kind {
        0 => 28,
        1 => {
            if (x / cell + y / cell) % 2 == 0 {
                70
            } else {
                110
            }
        }
        _ => {
            if (y / cell) % 2 == 0 {
                55
            } else {
                95
            }
        }
    }
}

/// Is the point (px, py) inside the shape centred at (cx, cy)?
fn inside(shape: usize, px: f32, py: f32, cx: f32, cy: f32, r: f32) -> bool {
    let (dx, dy) = (px - cx, py - cy);
    match shape {
        0 => dx * dx + dy * dy <= r * r,
        1 => dx.abs() <= r && dy.abs() <= r,
        _ => {
            // apex up, base at cy + r, apex at cy - r
            let t = (dy + r) / (2.0 * r);
            (0.0..=1.0).contains(&t) && dx.abs() <= t * r
        }
    }
}

/// Renders a clip: 4x4 supersampled coverage blends the shape over the background.
pub fn render(spec: &ClipSpec, cfg: &WorldConfig) -> Frames {
    let img = cfg.size;
    let r = spec.radius(img);
    let (vx, vy) = spec.velocity(cfg);
    let color = COLORS[spec.color].1;
    let frames = (0..cfg.frames)
        .map(|f| {
            let (cx, cy) = (spec.start.0 + vx * f as f32, spec.start.1 + vy * f as f32);
            let mut rgb = vec![0u8; img * img * 3];
            for y in 0..img {
                for x in 0..img {
                    let mut cover = 0u32;
                    for sy in 0..4 {
                        for sx in 0..4 {
                            let (px, py) = (x as f32 + (sx as f32 + 0.5) / 4.0, y as f32 + (sy as f32 + 0.5) / 4.0);
                            cover += inside(spec.shape, px, py, cx, cy, r) as u32;
                        }
                    }
                    let a = cover as f32 / 16.0;
                    let bg = background(spec.background, x, y, img) as f32;
                    for c in 0..3 {
                        rgb[(y * img + x) * 3 + c] = (a * color[c] as f32 + (1.0 - a) * bg).round() as u8;
                    }
                }
            }
            rgb
        })
        .collect();
    Frames { width: img, height: img, frames }
}

/// The attributes a prompt names (by the world's vocabulary), each None when absent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PromptAttributes {
    pub color: Option<usize>,
    pub shape: Option<usize>,
    pub direction: Option<usize>,
}

/// Reads color, shape and direction words from a long or short caption.
pub fn parse_prompt(prompt: &str) -> PromptAttributes {
    let p = prompt.to_lowercase();
    let words: Vec<&str> = p.split(|c: char| !c.is_ascii_alphabetic()).filter(|w| !w.is_empty()).collect();
    let find = |names: &[&str]| words.iter().find_map(|w| names.iter().position(|n| n == w));
    let colors: Vec<&str> = COLORS.iter().map(|c| c.0).collect();
    let direction = if p.contains("right to left") {
        Some(0)
    } else if p.contains("left to right") {
        Some(1)
    } else if words.contains(&"upward") || words.contains(&"upwards") {
        Some(2)
    } else if words.contains(&"downward") || words.contains(&"downwards") {
        Some(3)
    } else {
        words.iter().rev().find_map(|w| DIRECTIONS.iter().position(|d| d == w))
    };
    PromptAttributes { color: find(&colors), shape: find(&SHAPES), direction }
}

/// Writes clips `0..count` of the world of `seed` under `out` as frame folders
/// (`clips/00000/frame_000.png`, ...) with `captions.jsonl`; returns the rows.
pub fn write_dataset(out: &std::path::Path, seed: u64, count: usize, cfg: &WorldConfig, quiet: bool) -> Result<Vec<crate::pipeline::captions::CaptionRow>, crate::pipeline::video_io::VideoIoError> {
    use crate::pipeline::captions::{write_jsonl, CaptionRow};
    check_short_fraction(cfg.short_fraction).map_err(|msg| crate::pipeline::video_io::VideoIoError { path: out.display().to_string(), msg: format!("the short-caption fraction {msg}") })?;
    let mut rows = Vec::with_capacity(count);
    let mut progress = crate::pipeline::progress::Progress::new("world", count).quiet(quiet);
    for i in 0..count {
        let spec = clip_spec(seed, i as u64, cfg);
        let rel = format!("clips/{i:05}");
        crate::pipeline::video_io::write_frames(&out.join(&rel), &render(&spec, cfg))?;
        rows.push(CaptionRow { path: rel, caption: spec.caption(), short_caption: spec.has_short.then(|| spec.short_caption()) });
        progress.advance(1, "");
    }
    let file = out.join("captions.jsonl");
    write_jsonl(&file, &rows).map_err(|e| crate::pipeline::video_io::VideoIoError { path: file.display().to_string(), msg: e.to_string() })?;
    Ok(rows)
}
