//! An application lends t2v-turbo its wgpu device and gets generated videos in its own
//! texture, as a renderer embedding generation would (no readback on the way).
//!
//!     cargo run --release --example into_texture -- [MODEL_DIR] [PROMPT]
//!
//! MODEL_DIR defaults to the shipped tiny models (`assets/tiny`, a teacher: sampled with
//! 25 DDIM steps and CFG); a distilled student (`t2v-turbo train`'s output) samples in 4
//! steps. Here the "rendering" is a copy of each texture layer to a new folder
//! `into_texture_out/` as PNG; a real application would sample the texture in its own passes.

use std::path::PathBuf;

use t2v_kernels::{wgpu, Gpu, OPTIONAL_FEATURES};
use t2v_turbo::diffusion::DdimConfig;
use t2v_turbo::models::weights::WeightPrecision;
use t2v_turbo::pipeline::model_dir::ModelDir;
use t2v_turbo::pipeline::sample::{Generator, SampleOptions};
use t2v_turbo::pipeline::video_io::write_png;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let models = args.next().map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/tiny"));
    let prompt = args.next().unwrap_or_else(|| "a yellow triangle moving from left to right".into());
    let out = PathBuf::from("into_texture_out");
    if out.exists() {
        return Err(format!("{} exists; move it away first (nothing is overwritten)", out.display()).into());
    }

    // The application's own GPU context. Asking for the optional features t2v-turbo uses
    // (where the adapter has them) lets it pick its fastest kernels; the limits may stay
    // wgpu's defaults.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor { backends: wgpu::Backends::PRIMARY, ..wgpu::InstanceDescriptor::new_without_display_handle() });
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("application"),
        required_features: adapter.features() & OPTIONAL_FEATURES,
        ..Default::default()
    }))?;
    println!("application device: {}", adapter.get_info().name);

    // Lend it, load the models, generate straight into the application's texture.
    let gpu = Gpu::from_device(device.clone(), queue.clone());
    // f16 / bf16 weight files stay 16-bit on the device (the same frames, half the memory)
    let md = ModelDir::read(&models)?.with_precision(WeightPrecision::Stored);
    let generator = Generator::from_model_dir(&gpu, &md)?;
    let v = md.video;
    // `t2v-turbo sample`'s defaults for this folder; a teacher with 25 deterministic steps
    let mut opts = SampleOptions::for_models(&md);
    if let Some(ddim) = &mut opts.teacher {
        *ddim = DdimConfig { steps: 25, cfg: 7.5, eta: 0.0 };
    }
    // Rgba8Unorm holds the video's sRGB-encoded bytes; an Rgba8UnormSrgb view displays them
    let texture = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("video frames"),
        size: wgpu::Extent3d { width: v.width as u32, height: v.height as u32, depth_or_array_layers: v.frames as u32 },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[wgpu::TextureFormat::Rgba8UnormSrgb],
    });
    let t = std::time::Instant::now();
    generator.generate_into_texture(&[(&prompt, opts.seed)], &opts, &texture, 0)?;
    println!("{prompt:?}: {} frames of {}x{} submitted in {:.2} s", v.frames, v.width, v.height, t.elapsed().as_secs_f64());

    // The application's side: its own commands on its own queue, ordered after the frames.
    std::fs::create_dir_all(&out)?;
    let (w, h) = (v.width as u32, v.height as u32);
    let padded = (4 * w).div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT) * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: (padded * h * v.frames as u32) as u64,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_texture_to_buffer(
        texture.as_image_copy(),
        wgpu::TexelCopyBufferInfo { buffer: &buffer, layout: wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(padded), rows_per_image: Some(h) } },
        texture.size(),
    );
    queue.submit([encoder.finish()]);
    buffer.slice(..).map_async(wgpu::MapMode::Read, |r| r.expect("readback"));
    device.poll(wgpu::PollType::wait_indefinitely())?;
    let data = buffer.slice(..).get_mapped_range()?;
    for (f, layer) in data.chunks((padded * h) as usize).enumerate() {
        let rgb: Vec<u8> = layer.chunks(padded as usize).flat_map(|row| row[..4 * w as usize].chunks(4).flat_map(|px| px[..3].to_vec())).collect();
        write_png(&out.join(format!("frame_{f:02}.png")), w as usize, h as usize, &rgb)?;
    }
    println!("wrote {} frames to {}", v.frames, out.display());
    Ok(())
}
