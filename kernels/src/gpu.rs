//! `Gpu`: one wgpu device + queue, with the buffer pool, the kernel registry and the
//! command recorder. Cheap to clone (an `Arc`); tensors keep their `Gpu` alive.

use std::sync::{Arc, Mutex};

use crate::pool::{Pool, PoolStats};
use crate::recorder::Recorder;
use crate::registry::Registry;
use crate::{Error, Result};

/// Environment variable that selects the adapter, like `--adapter`.
pub const ADAPTER_ENV: &str = "T2V_ADAPTER";

/// Optional device features used when the adapter has them.
pub const OPTIONAL_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::TIMESTAMP_QUERY);

/// How to pick an adapter.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Adapter selector: an index from `t2v-turbo info`, a backend (`vulkan`, `metal`,
    /// `dx12`, `gl`), a device type (`discrete`, `integrated`, `cpu`) or a case-insensitive
    /// part of the adapter name. `None` reads `T2V_ADAPTER`, else picks the best adapter.
    pub adapter: Option<String>,
    /// Do not print the chosen adapter to stderr.
    pub quiet: bool,
    /// Keep wgpu's runtime checks in shaders (index clamping, loop bounding). Off by default:
    /// every kernel bounds its indices itself, and the checks cost ~25% on CPU adapters.
    /// Also on when the environment has `T2V_SHADER_CHECKS=1` (a debugging aid).
    pub shader_checks: bool,
    /// Run the GEMMs (matmuls, linears, convolutions) on the adapter's matrix units: inputs
    /// rounded to f16, products accumulated in f32 (cooperative matrices — NVIDIA tensor
    /// cores through `VK_KHR_cooperative_matrix`; wgpu's experimental
    /// `EXPERIMENTAL_COOPERATIVE_MATRIX`). Opening the device fails when the adapter has no
    /// f16 x f16 -> f32 fragments of 8 x 8 with 8-lane or 16 x 16 with 32-lane subgroups.
    /// Also on when the environment has `T2V_MATRIX_CORES=1`.
    pub matrix_cores: bool,
    /// Most bytes of device memory the tensors and the pool of reusable buffers may take
    /// together ([`Gpu::set_memory_limit`]); `None`: what the device gives.
    pub memory_limit: Option<u64>,
}

/// Environment variable that turns [`GpuOptions::matrix_cores`] on.
pub const MATRIX_CORES_ENV: &str = "T2V_MATRIX_CORES";

/// The features a device needs for the matrix-core GEMM ([`GpuOptions::matrix_cores`]).
pub const MATRIX_CORE_FEATURES: wgpu::Features =
    wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX.union(wgpu::Features::SHADER_F16).union(wgpu::Features::SUBGROUP);

/// The names of `need`'s features that `have` lacks.
fn missing(need: wgpu::Features, have: wgpu::Features) -> String {
    (need - have).iter_names().map(|(n, _)| n).collect::<Vec<_>>().join(", ")
}

/// Environment variable that turns shader runtime checks on.
pub const SHADER_CHECKS_ENV: &str = "T2V_SHADER_CHECKS";

/// Environment variable that sets a new device's [`ConvPath`]: `auto`, `direct`,
/// `winograd` or `winograd4` (e.g. to compare them on one machine).
pub const CONV_PATH_ENV: &str = "T2V_CONV_PATH";

/// One adapter as listed by [`list_adapters`].
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub index: usize,
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    /// Fragment size the matrix-core GEMM would run on ([`GpuOptions::matrix_cores`]), or why
    /// it cannot.
    pub matrix_cores: std::result::Result<u32, String>,
}

impl AdapterSummary {
    /// One line: index, name, backend, type, driver.
    pub fn line(&self) -> String {
        format!(
            "[{}] {} ({:?}, {:?}, driver {} {})",
            self.index,
            self.info.name,
            self.info.backend,
            self.info.device_type,
            self.info.driver,
            self.info.driver_info
        )
    }
}

