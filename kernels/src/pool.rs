//! Size-classed buffer pool. A dropped tensor returns its buffer here; the next tensor of
//! the same class reuses it, so a steady-state loop allocates no new device memory.
//!
//! Classes: sizes up to 256 B share one class; above, sizes round up to a multiple of a
//! quarter of their power of two (at least 256 B; at most 25% slack above 1 KiB).

use std::collections::HashMap;

use crate::gpu::Gpu;
use crate::{Error, Result};

/// Usage of every pooled storage buffer.
pub(crate) const STORAGE_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

/// Bytes held by tensors and by the pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of buffers owned by live tensors (class sizes).
    pub live_bytes: u64,
    /// Bytes of free buffers kept for reuse.
    pub pooled_bytes: u64,
    /// Peak of `live_bytes` since creation or the last reset.
    pub peak_live_bytes: u64,
    /// Peak of live + pooled bytes: the device memory this process took for tensors.
    pub peak_total_bytes: u64,
    /// Device buffers created so far (pool misses).
    pub allocations: u64,
    /// Buffers handed out from the pool (pool hits).
    pub reuses: u64,
}

#[derive(Default)]
pub(crate) struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    stats: PoolStats,
    /// Most bytes tensors and pool may hold together ([`crate::Gpu::set_memory_limit`]).
    pub limit: Option<u64>,
}

/// The class (allocated size) of a request of `bytes`.
pub(crate) fn size_class(bytes: u64) -> u64 {
    if bytes <= 256 {
        return 256;
    }
    let pow = 1u64 << (63 - bytes.leading_zeros()); // largest power of two <= bytes
    let step = (pow / 4).max(256);
    bytes.div_ceil(step) * step
}

impl Pool {
    pub fn stats(&self) -> PoolStats {
        self.stats
    }
    pub fn reset_peak(&mut self) {
        self.stats.peak_live_bytes = self.stats.live_bytes;
        self.stats.peak_total_bytes = self.stats.live_bytes + self.stats.pooled_bytes;
    }
    pub fn trim(&mut self) {
        self.free.clear();
        self.stats.pooled_bytes = 0;
    }
    /// Frees pooled buffers, largest first, until `class` more bytes fit under the limit
    /// (or the pool is empty). Whether they fit now.
    pub(crate) fn make_room(&mut self, class: u64) -> bool {
        let Some(limit) = self.limit else { return true };
        while self.stats.live_bytes + self.stats.pooled_bytes + class > limit {
            let Some((&c, v)) = self.free.iter_mut().filter(|(_, v)| !v.is_empty()).max_by_key(|(c, _)| **c) else { break };
            v.pop();
            self.stats.pooled_bytes -= c;
        }
        self.stats.live_bytes + self.stats.pooled_bytes + class <= limit
    }
    fn take(&mut self, class: u64) -> Option<wgpu::Buffer> {
        let b = self.free.get_mut(&class)?.pop()?;
        self.stats.pooled_bytes -= class;
        self.stats.reuses += 1;
        Some(b)
    }
    fn mark_live(&mut self, class: u64) {
        let s = &mut self.stats;
        s.live_bytes += class;
        s.peak_live_bytes = s.peak_live_bytes.max(s.live_bytes);
        s.peak_total_bytes = s.peak_total_bytes.max(s.live_bytes + s.pooled_bytes);
    }
    pub fn release(&mut self, buffer: wgpu::Buffer, class: u64) {
        self.stats.live_bytes -= class;
        self.stats.pooled_bytes += class;
        self.free.entry(class).or_default().push(buffer);
    }
}

/// A device buffer owned by one or more tensors; back to the pool on drop.
pub(crate) struct Storage {
    pub buffer: wgpu::Buffer,
    pub class: u64,
    gpu: Gpu,
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Ok(mut pool) = self.gpu.0.pool.lock() {
            pool.release(self.buffer.clone(), self.class);
        }
    }
}

impl Storage {
    /// A buffer of at least `bytes` (contents undefined). `what` names it in errors.
    pub fn acquire(gpu: &Gpu, bytes: u64, what: &dyn Fn() -> String) -> Result<Storage> {
        let limit = gpu.max_binding_bytes();
        let bytes = bytes.max(16).next_multiple_of(16);
        if bytes > limit {
            return Err(Error::TooLarge { what: what(), bytes, limit, adapter: gpu.adapter_info().name.clone() });
        }
        let mut class = size_class(bytes);
        if class > gpu.limits().max_buffer_size {
            class = bytes;
        }
        let reused = {
            let mut pool = gpu.0.pool.lock().unwrap();
            let b = pool.take(class);
            if b.is_some() {
                pool.mark_live(class);
            } else if !pool.make_room(class) {
                // over the memory limit even with the pool emptied
                let s = pool.stats;
                let limit = pool.limit.unwrap_or(u64::MAX);
                return Err(Error::OutOfMemory { bytes: class, live: s.live_bytes, pooled: s.pooled_bytes, msg: format!("{}: over the memory limit of {} MiB (Gpu::set_memory_limit, --max-memory)", what(), limit >> 20) });
            }
            b
        };
        let buffer = match reused {
            Some(b) => b,
            None => {
                let device = gpu.device();
                let create = || {
                    let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
                    let b = device.create_buffer(&wgpu::BufferDescriptor { label: None, size: class, usage: STORAGE_USAGE, mapped_at_creation: false });
                    pollster::block_on(scope.pop()).map_or(Ok(b), Err)
                };
                // out of memory with free buffers of other sizes in the pool: give those (and
                // the pooled textures) back to the device, freed once the recorded work using
                // them has run (submit and wait), and try again
                let b = match create() {
                    Err(_) if gpu.memory().pooled_bytes > 0 => {
                        gpu.trim_pool();
                        let _ = gpu.sync();
                        create()
                    }
                    r => r,
                };
                let b = match b {
                    Ok(b) => b,
                    Err(e) => {
                        let s = gpu.memory();
                        return Err(Error::OutOfMemory { bytes: class, live: s.live_bytes, pooled: s.pooled_bytes, msg: format!("{}: {e}", what()) });
                    }
                };
                let mut pool = gpu.0.pool.lock().unwrap();
                pool.stats.allocations += 1;
                pool.mark_live(class);
                b
            }
        };
        Ok(Storage { buffer, class, gpu: gpu.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;
    #[test]
    fn classes_bound_slack() {
        for b in [1u64, 255, 256, 257, 1000, 4096, 5000, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let c = size_class(b);
            assert!(c >= b, "{b} -> {c}");
            assert!(b <= 1024 || (c - b) * 4 <= b, "slack too large: {b} -> {c}");
        }
        assert_eq!(size_class(4096), 4096);
        assert_eq!(size_class(5000), 5120);
    }
}
