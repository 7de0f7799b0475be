//! Tensors read through textures on CPU adapters (`shaders/texel_input.wgsl`).
//!
//! On llvmpipe (Mesa 22.3) every storage-buffer load is a loop over the SIMD lanes with an
//! exec-mask test and a bounds check per element (~10 ns per value per core, measured),
//! while a texel fetch of an rgba32float texture loads a vec4 for all lanes in straight-line
//! code (~1.5 ns per value). So the memory-bound kernels (norms, softmax, copies, im2col)
//! and the GEMM read their inputs from a texture copy of the tensor there: a plain
//! buffer-to-texture copy (a memcpy in lavapipe) recorded before the dispatch.
//!
//! Layout: texel t of a flat texture holds elements 4t..4t+4 of the tensor's storage,
//! [`TEXTURE_WIDTH`] texels per texture row. Textures are kept for reuse by power-of-two
//! height (in the device, freed by `Gpu::trim_pool`, not counted in `Gpu::memory`): a
//! [`PooledTexture`] goes back to the reuse list when dropped, so drop it once the
//! dispatch that reads it is recorded (later commands run after it, like pooled buffers).

use crate::recorder::Cmd;
use crate::registry::KernelSource;
use crate::{Error, Gpu, KernelVariant, Result, Tensor};

/// Texels per texture row (TEX_W in the shaders): 16 KiB rows, a multiple of the 256-byte
/// row alignment of buffer-to-texture copies.
pub(crate) const TEXTURE_WIDTH: usize = 1024;

/// Whether the memory-bound kernels read their inputs through textures on this device: CPU
/// adapters (default kernels, or the texture variant asked for).
pub(crate) fn prefers_texel_inputs(gpu: &Gpu) -> bool {
    match gpu.kernel_variant() {
        KernelVariant::Auto => gpu.is_cpu(),
        KernelVariant::Texture => true,
        _ => false,
    }
}

/// Texture rows holding `texels` texels.
fn texture_rows(texels: usize) -> usize {
    texels.div_ceil(TEXTURE_WIDTH)
}

/// Whether `texels` texels fit one texture of this device.
pub(crate) fn fits_texture(gpu: &Gpu, texels: usize) -> bool {
    let max = gpu.limits().max_texture_dimension_2d as usize;
    TEXTURE_WIDTH <= max && texture_rows(texels) <= max
}

/// An rgba32float texture from the device's reuse list, returned there when dropped.
pub(crate) struct PooledTexture {
    gpu: Gpu,
    texture: Option<wgpu::Texture>,
}

impl PooledTexture {
    /// A texture of at least `texels` texels (`what` names it in an out-of-memory error).
    pub(crate) fn take(gpu: &Gpu, texels: usize, what: &str) -> Result<PooledTexture> {
        let height = (texture_rows(texels).max(1) as u32).next_power_of_two().min(gpu.limits().max_texture_dimension_2d);
        let reused = gpu.0.textures.lock().unwrap().get_mut(&height).and_then(|v| v.pop());
        let texture = match reused {
            Some(t) => t,
            None => {
                let scope = gpu.device().push_error_scope(wgpu::ErrorFilter::OutOfMemory);
                let texture = gpu.device().create_texture(&wgpu::TextureDescriptor {
                    label: Some(what),
                    size: wgpu::Extent3d { width: TEXTURE_WIDTH as u32, height, depth_or_array_layers: 1 },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: wgpu::TextureFormat::Rgba32Float,
                    usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
                    view_formats: &[],
                });
                if let Some(e) = pollster::block_on(scope.pop()) {
                    let s = gpu.memory();
                    let msg = format!("{what} ({texels} texels; these textures are reused but not counted in Gpu::memory): {e}");
                    return Err(Error::OutOfMemory { bytes: 16 * height as u64 * TEXTURE_WIDTH as u64, live: s.live_bytes, pooled: s.pooled_bytes, msg });
                }
                texture
            }
        };
        Ok(PooledTexture { gpu: gpu.clone(), texture: Some(texture) })
    }

    pub(crate) fn texture(&self) -> &wgpu::Texture {
        self.texture.as_ref().expect("present until dropped")
    }

    /// A view for `usage` (sampled reads or storage writes).
    pub(crate) fn view(&self, usage: wgpu::TextureUsages) -> wgpu::TextureView {
        self.texture().create_view(&wgpu::TextureViewDescriptor { usage: Some(usage), ..Default::default() })
    }