/// Backends searched: `WGPU_BACKEND` (e.g. `vulkan,gl`) if set, else Vulkan, Metal, DX12.
fn backends() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY)
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: backends(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    })
}

/// All adapters wgpu can reach on this machine.
pub fn list_adapters() -> Vec<AdapterSummary> {
    let adapters = pollster::block_on(instance().enumerate_adapters(backends()));
    adapters
        .iter()
        .enumerate()
        .map(|(index, a)| AdapterSummary { index, info: a.get_info(), features: a.features(), limits: a.limits(), matrix_cores: matrix_tile(a).map_err(|e| e.to_string()) })
        .collect()
}

/// Preference among adapters when none is named: real GPUs first, GL last.
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (backend, ty)
}

/// The fragment size gemm_coop runs on this adapter: f16 x f16 -> f32 cooperative matrices of
/// T x T x T where the 256-thread workgroup's subgroups number (128 / T)^2 / 8 (each owns
/// 2 x 4 fragments of the 128 x 128 tile): T = 16 with 32 lanes (NVIDIA), T = 8 with 8
/// (lavapipe).
fn matrix_tile(adapter: &wgpu::Adapter) -> Result<u32> {
    let info = adapter.get_info();
    let no = |why: String| Err(Error::Device(format!("matrix cores requested ({MATRIX_CORES_ENV} or --matrix-cores), but {}: {why}; run without them", info.name)));
    if !adapter.features().contains(MATRIX_CORE_FEATURES) {
        return no(format!("the adapter lacks {} (cooperative matrices: NVIDIA GPUs through Vulkan, lavapipe of Mesa 26.1)", missing(MATRIX_CORE_FEATURES, adapter.features())));
    }
    let lanes = (info.subgroup_min_size == info.subgroup_max_size).then_some(info.subgroup_min_size);
    let offered = adapter.cooperative_matrix_properties();
    for t in [16u32, 8] {
        let fragment = offered.iter().any(|c| {
            (c.m_size, c.n_size, c.k_size) == (t, t, t) && c.ab_type == wgpu::CooperativeScalarType::F16 && c.cr_type == wgpu::CooperativeScalarType::F32
        });
        if fragment && lanes == Some(256 * 8 / (128 / t).pow(2)) {
            return Ok(t);
        }
    }
    no(format!("its fragments {offered:?} with subgroups of {}..{} lanes fit none of gemm_coop's (f16 x f16 -> f32, 16 x 16 with 32 lanes or 8 x 8 with 8)", info.subgroup_min_size, info.subgroup_max_size))
}

/// Does `query` select this adapter?
fn matches(query: &str, index: usize, info: &wgpu::AdapterInfo) -> bool {
    let q = query.trim().to_lowercase();
    if let Ok(i) = q.parse::<usize>() {
        return i == index;
    }
    let backend = format!("{:?}", info.backend).to_lowercase();
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => "discrete",
        wgpu::DeviceType::IntegratedGpu => "integrated",
        wgpu::DeviceType::VirtualGpu => "virtual",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    };
    q == backend || q == ty || info.name.to_lowercase().contains(&q)
}

pub(crate) struct GpuInner {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    pub pool: Mutex<Pool>,
    /// Kernel input textures for reuse, by height (see `ops::texture`; not counted in
    /// [`Gpu::memory`], freed by [`Gpu::trim_pool`]).
    pub textures: Mutex<std::collections::HashMap<u32, Vec<wgpu::Texture>>>,
    /// The 1-texel texture bound where a kernel declares a texture it does not read.
    pub placeholder_texture: Mutex<Option<wgpu::TextureView>>,
    pub registry: Mutex<Registry>,
    pub recorder: Mutex<Recorder>,
    /// Errors reported by wgpu outside an error scope (only on devices we created).
    pub errors: Arc<Mutex<Vec<String>>>,
    pub variant: Mutex<KernelVariant>,
    pub attention_path: Mutex<AttentionPath>,
    pub conv_path: Mutex<ConvPath>,
    /// Depth of [`Gpu::memory_lean`] scopes now running.
    pub memory_lean: std::sync::atomic::AtomicUsize,
    pub shader_checks: std::sync::atomic::AtomicBool,
    /// Fragment size of the matrix units when the device was opened for them
    /// ([`GpuOptions::matrix_cores`]).
    pub matrix_tile: Option<u32>,
}

