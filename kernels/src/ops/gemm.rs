//! Matmul, linear, conv2d and temporal conv: one GEMM family (`shaders/gemm.wgsl`).

use bytemuck::{Pod, Zeroable};

use super::check_f32;
use super::texture::{fits_texture, launch_reading, PooledTexture, TEXTURE_WIDTH};
use super::{launch, launch_textures};
use crate::error::shape_err;
use crate::shaders::{GEMM, GEMM_COOP16, GEMM_COOP8, GEMM_SUBGROUP, GEMM_TEXTURE};
use crate::{DType, Error, Gpu, KernelVariant, Result, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    a_bs: u32,
    b_bs: u32,
    c_bs: u32,
    alpha: f32,
    cin: u32,
    h: u32,
    w: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    oh: u32,
    ow: u32,
    splits: u32,
}

/// Where a bias is added.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BiasMode {
    None = 0,
    PerColumn = 1,
    PerRow = 2,
}

/// Columns per thread of gemm_cpu (CTN in gemm.wgsl); its workgroup spans rows.
const CPU_COLS: usize = 8;
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// gemm_tiled4
    Tiled,
    /// gemm_tiled (KernelVariant::TiledScalar)
    TiledScalar,
    /// gemm_sg / gemm_sg4, and gemm_tex where [`texture_operands`] allows when `textures`.
    Subgroup { textures: bool },
    Cpu,
    /// gemm_coop on T x T fragments of the matrix units (f16 inputs, f32 accumulation)
    MatrixCores { tile: u32 },
}

/// Output tile of gemm_tiled4 and gemm_tiled.
const TILE: usize = 128;

/// Which GEMM kernel runs on this device: the one `Gpu::set_kernel_variant` asks for, else
/// by the adapter's kind.
fn choose_kind(gpu: &Gpu) -> Result<Kind> {
    // GPUs: the tiled kernel, also for thin outputs (an NVIDIA H200 ran the barrier-free
    // kernel, written for CPUs, 5-15x slower there: 44 ms for the UNet's 1280-channel convs
    // on 5x8 latents, 10 ms for the VAE's 3-channel conv_out at 320x512). CPU adapters: the
    // subgroup kernel when the device allows it, else the portable barrier-free one.
    let sg = gpu.fixed_subgroup_size();
    Ok(match gpu.kernel_variant() {
        KernelVariant::Tiled => Kind::Tiled,
        KernelVariant::TiledScalar => Kind::TiledScalar,
        KernelVariant::BarrierFree => Kind::Cpu,
        KernelVariant::MatrixCores | KernelVariant::Auto if gpu.matrix_tile().is_some() => Kind::MatrixCores { tile: gpu.matrix_tile().expect("checked") },
        KernelVariant::MatrixCores => {
            return Err(Error::Device(format!("the matrix-core GEMM needs a device opened with GpuOptions::matrix_cores ({})", crate::MATRIX_CORES_ENV)))
        }
        KernelVariant::Subgroup | KernelVariant::Texture if sg.is_some() => {
            Kind::Subgroup { textures: gpu.kernel_variant() == KernelVariant::Texture }
        }
        KernelVariant::Subgroup | KernelVariant::Texture => {
            return Err(Error::Device("the subgroup GEMM needs SUBGROUP and a fixed subgroup size >= 8".into()))
        }
        KernelVariant::Auto if !gpu.is_cpu() => Kind::Tiled,
        KernelVariant::Auto if gpu.is_cpu() && sg.is_some() => Kind::Subgroup { textures: true },
        KernelVariant::Auto => Kind::Cpu,
    })
}

/// 8-row groups per subgroup in gemm_sg / gemm_sg4: as many as M fills, up to 4 (32 rows).
/// More rows share each load of B; on llvmpipe, where loads dominate, 4 groups run the
/// tiny UNet's GEMM shapes 1.9-2.5x faster than 1 (BENCHMARKS.md, session 6).
fn subgroup_row_groups(m: usize) -> usize {
    match m {
        0..=8 => 1,
        9..=16 => 2,
        _ => 4,
    }
}

/// Rows of C per subgroup tile of gemm_tex; smaller outputs take gemm_sg's fewer row groups.
const TEXTURE_TILE_ROWS: usize = 32;

/// An operand of gemm_tex: `layers` x `rows` rows of `len` floats (see
/// `shaders/gemm_texture.wgsl`).
#[derive(Clone, Copy)]
struct TextureOperand {
    layers: usize,
    rows: usize,
    len: usize,
}