    /// Records a copy of the first `texels` texels (4 floats each) of `t`'s buffer into the
    /// texture's first texels: whole texture rows in one copy, the last part in another.
    /// The buffer holds them: bindings are padded to 16 bytes.
    pub(crate) fn copy_from(&self, t: &Tensor, texels: usize) -> Result<()> {
        let gpu = t.gpu();
        let (src, _) = t.binding();
        let (full, rest) = (texels / TEXTURE_WIDTH, texels % TEXTURE_WIDTH);
        let row_bytes = 16 * TEXTURE_WIDTH as u32;
        let mut rec = gpu.0.recorder.lock().unwrap();
        if full > 0 {
            let extent = [TEXTURE_WIDTH as u32, full as u32];
            rec.push(gpu, Cmd::CopyToTexture { src: src.clone(), src_at: 0, bytes_per_row: Some(row_bytes), dst: self.texture().clone(), dst_row: 0, extent })?;
        }
        if rest > 0 {
            let src_at = full as u64 * row_bytes as u64;
            rec.push(gpu, Cmd::CopyToTexture { src, src_at, bytes_per_row: None, dst: self.texture().clone(), dst_row: full as u32, extent: [rest as u32, 1] })?;
        }
        Ok(())
    }
}

impl Drop for PooledTexture {
    fn drop(&mut self) {
        if let Some(t) = self.texture.take() {
            self.gpu.0.textures.lock().unwrap().entry(t.height()).or_default().push(t);
        }
    }
}

/// Binding of a kernel's first input texture (`TEX_IN` entries declare one per input, in
/// order, from here; below it lie their buffers).
const INPUT_BINDING: u32 = 9;

/// Records one dispatch of an entry that can read its inputs through textures (`TEX_IN`):
/// as [`launch_textures`](super::launch_textures) with `tensors` at bindings `first`, ..., plus
/// `inputs` (those of `tensors` the entry reads; `None` for an unread one) as texture copies
/// from binding 9 on devices that prefer them, else as placeholders. The copies go back to
/// the reuse list once the dispatch is recorded.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_reading(
    gpu: &Gpu,
    src: &'static KernelSource,
    entry: &'static str,
    constants: &[(&'static str, f64)],
    params: &[u8],
    first: u32,
    tensors: &[&Tensor],
    inputs: &[Option<&Tensor>],
    groups: [u32; 3],
) -> Result<()> {
    let tex = TexelInputs::new(gpu, inputs)?;
    let mut constants = constants.to_vec();
    constants.extend(tex.constants());
    super::launch_textures(gpu, src, entry, &constants, params, first, tensors, &tex.bindings(INPUT_BINDING), groups)
}

/// The inputs of one dispatch as textures (`TEX_IN` = 1) where the device prefers that and
/// they fit, else 1-texel placeholders (`TEX_IN` = 0: the kernel reads the buffers). The
/// entry points that can read textures declare one texture binding per input.
struct TexelInputs {
    /// Held until the dispatch is recorded, then back to the reuse list.
    _textures: Vec<PooledTexture>,
    views: Vec<wgpu::TextureView>,
    on: bool,
}

impl TexelInputs {
    /// Texture copies of `inputs` (a `None` input gets a placeholder: an unread binding).
    fn new(gpu: &Gpu, inputs: &[Option<&Tensor>]) -> Result<TexelInputs> {
        let texels = |t: &Tensor| (t.binding_bytes() / 16) as usize;
        let on = prefers_texel_inputs(gpu) && inputs.iter().any(Option::is_some) && inputs.iter().flatten().all(|t| fits_texture(gpu, texels(t)));
        let mut textures = Vec::new();
        let mut views = Vec::new();
        for input in inputs {
            match input {
                Some(t) if on => {
                    let tex = PooledTexture::take(gpu, texels(t), "a kernel input's texture")?;
                    tex.copy_from(t, texels(t))?;
                    views.push(tex.view(wgpu::TextureUsages::TEXTURE_BINDING));
                    textures.push(tex);
                }
                _ => views.push(placeholder(gpu)?),
            }
        }
        Ok(TexelInputs { _textures: textures, views, on })
    }

    /// The specialisation constants: TEX_IN and TEX_W.
    fn constants(&self) -> [(&'static str, f64); 2] {
        [("TEX_IN", self.on as u32 as f64), ("TEX_W", TEXTURE_WIDTH as f64)]
    }

    /// The views at bindings `first`, `first + 1`, ... (in the order of the inputs).
    fn bindings(&self, first: u32) -> Vec<(u32, &wgpu::TextureView)> {
        self.views.iter().enumerate().map(|(i, v)| (first + i as u32, v)).collect()
    }
}

/// A 1-texel texture bound where a kernel declares a texture it does not read.
fn placeholder(gpu: &Gpu) -> Result<wgpu::TextureView> {
    let mut slot = gpu.0.placeholder_texture.lock().unwrap();
    if let Some(v) = slot.as_ref() {
        return Ok(v.clone());
    }
    let texture = gpu.device().create_texture(&wgpu::TextureDescriptor {
        label: Some("placeholder texture"),
        size: wgpu::Extent3d { width: 1, height: 1, depth_or_array_layers: 1 },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba32Float,
        usage: wgpu::TextureUsages::TEXTURE_BINDING,
        view_formats: &[],
    });
    let view = texture.create_view(&Default::default());
    *slot = Some(view.clone());
    Ok(view)
}
