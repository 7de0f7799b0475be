//! The scheduler: dispatches, copies and clears are recorded on the host and submitted in
//! batches in one command encoder (consecutive dispatches share one compute pass). Nothing
//! waits for the GPU except readback, profiling (which reads its timestamps) and a host
//! more than [`MAX_IN_FLIGHT`] batches ahead.
//!
//! Kernel parameters (shapes, scalars) of a batch are packed into one uniform buffer, one
//! 256-byte slot per dispatch, written with the batch's submit.

use std::collections::HashMap;
use std::sync::Arc;

use crate::gpu::Gpu;
use crate::registry::Pipeline;
use crate::{Error, Result};

/// Bytes of one parameter slot (>= every device's uniform offset alignment).
pub(crate) const PARAM_SLOT: u64 = 256;
/// A batch is submitted once it holds this many commands.
const MAX_BATCH: usize = 256;
/// Submitted batches the host may run ahead of the device: past this, a flush first waits
/// for the oldest to finish. Without a bound, a loop of model calls with no readback (a
/// 100-step DDIM inversion at VideoCrafter2 size: ~100 s of GPU work recorded in seconds)
/// queues every call's bind groups and parameter uploads at once, and a failure surfaces
/// far from its cause.
pub const MAX_IN_FLIGHT: usize = 8;

pub(crate) enum Cmd {
    Dispatch {
        pipe: Arc<Pipeline>,
        buffers: Vec<(wgpu::Buffer, u64)>,
        first_binding: u32,
        /// (binding, view): sampled or storage textures after the buffers
        textures: Vec<(u32, wgpu::TextureView)>,
        params_at: u64,
        groups: [u32; 3],
        /// While profiling: the problem's shape and FLOPs, from [`Recorder::note_next`].
        note: Option<(String, f64)>,
    },
    Copy { src: wgpu::Buffer, src_at: u64, dst: wgpu::Buffer, dst_at: u64, bytes: u64 },
    /// `extent` (width, height) texels from `src` at `src_at`, rows `bytes_per_row` apart (a
    /// multiple of 256; None for one row), into `dst` from row `dst_row`.
    CopyToTexture { src: wgpu::Buffer, src_at: u64, bytes_per_row: Option<u32>, dst: wgpu::Texture, dst_row: u32, extent: [u32; 2] },
    Clear { buf: wgpu::Buffer, bytes: u64 },
}

/// One row of the kernel profile: a pipeline (entry and specialisation) and, where its
/// wrapper states it (GEMMs, convs, fused attention), one problem shape.
#[derive(Clone, Debug)]
pub struct ProfileRow {
    pub kernel: String,
    /// e.g. `2560x320x320 x16` (M x K x N, batch) for a GEMM; empty where not stated.
    pub shape: String,
    pub calls: u64,
    pub total_ms: f64,
    /// Floating-point operations of all calls (0 where not stated).
    pub flop: f64,
}

pub(crate) struct Recorder {
    cmds: Vec<Cmd>,
    params: Vec<u8>,
    params_buf: Option<wgpu::Buffer>,
    profiling: bool,
    /// (kernel, shape) -> (calls, ms, flop)
    profile: HashMap<(String, String), (u64, f64, f64)>,
    /// Shape and FLOPs of the next dispatch (profiling only).
    note: Option<(String, f64)>,
    submissions: u64,
    in_flight: std::collections::VecDeque<wgpu::SubmissionIndex>,
}

impl Recorder {
    pub fn new(limits: &wgpu::Limits) -> Recorder {
        assert!(limits.min_uniform_buffer_offset_alignment as u64 <= PARAM_SLOT);
        Recorder { cmds: Vec::new(), params: Vec::new(), params_buf: None, profiling: false, profile: HashMap::new(), note: None, submissions: 0, in_flight: Default::default() }
    }

    /// Submitted batches the device may still be running (at most [`MAX_IN_FLIGHT`]).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
    /// After a wait for all submitted work: nothing is in flight.
    pub fn all_done(&mut self) {
        self.in_flight.clear();
    }

    pub fn set_profiling(&mut self, on: bool) {
        self.profiling = on;
        if on {
            self.profile.clear();
        }
    }

    pub fn profiling(&self) -> bool {
        self.profiling
    }

