//! A deterministic analyser of clips of the moving-shapes world, independent of the reward
//! models (so reward hacking cannot pass for quality). Per clip it segments the subject
//! (saturated pixels; the world's backgrounds are gray), then measures:
//! - color: hue of the subject against the world's palette;
//! - shape: fill ratio of the subject's bounding box (square ~1, circle ~0.79, triangle ~0.5);
//! - direction: sign and axis of the fitted centroid velocity;
//! - dynamic degree: centroid speed, in % of the frame width per frame;
//! - jitter: RMS deviation of the frame-to-frame centroid steps from that steady velocity,
//!   in the same unit (the world's subjects move steadily: ~0; a subject that wobbles or
//!   jumps around scores high, and the dynamic degree alone would count that as motion);
//! - flicker: mean absolute change of background pixels between frames (0..1, lower is better);
//! - subject consistency: 1 - (variation of area + variation of color), in [0, 1].

use crate::pipeline::video_io::Frames;
use crate::world::{parse_prompt, COLORS};

/// Saturation (max - min over RGB, 0..1) above which a pixel belongs to the subject.
const SUBJECT_SATURATION: f32 = 0.3;
/// Minimum subject area (pixels) for a frame to count as showing the subject.
const MIN_AREA: f32 = 2.0;

/// Measurements of one clip.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipAnalysis {
    pub color: Option<usize>,
    /// 0 circle, 1 square, 2 triangle (the world's order).
    pub shape: Option<usize>,
    /// 0 left, 1 right, 2 up, 3 down; None when the subject does not move.
    pub direction: Option<usize>,
    pub dynamic_degree: f32,
    pub jitter: f32,
    pub flicker: f32,
    pub subject_consistency: f32,
}

struct FrameStats {
    area: f32,
    cx: f32,
    cy: f32,
    fill: f32,
    rgb: [f32; 3],
}

fn saturation(p: &[u8]) -> f32 {
    (p.iter().max().unwrap() - p.iter().min().unwrap()) as f32 / 255.0
}

