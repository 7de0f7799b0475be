//! Winograd convolutions for 3x3, stride-1 convolutions (`shaders/winograd.wgsl`): the
//! weights and the input's (m + 2)x(m + 2) tiles are transformed, one batched GEMM
//! (O, C) x (C, tiles) per tile point sums over the input channels, and the output
//! transform writes each m x m tile. F(2x2, 3x3): 16 GEMMs, 2.25x fewer multiplications
//! than the direct convolution, transforms of 4x the input and output; F(4x4, 3x3): 36
//! GEMMs, 4x fewer, transforms of 2.25x.

use bytemuck::{Pod, Zeroable};

use super::{fold_groups, launch};
use crate::gpu::ConvPath;
use crate::shaders::WINOGRAD;
use crate::{DType, Gpu, Result, Tensor};

/// Under [`ConvPath::Auto`], convolutions with fewer input or output channels stay direct:
/// their GEMMs would be too thin to gain (e.g. the VAE's 3-channel conv_out).
pub const WINOGRAD_MIN_CHANNELS: usize = 32;

/// Largest transformed input or output (points x channels x tiles floats) of one pass;
/// convolutions over more images run a few images at a time.
const WINOGRAD_MAX_BYTES: usize = 256 << 20;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    o: u32,
    oh: u32,
    ow: u32,
    th: u32,
    tw: u32,
    pad_top: u32,
    pad_left: u32,
    has_bias: u32,
    n0: u32,
    _pad: [u32; 3],
}

/// Output tile of a Winograd transform: F(2x2, 3x3) or F(4x4, 3x3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tile {
    F2,
    F4,
}

impl Tile {
    /// Output rows and columns per tile.
    fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }
    /// Elements of a transformed tile: (m + 2)^2, the number of GEMMs.
    fn points(self) -> usize {
        (self.m() + 2) * (self.m() + 2)
    }
    /// Entry points of the weight, input and output transforms.
    fn entries(self) -> [&'static str; 3] {
        match self {
            Tile::F2 => ["winograd_weights", "winograd_input", "winograd_output"],
            Tile::F4 => ["winograd4_weights", "winograd4_input", "winograd4_output"],
        }
    }
}

/// The Winograd tile a conv of weight (O, C, KH, KW) and `stride` with an output of
/// `out` = (OH, OW) pixels per image runs with on this device, or None for the direct
/// kernels (its forward; its input gradient also needs [`input_gradient_tile`]).
/// (`tiled`: GEMMs run on the tiled kernel; the barrier-free and subgroup variants chosen
/// explicitly on a GPU keep the direct convolution. So do convs whose one image's
/// transformed tiles would not fit in one binding, whatever the path.)
pub(crate) fn tile(gpu: &Gpu, tiled: bool, w: &Tensor, stride: (usize, usize), out: (usize, usize)) -> Option<Tile> {
    let s = w.shape();
    let fits = s.len() == 4 && s[2] == 3 && s[3] == 3 && stride == (1, 1);
    if !fits {
        return None;
    }
    let auto = gpu.conv_path() == ConvPath::Auto;
    let chosen = match gpu.conv_path() {
        ConvPath::Direct => None,
        ConvPath::Winograd => Some(Tile::F2),
        ConvPath::Winograd4 => Some(Tile::F4),
        ConvPath::Auto => {
            let wide = out.0 >= WINOGRAD4_MIN_SIZE && out.1 >= WINOGRAD4_MIN_SIZE;
            // (not under f16 matrix cores: the transforms' rounding adds to the f16 inputs')
            (gpu.matrix_tile().is_none() && (tiled || gpu.is_cpu()) && s[0] >= WINOGRAD_MIN_CHANNELS && s[1] >= WINOGRAD_MIN_CHANNELS).then_some(if wide { Tile::F4 } else { Tile::F2 })
        }
    };
    fitting(chosen, auto, |t| fits_binding(t, s[0], s[1], out, gpu.max_binding_bytes()))
}

/// Whether a conv of O x C channels and `out` = (OH, OW) output pixels per image fits tile
/// `t` in bindings of `limit` bytes: its transformed weights (points x O x C) and one
/// image's transformed input and output (points x max(O, C) x tiles) — a pass covers at
/// least one image. (llvmpipe's 128 MiB: not 64 channels on 512x512, nor VideoCrafter2's
/// 1280 -> 2560 weights.)
fn fits_binding(t: Tile, o: usize, c: usize, out: (usize, usize), limit: u64) -> bool {
    let image = t.points() * o.max(c) * out.0.div_ceil(t.m()) * out.1.div_ceil(t.m()) * 4;
    let weights = t.points() * o * c * 4;
    image as u64 <= limit && weights as u64 <= limit
}

/// The chosen tile if it fits; under `auto` F(4x4) that does not fit falls back to F(2x2)
/// (fewer tile points) before the direct kernels.
fn fitting(chosen: Option<Tile>, auto: bool, fits: impl Fn(Tile) -> bool) -> Option<Tile> {
    let t = chosen?;
    [t, Tile::F2].into_iter().find(|&u| (u == t || auto) && fits(u))
}