/// The operands of gemm_tex when it runs this GEMM: a subgroup kernel allowed to use
/// textures, 8-lane subgroups, dense operands, more rows than gemm_sg's 16-row tiles and
/// textures within the device's limits.
fn texture_operands(gpu: &Gpu, kind: Kind, p: &Params, trans_a: bool, trans_b: bool, conv: bool) -> Option<[TextureOperand; 2]> {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    if kind != (Kind::Subgroup { textures: true }) || gpu.fixed_subgroup_size() != Some(8) || conv || m <= 16 || k == 0 {
        return None;
    }
    let layers = |bs: u32| if bs == 0 { 1 } else { p.batch as usize };
    let op = |layers, rows, len| TextureOperand { layers, rows, len };
    let a = if trans_a { op(layers(p.a_bs), k, m) } else { op(layers(p.a_bs), m, k) };
    let b = if trans_b { op(layers(p.b_bs), n, k) } else { op(layers(p.b_bs), k, n) };
    (fits_texture(gpu, a.texels()) && fits_texture(gpu, b.texels())).then_some([a, b])
}

impl TextureOperand {
    /// Texels holding the operand (rows padded to whole texels).
    fn texels(&self) -> usize {
        self.layers * self.rows * self.len.div_ceil(4)
    }
}

/// Copies an operand into an rgba32float texture laid out for gemm_tex: the buffer's bytes
/// as they are when len % 4 == 0, else through the `pack` kernel, which pads rows to whole
/// texels. Returns the texture (give it back by dropping it once the GEMM is recorded) and
/// the view gemm_tex samples.
fn operand_texture(t: &Tensor, o: TextureOperand) -> Result<(PooledTexture, wgpu::TextureView)> {
    let gpu = t.gpu();
    let texture = PooledTexture::take(gpu, o.texels(), "a GEMM operand's texture")?;
    if o.len % 4 == 0 {
        texture.copy_from(t, o.texels())?;
    } else {
        // pack: p.m rows (all layers) of p.k floats, p.n texels each
        let p = Params { m: (o.layers * o.rows) as u32, n: o.len.div_ceil(4) as u32, k: o.len as u32, ..Default::default() };
        let storage = texture.view(wgpu::TextureUsages::STORAGE_BINDING);
        let groups = super::fold_groups(gpu, o.texels(), 64);
        launch_textures(gpu, &GEMM_TEXTURE, "pack", &[("TEX_W", TEXTURE_WIDTH as f64)], bytemuck::bytes_of(&p), 1, &[t], &[(7, &storage)], groups)?;
    }
    let sampled = texture.view(wgpu::TextureUsages::TEXTURE_BINDING);
    Ok((texture, sampled))
}