fn frame_stats(rgb: &[u8], w: usize, h: usize) -> Option<FrameStats> {
    let (mut area, mut sx, mut sy, mut col) = (0f32, 0f32, 0f32, [0f32; 3]);
    let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
    for y in 0..h {
        for x in 0..w {
            let p = &rgb[(y * w + x) * 3..(y * w + x) * 3 + 3];
            if saturation(p) > SUBJECT_SATURATION {
                area += 1.0;
                sx += x as f32;
                sy += y as f32;
                for c in 0..3 {
                    col[c] += p[c] as f32 / 255.0;
                }
                (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            }
        }
    }
    if area < MIN_AREA {
        return None;
    }
    let bbox = ((x1 - x0 + 1) * (y1 - y0 + 1)) as f32;
    Some(FrameStats { area, cx: sx / area, cy: sy / area, fill: area / bbox, rgb: col.map(|c| c / area) })
}

fn hue(rgb: [f32; 3]) -> f32 {
    let (r, g, b) = (rgb[0], rgb[1], rgb[2]);
    let (mx, mn) = (r.max(g).max(b), r.min(g).min(b));
    if mx - mn < 1e-6 {
        return 0.0;
    }
    let h = if mx == r {
        ((g - b) / (mx - mn)).rem_euclid(6.0)
    } else if mx == g {
        (b - r) / (mx - mn) + 2.0
    } else {
        (r - g) / (mx - mn) + 4.0
    };
    h * 60.0
}

/// The palette entry nearest in hue.
fn classify_color(rgb: [f32; 3]) -> usize {
    let h = hue(rgb);
    let dist = |c: &[u8; 3]| {
        let d = (hue(c.map(|v| v as f32 / 255.0)) - h).abs();
        d.min(360.0 - d)
    };
    (0..COLORS.len()).min_by(|&a, &b| dist(&COLORS[a].1).total_cmp(&dist(&COLORS[b].1))).unwrap()
}

fn classify_shape(fill: f32) -> usize {
    if fill > 0.9 {
        1
    } else if fill > 0.64 {
        0
    } else {
        2
    }
}

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

/// Least-squares slope of `ys` over frame indices `ts`.
fn slope(ts: &[f32], ys: &[f32]) -> f32 {
    let n = ts.len() as f32;
    let (mt, my) = (ts.iter().sum::<f32>() / n, ys.iter().sum::<f32>() / n);
    let num: f32 = ts.iter().zip(ys).map(|(t, y)| (t - mt) * (y - my)).sum();
    let den: f32 = ts.iter().map(|t| (t - mt) * (t - mt)).sum();
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

/// Analyses one clip.
pub fn analyse(v: &Frames) -> ClipAnalysis {
    let (w, h) = (v.width, v.height);
    let stats: Vec<(usize, FrameStats)> = v.frames.iter().enumerate().filter_map(|(i, f)| frame_stats(f, w, h).map(|s| (i, s))).collect();
    let flicker = background_flicker(v);
    if stats.is_empty() {
        return ClipAnalysis { color: None, shape: None, direction: None, dynamic_degree: 0.0, jitter: 0.0, flicker, subject_consistency: 0.0 };
    }
    let n = stats.len() as f32;
    let mean_rgb = [0, 1, 2].map(|c| stats.iter().map(|(_, s)| s.rgb[c]).sum::<f32>() / n);
    let ts: Vec<f32> = stats.iter().map(|(i, _)| *i as f32).collect();
    let vx = slope(&ts, &stats.iter().map(|(_, s)| s.cx).collect::<Vec<_>>());
    let vy = slope(&ts, &stats.iter().map(|(_, s)| s.cy).collect::<Vec<_>>());
    let speed = (vx * vx + vy * vy).sqrt();
    // a subject moving less than a tenth of a pixel per frame counts as static
    let direction = if stats.len() < 2 || speed < 0.1 {
        None
    } else if vx.abs() >= vy.abs() {
        Some(if vx < 0.0 { 0 } else { 1 })
    } else {
        Some(if vy < 0.0 { 2 } else { 3 })
    };
    // steps between consecutive frames that both show the subject, against (vx, vy)
    let deviations: Vec<f32> = stats
        .windows(2)
        .filter(|p| p[1].0 == p[0].0 + 1)
        .map(|p| (p[1].1.cx - p[0].1.cx - vx).powi(2) + (p[1].1.cy - p[0].1.cy - vy).powi(2))
        .collect();
    let jitter = if deviations.is_empty() { 0.0 } else { (deviations.iter().sum::<f32>() / deviations.len() as f32).sqrt() };
    let areas: Vec<f32> = stats.iter().map(|(_, s)| s.area).collect();
    let mean_area = areas.iter().sum::<f32>() / n;
    let area_cv = (areas.iter().map(|a| (a - mean_area).powi(2)).sum::<f32>() / n).sqrt() / mean_area;
    let color_sd = (stats.iter().map(|(_, s)| (0..3).map(|c| (s.rgb[c] - mean_rgb[c]).powi(2)).sum::<f32>()).sum::<f32>() / n).sqrt();
    // frames without a subject count fully against consistency
    let missing = 1.0 - n / v.frames.len() as f32;
    ClipAnalysis {
        color: Some(classify_color(mean_rgb)),
        shape: Some(classify_shape(median(stats.iter().map(|(_, s)| s.fill).collect()))),
        direction,
        dynamic_degree: 100.0 * speed / w as f32,
        jitter: 100.0 * jitter / w as f32,
        flicker,
        subject_consistency: (1.0 - area_cv - color_sd - missing).clamp(0.0, 1.0),
    }
}

/// Mean |change| of pixels that are background in both of two consecutive frames.
fn background_flicker(v: &Frames) -> f32 {
    let (mut sum, mut count) = (0f64, 0usize);
    for pair in v.frames.windows(2) {
        for (a, b) in pair[0].chunks_exact(3).zip(pair[1].chunks_exact(3)) {
            if saturation(a) <= SUBJECT_SATURATION && saturation(b) <= SUBJECT_SATURATION {
                sum += a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).sum::<f64>() / (3.0 * 255.0);
                count += 1;
            }
        }
    }
    if count == 0 {
        0.0
    } else {
        (sum / count as f64) as f32
    }
}

/// Scores of a set of clips against their prompts (accuracies in %).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub clips: usize,
    pub color_accuracy: f32,
    pub shape_accuracy: f32,
    pub direction_accuracy: f32,
    /// Mean of the three accuracies over the attributes the prompts name.
    pub accuracy: f32,
    pub dynamic_degree: f32,
    pub jitter: f32,
    pub flicker: f32,
    pub subject_consistency: f32,
    /// Per clip, in input order: the attribute judgments behind the accuracies.
    pub judgments: Vec<Judgments>,
}

