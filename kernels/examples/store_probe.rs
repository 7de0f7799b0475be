// probe (not committed): cost of writing N vec4 values on llvmpipe: storage buffer vs
// storage texture (+ copy back to a buffer)
use t2v_kernels::{Gpu, GpuOptions};
fn main() {
    let gpu = Gpu::new(&GpuOptions::default()).unwrap();
    let dev = gpu.device();
    let q = gpu.queue();
    let w = 1024u32;
    let rows = 2048u32; // 2M texels = 8M floats = 32 MB
    let n = w * rows;
    let src = r#"
@group(0) @binding(0) var<storage, read_write> buf: array<vec4<f32>>;
@group(0) @binding(1) var tex: texture_storage_2d<rgba32float, write>;
@compute @workgroup_size(64)
fn to_buf(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * nwg.x + wid.x) * 64u + lid;
    let f = f32(t);
    buf[t] = vec4<f32>(f, f + 1.0, f + 2.0, f + 3.0);
}
@compute @workgroup_size(64)
fn to_buf_opaque(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * nwg.x + wid.x) * 64u + lid;
    let f = f32(t);
    // same addresses, computed so that the compiler cannot see they are lane-contiguous
    let row = t / 1024u;
    let col = t - row * 1024u;
    buf[row * (nwg.x) + col] = vec4<f32>(f, f + 1.0, f + 2.0, f + 3.0);
}
@compute @workgroup_size(64)
fn to_buf_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * nwg.x + wid.x) * 64u + lid;
    let f = f32(t);
    // lane-strided: consecutive lanes write rows 1024 vec4s apart (a transpose)
    let row = t % 2048u;
    let col = t / 2048u;
    buf[row * 1024u + col] = vec4<f32>(f, f + 1.0, f + 2.0, f + 3.0);
}
@compute @workgroup_size(64)
fn to_buf_guarded(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * nwg.x + wid.x) * 64u + lid;
    if (t >= nwg.x * nwg.y * 64u) {
        return;
    }
    let f = f32(t);
    buf[t] = vec4<f32>(f, f + 1.0, f + 2.0, f + 3.0);
}
@compute @workgroup_size(64)
fn to_buf_branch(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * nwg.x + wid.x) * 64u + lid;
    let f = f32(t);
    if (t < nwg.x * nwg.y * 64u) {
        buf[t] = vec4<f32>(f, f + 1.0, f + 2.0, f + 3.0);
    }
}
@compute @workgroup_size(64)
fn to_tex(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * nwg.x + wid.x) * 64u + lid;
    let f = f32(t);
    textureStore(tex, vec2<u32>(t % 1024u, t / 1024u), vec4<f32>(f, f + 1.0, f + 2.0, f + 3.0));
}
"#;
    let m = dev.create_shader_module(wgpu::ShaderModuleDescriptor { label: None, source: wgpu::ShaderSource::Wgsl(src.into()) });
    let buf = dev.create_buffer(&wgpu::BufferDescriptor { label: None, size: n as u64 * 16, usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC, mapped_at_creation: false });
    let tex = dev.create_texture(&wgpu::TextureDescriptor { label: None, size: wgpu::Extent3d { width: w, height: rows, depth_or_array_layers: 1 }, mip_level_count: 1, sample_count: 1, dimension: wgpu::TextureDimension::D2, format: wgpu::TextureFormat::Rgba32Float, usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_SRC, view_formats: &[] });
    let view = tex.create_view(&Default::default());
    let bgl = dev.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &[
        wgpu::BindGroupLayoutEntry { binding: 0, visibility: wgpu::ShaderStages::COMPUTE, ty: wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Storage { read_only: false }, has_dynamic_offset: false, min_binding_size: None }, count: None },
        wgpu::BindGroupLayoutEntry { binding: 1, visibility: wgpu::ShaderStages::COMPUTE, ty: wgpu::BindingType::StorageTexture { access: wgpu::StorageTextureAccess::WriteOnly, format: wgpu::TextureFormat::Rgba32Float, view_dimension: wgpu::TextureViewDimension::D2 }, count: None },
    ]});
    let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &bgl, entries: &[
        wgpu::BindGroupEntry { binding: 0, resource: buf.as_entire_binding() },
        wgpu::BindGroupEntry { binding: 1, resource: wgpu::BindingResource::TextureView(&view) },
    ]});
    let pl = dev.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor { label: None, bind_group_layouts: &[Some(&bgl)], immediate_size: 0 });
    let mk = |e: &str| dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor { label: None, layout: Some(&pl), module: &m, entry_point: Some(e), compilation_options: Default::default(), cache: None });
    let (pb, pt, po, pr, pg, pbr) = (mk("to_buf"), mk("to_tex"), mk("to_buf_opaque"), mk("to_buf_rows"), mk("to_buf_guarded"), mk("to_buf_branch"));
    let groups = n / 64;
    let run = |which: u32| {
        let mut enc = dev.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline([&pb, &pt, &pt, &po, &pr, &pg, &pbr][which as usize]);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(1024, groups / 1024, 1);
        }
        if which == 2 {
            enc.copy_texture_to_buffer(tex.as_image_copy(), wgpu::TexelCopyBufferInfo { buffer: &buf, layout: wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(w * 16), rows_per_image: Some(rows) } }, wgpu::Extent3d { width: w, height: rows, depth_or_array_layers: 1 });
        }
        q.submit([enc.finish()]);
        dev.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    };
    for round in 0..3 {
        for which in [0u32, 5, 6] {
            run(which);
            let t = std::time::Instant::now();
            for _ in 0..5 { run(which); }
            let dt = t.elapsed().as_secs_f64() / 5.0;
            eprintln!("round {round} {}: {:.2} ms, {:.2} GB/s", ["buffer stores", "texture stores", "texture stores + copy", "buffer stores, opaque index", "buffer stores, lanes a row apart", "buffer stores after an early return", "buffer stores under a branch"][which as usize], dt * 1e3, n as f64 * 16.0 / dt * 1e-9);
        }
    }
}