/// Under [`ConvPath::Auto`], outputs at least this high and wide take F(4x4, 3x3), smaller
/// ones F(2x2, 3x3): 4x4 tiles waste more of a small image and leave its GEMMs thin
/// (llvmpipe: F(4x4) 2.3-2.6x the direct conv at 32x32 and 40x64, 0.55x at 5x8 where
/// F(2x2) is 1.03-1.10x).
const WINOGRAD4_MIN_SIZE: usize = 16;

/// The input gradient of a 3x3 stride-1 conv is the correlation of dy with the kernels
/// turned by 180 degrees (channel axes swapped) at padding 2 - p: Winograd too where no
/// side is padded by more than 2.
/// (`input` = (H, W): the input gradient's size.)
pub(crate) fn input_gradient_tile(gpu: &Gpu, tiled: bool, w: &Tensor, stride: (usize, usize), padding: (usize, usize, usize, usize), input: (usize, usize)) -> Option<Tile> {
    let (pt, pb, pl, pr) = padding;
    tile(gpu, tiled, w, stride, input).filter(|_| pt.max(pb).max(pl).max(pr) <= 2)
}

/// The conv of x (N, C, H, W) with w (O, C, 3, 3), stride 1, padding (top, bottom, left,
/// right), plus bias [O]: (N, O, OH, OW). Operands are checked by the caller.
pub(crate) fn conv2d_winograd(tile: Tile, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, padding: (usize, usize, usize, usize)) -> Result<Tensor> {
    run(tile, x, &weights(tile, w, false)?, bias, padding, WINOGRAD_MAX_BYTES)
}

/// dx (N, C, H, W) of the conv of x with w (O, C, 3, 3), stride 1 and `padding` (each side
/// at most 2), from dy (N, O, OH, OW).
pub(crate) fn conv2d_input_gradient(tile: Tile, dy: &Tensor, w: &Tensor, padding: (usize, usize, usize, usize)) -> Result<Tensor> {
    let (pt, pb, pl, pr) = padding;
    run(tile, dy, &weights(tile, w, true)?, None, (2 - pt, 2 - pb, 2 - pl, 2 - pr), WINOGRAD_MAX_BYTES)
}

/// The correlation of x (N, C, H, W) with the transformed weights v (points, O, C), plus
/// bias, with transformed tensors of at most `budget` bytes per pass: a pass covers a few
/// images, reading them from x and writing them into the output in place.
fn run(tile: Tile, x: &Tensor, v: &Tensor, bias: Option<&Tensor>, padding: (usize, usize, usize, usize), budget: usize) -> Result<Tensor> {
    let gpu = x.gpu();
    let [n, c, h, wd] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
    let o = v.shape()[1];
    let (pt, pb, pl, pr) = padding;
    let (oh, ow) = (h + pt + pb - 2, wd + pl + pr - 2);
    let (th, tw) = (oh.div_ceil(tile.m()), ow.div_ceil(tile.m()));
    // images per pass: the transformed input and output of a pass within the budget
    let per_image = tile.points() * c.max(o) * th * tw * 4;
    let budget = budget.min(gpu.max_binding_bytes() as usize);
    let chunk = (budget / per_image.max(1)).clamp(1, n.max(1));
    let y = Tensor::empty(gpu, &[n, o, oh, ow], DType::F32, "conv2d output")?;
    for n0 in (0..n).step_by(chunk) {
        tiles(tile, x, v, bias, &y, padding, (n0, chunk.min(n - n0)))?;
    }
    Ok(y)
}

/// The parameters of the pass over images `images` = (first, count) of x and y.
fn params(tile: Tile, x: &Tensor, o: usize, y: &Tensor, padding: (usize, usize, usize, usize), has_bias: bool, images: (usize, usize)) -> Params {
    let [c, h, w] = [x.shape()[1], x.shape()[2], x.shape()[3]];
    let (oh, ow) = (y.shape()[2], y.shape()[3]);
    Params {
        n: images.1 as u32,
        c: c as u32,
        h: h as u32,
        w: w as u32,
        o: o as u32,
        oh: oh as u32,
        ow: ow as u32,
        th: oh.div_ceil(tile.m()) as u32,
        tw: ow.div_ceil(tile.m()) as u32,
        pad_top: padding.0 as u32,
        pad_left: padding.2 as u32,
        has_bias: has_bias as u32,
        n0: images.0 as u32,
        _pad: [0; 3],
    }
}