#[allow(clippy::too_many_arguments)]
fn dispatch(
    gpu: &Gpu,
    kind: Kind,
    p: Params,
    trans_a: bool,
    trans_b: bool,
    conv: bool,
    bias: (BiasMode, Option<&Tensor>),
    accumulate: bool,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
) -> Result<()> {
    let (m, n, batch) = (p.m as usize, p.n as usize, p.batch as usize);
    if m == 0 || n == 0 || batch == 0 {
        return Ok(());
    }
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    if batch > max {
        return Err(Error::Shape { op: "matmul", msg: format!("batch {batch} exceeds the device's {max} workgroups per dimension") });
    }
    // Loop iterations of one invocation (see Gpu::loop_limit): ~645 per 8-deep k slice in
    // gemm_tiled, < 300 per 16-deep slice in gemm_tiled4 (its inner loops are over vec4s),
    // one per k (plus the epilogue) in the barrier-free kernels.
    if let Some(limit) = gpu.loop_limit() {
        let k = p.k as u64;
        let iterations = match kind {
            Kind::Tiled => 300 * k.div_ceil(16) + 100,
            Kind::MatrixCores { .. } => 120 * k.div_ceil(16) + 200,
            Kind::TiledScalar => 645 * k.div_ceil(8) + 136,
            Kind::Subgroup { .. } | Kind::Cpu => k + 40,
        };
        if iterations > limit {
            return Err(Error::Shape {
                op: "matmul",
                msg: format!(
                    "inner dimension K = {k} needs {iterations} loop iterations per invocation, more than this \
                     device runs ({limit}, llvmpipe); use the default kernel variant or split K"
                ),
            });
        }
    }
    let bias_t = bias.1.unwrap_or(a); // unread when BIAS == 0
    let mut constants = vec![
        ("TRANS_A", trans_a as u32 as f64),
        ("TRANS_B", trans_b as u32 as f64),
        ("B_MODE", conv as u32 as f64),
        ("BIAS", bias.0 as u32 as f64),
        ("ACCUMULATE", accumulate as u32 as f64),
    ];
    if let Some([ta, tb]) = texture_operands(gpu, kind, &p, trans_a, trans_b, conv) {
        // 1, 2, 4 or 8 subgroups (fewer pipeline variants to compile; at most the last
        // workgroup half idle)
        let nsg = n.div_ceil(32).next_power_of_two().min(8);
        constants.push(("NSG", nsg as f64));
        constants.push(("TEX_W", TEXTURE_WIDTH as f64));
        // only gemm_tex stores through store4: elsewhere the constant would compile
        // identical pipelines twice
        constants.push(("C_VEC4", (n % 4 == 0 && p.c_bs % 4 == 0) as u32 as f64));
        let groups = [n.div_ceil(32 * nsg) as u32, m.div_ceil(TEXTURE_TILE_ROWS) as u32, batch as u32];
        if groups[0] as usize > max || groups[1] as usize > max {
            return Err(Error::Shape { op: "matmul", msg: format!("output {m}x{n} needs a grid {groups:?} beyond {max}") });
        }
        let (_ta, va) = operand_texture(a, ta)?;
        let (_tb, vb) = operand_texture(b, tb)?;
        // the textures go back to the reuse list after the dispatch is recorded
        note_shape(gpu, &p);
        return launch_textures(gpu, &GEMM_TEXTURE, "gemm_tex", &constants, bytemuck::bytes_of(&p), 3, &[bias_t, c], &[(5, &va), (6, &vb)], groups);
    }
    let fold = kind == Kind::Tiled && conv && fold_columns(&p);
    let p = if fold { Params { n: p.n * p.batch, batch: 1, ..p } } else { p };
    let (src, entry, groups) = match kind {
        Kind::Tiled => {
            constants.push(("FOLD", fold as u32 as f64));
            let splits = k_splits(gpu, &p);
            if splits > 1 {
                return split_k(gpu, (&GEMM, "gemm_tiled4"), p, splits, &constants, bias, accumulate, [a, b, c]);
            }
            constants.push(("C_VEC4", (p.n % 4 == 0 && p.c_bs % 4 == 0) as u32 as f64));
            (&GEMM, "gemm_tiled4", [(p.n as usize).div_ceil(TILE) as u32, m.div_ceil(TILE) as u32, p.batch])
        }
        Kind::MatrixCores { tile } => {
            let src = if tile == 16 { &GEMM_COOP16 } else { &GEMM_COOP8 };
            let splits = k_splits(gpu, &p);
            if splits > 1 {
                return split_k(gpu, (src, "gemm_coop"), p, splits, &constants, bias, accumulate, [a, b, c]);
            }
            constants.push(("C_VEC4", (p.n % 4 == 0 && p.c_bs % 4 == 0) as u32 as f64));
            (src, "gemm_coop", [n.div_ceil(TILE) as u32, m.div_ceil(TILE) as u32, batch as u32])
        }
        Kind::TiledScalar => (&GEMM, "gemm_tiled", [n.div_ceil(TILE) as u32, m.div_ceil(TILE) as u32, batch as u32]),
        Kind::Subgroup { .. } => {
            let sg = gpu.fixed_subgroup_size().expect("checked by choose_kind") as usize;
            let nsg = n.div_ceil(4 * sg).clamp(1, 8);
            let row_groups = subgroup_row_groups(m);
            constants.push(("SG", sg as f64));
            constants.push(("NSG", nsg as f64));
            constants.push(("ROW_GROUPS", row_groups as f64));
            let vec_k = !trans_a && trans_b && !conv && p.k % 4 == 0;
            let entry = if vec_k { "gemm_sg4" } else { "gemm_sg" };
            (&GEMM_SUBGROUP, entry, [n.div_ceil(4 * sg * nsg) as u32, m.div_ceil(8 * row_groups) as u32, batch as u32])
        }
        Kind::Cpu => {
            let wg = m.next_power_of_two().clamp(8, 64);
            constants.push(("CPU_WG", wg as f64));
            constants.push(("VEC_A", (!trans_a && p.k % 4 == 0) as u32 as f64));
            (&GEMM, "gemm_cpu", [n.div_ceil(CPU_COLS) as u32, m.div_ceil(wg) as u32, batch as u32])
        }
    };
    if groups[0] as usize > max || groups[1] as usize > max {
        return Err(Error::Shape { op: "matmul", msg: format!("output {m}x{n} needs a grid {groups:?} beyond {max}") });
    }
    note_shape(gpu, &p);
    launch(gpu, src, entry, &constants, bytemuck::bytes_of(&p), &[a, b, bias_t, c], groups)
}

/// gemm_tiled4 grids of fewer workgroups than this split K into about as many (a few per
/// compute unit of a large GPU; an H200 has 132). On the H200 the UNet's deepest convs
/// (1280 channels on 5 x 8 latents, K = 11520: 160 workgroups) ran 1.4x faster split in four,
/// its temporal convs there (50) 2.9x, 1024^3 and 640 x 1280 x 1280 matmuls 1.6x and 1.8x,
/// and a UNet call 869 -> 811 ms; a 2048^3 matmul (256 workgroups, one wave) ran ~5%
/// slower split in two, but with a 256-workgroup threshold the UNet call took 845 ms.
pub const SPLIT_K_WORKGROUPS: usize = 512;
/// Least K per split (16 slices of gemm_tiled4).
const SPLIT_K_MIN_DEPTH: usize = 256;
/// Largest buffer of split-K partial sums.
const SPLIT_K_MAX_BYTES: usize = 256 << 20;

