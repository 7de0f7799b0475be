//! Image preprocessing of the reward models, differentiable (rewards backpropagate through
//! it to the generated frames):
//! - HPSv2.1: longest side resized to S (bicubic, antialiased), zero padding centred
//!   (left/top = pad // 2), then OpenAI mean/std;
//! - CLIPScore: squash-resize to S x S (bicubic, antialiased), then OpenAI mean/std;
//! - InternVideo2 (T2V-Turbo's `ResizeCropMinSize`): shorter side resized to S (bicubic,
//!   antialiased), an S x S crop (the reference crops at random; the caller says where),
//!   then ImageNet mean/std.
//!
//! A resize is a linear map: out = R_h x img x R_w^T, with the resampling weights of
//! PIL / torchvision's antialiased bicubic (a = -0.5, support widened by the downscale
//! factor, weights normalised per output pixel) built on the host.

use t2v_kernels::autograd::{self as ad, Var};
use t2v_kernels::{Result, Tensor};

pub const OPENAI_MEAN: [f32; 3] = [0.481_454_7, 0.457_827_5, 0.408_210_7];
pub const OPENAI_STD: [f32; 3] = [0.268_629_5, 0.261_302_6, 0.275_777_1];
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Row-major (out, inp) weights of an antialiased bicubic resize along one axis.
pub fn resample_matrix(inp: usize, out: usize) -> Vec<f32> {
    let scale = inp as f64 / out as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let mut m = vec![0f32; out * inp];
    for o in 0..out {
        let center = (o as f64 + 0.5) * scale;
        let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
        let hi = ((center + support + 0.5).floor() as usize).min(inp);
        let w: Vec<f64> = (lo..hi).map(|x| bicubic((x as f64 - center + 0.5) / filterscale)).collect();
        let total: f64 = w.iter().sum();
        for (x, wx) in (lo..hi).zip(w) {
            m[o * inp + x] = if total != 0.0 { (wx / total) as f32 } else { 0.0 };
        }
    }
    m
}

/// Resizes images (N, C, H, W) to (N, C, oh, ow).
pub fn resize(img: &Var, oh: usize, ow: usize) -> Result<Var> {
    let s = img.shape().to_vec();
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let gpu = img.value().gpu();
    let t = img.tape();
    let rh = t.constant(Tensor::from_slice(gpu, &[oh, h], &resample_matrix(h, oh))?);
    let rw = t.constant(Tensor::from_slice(gpu, &[ow, w], &resample_matrix(w, ow))?);
    let x = ad::reshape(img, &[n * c, h, w])?;
    let y = ad::matmul(&rh, &x)?; // (N*C, oh, w)
    let y = ad::matmul_ex(&y, &rw, false, true, 1.0, None)?; // (N*C, oh, ow)
    ad::reshape(&y, &[n, c, oh, ow])
}

/// `(x - mean[c]) / std[c]` with OpenAI's statistics.
pub fn normalize(img: &Var) -> Result<Var> {
    normalize_with(img, &OPENAI_MEAN, &OPENAI_STD)
}

/// `(x - mean[c]) / std[c]` of images (N, 3, H, W).
pub fn normalize_with(img: &Var, mean: &[f32; 3], std: &[f32; 3]) -> Result<Var> {
    let gpu = img.value().gpu();
    let t = img.tape();
    let mean = t.constant(Tensor::from_slice(gpu, &[1, 3, 1, 1], mean)?);
    let inv: Vec<f32> = std.iter().map(|s| 1.0 / s).collect();
    let inv = t.constant(Tensor::from_slice(gpu, &[1, 3, 1, 1], &inv)?);
    ad::mul(&ad::sub(img, &mean)?, &inv)
}

/// HPSv2.1 preprocessing of images in [0, 1] (N, 3, H, W) -> (N, 3, S, S).
pub fn hps(img: &Var, size: usize) -> Result<Var> {
    let s = img.shape().to_vec();
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let scale = size as f64 / h.max(w) as f64;
    let (nh, nw) = (((h as f64 * scale).round() as usize).max(1), ((w as f64 * scale).round() as usize).max(1));
    let mut x = resize(img, nh, nw)?;
    let t = img.tape();
    let gpu = img.value().gpu();
    let (ph, pw) = (size - nh, size - nw);
    let zeros = |shape: &[usize]| -> Result<Var> { Ok(t.constant(Tensor::zeros(gpu, shape)?)) };
    if pw > 0 {
        let (l, r) = (pw / 2, pw - pw / 2);
        let mut parts = vec![];
        if l > 0 {
            parts.push(zeros(&[n, c, nh, l])?);
        }
        parts.push(x);
        if r > 0 {
            parts.push(zeros(&[n, c, nh, r])?);
        }
        x = ad::concat(&parts.iter().collect::<Vec<_>>(), 3)?;
    }
    if ph > 0 {
        let (tp, bt) = (ph / 2, ph - ph / 2);
        let mut parts = vec![];
        if tp > 0 {
            parts.push(zeros(&[n, c, tp, size])?);
        }
        parts.push(x);
        if bt > 0 {
            parts.push(zeros(&[n, c, bt, size])?);
        }
        x = ad::concat(&parts.iter().collect::<Vec<_>>(), 2)?;
    }
    normalize(&x)
}

/// CLIPScore preprocessing of images in [0, 1] (N, 3, H, W) -> (N, 3, S, S).
pub fn clipscore(img: &Var, size: usize) -> Result<Var> {
    normalize(&resize(img, size, size)?)
}

/// InternVideo2's preprocessing of images in [0, 1] (N, 3, H, W) -> (N, 3, S, S): the
/// shorter side resized to S (sizes rounded like the reference; no resize when it is S
/// already), an S x S window taken along the longer side at `crop_at` in [0, 1] (0: top or
/// left, 0.5: centre, 1: bottom or right), ImageNet mean/std.
pub fn min_side_crop(img: &Var, size: usize, crop_at: f32) -> Result<Var> {
    let s = img.shape().to_vec();
    let (h, w) = (s[2], s[3]);
    let scale = size as f64 / h.min(w) as f64;
    let mut x = img.clone();
    let (mut nh, mut nw) = (h, w);
    if scale != 1.0 {
        (nh, nw) = (((h as f64 * scale).round() as usize).max(size), ((w as f64 * scale).round() as usize).max(size));
        x = resize(img, nh, nw)?;
    }
    let at = |extra: usize| (crop_at.clamp(0.0, 1.0) * extra as f32).round() as usize;
    if nh > size {
        x = ad::slice(&x, 2, at(nh - size), size)?;
    }
    if nw > size {
        x = ad::slice(&x, 3, at(nw - size), size)?;
    }
    normalize_with(&x, &IMAGENET_MEAN, &IMAGENET_STD)
}