/// Which implementation of kernels that have several is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelVariant {
    /// On CPU adapters what `Texture` runs (barrier-free kernels, inputs read through
    /// textures); on GPUs the workgroup-tiled GEMM for every shape.
    #[default]
    Auto,
    /// Always the workgroup-tiled kernels (e.g. to test them on a CPU adapter).
    Tiled,
    /// `Tiled` with the first tiled GEMM (8-deep slices, scalar workgroup-memory reads), kept
    /// as the benches' baseline of the default one.
    TiledScalar,
    /// Always the barrier-free kernels without subgroup operations (portable fallback).
    BarrierFree,
    /// The GEMMs on the matrix units (what `Auto` runs on a device opened with
    /// [`GpuOptions::matrix_cores`]; an error on other devices).
    MatrixCores,
    /// The subgroup kernels where they exist (needs SUBGROUP and a fixed subgroup size >= 8),
    /// with GEMM operands read from storage buffers.
    Subgroup,
    /// Like `Subgroup`, with GEMM operands copied into textures where the device allows
    /// (8-lane subgroups, operands within its texture limits; see `shaders/gemm_texture.wgsl`)
    /// and the memory-bound kernels (norms, softmax, reductions, elementwise, im2col/col2im)
    /// reading texture copies of their inputs (`ops::texture`); what `Auto` runs on CPU
    /// adapters.
    Texture,
}

/// How scaled-dot-product attention runs (forward and backward).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionPath {
    /// On GPUs, matmul + softmax through materialised scores (in chunks of heads of at most
    /// [`crate::ops::MATERIALISED_CHUNK_BYTES`]) where queries and keys both number at least
    /// [`crate::ops::GPU_MATERIALISE_MIN_LEN`], else the fused kernels (nothing of size
    /// Lq x Lk stored); on CPU adapters, materialised scores when those stay under
    /// [`crate::ops::CPU_MATERIALISED_SCORES_MAX_BYTES`]: llvmpipe runs the subgroup GEMM
    /// several times faster per FLOP than the fused kernels' gathers. Inside
    /// [`Gpu::memory_lean`] scopes (recomputation checkpoints) the fused kernels, to keep
    /// the Lq x Lk transients out of memory — except scores of at most
    /// [`crate::ops::LEAN_CPU_MATERIALISED_SCORES_MAX_BYTES`] on CPU adapters, where the
    /// fused kernels are 2-7x slower and such transients negligible.
    #[default]
    Auto,
    /// Always the fused kernels where they apply (head dims, loop budget).
    Fused,
    /// Always matmul + softmax over materialised scores.
    Materialised,
}

/// How 3x3, stride-1 convolutions run: their forward and their input gradient (the weight
/// gradient is always direct).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvPath {
    /// Winograd where input and output channels both number at least
    /// [`crate::ops::WINOGRAD_MIN_CHANNELS`]: F(4x4, 3x3) for outputs of at least 16x16
    /// pixels, F(2x2, 3x3) for smaller ones (on llvmpipe 2.3-2.6x and 1.03-1.10x the direct
    /// conv), on GPUs under the tiled GEMM and on CPU adapters (not under matrix cores, whose
    /// f16 rounding the transforms would add to); else the direct
    /// (implicit-GEMM or im2col) kernels. Also inside [`Gpu::memory_lean`] scopes: the
    /// transformed tiles live for one convolution, and recomputed blocks then compute what
    /// the stored forward computed (`train --recompute` trains the same steps).
    #[default]
    Auto,
    /// Always the direct kernels.
    Direct,
    /// Winograd F(2x2, 3x3) for every 3x3, stride-1 convolution (whose one image's
    /// transformed tiles fit in a binding).
    Winograd,
    /// Winograd F(4x4, 3x3) for every such convolution: 4x fewer multiplications
    /// than the direct convolution and transforms of 2.25x the input and output, with
    /// larger transform constants (more rounding).
    Winograd4,
}

