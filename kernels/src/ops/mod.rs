//! Forward ops. Each public function checks shapes and dtypes, allocates its output from
//! the pool and records one or more dispatches; nothing waits for the GPU.

mod attention;
mod elementwise;
mod embedding;
mod gemm;
mod layout;
mod norm;
mod present;
mod reduce;
mod softmax;
mod texture;
mod winograd;

pub use attention::{attention, attention_backward, attention_masked, materialises_scores, Attention, CPU_MATERIALISED_SCORES_MAX_BYTES, GPU_MATERIALISE_MIN_LEN, LEAN_CPU_MATERIALISED_SCORES_MAX_BYTES, MATERIALISED_CHUNK_BYTES};
pub use elementwise::*;
pub use embedding::{embedding, embedding_backward, gather_rows, sinusoidal_embedding};
pub use gemm::{conv2d, conv2d_backward, linear, matmul, matmul_ex, temporal_conv, Conv2d, Matmul, CONV_COLUMNS_MAX_BYTES, SPLIT_K_WORKGROUPS};
pub use layout::{broadcast_to, concat, contiguous_strides, permute, slice, transpose, unslice, upsample_nearest2x};
pub use norm::{group_norm, group_norm_backward, layer_norm, layer_norm_backward, Norm, NormGrad};
pub use present::video_to_texture;
pub use reduce::{max, mean, min, reduce, sum, Reduce};
pub use softmax::{softmax, softmax_scaled};
pub use winograd::WINOGRAD_MIN_CHANNELS;

use crate::gpu::Gpu;
use crate::registry::{pipeline, KernelSource};
use crate::{DType, Error, KernelVariant, Result, Tensor};

/// Workgroups for `items` work items of `per_group` each, folded into (x, y) so that no
/// dimension exceeds the device limit. Kernels rebuild the index as (y * nx + x).
pub(crate) fn fold_groups(gpu: &Gpu, items: usize, per_group: u32) -> [u32; 3] {
    let groups = items.div_ceil(per_group as usize).max(1);
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    if groups <= max {
        [groups as u32, 1, 1]
    } else {
        [max as u32, groups.div_ceil(max) as u32, 1]
    }
}

/// Rows up to this length are handled one invocation per row by the row-wise kernels
/// (softmax, norms): no workgroup barriers and no idle lanes, which a workgroup per row
/// would cost for a few elements.
pub(crate) const SHORT_ROW: usize = 128;

/// On adapters that prefer barrier-free kernels, this many rows or more take the
/// thread-per-row kernels whatever their length: enough invocations to keep a CPU's
/// threads busy, none of the workgroup barriers that llvmpipe runs slowly.
const MANY_ROWS: usize = 128;

/// Whether the row and reduction kernels should avoid workgroup barriers: by default on
/// CPU adapters (llvmpipe runs every barrier as a switch through all of a workgroup's
/// invocations), or when the barrier-free / subgroup kernels are asked for.
pub(crate) fn barrier_free(gpu: &Gpu) -> bool {
    match gpu.kernel_variant() {
        KernelVariant::Auto => gpu.is_cpu(),
        KernelVariant::Tiled | KernelVariant::TiledScalar | KernelVariant::MatrixCores => false,
        KernelVariant::BarrierFree | KernelVariant::Subgroup | KernelVariant::Texture => true,
    }
}

/// Whether `rows` rows of `len` take a thread-per-row kernel whose invocation runs
/// `iterations` loop iterations: short rows always, long ones when there are many and the
/// adapter prefers barrier-free kernels (and its loop limit allows them).
pub(crate) fn thread_per_row(gpu: &Gpu, rows: usize, len: usize, iterations: usize) -> bool {
    let fits = gpu.loop_limit().is_none_or(|l| iterations as u64 <= l);
    fits && (len <= SHORT_ROW || (rows >= MANY_ROWS && barrier_free(gpu)))
}

/// The thread-per-row entry (see [`thread_per_row`]; its invocation runs `passes` loops
/// over the row), else the workgroup-per-row one: (entry, workgroup size, grid).
pub(crate) fn row_kernel(gpu: &Gpu, rows: usize, len: usize, passes: usize, [thread, wg]: [&'static str; 2]) -> (&'static str, u32, [u32; 3]) {
    if thread_per_row(gpu, rows, len, passes * len) {
        (thread, 64, fold_groups(gpu, rows, 64))
    } else {
        (wg, (len.next_power_of_two() as u32).clamp(32, 256), fold_groups(gpu, rows, 1))
    }
}

/// Records one dispatch: `params` at binding 0, then `tensors` at bindings 1, 2, ...
pub(crate) fn launch(
    gpu: &Gpu,
    src: &'static KernelSource,
    entry: &'static str,
    constants: &[(&'static str, f64)],
    params: &[u8],
    tensors: &[&Tensor],
    groups: [u32; 3],
) -> Result<()> {
    launch_at(gpu, src, entry, constants, params, 1, tensors, groups)
}

/// Like [`launch`], with `tensors` at bindings `first`, `first + 1`, ... (for entry points
/// that use a later slice of their family's bindings).
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_at(
    gpu: &Gpu,
    src: &'static KernelSource,
    entry: &'static str,
    constants: &[(&'static str, f64)],
    params: &[u8],
    first: u32,
    tensors: &[&Tensor],
    groups: [u32; 3],
) -> Result<()> {
    launch_textures(gpu, src, entry, constants, params, first, tensors, &[], groups)
}

/// Like [`launch_at`], also binding texture views at the given bindings.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_textures(
    gpu: &Gpu,
    src: &'static KernelSource,
    entry: &'static str,
    constants: &[(&'static str, f64)],
    params: &[u8],
    first: u32,
    tensors: &[&Tensor],
    textures: &[(u32, &wgpu::TextureView)],
    groups: [u32; 3],
) -> Result<()> {
    let pipe = pipeline(gpu, src, entry, constants)?;
    let buffers = tensors.iter().map(|t| t.binding()).collect();
    let textures = textures.iter().map(|(b, v)| (*b, (*v).clone())).collect();
    gpu.0.recorder.lock().unwrap().dispatch(gpu, pipe, params, first, buffers, textures, groups)
}

/// All tensors must live on the same device and be f32.
pub(crate) fn check_f32(op: &'static str, tensors: &[&Tensor]) -> Result<()> {
    for t in tensors {
        t.expect_dtype(op, DType::F32)?;
        if !std::sync::Arc::ptr_eq(&t.gpu().0, &tensors[0].gpu().0) {
            return Err(Error::Shape { op, msg: "tensors live on different devices".into() });
        }
    }
    Ok(())
}

/// Resolves a possibly negative axis of `shape` to an index.
pub fn axis_index(shape: &[usize], ax: isize) -> Result<usize> {
    axis("axis", shape, ax)
}

/// Resolves a possibly negative axis.
pub(crate) fn axis(op: &'static str, shape: &[usize], axis: isize) -> Result<usize> {
    let r = shape.len() as isize;
    let a = if axis < 0 { r + axis } else { axis };
    if a < 0 || a >= r {
        return Err(Error::Shape { op, msg: format!("axis {axis} out of range for shape {shape:?}") });
    }
    Ok(a as usize)
}
