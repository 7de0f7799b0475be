//! Videos written into textures a host application owns (`ops::video_to_texture`).
mod common;
use common::*;
use t2v_kernels::{ops, Error, Gpu, Tensor};

fn texture(g: &Gpu, format: wgpu::TextureFormat, w: u32, h: u32, layers: u32, usage: wgpu::TextureUsages) -> wgpu::Texture {
    g.device().create_texture(&wgpu::TextureDescriptor {
        label: Some("test target"),
        size: wgpu::Extent3d { width: w, height: h, depth_or_array_layers: layers },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage,
        view_formats: &[],
    })
}

/// Every layer of `t`, texel rows packed (what the application would copy out).
fn read_texture(g: &Gpu, t: &wgpu::Texture, texel_bytes: u32) -> Vec<u8> {
    let size = t.size();
    let row = size.width * texel_bytes;
    let padded = row.div_ceil(256) * 256;
    let buf = g.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (padded * size.height * size.depth_or_array_layers) as u64,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
        mapped_at_creation: false,
    });
    let mut enc = g.device().create_command_encoder(&Default::default());
    enc.copy_texture_to_buffer(
        wgpu::TexelCopyTextureInfo { texture: t, mip_level: 0, origin: wgpu::Origin3d::ZERO, aspect: wgpu::TextureAspect::All },
        wgpu::TexelCopyBufferInfo { buffer: &buf, layout: wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(padded), rows_per_image: Some(size.height) } },
        size,
    );
    g.queue().submit([enc.finish()]);
    buf.slice(..).map_async(wgpu::MapMode::Read, |r| r.unwrap());
    g.device().poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let data = buf.slice(..).get_mapped_range().unwrap();
    data.chunks(padded as usize).flat_map(|r| r[..row as usize].to_vec()).collect()
}

/// Host reference: texel (x, y) of layer `first + b * F + f` as the PNG writer's bytes /
/// as unrounded floats (alpha 1).
fn expected(v: &[f32], [b, f, h, w]: [usize; 4], layer: usize, x: usize, y: usize) -> [f32; 3] {
    let (bi, fi) = (layer / f, layer % f);
    assert!(bi < b);
    std::array::from_fn(|c| v[(((bi * 3 + c) * f + fi) * h + y) * w + x].clamp(-1.0, 1.0))
}