/// A GPU device ready for tensors and kernels.
#[derive(Clone)]
pub struct Gpu(pub(crate) Arc<GpuInner>);

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({} on {:?})", self.0.info.name, self.0.info.backend)
    }
}

impl Gpu {
    /// Picks an adapter (see [`GpuOptions::adapter`]), requests its full limits and the
    /// optional features it has, and opens a device.
    pub fn new(opts: &GpuOptions) -> Result<Gpu> {
        let instance = instance();
        let adapters = pollster::block_on(instance.enumerate_adapters(backends()));
        if adapters.is_empty() {
            return Err(Error::NoAdapter { detail: String::new() });
        }
        let conv_path = match std::env::var(CONV_PATH_ENV).ok().filter(|s| !s.is_empty()).as_deref() {
            None | Some("auto") => ConvPath::Auto,
            Some("direct") => ConvPath::Direct,
            Some("winograd") => ConvPath::Winograd,
            Some("winograd4") => ConvPath::Winograd4,
            Some(other) => return Err(Error::Device(format!("{CONV_PATH_ENV}={other}: expected auto, direct, winograd or winograd4"))),
        };
        let query = opts.adapter.clone().or_else(|| std::env::var(ADAPTER_ENV).ok().filter(|s| !s.is_empty()));
        let chosen = match &query {
            Some(q) => adapters
                .iter()
                .enumerate()
                .find(|(i, a)| matches(q, *i, &a.get_info()))
                .map(|(_, a)| a)
                .ok_or_else(|| Error::AdapterNotFound {
                    query: q.clone(),
                    available: list_adapters().iter().map(|a| format!("  {}", a.line())).collect::<Vec<_>>().join("\n"),
                })?,
            None => adapters.iter().min_by_key(|a| rank(&a.get_info())).expect("non-empty"),
        };
        let info = chosen.get_info();
        let mut features = chosen.features() & OPTIONAL_FEATURES;
        let limits = chosen.limits();
        let matrix_tile = if opts.matrix_cores || std::env::var(MATRIX_CORES_ENV).is_ok_and(|v| v == "1") {
            let tile = matrix_tile(chosen)?;
            features |= MATRIX_CORE_FEATURES;
            Some(tile)
        } else {
            None
        };
        let (device, queue) = pollster::block_on(chosen.request_device(&wgpu::DeviceDescriptor {
            label: Some("t2v-turbo"),
            required_features: features,
            required_limits: limits.clone(),
            // SAFETY: only EXPERIMENTAL_COOPERATIVE_MATRIX is experimental here, requested on
            // demand (GpuOptions::matrix_cores); gemm_coop uses it as its tests do
            experimental_features: if matrix_tile.is_some() { unsafe { wgpu::ExperimentalFeatures::enabled() } } else { wgpu::ExperimentalFeatures::disabled() },
            ..Default::default()
        }))
        .map_err(|source| Error::RequestDevice { adapter: info.name.clone(), source })?;
        if !opts.quiet {
            eprintln!("t2v-turbo: using adapter {} ({:?}, {:?})", info.name, info.backend, info.device_type);
        }
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| sink.lock().unwrap().push(e.to_string())));
        // a lost device makes every later object silently invalid: say so first
        let sink = errors.clone();
        let adapter = info.name.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                sink.lock().unwrap().insert(0, format!("the GPU device ({adapter}) was lost: {msg} (its driver reset it, e.g. after a fault or running out of memory; restart the job)"));
            }
        });
        let gpu = Self::assemble(device, queue, info, errors, matrix_tile);
        if opts.shader_checks {
            gpu.0.shader_checks.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        gpu.set_conv_path(conv_path);
        gpu.set_memory_limit(opts.memory_limit);
        Ok(gpu)
    }

    /// Wraps a device and queue owned by a host application (e.g. a renderer), so that
    /// generation runs on the application's own GPU context. The host keeps its own
    /// uncaptured-error handler; tensors and kernels are created on this device.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Gpu {
        let info = device.adapter_info();
        Self::assemble(device, queue, info, Arc::default(), None)
    }

    /// [`Gpu::from_device`] with the GEMMs on the adapter's matrix units (see
    /// [`GpuOptions::matrix_cores`]): `adapter` is the one the device came from (its fragment
    /// sizes are asked there), and the device must have been requested with
    /// EXPERIMENTAL_COOPERATIVE_MATRIX, SHADER_F16 and SUBGROUP (the first needs
    /// `wgpu::ExperimentalFeatures::enabled()` in its descriptor).
    pub fn from_device_with_matrix_cores(device: wgpu::Device, queue: wgpu::Queue, adapter: &wgpu::Adapter) -> Result<Gpu> {
        let tile = matrix_tile(adapter)?;
        if !device.features().contains(MATRIX_CORE_FEATURES) {
            return Err(Error::Device(format!("matrix cores need a device requested with {} (the adapter has them)", missing(MATRIX_CORE_FEATURES, device.features()))));
        }
        let info = device.adapter_info();
        Ok(Self::assemble(device, queue, info, Arc::default(), Some(tile)))
    }

    fn assemble(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo, errors: Arc<Mutex<Vec<String>>>, matrix_tile: Option<u32>) -> Gpu {
        let features = device.features();
        let limits = device.limits();
        let recorder = Recorder::new(&limits);
        Gpu(Arc::new(GpuInner {
            device,
            queue,
            info,
            features,
            limits,
            pool: Mutex::new(Pool::default()),
            textures: Mutex::new(Default::default()),
            placeholder_texture: Mutex::new(None),
            registry: Mutex::new(Registry::default()),
            recorder: Mutex::new(recorder),
            errors,
            variant: Mutex::new(KernelVariant::Auto),
            attention_path: Mutex::new(AttentionPath::Auto),
            conv_path: Mutex::new(ConvPath::Auto),
            memory_lean: std::sync::atomic::AtomicUsize::new(0),
            shader_checks: std::sync::atomic::AtomicBool::new(std::env::var(SHADER_CHECKS_ENV).is_ok_and(|v| v == "1")),
            matrix_tile,
        }))
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.0.device
    }
    pub fn queue(&self) -> &wgpu::Queue {
        &self.0.queue
    }
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.0.info
    }
    pub fn features(&self) -> wgpu::Features {
        self.0.features
    }
    pub fn limits(&self) -> &wgpu::Limits {
        &self.0.limits
    }
    /// True for software adapters (lavapipe, WARP): kernels then prefer variants without
    /// workgroup barriers, which are expensive on a CPU.
    pub fn is_cpu(&self) -> bool {
        self.0.info.device_type == wgpu::DeviceType::Cpu
    }
    /// Chooses between kernel implementations (see [`KernelVariant`]).
    pub fn set_kernel_variant(&self, v: KernelVariant) {
        *self.0.variant.lock().unwrap() = v;
    }
    pub fn kernel_variant(&self) -> KernelVariant {
        *self.0.variant.lock().unwrap()
    }
    /// Chooses how attention runs (see [`AttentionPath`]).
    pub fn set_attention_path(&self, p: AttentionPath) {
        *self.0.attention_path.lock().unwrap() = p;
    }
    pub fn attention_path(&self) -> AttentionPath {
        *self.0.attention_path.lock().unwrap()
    }
    /// Chooses how 3x3 convolutions run (see [`ConvPath`]).
    pub fn set_conv_path(&self, p: ConvPath) {
        *self.0.conv_path.lock().unwrap() = p;
    }
    pub fn conv_path(&self) -> ConvPath {
        *self.0.conv_path.lock().unwrap()
    }
    /// Runs `f` preferring memory over speed where kernels have the choice (today: fused
    /// attention under [`AttentionPath::Auto`] beyond small scores). `Tape::checkpoint` runs its
    /// blocks in such a scope. Scopes nest; they are per device, not per thread.
    pub fn memory_lean<R>(&self, f: impl FnOnce() -> R) -> R {
        use std::sync::atomic::Ordering;
        struct Exit<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Exit<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.0.memory_lean.fetch_add(1, Ordering::SeqCst);
        let _exit = Exit(&self.0.memory_lean);
        f()
    }
    /// Is a [`Gpu::memory_lean`] scope running?
    pub fn is_memory_lean(&self) -> bool {
        self.0.memory_lean.load(std::sync::atomic::Ordering::SeqCst) > 0
    }
    /// Most loop iterations one kernel invocation may run on this device, if it is bounded.
    /// llvmpipe (lavapipe) stops any invocation's loops after 65535 back-edges in total,
    /// silently; kernels whose work per invocation grows with the problem check this
    /// (with a margin) and take another path. `None`: unbounded.
    pub fn loop_limit(&self) -> Option<u64> {
        let i = &self.0.info;
        (i.device_type == wgpu::DeviceType::Cpu && (i.driver.contains("llvmpipe") || i.name.contains("llvmpipe")))
            .then_some(60_000)
    }

    /// Fragment size (T of T x T x T, f16 inputs, f32 accumulation) of the matrix units the
    /// GEMMs run on: `Some` on a device opened with [`GpuOptions::matrix_cores`].
    pub fn matrix_tile(&self) -> Option<u32> {
        self.0.matrix_tile
    }

    /// How the GEMMs compute, for reports: "f32", or "matrix cores (TxT fragments, f16
    /// inputs)".
    pub fn gemm_mode(&self) -> String {
        self.matrix_tile().map_or("f32".to_string(), |t| format!("matrix cores ({t}x{t} fragments, f16 inputs)"))
    }

    /// The subgroup size when the device has SUBGROUP and a single, fixed size >= 8.
    pub fn fixed_subgroup_size(&self) -> Option<u32> {
        let i = &self.0.info;
        (self.0.features.contains(wgpu::Features::SUBGROUP) && i.subgroup_min_size == i.subgroup_max_size && i.subgroup_min_size >= 8)
            .then_some(i.subgroup_min_size)
    }
    /// Largest tensor, in bytes, that one kernel binding can address on this device.
    pub fn max_binding_bytes(&self) -> u64 {
        self.0.limits.max_storage_buffer_binding_size.min(self.0.limits.max_buffer_size)
    }

    /// Submitted command batches the device may still be running; the scheduler keeps at
    /// most a few in flight (the host waits for the oldest beyond that).
    pub fn submissions_in_flight(&self) -> usize {
        self.0.recorder.lock().unwrap().in_flight()
    }

    /// Memory held by tensors and the pool: current and peak bytes.
    pub fn memory(&self) -> PoolStats {
        self.0.pool.lock().unwrap().stats()
    }
    /// Caps the device memory the tensors and the pool take together: beyond it the pool
    /// frees reusable buffers (largest first) before allocating, and an allocation that
    /// would exceed it with the pool empty fails with [`crate::Error::OutOfMemory`] — for
    /// sharing a device (an application's, or with other jobs). Counts what this crate
    /// allocates for tensors (class sizes), not wgpu's own or the shaders'. `None` lifts it.
    pub fn set_memory_limit(&self, bytes: Option<u64>) {
        let mut pool = self.0.pool.lock().unwrap();
        pool.limit = bytes;
        pool.make_room(0);
    }
    /// The cap of [`Gpu::set_memory_limit`].
    pub fn memory_limit(&self) -> Option<u64> {
        self.0.pool.lock().unwrap().limit
    }
    /// Resets the peak counters of [`Gpu::memory`] to the current values.
    pub fn reset_peak_memory(&self) {
        self.0.pool.lock().unwrap().reset_peak();
    }
    /// Frees every buffer (and kernel input texture) the pool holds for reuse.
    pub fn trim_pool(&self) {
        self.0.pool.lock().unwrap().trim();
        self.0.textures.lock().unwrap().clear();
    }

    /// Submits everything recorded so far (does not wait).
    pub fn flush(&self) -> Result<()> {
        self.0.recorder.lock().unwrap().flush(self)?;
        self.check_errors()
    }

    /// Submits and waits until the device is idle.
    pub fn sync(&self) -> Result<()> {
        let mut rec = self.0.recorder.lock().unwrap();
        rec.flush(self)?;
        self.0
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Device(e.to_string()))?;
        rec.all_done();
        drop(rec);
        self.check_errors()
    }

    /// Returns the first error wgpu reported asynchronously, if any.
    pub fn check_errors(&self) -> Result<()> {
        let mut errs = self.0.errors.lock().unwrap();
        if errs.is_empty() {
            return Ok(());
        }
        let msg = errs.join("\n");
        errs.clear();
        Err(Error::Device(msg))
    }

    /// Turns per-kernel GPU timing on (needs TIMESTAMP_QUERY) or off. While on, each
    /// dispatch runs in its own pass and every flush waits for its timings.
    pub fn set_profiling(&self, on: bool) -> Result<()> {
        if on && !self.0.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Err(Error::Device(format!(
                "profiling needs the TIMESTAMP_QUERY feature, which adapter {:?} lacks",
                self.0.info.name
            )));
        }
        self.flush()?;
        self.0.recorder.lock().unwrap().set_profiling(on);
        Ok(())
    }

    /// Per-kernel totals gathered while profiling, slowest first.
    pub fn profile(&self) -> Result<Vec<crate::recorder::ProfileRow>> {
        self.sync()?;
        Ok(self.0.recorder.lock().unwrap().profile_rows())
    }

    /// The profile as a printable table: kernel, shape (where stated), calls, total and mean
    /// time, GFLOP/s (where the FLOPs are stated) and share of the total.
    pub fn profile_table(&self) -> Result<String> {
        let rows = self.profile()?;
        let total: f64 = rows.iter().map(|r| r.total_ms).sum();
        let mut s = format!("{:<40} {:<18} {:>8} {:>12} {:>12} {:>10} {:>7}\n", "kernel", "shape", "calls", "total ms", "mean us", "GFLOP/s", "share");
        for r in &rows {
            let rate = if r.flop > 0.0 && r.total_ms > 0.0 { format!("{:.0}", r.flop / r.total_ms * 1e-6) } else { String::new() };
            s += &format!(
                "{:<40} {:<18} {:>8} {:>12.3} {:>12.2} {:>10} {:>6.1}%\n",
                r.kernel,
                r.shape,
                r.calls,
                r.total_ms,
                1e3 * r.total_ms / r.calls.max(1) as f64,
                rate,
                100.0 * r.total_ms / total.max(1e-12)
            );
        }
        Ok(s)
    }

    /// While profiling: states the shape and FLOPs of the next dispatch for its profile row
    /// (`describe` runs only then).
    pub(crate) fn profile_note(&self, describe: impl FnOnce() -> (String, f64)) {
        let mut rec = self.0.recorder.lock().unwrap();
        if rec.profiling() {
            let (shape, flop) = describe();
            rec.note_next(shape, flop);
        }
    }
}