    /// While profiling: the shape and FLOPs of the next dispatch, for its profile row.
    pub fn note_next(&mut self, shape: String, flop: f64) {
        if self.profiling {
            self.note = Some((shape, flop));
        }
    }

    pub fn profile_rows(&self) -> Vec<ProfileRow> {
        let mut rows: Vec<ProfileRow> = self
            .profile
            .iter()
            .map(|((k, shape), (calls, ms, flop))| ProfileRow { kernel: k.clone(), shape: shape.clone(), calls: *calls, total_ms: *ms, flop: *flop })
            .collect();
        rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        rows
    }


    /// Records a dispatch; `params` (<= 256 bytes) go to this dispatch's uniform slot.
    pub fn dispatch(
        &mut self,
        gpu: &Gpu,
        pipe: Arc<Pipeline>,
        params: &[u8],
        first_binding: u32,
        buffers: Vec<(wgpu::Buffer, u64)>,
        textures: Vec<(u32, wgpu::TextureView)>,
        groups: [u32; 3],
    ) -> Result<()> {
        assert!(params.len() as u64 <= PARAM_SLOT, "kernel params exceed one slot");
        let max = gpu.limits().max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::Device(format!("{}: grid {groups:?} exceeds {max} workgroups per dimension", pipe.label)));
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let params_at = self.params.len() as u64;
        self.params.extend_from_slice(params);
        self.params.resize((params_at + PARAM_SLOT) as usize, 0);
        let note = self.note.take();
        self.cmds.push(Cmd::Dispatch { pipe, buffers, first_binding, textures, params_at, groups, note });
        self.maybe_flush(gpu)
    }

    pub fn push(&mut self, gpu: &Gpu, cmd: Cmd) -> Result<()> {
        self.cmds.push(cmd);
        self.maybe_flush(gpu)
    }

    fn maybe_flush(&mut self, gpu: &Gpu) -> Result<()> {
        if self.cmds.len() >= MAX_BATCH {
            self.flush(gpu)?;
        }
        Ok(())
    }

    /// Submits all recorded commands. Returns without waiting unless profiling or more than
    /// [`MAX_IN_FLIGHT`] batches would be queued.
    pub fn flush(&mut self, gpu: &Gpu) -> Result<()> {
        if self.cmds.is_empty() {
            return Ok(());
        }
        let device = gpu.device();
        let queue = gpu.queue();
        let need = self.params.len().max(PARAM_SLOT as usize) as u64;
        if self.params_buf.as_ref().is_none_or(|b| b.size() < need) {
            self.params_buf = Some(device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kernel params"),
                size: need.next_power_of_two(),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let params_buf = self.params_buf.clone().expect("params buffer");
        if !self.params.is_empty() {
            queue.write_buffer(&params_buf, 0, &self.params);
        }
        let cmds = std::mem::take(&mut self.cmds);
        self.params.clear();

        let n_dispatch = cmds.iter().filter(|c| matches!(c, Cmd::Dispatch { .. })).count() as u32;
        let timing = if self.profiling && n_dispatch > 0 { Some(Timing::new(device, n_dispatch)) } else { None };
        let bind = |pipe: &Pipeline, buffers: &[(wgpu::Buffer, u64)], first: u32, textures: &[(u32, wgpu::TextureView)], params_at: u64| {
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &params_buf,
                    offset: params_at,
                    size: wgpu::BufferSize::new(PARAM_SLOT),
                }),
            }];
            for (i, (b, bytes)) in buffers.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: first + i as u32,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: b,
                        offset: 0,
                        size: wgpu::BufferSize::new(*bytes),
                    }),
                });
            }
            for (binding, view) in textures {
                entries.push(wgpu::BindGroupEntry { binding: *binding, resource: wgpu::BindingResource::TextureView(view) });
            }
            device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &pipe.layout, entries: &entries })
        };

        let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("t2v batch") });
        let mut labels = Vec::new();
        let mut i = 0;
        while i < cmds.len() {
            match &cmds[i] {
                Cmd::Dispatch { .. } => {
                    // Without profiling: all consecutive dispatches in one pass.
                    // With profiling: one pass per dispatch, timestamps at both ends.
                    let tw = timing.as_ref().map(|t| {
                        let q = 2 * labels.len() as u32;
                        wgpu::ComputePassTimestampWrites {
                            query_set: &t.set,
                            beginning_of_pass_write_index: Some(q),
                            end_of_pass_write_index: Some(q + 1),
                        }
                    });
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: tw });
                    while let Some(Cmd::Dispatch { pipe, buffers, first_binding, textures, params_at, groups, note }) = cmds.get(i) {
                        let bg = bind(pipe, buffers, *first_binding, textures, *params_at);
                        pass.set_pipeline(&pipe.pipeline);
                        pass.set_bind_group(0, &bg, &[]);
                        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                        i += 1;
                        if timing.is_some() {
                            labels.push((pipe.label.clone(), note.clone().unwrap_or_default()));
                            break;
                        }
                    }
                }
                Cmd::Copy { src, src_at, dst, dst_at, bytes } => {
                    enc.copy_buffer_to_buffer(src, *src_at, dst, *dst_at, *bytes);
                    i += 1;
                }
                Cmd::CopyToTexture { src, src_at, bytes_per_row, dst, dst_row, extent } => {
                    enc.copy_buffer_to_texture(
                        wgpu::TexelCopyBufferInfo {
                            buffer: src,
                            layout: wgpu::TexelCopyBufferLayout { offset: *src_at, bytes_per_row: *bytes_per_row, rows_per_image: None },
                        },
                        wgpu::TexelCopyTextureInfo { texture: dst, mip_level: 0, origin: wgpu::Origin3d { x: 0, y: *dst_row, z: 0 }, aspect: wgpu::TextureAspect::All },
                        wgpu::Extent3d { width: extent[0], height: extent[1], depth_or_array_layers: 1 },
                    );
                    i += 1;
                }
                Cmd::Clear { buf, bytes } => {
                    enc.clear_buffer(buf, 0, Some(*bytes));
                    i += 1;
                }
            }
        }
        if let Some(t) = &timing {
            t.resolve(&mut enc);
        }
        self.in_flight.push_back(queue.submit([enc.finish()]));
        self.submissions += 1;
        while self.in_flight.len() > MAX_IN_FLIGHT {
            let oldest = self.in_flight.pop_front().expect("more than MAX_IN_FLIGHT");
            device
                .poll(wgpu::PollType::Wait { submission_index: Some(oldest), timeout: None })
                .map_err(|e| Error::Device(format!("waiting for the GPU: {e}")))?;
        }
        if let Some(t) = timing {
            let ns = t.read(gpu)?;
            let period = queue.get_timestamp_period() as f64;
            for (k, (label, (shape, flop))) in labels.into_iter().enumerate() {
                let dt = ns[2 * k + 1].saturating_sub(ns[2 * k]) as f64 * period * 1e-6;
                let e = self.profile.entry((label, shape)).or_insert((0, 0.0, 0.0));
                e.0 += 1;
                e.1 += dt;
                e.2 += flop;
            }
        }
        Ok(())
    }
}

