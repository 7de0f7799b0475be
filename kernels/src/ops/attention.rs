//! Scaled-dot-product attention: fused kernels (`shaders/attention.wgsl`, online softmax,
//! FlashAttention-2-style backward) and a matmul/softmax path over materialised scores,
//! taken for head dims above the fused kernel's 128, beyond llvmpipe's loop budget, on CPU
//! adapters while the scores are small and on GPUs for long sequences (see
//! [`crate::AttentionPath`]), in chunks of heads where the scores would be large.

use bytemuck::{Pod, Zeroable};

use super::{check_f32, launch};
use crate::error::shape_err;
use crate::shaders::ATTENTION;
use crate::{DType, Error, Result, Tensor};


#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    bh: u32,
    lq: u32,
    lk: u32,
    d4: u32,
    dv4: u32,
    scale: f32,
    kv_rep: u32,
    causal: u32,
}

/// Largest head dim of the fused kernel (4 * MAX_D4 in attention.wgsl); head dims must
/// also be multiples of 4 there. Other shapes take the matmul/softmax path.
pub const FUSED_MAX_D: usize = 128;
const ROWS_PER_GROUP: usize = 64;

/// Largest score matrix (BH x Lq x Lk f32) that [`crate::AttentionPath::Auto`]
/// materialises on a CPU adapter (outside [`crate::Gpu::memory_lean`] scopes).
pub const CPU_MATERIALISED_SCORES_MAX_BYTES: usize = 64 << 20;

/// Largest score matrix that [`crate::AttentionPath::Auto`] materialises on a CPU adapter
/// inside [`crate::Gpu::memory_lean`] scopes: the tiny models' attention in recomputed
/// blocks (motion guidance's backward, `train --recompute`), where llvmpipe ran the fused
/// kernel 2-7x slower (8192 heads of 8 frames with head dim 16: 205 vs 30 ms).
pub const LEAN_CPU_MATERIALISED_SCORES_MAX_BYTES: usize = 8 << 20;

/// Shortest query and key lengths that [`crate::AttentionPath::Auto`] materialises on a GPU:
/// there the tiled GEMMs and softmax rows ran the UNet's spatial self-attention (2560
/// tokens, head dim 64) several times faster than the fused kernel, whose threads each
/// stream every key and value of their row (~2 TFLOP/s on an H200); cross-attention to
/// 77 text tokens and temporal attention over 16 frames stay fused (thin GEMM tiles).
pub const GPU_MATERIALISE_MIN_LEN: usize = 256;

/// Most bytes of scores the materialised path holds at once: larger batches of heads run
/// in chunks of whole K/V batches (see [`attention`]).
pub const MATERIALISED_CHUNK_BYTES: usize = 256 << 20;

/// Does attention of this size take the materialised path by the device's
/// [`crate::AttentionPath`] (the fused kernels' own limits are checked separately)?
pub fn materialises_scores(gpu: &crate::Gpu, bh: usize, lq: usize, lk: usize) -> bool {
    match gpu.attention_path() {
        crate::AttentionPath::Fused => false,
        crate::AttentionPath::Materialised => true,
        crate::AttentionPath::Auto if gpu.is_memory_lean() => gpu.is_cpu() && bh * lq * lk * 4 <= LEAN_CPU_MATERIALISED_SCORES_MAX_BYTES,
        crate::AttentionPath::Auto if gpu.is_cpu() => bh * lq * lk * 4 <= CPU_MATERIALISED_SCORES_MAX_BYTES,
        crate::AttentionPath::Auto => lq >= GPU_MATERIALISE_MIN_LEN && lk >= GPU_MATERIALISE_MIN_LEN,
    }
}

/// Query batches per chunk of the materialised path: whole groups of `rep` (the query
/// batches one K/V batch serves), `buffers` score matrices within
/// [`MATERIALISED_CHUNK_BYTES`] and each within the device's binding limit, at least one
/// group.
fn materialised_chunk(gpu: &crate::Gpu, bh: usize, rep: usize, lq: usize, lk: usize, buffers: usize) -> usize {
    let group = rep * lq * lk * 4;
    let groups = (MATERIALISED_CHUNK_BYTES / (buffers * group).max(1)).min(gpu.max_binding_bytes() as usize / group.max(1));
    (groups.max(1) * rep).min(bh)
}