/// Whether gemm_tiled4 runs a batched convolution with its columns folded over the images
/// (FOLD in gemm.wgsl): when 128-column tiles of one image's P pixels would stay over 10%
/// empty, as at the UNet's deepest levels (P = 40 or 160 per frame: 69% and 38% empty).
fn fold_columns(p: &Params) -> bool {
    let pixels = p.n as usize;
    p.batch > 1 && pixels.div_ceil(TILE) * TILE * 10 > pixels * 11
}

/// How many K chunks gemm_tiled4 runs this GEMM in (1: unsplit).
fn k_splits(gpu: &Gpu, p: &Params) -> usize {
    let (m, n, k, batch) = (p.m as usize, p.n as usize, p.k as usize, p.batch as usize);
    let groups = n.div_ceil(TILE) * m.div_ceil(TILE) * batch;
    if groups >= SPLIT_K_WORKGROUPS {
        return 1;
    }
    let max_z = gpu.limits().max_compute_workgroups_per_dimension as usize / batch.max(1);
    let by_memory = SPLIT_K_MAX_BYTES / (4 * m * n * batch).max(1);
    SPLIT_K_WORKGROUPS.div_ceil(groups).min(k / SPLIT_K_MIN_DEPTH).min(by_memory).min(max_z).max(1)
}

/// A GEMM as `splits` chunks of K: `kernel` (gemm_tiled4 or gemm_coop) writes each chunk's
/// partial product (scaled, no bias) to a (batch * splits, M, N) buffer, then sum_splits adds
/// the chunks, the bias and, with `accumulate`, C into C.
#[allow(clippy::too_many_arguments)]
fn split_k(
    gpu: &Gpu,
    kernel: (&'static crate::registry::KernelSource, &'static str),
    p: Params,
    splits: usize,
    constants: &[(&'static str, f64)],
    bias: (BiasMode, Option<&Tensor>),
    accumulate: bool,
    [a, b, c]: [&Tensor; 3],
) -> Result<()> {
    let (m, n, batch) = (p.m as usize, p.n as usize, p.batch as usize);
    let partials = Tensor::empty(gpu, &[batch * splits, m, n], DType::F32, "split-K partial sums")?;
    // the partials are plain (M, N) matrices; with FOLD their columns are C's folded ones
    let mut gemm_constants: Vec<_> = constants.iter().filter(|(k, _)| *k != "BIAS" && *k != "ACCUMULATE").copied().collect();
    gemm_constants.extend([("BIAS", 0.0), ("ACCUMULATE", 0.0), ("C_VEC4", (n % 4 == 0) as u32 as f64)]);
    let split = Params { splits: splits as u32, c_bs: (m * n) as u32, ..p };
    note_shape(gpu, &p);
    let groups = [n.div_ceil(TILE) as u32, m.div_ceil(TILE) as u32, (batch * splits) as u32];
    launch(gpu, kernel.0, kernel.1, &gemm_constants, bytemuck::bytes_of(&split), &[a, b, a, &partials], groups)?;
    let bias_t = bias.1.unwrap_or(&partials); // unread when BIAS == 0
    let fold = constants.iter().any(|&(k, v)| k == "FOLD" && v != 0.0);
    let sum_constants = [("BIAS", bias.0 as u32 as f64), ("ACCUMULATE", accumulate as u32 as f64), ("FOLD", fold as u32 as f64)];
    let mut groups = super::fold_groups(gpu, m * n, 256);
    groups[2] = batch as u32;
    let sum = Params { splits: splits as u32, ..p };
    super::launch_at(gpu, &GEMM, "sum_splits", &sum_constants, bytemuck::bytes_of(&sum), 2, &[&partials, bias_t, c], groups)
}

/// While profiling: the GEMM's M x K x N (and batch) and FLOPs for its profile row.
fn note_shape(gpu: &Gpu, p: &Params) {
    gpu.profile_note(|| {
        let batch = if p.batch > 1 { format!(" x{}", p.batch) } else { String::new() };
        (format!("{}x{}x{}{batch}", p.m, p.k, p.n), 2.0 * p.m as f64 * p.n as f64 * p.k as f64 * p.batch as f64)
    });
}

/// Options of [`matmul_ex`].
#[derive(Clone, Copy, Debug)]
pub struct Matmul<'a> {
    /// Use A^T: `a` is stored (..., K, M).
    pub trans_a: bool,
    /// Use B^T: `b` is stored (..., N, K).
    pub trans_b: bool,
    /// Scale of the product.
    pub alpha: f32,
    /// Added to every row: shape `[N]`.
    pub bias: Option<&'a Tensor>,
}

impl Default for Matmul<'_> {
    fn default() -> Self {
        Matmul { trans_a: false, trans_b: false, alpha: 1.0, bias: None }
    }
}

