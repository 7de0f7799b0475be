//! `Tensor`: a device buffer with a shape and a dtype, contiguous row-major. Upload and
//! readback are explicit and are the only points that synchronise with the host.

use std::sync::Arc;

use crate::gpu::Gpu;
use crate::pool::Storage;
use crate::recorder::{map_read, Cmd};
use crate::{Error, Result};

/// Most bytes [`Tensor::read_many`] stages at once.
const READ_MANY_BYTES: u64 = 256 << 20;

/// Element type of a tensor. Compute is f32; u32 holds indices (token ids, gathers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    U32,
}

/// A GPU tensor. Cloning is cheap and shares the buffer; ops never write their inputs.
#[derive(Clone)]
pub struct Tensor {
    gpu: Gpu,
    storage: Arc<Storage>,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.shape, self.dtype)
    }
}

pub(crate) fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// No other tensor (a reshape, a clone) shares this one's buffer: in-place updates
    /// through it are seen by no one else.
    pub fn owns_buffer(&self) -> bool {
        Arc::strong_count(&self.storage) == 1
    }

    /// An uninitialised tensor (every op writes all of its output).
    pub(crate) fn empty(gpu: &Gpu, shape: &[usize], dtype: DType, what: &str) -> Result<Tensor> {
        let bytes = 4 * numel(shape) as u64;
        let storage = Storage::acquire(gpu, bytes, &|| format!("{what} of shape {shape:?}"))?;
        Ok(Tensor { gpu: gpu.clone(), storage: Arc::new(storage), shape: shape.to_vec(), dtype })
    }

    /// Uploads `data` (row-major) as a tensor of `shape`.
    pub fn from_slice(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        Self::upload(gpu, shape, DType::F32, bytemuck::cast_slice(data), data.len())
    }

    /// Uploads u32 data (indices).
    pub fn from_u32(gpu: &Gpu, shape: &[usize], data: &[u32]) -> Result<Tensor> {
        Self::upload(gpu, shape, DType::U32, bytemuck::cast_slice(data), data.len())
    }

    fn upload(gpu: &Gpu, shape: &[usize], dtype: DType, bytes: &[u8], len: usize) -> Result<Tensor> {
        if len != numel(shape) {
            return Err(Error::Shape {
                op: "upload",
                msg: format!("{len} values do not fill shape {shape:?} ({} elements)", numel(shape)),
            });
        }
        let t = Self::empty(gpu, shape, dtype, "upload")?;
        t.write_bytes(bytes)?;
        Ok(t)
    }

    /// A tensor of zeros.
    pub fn zeros(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        let t = Self::empty(gpu, shape, DType::F32, "zeros")?;
        let bytes = t.binding_bytes();
        gpu.0.recorder.lock().unwrap().push(gpu, Cmd::Clear { buf: t.storage.buffer.clone(), bytes })?;
        Ok(t)
    }

    /// A tensor filled with `value`.
    pub fn full(gpu: &Gpu, shape: &[usize], value: f32) -> Result<Tensor> {
        crate::ops::fill(gpu, shape, value)
    }

    /// Overwrites the contents from the host (same number of elements).
    pub fn write(&self, data: &[f32]) -> Result<()> {
        self.expect_dtype("write", DType::F32)?;
        if data.len() != self.numel() {
            return Err(Error::Shape {
                op: "write",
                msg: format!("{} values for a tensor of shape {:?}", data.len(), self.shape),
            });
        }
        self.write_bytes(bytemuck::cast_slice(data))
    }

    fn write_bytes(&self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        // Queue writes run before the next submit's commands: submit what was recorded
        // first, so that earlier kernels still see this buffer's previous contents.
        self.gpu.flush()?;
        self.gpu.queue().write_buffer(&self.storage.buffer, 0, bytes);
        Ok(())
    }

    /// Overwrites the contents with `src`'s (same dtype and number of elements) on the
    /// device, in order with the recorded work: what reads this tensor before sees the old
    /// contents, what reads it after the new.
    pub fn copy_from(&self, src: &Tensor) -> Result<()> {
        if src.dtype != self.dtype || src.numel() != self.numel() {
            return Err(Error::Shape { op: "copy_from", msg: format!("{:?} {:?} into {:?} {:?}", src.dtype, src.shape, self.dtype, self.shape) });
        }
        let bytes = 4 * self.numel() as u64; // f32 and u32 alike
        if bytes == 0 {
            return Ok(());
        }
        let gpu = &self.gpu;
        gpu.0.recorder.lock().unwrap().push(gpu, Cmd::Copy { src: src.storage.buffer.clone(), src_at: 0, dst: self.storage.buffer.clone(), dst_at: 0, bytes })
    }

    /// Reads the tensor back (waits for the GPU).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.expect_dtype("to_vec", DType::F32)?;
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes()?))
    }

    /// Reads f32 tensors of one device back with one wait per `READ_MANY_BYTES` instead of
    /// one per tensor (a model's ~1000 weights or gradients: a few round trips, not ~1000).
    pub fn read_many(tensors: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(tensors.len());
        Self::read_each(tensors, |_, v| -> Result<()> {
            out.push(v);
            Ok(())
        })?;
        Ok(out)
    }

    /// [`Tensor::read_many`] handing each tensor's values to `f` (index, values) as its
    /// staging buffer arrives, so that the host holds one buffer's worth at a time.
    pub fn read_each<E: From<Error>>(tensors: &[&Tensor], mut f: impl FnMut(usize, Vec<f32>) -> std::result::Result<(), E>) -> std::result::Result<(), E> {
        for t in tensors {
            t.expect_dtype("read_many", DType::F32)?;
        }
        Self::read_each_bytes(tensors, |i, bytes| f(i, bytemuck::pod_collect_to_vec(&bytes)))
    }

    /// [`Tensor::read_each`] for tensors of any dtype: each one's little-endian bytes.
    pub fn read_each_bytes<E: From<Error>>(tensors: &[&Tensor], f: impl FnMut(usize, Vec<u8>) -> std::result::Result<(), E>) -> std::result::Result<(), E> {
        let cap = tensors.first().map_or(READ_MANY_BYTES, |t| READ_MANY_BYTES.min(t.gpu.limits().max_buffer_size));
        Self::read_each_staged(tensors, cap, f)
    }

    /// [`Tensor::read_each_bytes`] with host-visible staging buffers of at most `cap` bytes
    /// (a tensor larger than that gets a buffer of its own): one wait per buffer.
    pub fn read_each_staged<E: From<Error>>(tensors: &[&Tensor], cap: u64, mut f: impl FnMut(usize, Vec<u8>) -> std::result::Result<(), E>) -> std::result::Result<(), E> {
        let Some(first) = tensors.first() else { return Ok(()) };
        let gpu = &first.gpu;
        for t in tensors {
            if !Arc::ptr_eq(&t.gpu.0, &gpu.0) {
                return Err(Error::Shape { op: "read_many", msg: "tensors of different devices".into() }.into());
            }
        }
        let mut start = 0;
        while start < tensors.len() {
            // the next group: tensors while the staging buffer stays under `cap`
            let (mut end, mut bytes) = (start, 0u64);
            while end < tensors.len() && (end == start || bytes + 4 * tensors[end].numel() as u64 <= cap) {
                bytes += 4 * tensors[end].numel() as u64;
                end += 1;
            }
            let ranges: Vec<(&Tensor, u64, u64)> = tensors[start..end].iter().map(|t| (*t, 0, 4 * t.numel() as u64)).collect();
            let all = read_staged(gpu, &ranges)?;
            let mut at = 0;
            for (i, t) in tensors[start..end].iter().enumerate() {
                let n = 4 * t.numel();
                f(start + i, all[at..at + n].to_vec())?;
                at += n;
            }
            start = end;
        }
        Ok(())
    }

    /// Reads a u32 tensor back.
    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        self.expect_dtype("to_vec_u32", DType::U32)?;
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes()?))
    }

    /// Reads one element (flat index) back: a cheap way to make sure work has completed.
    pub fn item_at(&self, index: usize) -> Result<f32> {
        self.expect_dtype("item_at", DType::F32)?;
        if index >= self.numel() {
            return Err(Error::Shape { op: "item_at", msg: format!("index {index} out of {:?}", self.shape) });
        }
        let v = self.read_range(4 * index as u64, 4)?;
        Ok(bytemuck::pod_read_unaligned(&v))
    }

    fn read_bytes(&self) -> Result<Vec<u8>> {
        let mut v = self.read_range(0, (4 * self.numel() as u64).max(4))?;
        v.truncate(4 * self.numel());
        Ok(v)
    }

    fn read_range(&self, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        read_staged(&self.gpu, &[(self, offset, bytes)])
    }

    /// Same data, new shape (same element count); shares the buffer.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::Shape {
                op: "reshape",
                msg: format!("cannot reshape {:?} ({} elements) to {shape:?}", self.shape, self.numel()),
            });
        }
        Ok(Tensor { shape: shape.to_vec(), ..self.clone() })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
    /// Size of dimension `d`; negative counts from the end.
    pub fn dim(&self, d: isize) -> usize {
        let r = self.rank() as isize;
        self.shape[(if d < 0 { r + d } else { d }) as usize]
    }
    /// Identity of the underlying buffer (equal for views that share it).
    pub fn storage_id(&self) -> usize {
        Arc::as_ptr(&self.storage) as usize
    }
    /// True when both tensors share one buffer.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    pub(crate) fn expect_dtype(&self, op: &'static str, dtype: DType) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::DType { op, expected: dtype, actual: self.dtype });
        }
        Ok(())
    }

    /// Bytes bound to kernels: a multiple of 16 (at least 16), so that kernels may view
    /// any tensor as vec4s (pooled buffers are allocated in classes of >= 256 bytes).
    pub(crate) fn binding_bytes(&self) -> u64 {
        (4 * self.numel() as u64).max(16).next_multiple_of(16)
    }

    pub(crate) fn binding(&self) -> (wgpu::Buffer, u64) {
        (self.storage.buffer.clone(), self.binding_bytes())
    }
}

/// Copies byte ranges (tensor, offset, bytes) of tensors of `gpu`, one after the other,
/// into one host-visible staging buffer after the recorded work, and reads it back: one
/// wait for all of them.
fn read_staged(gpu: &Gpu, ranges: &[(&Tensor, u64, u64)]) -> Result<Vec<u8>> {
    let total: u64 = ranges.iter().map(|r| r.2).sum();
    let staging = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: total.max(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    {
        let mut rec = gpu.0.recorder.lock().unwrap();
        let mut at = 0;
        for &(t, offset, bytes) in ranges {
            if bytes > 0 {
                rec.push(gpu, Cmd::Copy { src: t.storage.buffer.clone(), src_at: offset, dst: staging.clone(), dst_at: at, bytes })?;
            }
            at += bytes;
        }
        rec.flush(gpu)?;
    }
    gpu.check_errors()?;
    let out = map_read(gpu, &staging)?;
    gpu.check_errors()?;
    Ok(out)
}