/// Runs `f` on chunks of `per` query batches (and the K/V batches serving them) and
/// concatenates each of its outputs along the batch axis.
fn in_batch_chunks<const N: usize>(
    tensors: (&Tensor, &Tensor, &Tensor),
    per_query: &[&Tensor],
    per: usize,
    rep: usize,
    f: impl Fn(&Tensor, &Tensor, &Tensor, &[Tensor]) -> Result<[Option<Tensor>; N]>,
) -> Result<[Option<Tensor>; N]> {
    let (q, k, v) = tensors;
    let bh = q.shape()[0];
    let mut parts: Vec<[Option<Tensor>; N]> = Vec::new();
    for s in (0..bh).step_by(per) {
        let n = per.min(bh - s);
        let (ks, vs) = (super::slice(k, 0, s / rep, n / rep)?, super::slice(v, 0, s / rep, n / rep)?);
        let extra = per_query.iter().map(|t| super::slice(t, 0, s, n)).collect::<Result<Vec<_>>>()?;
        parts.push(f(&super::slice(q, 0, s, n)?, &ks, &vs, &extra)?);
    }
    let mut out: [Option<Tensor>; N] = std::array::from_fn(|_| None);
    for (i, o) in out.iter_mut().enumerate() {
        let xs: Vec<&Tensor> = parts.iter().filter_map(|p| p[i].as_ref()).collect();
        if xs.len() == parts.len() {
            *o = Some(super::concat(&xs, 0)?);
        }
    }
    Ok(out)
}

/// Outputs of [`attention`].
#[derive(Debug)]
pub struct Attention {
    /// (BH, Lq, Dv)
    pub out: Tensor,
    /// (BH, Lq): log-sum-exp of each row of scaled scores, for the backward pass.
    pub lse: Tensor,
    /// (BH, Lq, Lk) softmax probabilities, when asked for.
    pub probs: Option<Tensor>,
}

/// softmax(scale q k^T) v for q (BH, Lq, D), k (BH/r, Lk, D), v (BH/r, Lk, Dv): each K/V
/// batch serves r consecutive query batches (e.g. one text context for every frame).
/// `capture` also returns the probability matrix.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, capture: bool) -> Result<Attention> {
    attention_masked(q, k, v, scale, capture, false)
}

/// [`attention`] with an optional causal mask (query i sees keys 0..=i; needs Lq == Lk).
pub fn attention_masked(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, capture: bool, causal: bool) -> Result<Attention> {
    let op = "attention";
    check_f32(op, &[q, k, v])?;
    if q.rank() != 3 || k.rank() != 3 || v.rank() != 3 {
        return shape_err(op, format!("q {:?}, k {:?}, v {:?} must be (batch, len, dim)", q.shape(), k.shape(), v.shape()));
    }
    let [bh, lq, d] = [q.shape()[0], q.shape()[1], q.shape()[2]];
    let [bk, lk, dk] = [k.shape()[0], k.shape()[1], k.shape()[2]];
    let dv = v.shape()[2];
    if dk != d || v.shape()[..2] != [bk, lk] || bk == 0 || bh % bk != 0 || lk == 0 {
        return shape_err(
            op,
            format!("q {:?}, k {:?}, v {:?}: need k (B', Lk, D), v (B', Lk, Dv), B' > 0 dividing B, Lk > 0", q.shape(), k.shape(), v.shape()),
        );
    }
    if causal && lq != lk {
        return shape_err(op, format!("a causal mask needs as many keys as queries, got q {:?}, k {:?}", q.shape(), k.shape()));
    }
    let gpu = q.gpu();
    // Loop iterations of one invocation of the fused kernel (see Gpu::loop_limit).
    let (d4, dv4) = (d / 4, dv / 4);
    let iterations = (d4 + 2 * dv4 + lk * (d4 + dv4 + 1) + if capture { lk * (d4 + 1) } else { 0 }) as u64;
    let fits = gpu.loop_limit().is_none_or(|limit| iterations <= limit);
    if d > FUSED_MAX_D || dv > FUSED_MAX_D || d % 4 != 0 || dv % 4 != 0 || !fits || materialises_scores(gpu, bh, lq, lk) {
        return attention_unfused(q, k, v, scale, capture, causal);
    }
    let out = Tensor::empty(gpu, &[bh, lq, dv], DType::F32, "attention output")?;
    let lse = Tensor::empty(gpu, &[bh, lq], DType::F32, "attention lse")?;
    let probs = if capture { Some(Tensor::empty(gpu, &[bh, lq, lk], DType::F32, "attention probs")?) } else { None };
    if bh == 0 || lq == 0 {
        return Ok(Attention { out, lse, probs });
    }
    let p = Params { bh: bh as u32, lq: lq as u32, lk: lk as u32, d4: d4 as u32, dv4: dv4 as u32, scale, kv_rep: (bh / bk) as u32, causal: causal as u32 };
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    let gx = lq.div_ceil(ROWS_PER_GROUP);
    let (gy, gz) = if bh <= max { (bh, 1) } else { (max, bh.div_ceil(max)) };
    if gx > max || gz > max {
        return Err(Error::Shape { op, msg: format!("q {:?} exceeds the dispatch grid", q.shape()) });
    }
    let probs_t = probs.as_ref().unwrap_or(&lse); // unread unless CAPTURE
    gpu.profile_note(|| (format!("{bh}x{lq}x{lk}x{d}"), 2.0 * (bh * lq * lk) as f64 * (d + dv) as f64));
    launch(
        gpu,
        &ATTENTION,
        "attention_fwd",
        &[("CAPTURE", capture as u32 as f64)],
        bytemuck::bytes_of(&p),
        &[q, k, v, &out, &lse, probs_t],
        [gx as u32, gy as u32, gz as u32],
    )?;
    Ok(Attention { out, lse, probs })
}

