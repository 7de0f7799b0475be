//! Kernel registry: WGSL sources embedded at build time, one shader module per family and
//! one compute pipeline per (family, entry point, specialisation constants), created once.

use std::collections::HashMap;
use std::sync::Arc;

use crate::gpu::Gpu;
use crate::{Error, Result};

/// One WGSL file (a kernel family).
#[derive(Debug)]
pub struct KernelSource {
    pub name: &'static str,
    pub source: &'static str,
}

/// A cached pipeline with its bind-group layout (group 0) and profiling label.
pub(crate) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub label: String,
}

type Key = (&'static str, &'static str, Vec<(&'static str, u64)>);

#[derive(Default)]
pub(crate) struct Registry {
    modules: HashMap<&'static str, wgpu::ShaderModule>,
    pipelines: HashMap<Key, Arc<Pipeline>>,
}

impl Registry {
    pub fn pipeline_count(&self) -> usize {
        self.pipelines.len()
    }
}

/// Runs `make` and catches its validation, out-of-memory and internal errors (a driver out
/// of device memory fails pipeline creation with the latter two, which a validation scope
/// alone let through, to surface later as "pipeline is invalid").
fn scoped<T>(gpu: &Gpu, make: impl FnOnce() -> T) -> (T, Option<wgpu::Error>) {
    let d = gpu.device();
    let scopes = [wgpu::ErrorFilter::Validation, wgpu::ErrorFilter::OutOfMemory, wgpu::ErrorFilter::Internal].map(|f| d.push_error_scope(f));
    let out = make();
    // innermost scope first
    let errs: Vec<wgpu::Error> = scopes.into_iter().rev().filter_map(|s| pollster::block_on(s.pop())).collect();
    (out, errs.into_iter().next())
}

/// The pipeline of `entry` in `src`, specialised by `constants` (WGSL `override`s).
pub(crate) fn pipeline(
    gpu: &Gpu,
    src: &'static KernelSource,
    entry: &'static str,
    constants: &[(&'static str, f64)],
) -> Result<Arc<Pipeline>> {
    let key: Key = (src.name, entry, constants.iter().map(|(k, v)| (*k, v.to_bits())).collect());
    let mut reg = gpu.0.registry.lock().unwrap();
    if let Some(p) = reg.pipelines.get(&key) {
        return Ok(p.clone());
    }
    let shader_err = |e: wgpu::Error| {
        let msg = match &e {
            wgpu::Error::OutOfMemory { .. } => {
                let m = gpu.memory();
                format!("the device ran out of memory compiling this kernel ({} bytes live in tensors, {} in the buffer pool): {e}", m.live_bytes, m.pooled_bytes)
            }
            _ => e.to_string(),
        };
        Error::Shader { shader: src.name, entry, msg }
    };
    if !reg.modules.contains_key(src.name) {
        let desc = wgpu::ShaderModuleDescriptor { label: Some(src.name), source: wgpu::ShaderSource::Wgsl(src.source.into()) };
        let (module, err) = scoped(gpu, || {
            if gpu.0.shader_checks.load(std::sync::atomic::Ordering::Relaxed) {
                gpu.device().create_shader_module(desc)
            } else {
                // SAFETY: every kernel of `shaders/` keeps its indices in bounds itself
                // (explicit checks or clamps, tested at odd shapes), and every loop is
                // bounded by its parameters; the runtime checks wgpu would add are redundant.
                unsafe { gpu.device().create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
            }
        });
        if let Some(e) = err {
            return Err(shader_err(e));
        }
        reg.modules.insert(src.name, module);
    }
    let module = &reg.modules[src.name];
    let (pipeline, err) = scoped(gpu, || {
        gpu.device().create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        })
    });
    if let Some(e) = err {
        return Err(shader_err(e));
    }
    let layout = pipeline.get_bind_group_layout(0);
    let mut label = format!("{}::{}", src.name, entry);
    for (k, v) in constants {
        label += &format!(" {k}={v}");
    }
    let p = Arc::new(Pipeline { pipeline, layout, label });
    reg.pipelines.insert(key, p.clone());
    Ok(p)
}