/// Timestamp queries of one profiled batch.
struct Timing {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
    count: u32,
}

impl Timing {
    fn new(device: &wgpu::Device, n: u32) -> Timing {
        let count = 2 * n;
        let bytes = 8 * count as u64;
        Timing {
            set: device.create_query_set(&wgpu::QuerySetDescriptor { label: None, ty: wgpu::QueryType::Timestamp, count }),
            resolve: device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            read: device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            count,
        }
    }
    fn resolve(&self, enc: &mut wgpu::CommandEncoder) {
        enc.resolve_query_set(&self.set, 0..self.count, &self.resolve, 0);
        enc.copy_buffer_to_buffer(&self.resolve, 0, &self.read, 0, 8 * self.count as u64);
    }
    fn read(&self, gpu: &Gpu) -> Result<Vec<u64>> {
        let bytes = map_read(gpu, &self.read)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

/// Maps a MAP_READ buffer after the work writing it was submitted, and copies it out.
pub(crate) fn map_read(gpu: &Gpu, buf: &wgpu::Buffer) -> Result<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    buf.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    gpu.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Readback(e.to_string()))?;
    rx.recv()
        .map_err(|e| Error::Readback(e.to_string()))?
        .map_err(|e| Error::Readback(e.to_string()))?;
    let out = buf.slice(..).get_mapped_range().map_err(|e| Error::Readback(format!("{e:?}")))?.to_vec();
    buf.unmap();
    Ok(out)
}
