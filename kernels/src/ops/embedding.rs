//! Sinusoidal timestep embeddings and row gathers (`shaders/embedding.wgsl`).

use bytemuck::{Pod, Zeroable};

use super::{check_f32, fold_groups, launch};
use crate::error::shape_err;
use crate::shaders::EMBEDDING;
use crate::{DType, Result, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    dim: u32,
    half: u32,
    vocab: u32,
    log_max_period: f32,
    _p: [u32; 3],
}

/// ldm's `timestep_embedding(t, dim, max_period)`: (N,) -> (N, dim), [cos | sin].
pub fn sinusoidal_embedding(t: &Tensor, dim: usize, max_period: f32) -> Result<Tensor> {
    check_f32("sinusoidal_embedding", &[t])?;
    if t.rank() != 1 || dim < 2 {
        return shape_err("sinusoidal_embedding", format!("needs t of shape (N,) and dim >= 2, got {:?}, {dim}", t.shape()));
    }
    let n = t.shape()[0];
    let y = Tensor::empty(t.gpu(), &[n, dim], DType::F32, "embedding")?;
    let p = Params { n: n as u32, dim: dim as u32, half: (dim / 2) as u32, vocab: 0, log_max_period: max_period.ln(), _p: [0; 3] };
    if n > 0 {
        launch(t.gpu(), &EMBEDDING, "sinusoidal", &[], bytemuck::bytes_of(&p), &[t, &y], fold_groups(t.gpu(), n * dim, 256))?;
    }
    Ok(y)
}

/// `out[i, :] = table[idx[i], :]` for table (V, D) and u32 idx (N,). Indices are not
/// checked on the device (an out-of-range one yields a zero row); [`embedding`] checks.
pub fn gather_rows(table: &Tensor, idx: &Tensor) -> Result<Tensor> {
    check_f32("gather_rows", &[table])?;
    idx.expect_dtype("gather_rows", DType::U32)?;
    if table.rank() != 2 || idx.rank() != 1 {
        return shape_err("gather_rows", format!("needs table (V, D) and idx (N,), got {:?} and {:?}", table.shape(), idx.shape()));
    }
    let (v, d, n) = (table.shape()[0], table.shape()[1], idx.shape()[0]);
    let y = Tensor::empty(table.gpu(), &[n, d], DType::F32, "gather output")?;
    let p = Params { n: n as u32, dim: d as u32, half: 0, vocab: v as u32, log_max_period: 0.0, _p: [0; 3] };
    if n * d > 0 {
        launch(table.gpu(), &EMBEDDING, "gather_rows", &[], bytemuck::bytes_of(&p), &[table, idx, &y], fold_groups(table.gpu(), n * d, 256))?;
    }
    Ok(y)
}

/// Embedding lookup of host-side ids (checked against the table size).
pub fn embedding(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    if table.rank() != 2 {
        return shape_err("embedding", format!("table must be (V, D), got {:?}", table.shape()));
    }
    let v = table.shape()[0];
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= v) {
        return shape_err("embedding", format!("id {bad} out of range for a table of {v} rows"));
    }
    let idx = Tensor::from_u32(table.gpu(), &[ids.len()], ids)?;
    gather_rows(table, &idx)
}

/// The backward of [`embedding`]: dtable (V, D) with row v = sum of the rows of `g` (N, D)
/// whose id is v (zero for ids not present).
pub fn embedding_backward(g: &Tensor, ids: &[u32], vocab: usize) -> Result<Tensor> {
    check_f32("embedding_backward", &[g])?;
    if g.rank() != 2 || g.shape()[0] != ids.len() {
        return shape_err("embedding_backward", format!("gradient {:?} for {} ids", g.shape(), ids.len()));
    }
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return shape_err("embedding_backward", format!("id {bad} out of range for a table of {vocab} rows"));
    }
    let d = g.shape()[1];
    let gpu = g.gpu();
    let out = Tensor::zeros(gpu, &[vocab, d])?;
    if ids.is_empty() || d == 0 {
        return Ok(out);
    }
    // group positions by id (CSR)
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&p| ids[p as usize]);
    let (mut uniq, mut offsets) = (Vec::new(), vec![0u32]);
    for (k, &p) in order.iter().enumerate() {
        let id = ids[p as usize];
        if uniq.last() != Some(&id) {
            if k > 0 {
                offsets.push(k as u32);
            }
            uniq.push(id);
        }
    }
    offsets.push(order.len() as u32);
    let pos = Tensor::from_u32(gpu, &[order.len()], &order)?;
    let off = Tensor::from_u32(gpu, &[offsets.len()], &offsets)?;
    let un = Tensor::from_u32(gpu, &[uniq.len()], &uniq)?;
    let p = Params { n: uniq.len() as u32, dim: d as u32, half: 0, vocab: vocab as u32, log_max_period: 0.0, _p: [0; 3] };
    launch(gpu, &EMBEDDING, "scatter_rows_sum", &[], bytemuck::bytes_of(&p), &[g, &pos, &off, &un, &out], fold_groups(gpu, uniq.len() * d, 256))?;
    Ok(out)
}
