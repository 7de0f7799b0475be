//! Half-precision storage: tensors kept on the device as f16 or bf16 (half the memory of
//! f32) and widened to an f32 [`Tensor`] where an op reads them (`shaders/half.wgsl`).
//!
//! A [`HalfTensor`] is not a `Tensor`: no op takes it, so it cannot be read as f32 by
//! mistake; [`HalfTensor::to_f32`] is its one way into compute, and it is exact (every f16
//! and bf16 value is an f32 value). Models use it for frozen weights: the widened copy
//! lives as long as the op that reads it.

use bytemuck::{Pod, Zeroable};
use ::half::{bf16, f16};

use crate::error::shape_err;
use crate::ops::{fold_groups, launch};
use crate::shaders::HALF;
use crate::tensor::numel;
use crate::{DType, Gpu, Result, Tensor};

/// The 16-bit float format of a [`HalfTensor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HalfKind {
    /// IEEE binary16 (PyTorch's float16).
    F16,
    /// bfloat16: the high 16 bits of an f32.
    BF16,
}

impl HalfKind {
    /// The bits of `x` in this format, rounded to nearest (ties to even).
    pub fn round(self, x: f32) -> u16 {
        match self {
            HalfKind::F16 => f16::from_f32(x).to_bits(),
            HalfKind::BF16 => bf16::from_f32(x).to_bits(),
        }
    }
    /// The f32 value of `bits` in this format (exact).
    pub fn widen(self, bits: u16) -> f32 {
        match self {
            HalfKind::F16 => f16::from_bits(bits).to_f32(),
            HalfKind::BF16 => bf16::from_bits(bits).to_f32(),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    bf16: u32,
    _p: [u32; 2],
}

/// A tensor stored in 16-bit floats: `ceil(n / 2)` u32 words, two elements each (element
/// 2i in the low half of word i), with its logical shape.
#[derive(Clone)]
pub struct HalfTensor {
    words: Tensor,
    shape: Vec<usize>,
    kind: HalfKind,
}

impl std::fmt::Debug for HalfTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HalfTensor({:?}, {:?})", self.shape, self.kind)
    }
}

impl HalfTensor {
    /// Uploads 16-bit patterns (row-major) as a tensor of `shape`.
    pub fn from_bits(gpu: &Gpu, shape: &[usize], kind: HalfKind, bits: &[u16]) -> Result<HalfTensor> {
        if bits.len() != numel(shape) {
            return shape_err("HalfTensor::from_bits", format!("{} values do not fill shape {shape:?} ({} elements)", bits.len(), numel(shape)));
        }
        let words: Vec<u32> = bits.chunks(2).map(|c| c[0] as u32 | (c.get(1).copied().unwrap_or(0) as u32) << 16).collect();
        let words = Tensor::from_u32(gpu, &[words.len()], &words)?;
        Ok(HalfTensor { words, shape: shape.to_vec(), kind })
    }

    /// Rounds f32 values to `kind` (to nearest, ties to even) on the host and uploads them.
    pub fn from_f32(gpu: &Gpu, shape: &[usize], kind: HalfKind, data: &[f32]) -> Result<HalfTensor> {
        let bits: Vec<u16> = data.iter().map(|&x| kind.round(x)).collect();
        Self::from_bits(gpu, shape, kind, &bits)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn gpu(&self) -> &Gpu {
        self.words.gpu()
    }
    /// The same storage viewed with another shape of as many elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<HalfTensor> {
        if numel(shape) != self.numel() {
            return shape_err("HalfTensor::reshape", format!("{:?} cannot be viewed as {shape:?}", self.shape));
        }
        Ok(HalfTensor { words: self.words.clone(), shape: shape.to_vec(), kind: self.kind })
    }

    /// The values as an f32 tensor of the same shape (one kernel; exact).
    pub fn to_f32(&self) -> Result<Tensor> {
        let gpu = self.gpu();
        let n = self.numel();
        let out = Tensor::empty(gpu, &self.shape, DType::F32, "widened half tensor")?;
        if n > 0 {
            let p = Params { n: n as u32, bf16: (self.kind == HalfKind::BF16) as u32, _p: [0; 2] };
            launch(gpu, &HALF, "widen", &[], bytemuck::bytes_of(&p), &[&self.words, &out], fold_groups(gpu, n.div_ceil(2), 256))?;
        }
        Ok(out)
    }

    /// The 16-bit patterns read back (waits for the GPU).
    pub fn to_bits(&self) -> Result<Vec<u16>> {
        let words = self.words.to_vec_u32()?;
        Ok(words.iter().flat_map(|w| [*w as u16, (w >> 16) as u16]).take(self.numel()).collect())
    }
}