fn mat_dims<'t>(op: &'static str, t: &'t Tensor, trans: bool) -> Result<(usize, usize, &'t [usize])> {
    if t.rank() < 2 {
        return shape_err(op, format!("operand of shape {:?} is not a matrix", t.shape()));
    }
    let r = t.rank();
    let (rows, cols) = (t.shape()[r - 2], t.shape()[r - 1]);
    Ok(if trans { (cols, rows, &t.shape()[..r - 2]) } else { (rows, cols, &t.shape()[..r - 2]) })
}

/// Batched matmul: a (..., M, K) x b (..., K, N) -> (..., M, N), with optional transposes,
/// scale and bias. Batch dims must be equal, or one side has none (a shared matrix).
pub fn matmul_ex(a: &Tensor, b: &Tensor, o: Matmul) -> Result<Tensor> {
    let op = "matmul";
    check_f32(op, &[a, b])?;
    let (m, k, ba) = mat_dims(op, a, o.trans_a)?;
    let (k2, n, bb) = mat_dims(op, b, o.trans_b)?;
    if k != k2 {
        return shape_err(
            op,
            format!("inner dims differ: a {:?} (trans {}) has K={k}, b {:?} (trans {}) has K={k2}", a.shape(), o.trans_a, b.shape(), o.trans_b),
        );
    }
    let (pa, pb): (usize, usize) = (ba.iter().product(), bb.iter().product());
    let batch_shape = match (ba.is_empty() || pa == 1, bb.is_empty() || pb == 1) {
        _ if ba == bb => ba.to_vec(),
        (_, true) => ba.to_vec(),
        (true, _) => bb.to_vec(),
        _ => return shape_err(op, format!("batch dims of {:?} and {:?} differ", a.shape(), b.shape())),
    };
    let batch: usize = batch_shape.iter().product();
    if let Some(bias) = o.bias {
        check_f32(op, &[a, bias])?;
        if bias.shape() != [n] {
            return shape_err(op, format!("bias {:?} must be [{n}]", bias.shape()));
        }
    }
    let mut shape = batch_shape;
    shape.extend([m, n]);
    if k == 0 {
        return super::fill(a.gpu(), &shape, 0.0).and_then(|z| match o.bias {
            Some(bv) => super::add(&z, bv),
            None => Ok(z),
        });
    }
    let c = Tensor::empty(a.gpu(), &shape, DType::F32, "matmul output")?;
    let p = Params {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        batch: batch as u32,
        a_bs: if pa == 1 { 0 } else { (m * k) as u32 },
        b_bs: if pb == 1 { 0 } else { (k * n) as u32 },
        c_bs: (m * n) as u32,
        alpha: o.alpha,
        ..Default::default()
    };
    let bias = match o.bias {
        Some(t) => (BiasMode::PerColumn, Some(t)),
        None => (BiasMode::None, None),
    };
    let gpu = a.gpu();
    let kind = choose_kind(gpu)?;
    // gemm_sg is fastest with both operands K-contiguous (A (M, K), B stored (N, K)):
    // transposing an operand costs O(MK) or O(NK) against O(MNK) of compute. gemm_tex
    // reads any layout from its textures.
    let textures = texture_operands(gpu, kind, &p, o.trans_a, o.trans_b, false).is_some();
    let normalise = matches!(kind, Kind::Subgroup { .. }) && !textures && k % 4 == 0 && m >= 16 && n >= 16;
    let (a_t, ta) = if normalise && o.trans_a { (super::transpose(a, -1, -2)?, false) } else { (a.clone(), o.trans_a) };
    let (b_t, tb) = if normalise && !o.trans_b { (super::transpose(b, -1, -2)?, true) } else { (b.clone(), o.trans_b) };
    dispatch(gpu, kind, p, ta, tb, false, bias, false, &a_t, &b_t, &c)?;
    Ok(c)
}

/// a (..., M, K) x b (..., K, N).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_ex(a, b, Matmul::default())
}

/// x (..., in) W^T + bias with W (out, in) as stored by PyTorch's nn.Linear.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    check_f32("linear", &[x, w])?;
    if w.rank() != 2 || x.rank() == 0 || x.dim(-1) != w.shape()[1] {
        return shape_err("linear", format!("input {:?} does not match weight {:?} (out, in)", x.shape(), w.shape()));
    }
    let rows = x.numel() / w.shape()[1].max(1);
    let x2 = x.reshape(&[rows, w.shape()[1]])?;
    let y = matmul_ex(&x2, w, Matmul { trans_b: true, bias, ..Default::default() })?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("rank >= 1") = w.shape()[0];
    y.reshape(&shape)
}

/// Geometry of [`conv2d`]: stride (h, w) and padding (top, bottom, left, right).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub stride: (usize, usize),
    pub padding: (usize, usize, usize, usize),
}

impl Conv2d {
    /// Stride s and symmetric padding p on both axes.
    pub fn new(stride: usize, padding: usize) -> Conv2d {
        Conv2d { stride: (stride, stride), padding: (padding, padding, padding, padding) }
    }
}