#[test]
fn videos_are_written_into_texture_layers() {
    let g = gpu();
    let (b, f, h, w) = (2, 3, 5, 7); // odd, not multiples of the 8x8 workgroups
    let mut v = Rng::new(7).uniform(b * 3 * f * h * w, -1.3, 1.3);
    // the ends, and 0, which rounds half-way ((0 + 1) * 127.5 = 127.5 -> 128)
    v[0] = 0.0;
    v[1] = 1.0;
    v[2] = -1.0;
    let video = Tensor::from_slice(g, &[b, 3, f, h, w], &v).unwrap();
    let usage = wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_SRC;
    let first = 1;
    let layers = (b * f) as u32 + 2; // one untouched layer before and after
    for (format, texel_bytes) in [(wgpu::TextureFormat::Rgba8Unorm, 4), (wgpu::TextureFormat::Rgba16Float, 8), (wgpu::TextureFormat::Rgba32Float, 16)] {
        let t = texture(g, format, w as u32, h as u32, layers, usage);
        ops::video_to_texture(&video, &t, first).unwrap();
        let bytes = read_texture(g, &t, texel_bytes);
        let texel = |layer: usize, x: usize, y: usize| -> [f32; 4] {
            let at = ((layer * h + y) * w + x) * texel_bytes as usize;
            let d = &bytes[at..at + texel_bytes as usize];
            std::array::from_fn(|c| match texel_bytes {
                4 => d[c] as f32,
                8 => half::f16::from_le_bytes([d[2 * c], d[2 * c + 1]]).to_f32(),
                _ => f32::from_le_bytes(d[4 * c..4 * c + 4].try_into().unwrap()),
            })
        };
        for layer in 0..layers as usize {
            for y in 0..h {
                for x in 0..w {
                    let got = texel(layer, x, y);
                    if layer < first as usize || layer >= first as usize + b * f {
                        assert_eq!(got, [0.0; 4], "{format:?}: layer {layer} is not the video's and stays as it was");
                        continue;
                    }
                    let want = expected(&v, [b, f, h, w], layer - first as usize, x, y);
                    for c in 0..3 {
                        if texel_bytes == 4 {
                            // the bytes of the PNG / GIF writers: Rust's round, half away from zero
                            let k = ((want[c] + 1.0) * 127.5).round();
                            assert_eq!(got[c], k, "{format:?} layer {layer} ({x}, {y}) channel {c}: value {}", want[c]);
                        } else {
                            let tol = if texel_bytes == 8 { 1e-3 } else { 1e-6 };
                            let u = (want[c] + 1.0) * 0.5;
                            assert!((got[c] - u).abs() <= tol, "{format:?} layer {layer} ({x}, {y}) channel {c}: {} vs {u}", got[c]);
                        }
                    }
                    assert_eq!(got[3], if texel_bytes == 4 { 255.0 } else { 1.0 }, "{format:?}: alpha");
                }
            }
        }
    }
    // one video (3, F, H, W) into a one-layer texture: its single frame
    let one = Tensor::from_slice(g, &[3, 1, h, w], &v[..3 * h * w]).unwrap();
    let t = texture(g, wgpu::TextureFormat::Rgba32Float, w as u32, h as u32, 1, usage);
    ops::video_to_texture(&one, &t, 0).unwrap();
    let bytes = read_texture(g, &t, 16);
    let red = f32::from_le_bytes(bytes[16 * (2 * w + 3)..][..4].try_into().unwrap());
    assert!((red - (v[2 * w + 3].clamp(-1.0, 1.0) + 1.0) * 0.5).abs() <= 1e-6);
}

#[test]
fn unsuitable_textures_and_videos_are_refused() {
    let g = gpu();
    let video = Tensor::from_slice(g, &[3, 2, 4, 6], &Rng::new(1).uniform(3 * 2 * 4 * 6, -1.0, 1.0)).unwrap();
    let storage = wgpu::TextureUsages::STORAGE_BINDING;
    let refused = |video: &Tensor, t: &wgpu::Texture, first: u32, says: &str| {
        let e = ops::video_to_texture(video, t, first).unwrap_err();
        assert!(matches!(e, Error::Shape { op: "video_to_texture", .. }), "{e}");
        assert!(e.to_string().contains(says), "{e:?} should say {says:?}");
    };
    refused(&video, &texture(g, wgpu::TextureFormat::Rgba8Unorm, 6, 5, 2, storage), 0, "the texture is 6x5");
    refused(&video, &texture(g, wgpu::TextureFormat::Rgba8Unorm, 6, 4, 2, storage), 1, "need 3 layers, the texture has 2");
    refused(&video, &texture(g, wgpu::TextureFormat::Rgba8Unorm, 6, 4, 2, wgpu::TextureUsages::TEXTURE_BINDING), 0, "STORAGE_BINDING");
    refused(&video, &texture(g, wgpu::TextureFormat::R32Float, 6, 4, 2, storage), 0, "writable formats: Rgba8Unorm, Rgba16Float, Rgba32Float");
    let gray = Tensor::from_slice(g, &[1, 2, 4, 6], &[0.0; 48]).unwrap();
    refused(&gray, &texture(g, wgpu::TextureFormat::Rgba8Unorm, 6, 4, 2, storage), 0, "3 (RGB) channels");
    let flat = Tensor::from_slice(g, &[2, 4, 6], &[0.0; 48]).unwrap();
    refused(&flat, &texture(g, wgpu::TextureFormat::Rgba8Unorm, 6, 4, 2, storage), 0, "(3, F, H, W)");
    // the device is fine afterwards
    ops::video_to_texture(&video, &texture(g, wgpu::TextureFormat::Rgba8Unorm, 6, 4, 2, storage), 0).unwrap();
    g.sync().unwrap();
}
