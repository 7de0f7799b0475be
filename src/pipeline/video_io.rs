//! Video files: reading frame folders (PNG/JPEG) and mp4 (through an installed ffmpeg),
//! resize + center-crop to the model's size, and writing PNG frames and animated GIFs.

use std::path::Path;

/// Errors of the output files.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct VideoIoError {
    pub path: String,
    pub msg: String,
}

/// One video as RGB frames (height x width x 3 bytes each).
#[derive(Clone, Debug, PartialEq)]
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
    // each frame's palette quantization (most of the time) on its own core, then in order
    let frames = in_parallel(&v.frames, |rgb| gif::Frame::from_rgb_speed(v.width as u16, v.height as u16, rgb, 10));
    for mut frame in frames {
        frame.delay = delay;
        enc.write_frame(&frame).map_err(|e| err(path, e))?;
    }
    Ok(())
}

/// `f` of every item, in order, the items shared among the cores.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, items.len().max(1));
    let chunk = items.len().div_ceil(threads).max(1);
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = items.chunks(chunk).map(|c| s.spawn(move || c.iter().map(f).collect::<Vec<R>>())).collect();
        parts.into_iter().flat_map(|h| h.join().expect("a frame-encoding thread panicked")).collect()
    })
}

/// Decodes one PNG or JPEG image to RGB bytes (width, height, rgb).
pub fn read_image(path: &Path) -> Result<(usize, usize, Vec<u8>), VideoIoError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let file = std::io::BufReader::new(std::fs::File::open(path).map_err(|e| err(path, e))?);
    match ext.as_str() {
        "png" => {
            let mut dec = png::Decoder::new(file);
            dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
            let mut r = dec.read_info().map_err(|e| err(path, e))?;
            let mut buf = vec![0; r.output_buffer_size().ok_or_else(|| err(path, "image too large"))?];
            let info = r.next_frame(&mut buf).map_err(|e| err(path, e))?;
            let (w, h) = (info.width as usize, info.height as usize);
            let px = &buf[..info.buffer_size()];
            let rgb = match info.color_type {
                png::ColorType::Rgb => px.to_vec(),
                png::ColorType::Rgba => px.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
                png::ColorType::Grayscale => px.iter().flat_map(|&g| [g, g, g]).collect(),
                png::ColorType::GrayscaleAlpha => px.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
                png::ColorType::Indexed => return Err(err(path, "indexed PNG was not expanded")),
            };
            Ok((w, h, rgb))
        }
        "jpg" | "jpeg" => {
            let mut dec = jpeg_decoder::Decoder::new(file);
            let px = dec.decode().map_err(|e| err(path, e))?;
            let info = dec.info().ok_or_else(|| err(path, "no JPEG header"))?;
            let (w, h) = (info.width as usize, info.height as usize);
            let rgb = match info.pixel_format {
                jpeg_decoder::PixelFormat::RGB24 => px,
                jpeg_decoder::PixelFormat::L8 => px.iter().flat_map(|&g| [g, g, g]).collect(),
                other => return Err(err(path, format!("unsupported JPEG pixel format {other:?}"))),
            };
            Ok((w, h, rgb))
        }
        _ => Err(err(path, "not a .png/.jpg/.jpeg image")),
    }
}

/// The PNG/JPEG files of a frame folder, in name order.
pub fn frame_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, VideoIoError> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref(), Some("png" | "jpg" | "jpeg")))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads a video: a folder of PNG/JPEG frames (every `stride`-th from the first), or a
/// video file decoded by ffmpeg at `fps`. At most `max_frames` frames are read.
pub fn read_video(path: &Path, fps: f32, stride: usize, max_frames: usize) -> Result<Frames, VideoIoError> {
    if path.is_dir() {
        let files = frame_files(path)?;
        let mut frames = Vec::new();
        let (mut width, mut height) = (0, 0);
        for f in files.iter().step_by(stride.max(1)).take(max_frames) {
            let (w, h, rgb) = read_image(f)?;
            if !frames.is_empty() && (w, h) != (width, height) {
                return Err(err(f, format!("frame is {w}x{h}, earlier frames {width}x{height}")));
            }
            (width, height) = (w, h);
            frames.push(rgb);
        }
        return Ok(Frames { width, height, frames });
    }
    if !path.exists() {
        return Err(err(path, "no such file or folder"));
    }
    read_with_ffmpeg(path, fps, max_frames)
}

