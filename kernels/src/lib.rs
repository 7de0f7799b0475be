//! `t2v-kernels`: the compute core of t2v-turbo.
//!
//! - [`Gpu`]: adapter selection (or a host application's device), full adapter limits,
//!   optional features, buffer pool, kernel registry, batched command recording.
//! - [`Tensor`]: f32 (or u32 index) device buffers, contiguous row-major, explicit
//!   upload/readback.
//! - [`ops`]: forward kernels, one Rust wrapper per WGSL entry point; each checks shapes
//!   before anything is recorded.
//!
//! ```no_run
//! use t2v_kernels::{ops, Gpu, GpuOptions, Tensor};
//! let gpu = Gpu::new(&GpuOptions::default())?;
//! let a = Tensor::from_slice(&gpu, &[2, 3], &[1., 2., 3., 4., 5., 6.])?;
//! let b = Tensor::from_slice(&gpu, &[3, 2], &[1., 0., 0., 1., 1., 1.])?;
//! let c = ops::matmul(&a, &b)?;
//! assert_eq!(c.to_vec()?, vec![4., 5., 10., 11.]);
//! # Ok::<(), t2v_kernels::Error>(())
//! ```

pub mod autograd;
pub mod bench;
mod error;
mod gpu;
mod half_storage;
pub mod io;
pub mod optim;
pub mod ops;
mod pool;
mod recorder;
mod registry;
pub mod shaders;
mod tensor;

pub use error::{Error, Result};
pub use half_storage::{HalfKind, HalfTensor};
pub use gpu::{list_adapters, AdapterSummary, AttentionPath, ConvPath, Gpu, GpuOptions, KernelVariant, ADAPTER_ENV, CONV_PATH_ENV, MATRIX_CORES_ENV, MATRIX_CORE_FEATURES, OPTIONAL_FEATURES, SHADER_CHECKS_ENV};
pub use pool::PoolStats;
pub use recorder::MAX_IN_FLIGHT;
pub use recorder::ProfileRow;
pub use registry::KernelSource;
pub use tensor::{DType, Tensor};
/// The wgpu this crate is built on, for applications that lend it their device
/// ([`Gpu::from_device`]) or hand it their textures ([`ops::video_to_texture`]).
pub use wgpu;

impl Gpu {
    /// Number of compiled pipelines (each (family, entry, constants) once).
    pub fn pipeline_count(&self) -> usize {
        self.0.registry.lock().unwrap().pipeline_count()
    }
}