/// Whether a clip shows each attribute its prompt names, in the order color, shape,
/// direction (None: the prompt does not name that attribute).
pub type Judgments = [Option<bool>; 3];

/// The judgments of one analysed clip against its prompt.
pub fn judge(got: &ClipAnalysis, prompt: &str) -> Judgments {
    let want = parse_prompt(prompt);
    [(want.color, got.color), (want.shape, got.shape), (want.direction, got.direction)].map(|(w, g)| w.map(|w| g == Some(w)))
}

/// Scores clips with their prompts. An attribute a prompt does not name is not scored.
pub fn score(clips: &[(Frames, String)]) -> Report {
    let mut hits = [(0usize, 0usize); 3];
    let (mut dynamic, mut jitter, mut flicker, mut consistency) = (0f32, 0f32, 0f32, 0f32);
    let mut judgments = Vec::with_capacity(clips.len());
    for (v, prompt) in clips {
        let got = analyse(v);
        let j = judge(&got, prompt);
        for (k, right) in j.iter().enumerate() {
            if let Some(right) = right {
                hits[k].1 += 1;
                hits[k].0 += *right as usize;
            }
        }
        judgments.push(j);
        dynamic += got.dynamic_degree;
        jitter += got.jitter;
        flicker += got.flicker;
        consistency += got.subject_consistency;
    }
    let pct = |(h, n): (usize, usize)| if n == 0 { f32::NAN } else { 100.0 * h as f32 / n as f32 };
    let accs: Vec<f32> = hits.iter().map(|&h| pct(h)).filter(|a| !a.is_nan()).collect();
    let n = clips.len().max(1) as f32;
    Report {
        clips: clips.len(),
        color_accuracy: pct(hits[0]),
        shape_accuracy: pct(hits[1]),
        direction_accuracy: pct(hits[2]),
        accuracy: if accs.is_empty() { f32::NAN } else { accs.iter().sum::<f32>() / accs.len() as f32 },
        dynamic_degree: dynamic / n,
        jitter: jitter / n,
        flicker: flicker / n,
        subject_consistency: consistency / n,
        judgments,
    }
}

/// Two methods' judgments on the same prompts, paired: how often exactly one of them is
/// right, and whether that split could be chance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Paired {
    /// Judgments right with the first method only.
    pub only_a: usize,
    /// Judgments right with the second method only.
    pub only_b: usize,
    /// Judgments both methods were scored on.
    pub judgments: usize,
    /// Exact two-sided sign test (McNemar's exact test) on `only_a` vs `only_b`: the
    /// probability of a split at least this uneven if neither method were better.
    pub p_value: f64,
}

/// Pairs two reports of the same prompts, in the same order. None when they were not
/// scored on the same clips and attributes.
pub fn paired(a: &Report, b: &Report) -> Option<Paired> {
    paired_on(a, b, &[0, 1, 2])
}

/// [`paired`] on some attributes only: indices into [`Judgments`] (0 color, 1 shape,
/// 2 direction), e.g. `&[0]` for the color the reward models see.
pub fn paired_on(a: &Report, b: &Report, attributes: &[usize]) -> Option<Paired> {
    if a.judgments.len() != b.judgments.len() || attributes.iter().any(|&i| i >= 3) {
        return None;
    }
    let (mut only_a, mut only_b, mut judgments) = (0, 0, 0);
    for (x, y) in a.judgments.iter().zip(&b.judgments) {
        for (x, y) in attributes.iter().map(|&i| (&x[i], &y[i])) {
            match (x, y) {
                (Some(x), Some(y)) => {
                    judgments += 1;
                    only_a += (*x && !*y) as usize;
                    only_b += (*y && !*x) as usize;
                }
                (None, None) => {}
                _ => return None,
            }
        }
    }
    Some(Paired { only_a, only_b, judgments, p_value: sign_test(only_a, only_b) })
}

/// Exact two-sided sign test: P(a split of a + b fair coin flips at least as uneven).
pub fn sign_test(a: usize, b: usize) -> f64 {
    let n = a + b;
    if n == 0 {
        return 1.0;
    }
    // sum_{i <= min(a, b)} C(n, i) / 2^n, in logs so large n does not overflow
    let ln_choose = |k: usize| -> f64 { (1..=k).map(|i| ((n - k + i) as f64 / i as f64).ln()).sum() };
    let tail: f64 = (0..=a.min(b)).map(|i| (ln_choose(i) - n as f64 * std::f64::consts::LN_2).exp()).sum();
    (2.0 * tail).min(1.0)
}
