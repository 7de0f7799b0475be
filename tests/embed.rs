//! Embedding: an application lends its own wgpu device (its default limits, no optional
//! features) and gets the shipped models' videos in its own texture.
use t2v_kernels::{wgpu, Gpu, GpuOptions};
use t2v_turbo::diffusion::DdimConfig;
use t2v_turbo::pipeline::model_dir::ModelDir;
use t2v_turbo::pipeline::sample::{Generator, SampleOptions};

/// What a renderer owns: instance, adapter, device and queue — the device with wgpu's
/// default limits (much lower than the adapter's) and the optional features t2v-turbo
/// uses where the adapter has them (without SUBGROUP, lavapipe runs slower kernels).
fn application_device() -> (wgpu::Device, wgpu::Queue) {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor { backends: wgpu::Backends::PRIMARY, ..wgpu::InstanceDescriptor::new_without_display_handle() });
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default())).expect("an adapter (install mesa-vulkan-drivers)");
    let features = adapter.features() & t2v_kernels::OPTIONAL_FEATURES;
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor { required_features: features, ..Default::default() })).unwrap()
}

/// Layer `layer` of an Rgba8Unorm texture, rows packed.
fn read_layer(device: &wgpu::Device, queue: &wgpu::Queue, t: &wgpu::Texture, layer: u32) -> Vec<u8> {
    let (w, h) = (t.width(), t.height());
    let padded = (4 * w).div_ceil(256) * 256;
    let buf = device.create_buffer(&wgpu::BufferDescriptor { label: None, size: (padded * h) as u64, usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ, mapped_at_creation: false });
    let mut enc = device.create_command_encoder(&Default::default());
    enc.copy_texture_to_buffer(
        wgpu::TexelCopyTextureInfo { texture: t, mip_level: 0, origin: wgpu::Origin3d { x: 0, y: 0, z: layer }, aspect: wgpu::TextureAspect::All },
        wgpu::TexelCopyBufferInfo { buffer: &buf, layout: wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(padded), rows_per_image: Some(h) } },
        wgpu::Extent3d { width: w, height: h, depth_or_array_layers: 1 },
    );
    queue.submit([enc.finish()]);
    buf.slice(..).map_async(wgpu::MapMode::Read, |r| r.unwrap());
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let data = buf.slice(..).get_mapped_range().unwrap();
    data.chunks(padded as usize).flat_map(|r| r[..4 * w as usize].to_vec()).collect()
}

#[test]
fn an_application_gets_videos_in_its_own_texture() {
    let (device, queue) = application_device();
    let app = Gpu::from_device(device.clone(), queue.clone());
    let models = ModelDir::read(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny")).unwrap();
    let v = models.video;
    let opts = SampleOptions { teacher: Some(DdimConfig { steps: 3, cfg: 7.5, eta: 0.0 }), ..SampleOptions::for_models(&models) };
    let items = [("a red circle moving from left to right", 1), ("a blue square moving upward", 2)];
    // the application's texture: both videos' frames, one layer before them left alone;
    // sRGB view for display
    let layers = (items.len() * v.frames + 1) as u32;
    let texture = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("the application's video frames"),
        size: wgpu::Extent3d { width: v.width as u32, height: v.height as u32, depth_or_array_layers: layers },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[wgpu::TextureFormat::Rgba8UnormSrgb],
    });
    let gen = Generator::from_model_dir(&app, &models).unwrap();
    gen.generate_into_texture(&items, &opts, &texture, 1).unwrap();
    let on_device = gen.generate_batch_tensor(&items, &opts).unwrap();
    assert_eq!(on_device.shape(), &[2, 3, v.frames, v.height, v.width]);

    // the same videos from t2v-turbo's own device (the adapter's limits and features, other
    // kernels where it has subgroups), read back as the PNG writer quantises them
    let own = Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).unwrap();
    let want = Generator::from_model_dir(&own, &ModelDir::read(&models.root).unwrap()).unwrap().generate_batch(&items, &opts).unwrap();
    let (f, plane) = (v.frames, v.height * v.width);
    let mut worst = 0i32;
    let mut moving = 0u64;
    for (b, video) in want.iter().enumerate() {
        for frame in 0..f {
            let got = read_layer(&device, &queue, &texture, (1 + b * f + frame) as u32);
            for px in 0..plane {
                for c in 0..3 {
                    let k = ((video[(c * f + frame) * plane + px].clamp(-1.0, 1.0) + 1.0) * 127.5).round() as i32;
                    worst = worst.max((got[4 * px + c] as i32 - k).abs());
                }
                assert_eq!(got[4 * px + 3], 255, "alpha");
                if frame > 0 {
                    let prev = &want[b][((frame - 1) * plane + px)..];
                    moving += ((video[frame * plane + px] - prev[0]).abs() > 0.1) as u64;
                }
            }
        }
    }
    assert!(worst <= 1, "the application's frames differ from t2v-turbo's own by up to {worst}/255");
    assert!(moving > 0, "the videos have frames that differ (they were generated, not left blank)");
    // the layer before the videos is untouched
    assert!(read_layer(&device, &queue, &texture, 0).iter().all(|&x| x == 0));
}