/// `ffmpeg` (or $T2V_FFMPEG) decoding to raw RGB at `fps`.
fn read_with_ffmpeg(path: &Path, fps: f32, max_frames: usize) -> Result<Frames, VideoIoError> {
    let ffmpeg = std::env::var("T2V_FFMPEG").unwrap_or_else(|_| "ffmpeg".into());
    let probe = |args: &[&str]| std::process::Command::new(&ffmpeg).args(args).output();
    // one frame first, for the size
    let size = probe(&["-v", "error", "-i", &path.to_string_lossy(), "-frames:v", "1", "-f", "image2pipe", "-vcodec", "png", "-"]).map_err(|e| {
        err(path, format!("cannot run `{ffmpeg}` ({e}); install ffmpeg (e.g. `apt-get install ffmpeg`) or set T2V_FFMPEG, or give frame folders instead of video files"))
    })?;
    if !size.status.success() || size.stdout.len() < 24 {
        return Err(err(path, format!("ffmpeg could not decode it: {}", String::from_utf8_lossy(&size.stderr).trim())));
    }
    // PNG IHDR: width and height big-endian at bytes 16..24
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let (w, h) = (be(&size.stdout[16..20]), be(&size.stdout[20..24]));
    let out = probe(&[
        "-v", "error", "-i", &path.to_string_lossy(), "-vf", &format!("fps={fps}"), "-frames:v", &max_frames.to_string(), "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    ])
    .map_err(|e| err(path, e))?;
    if !out.status.success() {
        return Err(err(path, format!("ffmpeg failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    let frames: Vec<Vec<u8>> = out.stdout.chunks_exact(w * h * 3).map(|c| c.to_vec()).collect();
    Ok(Frames { width: w, height: h, frames })
}

impl Frames {
    /// Resize (bilinear, shorter side scaled so that the target fits) then center-crop to
    /// height x width, as (3, F, H, W) floats in [-1, 1] (torchvision Resize + CenterCrop +
    /// Normalize(0.5, 0.5)).
    pub fn to_model_input(&self, height: usize, width: usize) -> Vec<f32> {
        let (sw, sh) = (self.width as f32, self.height as f32);
        let scale = (height as f32 / sh).max(width as f32 / sw);
        let (rw, rh) = (sw * scale, sh * scale);
        let (ox, oy) = ((rw - width as f32) / 2.0, (rh - height as f32) / 2.0);
        let f = self.frames.len();
        let mut out = vec![0f32; 3 * f * height * width];
        for (t, rgb) in self.frames.iter().enumerate() {
            let px = |x: usize, y: usize, c: usize| rgb[(y * self.width + x) * 3 + c] as f32;
            for y in 0..height {
                // centre of the output pixel in source coordinates (align_corners = false)
                let sy = ((y as f32 + oy + 0.5) / scale - 0.5).clamp(0.0, sh - 1.0);
                let (y0, fy) = (sy.floor() as usize, sy - sy.floor());
                let y1 = (y0 + 1).min(self.height - 1);
                for x in 0..width {
                    let sx = ((x as f32 + ox + 0.5) / scale - 0.5).clamp(0.0, sw - 1.0);
                    let (x0, fx) = (sx.floor() as usize, sx - sx.floor());
                    let x1 = (x0 + 1).min(self.width - 1);
                    for c in 0..3 {
                        let top = px(x0, y0, c) * (1.0 - fx) + px(x1, y0, c) * fx;
                        let bot = px(x0, y1, c) * (1.0 - fx) + px(x1, y1, c) * fx;
                        out[((c * f + t) * height + y) * width + x] = (top * (1.0 - fy) + bot * fy) / 127.5 - 1.0;
                    }
                }
            }
        }
        out
    }
}

/// Writes every frame as `frame_000.png`, ... into `dir` (created).
pub fn write_frames(dir: &Path, v: &Frames) -> Result<(), VideoIoError> {
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let numbered: Vec<(usize, &Vec<u8>)> = v.frames.iter().enumerate().collect();
    in_parallel(&numbered, |(i, rgb)| write_png(&dir.join(format!("frame_{i:03}.png")), v.width, v.height, rgb)).into_iter().collect()
}

/// Encodes the `frame_%03d.png` files of `frames_dir` to an H.264 MP4 with an installed
/// ffmpeg (or $T2V_FFMPEG). Err when ffmpeg is missing or fails.
pub fn write_mp4(path: &Path, frames_dir: &Path, fps: f32) -> Result<(), VideoIoError> {
    let ffmpeg = std::env::var("T2V_FFMPEG").unwrap_or_else(|_| "ffmpeg".into());
    let out = std::process::Command::new(&ffmpeg)
        .args(["-v", "error", "-y", "-framerate", &fps.to_string(), "-i"])
        .arg(frames_dir.join("frame_%03d.png"))
        .args(["-pix_fmt", "yuv420p", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"])
        .arg(path)
        .output()
        .map_err(|e| err(path, format!("cannot run `{ffmpeg}`: {e}")))?;
    if !out.status.success() {
        return Err(err(path, format!("ffmpeg failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames encoded on several threads make the file one thread makes, frames in order;
    /// PNG frames likewise read back in order.
    #[test]
    fn frames_encoded_in_parallel_are_in_order() {
        let (w, h) = (37usize, 23usize);
        // 11 frames: more than the cores of most machines, not a multiple of them
        let frames: Vec<Vec<u8>> = (0..11).map(|k| (0..w * h * 3).map(|i| ((i * 7 + k * 31) % 251) as u8).collect()).collect();
        let v = Frames { width: w, height: h, frames };
        let dir = std::env::temp_dir().join(format!("t2v-video-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_gif(&dir.join("a.gif"), &v, 8.0).unwrap();
        let mut one = Vec::new();
        {
            let mut enc = gif::Encoder::new(&mut one, w as u16, h as u16, &[]).unwrap();
            enc.set_repeat(gif::Repeat::Infinite).unwrap();
            for rgb in &v.frames {
                let mut f = gif::Frame::from_rgb_speed(w as u16, h as u16, rgb, 10);
                f.delay = 13;
                enc.write_frame(&f).unwrap();
            }
        }
        assert_eq!(std::fs::read(dir.join("a.gif")).unwrap(), one);
        write_frames(&dir.join("frames"), &v).unwrap();
        for (k, rgb) in v.frames.iter().enumerate() {
            assert_eq!(&read_image(&dir.join(format!("frames/frame_{k:03}.png"))).unwrap().2, rgb, "frame {k}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