/// Same result through matmul + softmax (any head dim). One Lq x Lk buffer: the scores
/// become the probabilities in place, and the row log-sum-exp comes with them.
fn attention_unfused(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, capture: bool, causal: bool) -> Result<Attention> {
    use super::softmax::softmax_lse_in_place;
    use super::{matmul, matmul_ex, Matmul};
    let (bh, lq, lk) = (q.shape()[0], q.shape()[1], k.shape()[1]);
    let rep = bh / k.shape()[0];
    let per = materialised_chunk(q.gpu(), bh, rep, lq, lk, 1);
    if per < bh {
        let [out, lse, probs] = in_batch_chunks((q, k, v), &[], per, rep, |q, k, v, _| {
            let a = attention_unfused(q, k, v, scale, capture, causal)?;
            Ok([Some(a.out), Some(a.lse), a.probs])
        })?;
        return Ok(Attention { out: out.expect("every chunk has an output"), lse: lse.expect("and its lse"), probs });
    }
    let (k, v) = (expand_kv(k, bh)?, expand_kv(v, bh)?);
    let probs = matmul_ex(q, &k, Matmul { trans_b: true, alpha: scale, ..Default::default() })?;
    let lse = softmax_lse_in_place(&probs, if causal { lq } else { 0 })?;
    let out = matmul(&probs, &v)?;
    Ok(Attention { out, lse, probs: capture.then_some(probs) })
}

/// K or V (B', L, D) repeated to the BH query batches (each batch serving BH / B' of them).
fn expand_kv(t: &Tensor, bh: usize) -> Result<Tensor> {
    let s = t.shape();
    if s[0] == bh {
        return Ok(t.clone());
    }
    super::broadcast_to(&t.reshape(&[s[0], 1, s[1], s[2]])?, &[s[0], bh / s[0], s[1], s[2]])?.reshape(&[bh, s[1], s[2]])
}

