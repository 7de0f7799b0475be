//! Errors of the compute core. Messages name the op, the tensors and both shapes.

/// Result alias of the `t2v-kernels` crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no GPU adapter found{detail}.\n  On a machine without a GPU install software Vulkan \
         (Debian/Ubuntu: `apt-get install -y mesa-vulkan-drivers`; Fedora: `dnf install \
         mesa-vulkan-drivers`), or install your GPU's Vulkan/Metal/DX12 driver."
    )]
    NoAdapter { detail: String },

    #[error("no adapter matches {query:?}; available adapters:\n{available}")]
    AdapterNotFound { query: String, available: String },

    #[error("could not open a device on adapter {adapter:?}: {source}")]
    RequestDevice { adapter: String, source: wgpu::RequestDeviceError },

    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },

    #[error(
        "{what}: needs {bytes} bytes, more than this device allows in one buffer ({limit} bytes, \
         adapter {adapter:?}); use smaller batches/frames or a device with larger limits (a \
         device lent through Gpu::from_device keeps the limits it was created with, wgpu's \
         defaults allow 128 MiB: create it with `required_limits: adapter.limits()`)"
    )]
    TooLarge { what: String, bytes: u64, limit: u64, adapter: String },

    #[error(
        "out of GPU memory allocating {bytes} bytes ({live} bytes live in tensors, {pooled} in \
         the buffer pool): {msg}"
    )]
    OutOfMemory { bytes: u64, live: u64, pooled: u64, msg: String },

    #[error("shader {shader}::{entry}: {msg}")]
    Shader { shader: &'static str, entry: &'static str, msg: String },

    #[error("GPU error: {0}")]
    Device(String),

    #[error("reading a tensor back from the GPU failed: {0}")]
    Readback(String),

    #[error("autograd: {0}")]
    Autograd(String),

    #[error("optimizer: {0}")]
    Optim(String),

    #[error("{what} contains NaN or infinite values; the step was not applied (lower the learning rate or enable gradient clipping)")]
    NonFinite { what: String },

    #[error("{path}: {msg}")]
    Io { path: String, msg: String },

    #[error("dtype mismatch in {op}: expected {expected:?}, got {actual:?}")]
    DType { op: &'static str, expected: crate::DType, actual: crate::DType },
}

impl Error {
    /// Did the device run out of memory (or over its memory limit)?
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Error::OutOfMemory { .. })
    }
}

/// Shorthand for a shape error.
pub(crate) fn shape_err<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(Error::Shape { op, msg: msg.into() })
}
