//! Test helpers: one shared device, a seeded generator, f64 comparisons.
#![allow(dead_code)]

use std::sync::OnceLock;

use t2v_kernels::{Gpu, GpuOptions, Tensor};

/// The device every test of a binary shares (lavapipe on CI).
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(&GpuOptions { adapter: None, quiet: true, ..Default::default() }).expect("a wgpu adapter (install mesa-vulkan-drivers)"))
}

/// A second device with its own settings (kernel variant), for tests that change them.
pub fn private_gpu() -> Gpu {
    Gpu::new(&GpuOptions { adapter: None, quiet: true, ..Default::default() }).expect("a wgpu adapter")
}

/// xorshift64*: deterministic test data without extra dependencies.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32) / (1u64 << 24) as f32
    }
    pub fn uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.next_f32()).collect()
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// A random tensor and its host copy.
pub fn rand_tensor(shape: &[usize], seed: u64, lo: f32, hi: f32) -> (Tensor, Vec<f32>) {
    let v = Rng::new(seed).uniform(numel(shape), lo, hi);
    (Tensor::from_slice(gpu(), shape, &v).unwrap(), v)
}

pub fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// |got - want| <= atol + rtol * |want| everywhere (NaN never passes).
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let tol = atol + rtol * w.abs();
        if !(err <= tol) {
            panic!("{what}: element {i}: got {g}, want {w} (err {err:.3e} > tol {tol:.3e})");
        }
        if err > worst.1 {
            worst = (i, err);
        }
    }
}

/// Row-major strides.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}