/// G g G^T of every (output, input) channel pair of w (O, C, 3, 3): (points, O, C); with
/// `flip` those of the input gradient's correlation (kernels turned by 180 degrees,
/// channel axes swapped): (points, C, O).
fn weights(tile: Tile, w: &Tensor, flip: bool) -> Result<Tensor> {
    let gpu = w.gpu();
    let (o, c) = if flip { (w.shape()[1], w.shape()[0]) } else { (w.shape()[0], w.shape()[1]) };
    let v = Tensor::empty(gpu, &[tile.points(), o, c], DType::F32, "winograd weights")?;
    let p = Params { o: o as u32, c: c as u32, ..Zeroable::zeroed() };
    launch(gpu, &WINOGRAD, tile.entries()[0], &[("FLIP", flip as u32 as f64)], bytemuck::bytes_of(&p), &[w, &v], fold_groups(gpu, o * c, 256))?;
    Ok(v)
}

/// Input transform, the GEMMs (one per tile point) and the output transform of images
/// `images` = (first, count) of x into the same images of `y` (N, O, OH, OW).
fn tiles(tile: Tile, x: &Tensor, v: &Tensor, bias: Option<&Tensor>, y: &Tensor, padding: (usize, usize, usize, usize), images: (usize, usize)) -> Result<()> {
    let gpu = x.gpu();
    let (c, o) = (x.shape()[1], v.shape()[1]);
    let p = params(tile, x, o, y, padding, bias.is_some(), images);
    let t = (p.n * p.th * p.tw) as usize;
    let u = Tensor::empty(gpu, &[tile.points(), c, t], DType::F32, "winograd input tiles")?;
    launch(gpu, &WINOGRAD, tile.entries()[1], &[], bytemuck::bytes_of(&p), &[x, &u], fold_groups(gpu, c * t, 256))?;
    let m = super::matmul(v, &u)?; // (points, O, T)
    drop(u);
    let bias_t = bias.unwrap_or(&m); // unread without a bias
    launch(gpu, &WINOGRAD, tile.entries()[2], &[], bytemuck::bytes_of(&p), &[&m, bias_t, y], fold_groups(gpu, o * t, 256))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GpuOptions;

    /// Under a binding limit, the transformed weights count too: VideoCrafter2's 1280 ->
    /// 2560 conv stays direct under llvmpipe's 128 MiB (F(2x2): 200 MiB of weights), its
    /// 1280 -> 1280 ones take F(2x2) when F(4x4) would not fit (225 vs 100 MiB); 2 GiB
    /// take F(4x4) for all.
    #[test]
    fn winograd_needs_its_weights_in_one_binding() {
        let mib = 1u64 << 20;
        let pick = |o, c, limit, auto, chosen| fitting(Some(chosen), auto, |t| fits_binding(t, o, c, (40, 64), limit));
        assert_eq!(pick(2560, 1280, 128 * mib, true, Tile::F4), None);
        assert_eq!(pick(1280, 1280, 128 * mib, true, Tile::F4), Some(Tile::F2));
        assert_eq!(pick(1280, 1280, 128 * mib, false, Tile::F4), None, "an explicit F(4x4) does not become F(2x2)");
        assert_eq!(pick(2560, 1280, 2048 * mib, true, Tile::F4), Some(Tile::F4));
        assert_eq!(pick(320, 320, 128 * mib, false, Tile::F2), Some(Tile::F2));
        assert_eq!(fitting(None, true, |_| true), None);
        // one image of 64 channels on 512x512 in F(2x2): 16 x 64 x 256 x 256 x 4 = 256 MiB
        assert!(!fits_binding(Tile::F2, 64, 64, (512, 512), 128 * mib));
    }

    /// A batch over the per-pass budget runs a few images at a time: the same output as
    /// in one pass.
    #[test]
    fn passes_over_images_give_the_one_pass_output() {
        let gpu = Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).unwrap();
        let (n, c, h, w, o) = (5, 3, 7, 6, 4);
        let vals = |k: usize, seed: f32| (0..k).map(|i| (i as f32 * 0.37 + seed).sin()).collect::<Vec<f32>>();
        let x = Tensor::from_slice(&gpu, &[n, c, h, w], &vals(n * c * h * w, 0.1)).unwrap();
        let wt = Tensor::from_slice(&gpu, &[o, c, 3, 3], &vals(o * c * 9, 0.7)).unwrap();
        let b = Tensor::from_slice(&gpu, &[o], &vals(o, 1.3)).unwrap();
        let pad = (1, 0, 2, 1);
        for tile in [Tile::F2, Tile::F4] {
            let whole = run(tile, &x, &weights(tile, &wt, false).unwrap(), Some(&b), pad, usize::MAX).unwrap().to_vec().unwrap();
            // two images' transformed input or output per pass (4 channels; output 6 x 7)
            let per_image = tile.points() * 4 * 6usize.div_ceil(tile.m()) * 7usize.div_ceil(tile.m()) * 4;
            let parts = run(tile, &x, &weights(tile, &wt, false).unwrap(), Some(&b), pad, 2 * per_image).unwrap();
            assert_eq!(parts.shape(), [n, o, 6, 7]);
            let parts = parts.to_vec().unwrap();
            assert!(whole.iter().zip(&parts).all(|(a, b)| (a - b).abs() <= 1e-6 * (1.0 + a.abs())), "{tile:?}: chunked != whole");
        }
    }
}
