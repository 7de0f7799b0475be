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

/// Runs `f` (which makes its inputs on the device it is given and returns its outputs) on
/// a device whose kernels read storage buffers (BarrierFree) and on one whose kernels read
/// texture copies of their inputs (Texture, what CPU adapters run by default): the outputs
/// must be bit-identical (the same arithmetic on the same values), and the texture device
/// must have run every kernel in `entries` with TEX_IN=1, the buffer device with TEX_IN=0.
pub fn texel_reads_agree(name: &str, entries: &[&str], f: impl Fn(&Gpu) -> Vec<Vec<f32>>) {
    let run = |variant: t2v_kernels::KernelVariant| {
        let g = private_gpu();
        g.set_kernel_variant(variant);
        g.set_profiling(true).ok();
        let out = f(&g);
        let kernels: Vec<String> = g.profile().map(|rows| rows.into_iter().map(|r| r.kernel).collect()).unwrap_or_default();
        (out, kernels)
    };
    let (buffers, kb) = run(t2v_kernels::KernelVariant::BarrierFree);
    let (texels, kt) = run(t2v_kernels::KernelVariant::Texture);
    assert_eq!(buffers.len(), texels.len());
    for (i, (a, b)) in buffers.iter().zip(&texels).enumerate() {
        assert_eq!(a.len(), b.len(), "{name}: output {i} sizes");
        for (j, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()), "{name}: output {i}[{j}]: buffers {x}, textures {y}");
        }
    }
    if kb.is_empty() || kt.is_empty() {
        return; // no timestamps on this adapter: nothing to say about which kernels ran
    }
    for e in entries {
        let ran = |ks: &[String], on: u32| ks.iter().any(|k| k.split(' ').next() == Some(*e) && k.contains(&format!("TEX_IN={on}")));
        assert!(ran(&kt, 1), "{name}: {e} never read textures: {kt:?}");
        assert!(ran(&kb, 0), "{name}: {e} never read buffers: {kb:?}");
    }
}

/// A random tensor on `g` and its host copy.
pub fn rand_on(g: &Gpu, shape: &[usize], seed: u64, lo: f32, hi: f32) -> (Tensor, Vec<f32>) {
    let v = Rng::new(seed).uniform(numel(shape), lo, hi);
    (Tensor::from_slice(g, shape, &v).unwrap(), v)
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

/// erf by its Taylor series (|x| <= 3 here): accurate to ~1e-13.
pub fn erf(x: f64) -> f64 {
    let (mut term, mut sum, x2) = (x, x, x * x);
    for n in 1..200 {
        term *= -x2 / n as f64;
        let t = term / (2 * n + 1) as f64;
        sum += t;
        if t.abs() < 1e-17 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// Row-major strides.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// C = alpha * op(A) op(B) + bias for one batch.
#[allow(clippy::too_many_arguments)]
pub fn matmul_ref<T: Copy + Into<f64>>(a: &[T], b: &[T], m: usize, k: usize, n: usize, ta: bool, tb: bool, alpha: f64, bias: Option<&[T]>) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for l in 0..k {
                let av: f64 = if ta { a[l * m + i] } else { a[i * k + l] }.into();
                let bv: f64 = if tb { b[j * k + l] } else { b[l * n + j] }.into();
                s += av * bv;
            }
            c[i * n + j] = alpha * s + bias.map_or(0.0, |bb| bb[j].into());
        }
    }
    c
}

/// PyTorch conv2d on the host: x (N, C, H, W), w (O, C, KH, KW), padding (t, b, l, r).
pub fn conv_ref<T: Copy + Into<f64>>(x: &[T], xs: [usize; 4], w: &[T], ws: [usize; 4], bias: Option<&[T]>, g: t2v_kernels::ops::Conv2d) -> (Vec<f64>, [usize; 4]) {
    let [n, c, h, wd] = xs;
    let [o, _, kh, kw] = ws;
    let (sh, sw) = g.stride;
    let (pt, pb, pl, pr) = g.padding;
    let (oh, ow) = ((h + pt + pb - kh) / sh + 1, (wd + pl + pr - kw) / sw + 1);
    let mut y = vec![0.0; n * o * oh * ow];
    for b in 0..n { for oc in 0..o { for oy in 0..oh { for ox in 0..ow {
        let mut s = bias.map_or(0.0, |bb| bb[oc].into());
        for ic in 0..c { for ky in 0..kh { for kx in 0..kw {
            let iy = (oy * sh + ky) as isize - pt as isize;
            let ix = (ox * sw + kx) as isize - pl as isize;
            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                s += x[((b * c + ic) * h + iy as usize) * wd + ix as usize].into() * w[((oc * c + ic) * kh + ky) * kw + kx].into();
            }
        } } }
        y[((b * o + oc) * oh + oy) * ow + ox] = s;
    } } } }
    (y, [n, o, oh, ow])
}

/// Host normalisation of rows with per-element channel index.
pub fn norm_ref<T: Copy + Into<f64>>(x: &[T], len: usize, eps: f64, ch: impl Fn(usize, usize) -> usize, g: Option<(&[T], &[T])>, silu: bool) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![];
    let mut stats = vec![];
    for (r, row) in x.chunks(len).enumerate() {
        let mean = row.iter().map(|&v| v.into()).sum::<f64>() / len as f64;
        let var = row.iter().map(|&v| (v.into() - mean).powi(2)).sum::<f64>() / len as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        stats.extend([mean, rstd]);
        for (j, &v) in row.iter().enumerate() {
            let mut o = (v.into() - mean) * rstd;
            if let Some((gm, bt)) = g {
                let c = ch(r, j);
                o = o * gm[c].into() + bt[c].into();
            }
            if silu {
                o /= 1.0 + (-o).exp();
            }
            y.push(o);
        }
    }
    (y, stats)
}

