//! Line plots of training curves as PNG (no plotting library): one panel per series with
//! its title and value range written in a built-in 3x5 pixel font.

use std::path::Path;

use crate::models::weights::{Result, WeightsError};
use crate::pipeline::train::StepMetrics;

/// 3x5 glyphs, rows top to bottom, 3 bits each (bit 2 = left column).
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        ':' => [0, 2, 0, 2, 0],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [7, 4, 4, 4, 7],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [7, 4, 5, 5, 7],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 7],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [7, 5, 5, 5, 7],
        'P' => [7, 5, 7, 4, 4],
        'Q' => [7, 5, 5, 7, 1],
        'R' => [6, 5, 6, 5, 5],
        'S' => [7, 4, 7, 1, 7],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        _ => [0; 5],
    }
}

/// An RGB canvas.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize) -> Canvas {
        Canvas { width, height, rgb: vec![255; width * height * 3] }
    }
    pub fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }
    /// Text at (x, y), each font pixel `scale` x `scale`.
    pub fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits >> (2 - col) & 1 == 1 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.set(x + (k as i64 * 4 + col) * scale + dx, y + row as i64 * scale + dy, c);
                            }
                        }
                    }
                }
            }
        }
    }
    pub fn line(&mut self, (x0, y0): (f32, f32), (x1, y1): (f32, f32), c: [u8; 3]) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let t = i as f32 / n as f32;
            self.set((x0 + (x1 - x0) * t).round() as i64, (y0 + (y1 - y0) * t).round() as i64, c);
        }
    }
    pub fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        for x in x0..=x1 {
            self.set(x, y0, c);
            self.set(x, y1, c);
        }
        for y in y0..=y1 {
            self.set(x0, y, c);
            self.set(x1, y, c);
        }
    }
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::pipeline::video_io::write_png(path, self.width, self.height, &self.rgb).map_err(|e| WeightsError::Write { path: e.path, msg: e.msg })
    }
}

fn num(v: f32) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
    }
}

/// Panels of (title, points (x, y)) stacked vertically.
pub fn plot_series(path: &Path, series: &[(&str, Vec<(f32, f32)>)]) -> Result<()> {
    let (w, ph) = (640usize, 150usize);
    let mut cv = Canvas::new(w, ph * series.len().max(1));
    let colors = [[31, 119, 180], [214, 39, 40], [44, 160, 44], [148, 103, 189]];
    for (k, (title, pts)) in series.iter().enumerate() {
        let top = (k * ph) as i64;
        let (x0, x1, y0, y1) = (60i64, w as i64 - 10, top + 22, top + ph as i64 - 18);
        cv.rect(x0, y0, x1, y1, [160, 160, 160]);
        cv.text(x0, top + 6, title, 2, [0, 0, 0]);
        let pts: Vec<(f32, f32)> = pts.iter().copied().filter(|p| p.1.is_finite()).collect();
        if pts.is_empty() {
            cv.text(x0 + 8, y0 + 8, "NO DATA", 2, [120, 120, 120]);
            continue;
        }
        let (mut xmin, mut xmax, mut ymin, mut ymax) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for &(x, y) in &pts {
            (xmin, xmax, ymin, ymax) = (xmin.min(x), xmax.max(x), ymin.min(y), ymax.max(y));
        }
        if xmax == xmin {
            xmax = xmin + 1.0;
        }
        if ymax == ymin {
            (ymin, ymax) = (ymin - 0.5, ymax + 0.5);
        }
        let map = |(x, y): (f32, f32)| -> (f32, f32) {
            (x0 as f32 + 1.0 + (x - xmin) / (xmax - xmin) * (x1 - x0 - 2) as f32, y1 as f32 - 1.0 - (y - ymin) / (ymax - ymin) * (y1 - y0 - 2) as f32)
        };
        for seg in pts.windows(2) {
            cv.line(map(seg[0]), map(seg[1]), colors[k % colors.len()]);
        }
        if pts.len() == 1 {
            let (x, y) = map(pts[0]);
            cv.rect(x as i64 - 1, y as i64 - 1, x as i64 + 1, y as i64 + 1, colors[k % colors.len()]);
        }
        cv.text(4, y0, &num(ymax), 1, [60, 60, 60]);
        cv.text(4, y1 - 5, &num(ymin), 1, [60, 60, 60]);
        cv.text(x0, y1 + 5, &format!("{}", xmin), 1, [60, 60, 60]);
        let label = format!("STEP {}", xmax);
        cv.text(x1 - label.len() as i64 * 4, y1 + 5, &label, 1, [60, 60, 60]);
    }
    cv.save(path)
}

/// The training curves: loss, consistency loss, image and video rewards, gradient norm,
/// the trained text encoder's gradient norm in runs that train it, and the learning rate
/// when a schedule changes it.
pub fn plot_metrics(path: &Path, ms: &[StepMetrics]) -> Result<()> {
    let s = |f: &dyn Fn(&StepMetrics) -> Option<f32>| ms.iter().filter_map(|m| f(m).map(|v| (m.step as f32, v))).collect::<Vec<_>>();
    let mut panels = vec![
        ("LOSS", s(&|m| Some(m.loss))),
        ("CONSISTENCY LOSS", s(&|m| Some(m.cd_loss))),
        ("IMAGE REWARD", s(&|m| m.image_reward)),
        ("VIDEO REWARD", s(&|m| m.video_reward)),
        ("GRAD NORM", s(&|m| Some(m.grad_norm))),
    ];
    if ms.iter().any(|m| m.text_grad_norm.is_some()) {
        panels.push(("TEXT ENCODER GRAD NORM", s(&|m| m.text_grad_norm)));
    }
    // a schedule's rates, when they change
    if ms.iter().any(|m| m.lr != ms[0].lr) {
        panels.push(("LEARNING RATE", s(&|m| Some(m.lr))));
    }
    plot_series(path, &panels)
}

#[cfg(test)]
mod tests {
    use super::plot_metrics;
    use crate::pipeline::train::StepMetrics;

    /// The PNG's height (IHDR), in pixels.
    fn png_height(path: &std::path::Path) -> u32 {
        let b = std::fs::read(path).unwrap();
        u32::from_be_bytes([b[20], b[21], b[22], b[23]])
    }

    /// A learning-rate panel joins the five when a schedule changes the rate, a text
    /// encoder's gradient norm when the run trains it.
    #[test]
    fn the_learning_rate_is_plotted_when_it_changes() {
        let step = |k: u64, lr: f32| StepMetrics { step: k, loss: 1.0 / k as f32, cd_loss: 0.5, image_reward: Some(0.1), video_reward: None, image_reward_records: 1, video_reward_records: 0, grad_norm: 2.0, text_grad_norm: None, lr, seconds: 1.0, peak_gpu_mib: 1.0, peak_live_mib: 1.0 };
        let dir = std::env::temp_dir().join(format!("t2v-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (flat, decaying, text) = (dir.join("flat.png"), dir.join("decaying.png"), dir.join("text.png"));
        plot_metrics(&flat, &[step(1, 1e-5), step(2, 1e-5)]).unwrap();
        plot_metrics(&decaying, &[step(1, 1e-5), step(2, 5e-6)]).unwrap();
        let with_text = |k| StepMetrics { text_grad_norm: Some(0.5), ..step(k, 5e-6) };
        plot_metrics(&text, &[with_text(1), with_text(2)]).unwrap();
        assert_eq!((png_height(&flat), png_height(&decaying), png_height(&text)), (5 * 150, 6 * 150, 6 * 150));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
