//! Writing generated videos: PNG frames and an animated GIF per video.

use std::path::Path;

/// Errors of the output files.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct VideoIoError {
    pub path: String,
    pub msg: String,
}

/// One video as RGB frames (height x width x 3 bytes each).
pub struct Frames {
    pub width: usize,
    pub height: usize,
    pub frames: Vec<Vec<u8>>,
}

impl Frames {
    /// From a decoded video (3, F, H, W) in [-1, 1], row-major.
    pub fn from_chw(data: &[f32], f: usize, h: usize, w: usize) -> Frames {
        let frames = (0..f)
            .map(|t| {
                let mut rgb = vec![0u8; h * w * 3];
                for c in 0..3 {
                    for i in 0..h * w {
                        let v = data[((c * f + t) * h * w) + i];
                        rgb[i * 3 + c] = (((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round()) as u8;
                    }
                }
                rgb
            })
            .collect();
        Frames { width: w, height: h, frames }
    }
}

fn err(path: &Path, e: impl std::fmt::Display) -> VideoIoError {
    VideoIoError { path: path.display().to_string(), msg: e.to_string() }
}

pub fn write_png(path: &Path, width: usize, height: usize, rgb: &[u8]) -> Result<(), VideoIoError> {
    let file = std::fs::File::create(path).map_err(|e| err(path, e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(|e| err(path, e))?;
    w.write_image_data(rgb).map_err(|e| err(path, e))
}

/// An endlessly looping GIF at `fps`.
pub fn write_gif(path: &Path, v: &Frames, fps: f32) -> Result<(), VideoIoError> {
    if v.width > u16::MAX as usize || v.height > u16::MAX as usize {
        return Err(err(path, "frame too large for GIF"));
    }
    let file = std::fs::File::create(path).map_err(|e| err(path, e))?;
    let mut enc = gif::Encoder::new(std::io::BufWriter::new(file), v.width as u16, v.height as u16, &[]).map_err(|e| err(path, e))?;
    enc.set_repeat(gif::Repeat::Infinite).map_err(|e| err(path, e))?;
    let delay = (100.0 / fps.max(0.1)).round() as u16; // hundredths of a second
    for rgb in &v.frames {
        let mut frame = gif::Frame::from_rgb_speed(v.width as u16, v.height as u16, rgb, 10);
        frame.delay = delay;
        enc.write_frame(&frame).map_err(|e| err(path, e))?;
    }
    Ok(())
}