/// Checks a conv2d's operands and returns its GEMM parameters (A = weights (O, K), B =
/// im2col of one image, C = output (O, OH*OW)) and the output size.
fn conv_params(op: &'static str, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, g: Conv2d) -> Result<(Params, usize, usize)> {
    check_f32(op, &[x, w])?;
    if x.rank() != 4 || w.rank() != 4 || x.shape()[1] != w.shape()[1] {
        return shape_err(op, format!("input {:?} (N, C, H, W) does not match weight {:?} (O, C, KH, KW)", x.shape(), w.shape()));
    }
    let [n, c, h, wd] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
    let [o, _, kh, kw] = [w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]];
    let (sh, sw) = g.stride;
    let (pt, pb, pl, pr) = g.padding;
    if sh == 0 || sw == 0 || h + pt + pb < kh || wd + pl + pr < kw {
        return shape_err(op, format!("kernel {kh}x{kw} with {g:?} does not fit input {:?}", x.shape()));
    }
    let (oh, ow) = ((h + pt + pb - kh) / sh + 1, (wd + pl + pr - kw) / sw + 1);
    if let Some(bias) = bias {
        check_f32(op, &[x, bias])?;
        if bias.shape() != [o] {
            return shape_err(op, format!("bias {:?} must be [{o}]", bias.shape()));
        }
    }
    let p = Params {
        m: o as u32,
        n: (oh * ow) as u32,
        k: (c * kh * kw) as u32,
        batch: n as u32,
        a_bs: 0,
        b_bs: (c * h * wd) as u32,
        c_bs: (o * oh * ow) as u32,
        alpha: 1.0,
        cin: c as u32,
        h: h as u32,
        w: wd as u32,
        kh: kh as u32,
        kw: kw as u32,
        sh: sh as u32,
        sw: sw as u32,
        ph: pt as u32,
        pw: pl as u32,
        oh: oh as u32,
        ow: ow as u32,
        splits: 0,
    };
    Ok((p, oh, ow))
}

/// Layouts of a conv2d's im2col matrix (K = C*KH*KW, P = OH*OW).
#[derive(Clone, Copy, PartialEq)]
enum Columns {
    /// (N, P, K), K-contiguous: the forward GEMM's B transposed.
    PixelMajor,
    /// (N, K, P): the forward GEMM's B as it is (P % 4 == 0 for the vec4 kernel).
    ImageKMajor,
    /// (K, N*P): the weight gradient's operand.
    KMajor,
}

/// The im2col matrix of a conv2d's input in `layout`.
fn im2col(x: &Tensor, p: &Params, layout: Columns) -> Result<Tensor> {
    let gpu = x.gpu();
    let (batch, pix, k) = (p.batch as usize, p.n as usize, p.k as usize);
    let shape = match layout {
        Columns::PixelMajor => vec![batch, pix, k],
        Columns::ImageKMajor => vec![batch, k, pix],
        Columns::KMajor => vec![k, batch * pix],
    };
    let cols = Tensor::empty(gpu, &shape, DType::F32, "conv2d im2col")?;
    // vec4 stores where the layout allows (4 k of one pixel, or 4 pixels of one k), the
    // image through a texture on CPU adapters
    let flag = |on: bool| on as u32 as f64;
    let (entry, threads, constants) = match layout {
        Columns::PixelMajor if k % 4 == 0 => ("im2col4", pix * (p.cin as usize).div_ceil(4), vec![]),
        Columns::ImageKMajor | Columns::KMajor if pix % 4 == 0 => {
            // QUADS: a pixel quad lies in one output row and reads 4 consecutive inputs
            let quads = p.sw == 1 && p.ow % 4 == 0 && p.w % 4 == 0;
            ("im2col4_kmajor", pix / 4 * p.cin as usize, vec![("QUADS", flag(quads)), ("PER_IMAGE", flag(layout == Columns::ImageKMajor))])
        }
        Columns::ImageKMajor => unreachable!("conv2d takes the per-image K-major layout only when P % 4 == 0"),
        Columns::PixelMajor | Columns::KMajor => ("im2col", pix * p.cin as usize, vec![("KMAJOR", flag(layout == Columns::KMajor))]),
    };
    let mut groups = super::fold_groups(gpu, threads, 256);
    groups[2] = batch as u32;
    launch_reading(gpu, &GEMM, entry, &constants, bytemuck::bytes_of(p), 2, &[x, &cols], &[Some(x)], groups)?;
    Ok(cols)
}