/// Gradients of [`attention`] for the output gradient `dout`, from the forward's `out` and
/// `lse`: (dq, dk, dv), each only when asked for. Fused kernels that recompute the
/// probabilities (nothing of size Lq x Lk is stored); the matmul/softmax path where the
/// forward took it (head dims, loop budget, the device's [`crate::AttentionPath`]).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    scale: f32,
    causal: bool,
    need: (bool, bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let op = "attention_backward";
    check_f32(op, &[q, k, v, out, lse, dout])?;
    let [bh, lq, d] = [q.shape()[0], q.shape()[1], q.shape()[2]];
    let [bk, lk, dv] = [v.shape()[0], v.shape()[1], v.shape()[2]];
    if dout.shape() != [bh, lq, dv] || out.shape() != dout.shape() || lse.shape() != [bh, lq] || k.shape() != [bk, lk, d] {
        return shape_err(op, format!("dout {:?}, out {:?}, lse {:?} do not match q {:?}, k {:?}, v {:?}", dout.shape(), out.shape(), lse.shape(), q.shape(), k.shape(), v.shape()));
    }
    let gpu = q.gpu();
    let rep = bh / bk.max(1);
    let (d4, dv4) = (d / 4, dv / 4);
    let it_q = (2 * d4 + dv4 + lk * (2 * d4 + dv4 + 1)) as u64;
    let it_kv = (2 * d4 + 2 * dv4 + rep * lq * (2 * d4 + dv4 + 1)) as u64;
    let fits = gpu.loop_limit().is_none_or(|limit| it_q.max(it_kv) <= limit);
    // D_i = dO_i . O_i
    let dvec = super::sum(&super::mul(dout, out)?, -1)?;
    if d > FUSED_MAX_D || dv > FUSED_MAX_D || d % 4 != 0 || dv % 4 != 0 || !fits || materialises_scores(gpu, bh, lq, lk) {
        return attention_backward_unfused(q, k, v, lse, dout, &dvec, scale, causal, need);
    }
    let p = Params { bh: bh as u32, lq: lq as u32, lk: lk as u32, d4: d4 as u32, dv4: dv4 as u32, scale, kv_rep: rep as u32, causal: causal as u32 };
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    let grid = |rows: usize, batches: usize| -> Result<[u32; 3]> {
        let (gy, gz) = if batches <= max { (batches, 1) } else { (max, batches.div_ceil(max)) };
        let gx = rows.div_ceil(ROWS_PER_GROUP);
        if gx > max || gz > max {
            return Err(Error::Shape { op: "attention_backward", msg: format!("q {:?} exceeds the dispatch grid", q.shape()) });
        }
        Ok([gx as u32, gy as u32, gz as u32])
    };
    let dq = if need.0 && bh * lq > 0 {
        let dq = Tensor::empty(gpu, q.shape(), DType::F32, "attention dq")?;
        launch(gpu, &ATTENTION, "attention_bwd_dq", &[], bytemuck::bytes_of(&p), &[q, k, v, dout, lse, &dvec, &dq], grid(lq, bh)?)?;
        Some(dq)
    } else {
        None
    };
    let (dk, dvt) = if (need.1 || need.2) && bk * lk > 0 {
        let dk = Tensor::empty(gpu, k.shape(), DType::F32, "attention dk")?;
        let dvt = Tensor::empty(gpu, v.shape(), DType::F32, "attention dv")?;
        launch(gpu, &ATTENTION, "attention_bwd_dkv", &[], bytemuck::bytes_of(&p), &[q, k, v, dout, lse, &dvec, &dk, &dvt], grid(lk, bk)?)?;
        (need.1.then_some(dk), need.2.then_some(dvt))
    } else {
        (None, None)
    };
    Ok((dq, dk, dvt))
}

/// The same gradients through materialised probabilities (any head dim).
#[allow(clippy::too_many_arguments)]
fn attention_backward_unfused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    dvec: &Tensor,
    scale: f32,
    causal: bool,
    need: (bool, bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    use super::softmax::{ds_rows_in_place, exp_sub_rows_in_place};
    use super::{matmul_ex, sum, Matmul};
    let (bh, lq, lk) = (q.shape()[0], q.shape()[1], k.shape()[1]);
    let (bk, rep) = (k.shape()[0], bh / k.shape()[0]);
    // two score-sized buffers: P and dS
    let per = materialised_chunk(q.gpu(), bh, rep, lq, lk, 2);
    if per < bh {
        let [dq, dk, dv] = in_batch_chunks((q, k, v), &[lse, dout, dvec], per, rep, |q, k, v, e| {
            let (dq, dk, dv) = attention_backward_unfused(q, k, v, &e[0], &e[1], &e[2], scale, causal, need)?;
            Ok([dq, dk, dv])
        })?;
        return Ok((dq, dk, dv));
    }
    let fold = |t: Tensor| -> Result<Tensor> {
        if rep == 1 {
            return Ok(t);
        }
        let s = t.shape().to_vec();
        sum(&t.reshape(&[bk, rep, s[1], s[2]])?, 1)
    };
    let (ke, ve) = (expand_kv(k, bh)?, expand_kv(v, bh)?);
    // Two Lq x Lk buffers: P = exp(scale q k^T - lse) in place over the scores, and
    // dS = P * (dP - D) in place over dP = dO V^T.
    let pr = matmul_ex(q, &ke, Matmul { trans_b: true, alpha: scale, ..Default::default() })?;
    exp_sub_rows_in_place(&pr, lse, if causal { lq } else { 0 })?;
    let ds = matmul_ex(dout, &ve, Matmul { trans_b: true, ..Default::default() })?;
    ds_rows_in_place(&pr, &ds, dvec)?;
    let dv = if need.2 { Some(fold(matmul_ex(&pr, dout, Matmul { trans_a: true, ..Default::default() })?)?) } else { None };
    drop(pr);
    let dq = if need.0 { Some(matmul_ex(&ds, &ke, Matmul { alpha: scale, ..Default::default() })?) } else { None };
    let dk = if need.1 { Some(fold(matmul_ex(&ds, q, Matmul { trans_a: true, alpha: scale, ..Default::default() })?)?) } else { None };
    Ok((dq, dk, dv))
}