/// An application whose adapter has matrix units lends a device requested with cooperative
/// matrices, and t2v-turbo's GEMMs run on them (f16-rounded inputs: nearer the f16 inputs'
/// product than the f32 one); a device requested without them is refused with the reason.
/// Where the adapter has none, asking is refused too (what CI's lavapipe checks).
#[test]
fn an_application_device_lends_its_matrix_cores() {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor { backends: wgpu::Backends::PRIMARY, ..wgpu::InstanceDescriptor::new_without_display_handle() });
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default())).expect("an adapter (install mesa-vulkan-drivers)");
    let plain = || pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).unwrap();
    let (device, queue) = plain();
    let refused = Gpu::from_device_with_matrix_cores(device, queue, &adapter).unwrap_err().to_string();
    let coop = t2v_kernels::MATRIX_CORE_FEATURES;
    if !adapter.features().contains(coop) {
        assert!(refused.contains("lacks") && refused.contains("run without them"), "{refused}");
        eprintln!("skipped: {refused}");
        return;
    }
    assert!(refused.contains("need a device requested with"), "{refused}");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: coop,
        // SAFETY: the experimental feature is used as t2v-turbo's own devices use it
        experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
        ..Default::default()
    }))
    .unwrap();
    let gpu = Gpu::from_device_with_matrix_cores(device, queue, &adapter).unwrap();
    assert!(gpu.matrix_tile().is_some());
    let (m, k, n) = (40, 96, 24);
    let av: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 1.013).collect();
    let bv: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 89) as f32 / 44.0 - 1.0) * 0.987).collect();
    let c = t2v_kernels::ops::matmul(&t2v_kernels::Tensor::from_slice(&gpu, &[m, k], &av).unwrap(), &t2v_kernels::Tensor::from_slice(&gpu, &[k, n], &bv).unwrap()).unwrap().to_vec().unwrap();
    let product = |a: &[f32], b: &[f32]| -> Vec<f64> { (0..m * n).map(|e| (0..k).map(|l| a[e / n * k + l] as f64 * b[l * n + e % n] as f64).sum()).collect() };
    let half = |v: &[f32]| v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect::<Vec<f32>>();
    let dist = |r: &[f64]| c.iter().zip(r).map(|(&x, &y)| (x as f64 - y).abs()).fold(0.0, f64::max);
    let (to16, to32) = (dist(&product(&half(&av), &half(&bv))), dist(&product(&av, &bv)));
    assert!(to16 < 1e-4 && to32 > 8.0 * to16.max(1e-7), "{to16} from the f16 inputs' product, {to32} from the f32 one");
}

/// An application generates on a worker thread, so that its own loop (a UI, a renderer)
/// keeps running: the generator moves there, reports each step over a channel and goes on
/// or stops as the application answers — the worker's result says it was cancelled.
#[test]
fn generation_runs_on_a_worker_thread_and_stops_when_asked() {
    use std::ops::ControlFlow;
    use std::sync::mpsc;
    use t2v_turbo::models::weights::WeightsError;
    fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Generator>();
    send_and_sync::<SampleOptions>();
    send_and_sync::<Gpu>();
    let gpu = Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).unwrap();
    let models = ModelDir::read(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny")).unwrap();
    let generator = Generator::from_model_dir(&gpu, &models).unwrap();
    let opts = SampleOptions { teacher: Some(DdimConfig { steps: 6, cfg: 7.5, eta: 0.0 }), ..SampleOptions::for_models(&models) };
    let (steps_tx, steps_rx) = mpsc::channel();
    let (answer_tx, answer_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        generator.generate_batch_observed(&[("a red circle moving left", 0)], &opts, &mut |done| {
            steps_tx.send(done).unwrap();
            answer_rx.recv().unwrap()
        })
    });
    // the application lets the first step pass and stops the generation at the second
    assert_eq!(steps_rx.recv().unwrap(), 1);
    answer_tx.send(ControlFlow::Continue(())).unwrap();
    assert_eq!(steps_rx.recv().unwrap(), 2);
    answer_tx.send(ControlFlow::Break(())).unwrap();
    let result = worker.join().unwrap();
    assert!(matches!(result, Err(WeightsError::Cancelled { done: 2, total: 6 })), "{result:?}");
    assert!(steps_rx.try_recv().is_err(), "a step after the stop");
}