/// 2-D cross-correlation (PyTorch's conv2d): x (N, C, H, W), w (O, C, KH, KW), bias `[O]`
/// -> (N, O, OH, OW).
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, g: Conv2d) -> Result<Tensor> {
    let (p, oh, ow) = conv_params("conv2d", x, w, bias, g)?;
    let (n, o, k) = (x.shape()[0], w.shape()[0], p.k as usize);
    let gpu = x.gpu();
    let kind = choose_kind(gpu)?;
    if let Some(tile) = super::winograd::tile(gpu, kind == Kind::Tiled, w, g.stride, (oh, ow)).filter(|_| n > 0) {
        return super::winograd::conv2d_winograd(tile, x, w, bias, g.padding);
    }
    // CPU adapters: materialised columns for the vec4 GEMM, a few images at a time within
    // CONV_COLUMNS_MAX_BYTES; other devices: implicit GEMM. The columns are (N, K, P) when
    // P % 4 == 0, the GEMM reads them from textures (more than 16 output channels) and an
    // image's columns hold at most IMAGE_K_MAJOR_MAX elements: 4 pixels of a tap per vec4,
    // read as texel pairs (im2col 2.3x faster than (N, P, K) on the tiny UNet's 8x8 convs;
    // whole convs 1.1-1.5x faster up to 128 channels at 40x64). Else K-contiguous (N, P, K):
    // with N-contiguous B the texture GEMM slows down as N and K grow, and at 256-320
    // channels on 40x64 the (N, P, K) conv was as fast or up to 1.2x faster.
    let image_k_major = oh * ow % 4 == 0 && k * oh * ow <= IMAGE_K_MAJOR_MAX && o > 16;
    // (one image's columns must fit in a binding: else the implicit GEMM, e.g. 64 channels
    // on 512x512 under llvmpipe's 128 MiB)
    let fits = (oh * ow * k * 4) as u64 <= gpu.max_binding_bytes();
    let columns = matches!(kind, Kind::Subgroup { .. }) && (k % 4 == 0 || image_k_major) && o >= 16 && fits;
    let chunk = (CONV_COLUMNS_MAX_BYTES / (oh * ow * k * 4).max(1)).clamp(1, n.max(1));
    if columns && chunk < n {
        let parts = (0..n).step_by(chunk).map(|i0| conv2d(&super::slice(x, 0, i0, chunk.min(n - i0))?, w, bias, g)).collect::<Result<Vec<_>>>()?;
        return super::concat(&parts.iter().collect::<Vec<_>>(), 0);
    }
    let y = Tensor::empty(gpu, &[n, o, oh, ow], DType::F32, "conv2d output")?;
    let bias = match bias {
        Some(t) => (BiasMode::PerRow, Some(t)),
        None => (BiasMode::None, None),
    };
    if columns {
        let layout = if image_k_major { Columns::ImageKMajor } else { Columns::PixelMajor };
        let cols = im2col(x, &p, layout)?;
        let p2 = Params { b_bs: (oh * ow * k) as u32, ..p };
        dispatch(gpu, kind, p2, false, !image_k_major, false, bias, false, w, &cols, &y)?;
    } else {
        dispatch(gpu, kind, p, false, false, true, bias, false, w, x, &y)?;
    }
    Ok(y)
}

/// Most elements of one image's (K, P) columns in [`conv2d`]'s K-major layout on CPU
/// adapters (128 channels 3x3 at 40x64; see there).
const IMAGE_K_MAJOR_MAX: usize = 3 << 20;

/// Largest column matrix (im2col of a conv's input, or the input gradient's columns) that
/// [`conv2d`] on a CPU adapter and [`conv2d_backward`] materialise at once: bigger batches
/// are processed a few images at a time (at least one), bounding transient memory. 32 MiB
/// keeps most convs of small videos to one dispatch: with 4 MiB the tiny VAE's 32x32
/// convs ran one frame at a time, and the slices and concats made sampling 4% slower
/// (256 KiB, which split even the tiny teacher's convs per frame, ~6% more).
pub const CONV_COLUMNS_MAX_BYTES: usize = 32 << 20;

/// Gradients of [`conv2d`] for the output gradient `dy` (N, O, OH, OW): (dx, dw, dbias),
/// each computed only when asked for.
pub fn conv2d_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    g: Conv2d,
    need: (bool, bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (p, oh, ow) = conv_params("conv2d_backward", x, w, None, g)?;
    let (n, o) = (x.shape()[0], w.shape()[0]);
    if dy.shape() != [n, o, oh, ow] {
        return shape_err("conv2d_backward", format!("dy {:?} is not the output shape {:?}", dy.shape(), [n, o, oh, ow]));
    }
    let per_image = p.k as usize * oh * ow * 4;
    let chunk = (CONV_COLUMNS_MAX_BYTES / per_image.max(1)).clamp(1, n.max(1));
    let db = if need.2 { Some(super::sum(&super::sum(&dy.reshape(&[n, o, oh * ow])?, 2)?, 0)?) } else { None };
    // the input gradient through Winograd where it applies (no columns then), the weight
    // gradient through the columns below
    let tile = super::winograd::input_gradient_tile(x.gpu(), choose_kind(x.gpu())? == Kind::Tiled, w, g.stride, g.padding, (x.shape()[2], x.shape()[3]));
    if let Some(tile) = tile.filter(|_| need.0 && n > 0) {
        let dx = super::winograd::conv2d_input_gradient(tile, dy, w, g.padding)?;
        let (_, dw, _) = if need.1 { conv2d_backward(x, w, dy, g, (false, true, false))? } else { (None, None, None) };
        return Ok((Some(dx), dw, db));
    }
    if chunk >= n {
        let (dx, dw) = conv2d_backward_columns(x, w, dy, g, need)?;
        return Ok((dx, dw, db));
    }
    let (mut dxs, mut dw) = (Vec::new(), None::<Tensor>);
    for i0 in (0..n).step_by(chunk) {
        let m = chunk.min(n - i0);
        let (dxc, dwc) = conv2d_backward_columns(&super::slice(x, 0, i0, m)?, w, &super::slice(dy, 0, i0, m)?, g, need)?;
        dxs.extend(dxc);
        if let Some(c) = dwc {
            dw = Some(match dw {
                Some(a) if a.owns_buffer() => {
                    super::add_assign(&a, &c)?;
                    a
                }
                Some(a) => super::add(&a, &c)?,
                None => c,
            });
        }
    }
    let dx = if need.0 { Some(super::concat(&dxs.iter().collect::<Vec<_>>(), 0)?) } else { None };
    Ok((dx, dw, db))
}

