//! Videos into a host application's textures (`shaders/present.wgsl`): generated frames go
//! straight to a texture the application samples or copies, without a readback.

use bytemuck::{Pod, Zeroable};

use super::{check_f32, launch_textures};
use crate::error::shape_err;
use crate::shaders::PRESENT;
use crate::{Result, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    width: u32,
    height: u32,
    frames: u32,
    layers: u32,
    first_layer: u32,
    _p: [u32; 3],
}

/// The texture formats [`video_to_texture`] writes, with their entry points.
const FORMATS: [(wgpu::TextureFormat, &str); 3] = [
    (wgpu::TextureFormat::Rgba8Unorm, "to_rgba8"),
    (wgpu::TextureFormat::Rgba16Float, "to_rgba16f"),
    (wgpu::TextureFormat::Rgba32Float, "to_rgba32f"),
];

/// Writes a video tensor of values in [-1, 1] — (3, F, H, W), or (B, 3, F, H, W) for a
/// batch, as the VAE decodes — into layers `first_layer ..` of `texture`, frame f of video
/// b into layer `first_layer + b * F + f`, as RGBA with alpha 1 (values outside [-1, 1]
/// clamped). The texture: 2D (an array of at least that many layers, or one layer for a
/// single frame), W x H, created with `STORAGE_BINDING` usage, in one of
///   - `Rgba8Unorm`: the bytes the PNG / GIF writers would write (each channel rounded to
///     k / 255 as they do). The values are the video's sRGB-encoded ones: for correct
///     display, create the texture with `view_formats: &[Rgba8UnormSrgb]` and sample it
///     through such a view;
///   - `Rgba16Float`, `Rgba32Float`: (v + 1) / 2 unrounded.
///
/// The writes (and everything recorded before them) are submitted to the queue when this
/// returns, without waiting: what the application submits afterwards sees the frames. The
/// texture must belong to the tensor's device.
pub fn video_to_texture(video: &Tensor, texture: &wgpu::Texture, first_layer: u32) -> Result<()> {
    const OP: &str = "video_to_texture";
    check_f32(OP, &[video])?;
    let (b, c, f, h, w) = match *video.shape() {
        [c, f, h, w] => (1, c, f, h, w),
        [b, c, f, h, w] => (b, c, f, h, w),
        _ => return shape_err(OP, format!("needs a video of shape (3, F, H, W) or (B, 3, F, H, W), got {:?}", video.shape())),
    };
    if c != 3 {
        return shape_err(OP, format!("needs 3 (RGB) channels, got {c} (shape {:?})", video.shape()));
    }
    let Some(&(_, entry)) = FORMATS.iter().find(|(fmt, _)| *fmt == texture.format()) else {
        let names: Vec<String> = FORMATS.iter().map(|(f, _)| format!("{f:?}")).collect();
        return shape_err(OP, format!("the texture's format is {:?}; writable formats: {}", texture.format(), names.join(", ")));
    };
    if texture.dimension() != wgpu::TextureDimension::D2 || !texture.usage().contains(wgpu::TextureUsages::STORAGE_BINDING) || texture.mip_level_count() != 1 || texture.sample_count() != 1 {
        return shape_err(OP, format!("needs a 2D texture with STORAGE_BINDING usage, one mip level and one sample (got {:?}, {:?}, {} mip levels, {} samples)", texture.dimension(), texture.usage(), texture.mip_level_count(), texture.sample_count()));
    }
    let layers = b * f;
    let size = texture.size();
    if (size.width as usize, size.height as usize) != (w, h) {
        return shape_err(OP, format!("the texture is {}x{} (WxH), the video's frames {w}x{h}", size.width, size.height));
    }
    if first_layer as usize + layers > size.depth_or_array_layers as usize {
        return shape_err(OP, format!("{layers} frames from layer {first_layer} need {} layers, the texture has {}", first_layer as usize + layers, size.depth_or_array_layers));
    }
    if layers == 0 || w == 0 || h == 0 {
        return Ok(());
    }
    let view = texture.create_view(&wgpu::TextureViewDescriptor {
        label: Some("video_to_texture target"),
        dimension: Some(wgpu::TextureViewDimension::D2Array),
        usage: Some(wgpu::TextureUsages::STORAGE_BINDING),
        ..Default::default()
    });
    let p = Params { width: w as u32, height: h as u32, frames: f as u32, layers: layers as u32, first_layer, _p: [0; 3] };
    let groups = [w.div_ceil(8) as u32, h.div_ceil(8) as u32, layers as u32];
    launch_textures(video.gpu(), &PRESENT, entry, &[], bytemuck::bytes_of(&p), 1, &[video], &[(2, &view)], groups)?;
    video.gpu().flush()
}