/// (dx, dw) of a conv2d through materialised columns of all images of `x` at once.
fn conv2d_backward_columns(x: &Tensor, w: &Tensor, dy: &Tensor, g: Conv2d, need: (bool, bool, bool)) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (p, oh, ow) = conv_params("conv2d_backward", x, w, None, g)?;
    let (n, o, k, pix) = (x.shape()[0], w.shape()[0], p.k as usize, oh * ow);
    let gpu = x.gpu();
    let dy3 = dy.reshape(&[n, o, pix])?;
    let dx = if need.0 {
        // dcols = W^T dy per image, then fold the columns back onto the image.
        let w2 = w.reshape(&[o, k])?;
        let dcols = matmul_ex(&w2, &dy3, Matmul { trans_a: true, ..Default::default() })?;
        let dx = Tensor::empty(gpu, x.shape(), DType::F32, "conv2d dx")?;
        let p2 = Params { b_bs: (k * pix) as u32, ..p };
        // 4 elements of a row per thread (vec4 store) where the rows allow, reading dcols
        // as aligned quads where the window steps by 1 along rows of whole quads
        let (entry, per_thread) = if p.w % 4 == 0 { ("col2im4", 4) } else { ("col2im", 1) };
        let quads = per_thread == 4 && p.sw == 1 && p.ow % 4 == 0;
        let constants: &[(&str, f64)] = if per_thread == 4 { &[("QUADS", quads as u32 as f64)] } else { &[] };
        let mut groups = super::fold_groups(gpu, x.numel() / n.max(1) / per_thread, 256);
        groups[2] = n as u32;
        if n > 0 {
            launch_reading(gpu, &GEMM, entry, constants, bytemuck::bytes_of(&p2), 2, &[&dcols, &dx], &[Some(&dcols)], groups)?;
        }
        Some(dx)
    } else {
        None
    };
    let dw = if need.1 {
        // dW (O, K) = dy (O, N*P) x cols (N*P, K), with cols stored K-major (K, N*P) so
        // that both operands are contiguous along the N*P contraction
        let cols_t = im2col(x, &p, Columns::KMajor)?;
        let dyt = if n == 1 { dy3.reshape(&[o, pix])? } else { super::permute(&dy3, &[1, 0, 2])?.reshape(&[o, n * pix])? };
        Some(matmul_ex(&dyt, &cols_t, Matmul { trans_b: true, ..Default::default() })?.reshape(w.shape())?)
    } else {
        None
    };
    Ok((dx, dw))
}

/// VideoCrafter's temporal convolution: nn.Conv3d with kernel (3, 1, 1) and padding
/// (1, 0, 0) over x (B, C, F, H, W) with w (O, C, 3, 1, 1) -> (B, O, F, H, W).
/// Computed as a (3, 1) conv2d over (B, C, F, H*W).
pub fn temporal_conv(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let op = "temporal_conv";
    check_f32(op, &[x, w])?;
    if x.rank() != 5 || w.rank() != 5 || w.shape()[2..] != [3, 1, 1] || w.shape()[1] != x.shape()[1] {
        return shape_err(op, format!("input {:?} (B, C, F, H, W) does not match weight {:?} (O, C, 3, 1, 1)", x.shape(), w.shape()));
    }
    let [b, c, f, h, wd] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3], x.shape()[4]];
    let o = w.shape()[0];
    let x4 = x.reshape(&[b, c, f, h * wd])?;
    let w4 = w.reshape(&[o, c, 3, 1])?;
    let y = conv2d(&x4, &w4, bias, Conv2d { stride: (1, 1), padding: (1, 1, 0, 0) })?;
    y.reshape(&[b, o, f, h, wd])
}
