//! Throughput of the forward kernels: `cargo bench -p t2v-kernels [-- --quick]`.
//!
//! Compute-bound kernels report GFLOP/s; memory-bound ones GB/s, with a ratio to a plain
//! copy measured in the same run (the device's practical bandwidth), reading many tensors
//! back at once a ratio to one readback each; a conv's input gradient
//! a ratio to its forward conv; on GPUs the matmul, linear and conv rows a ratio to the first
//! tiled kernel (`KernelVariant::TiledScalar`), and 3x3 convs through Winograd a ratio to
//! the direct convolution (`ConvPath`); where the adapter has matrix units (cooperative
//! matrices), the GEMMs on them a ratio to the f32 tiled kernel. The matmul ratio to
//! burn-wgpu comes from the peer benchmark (`cargo run --release -p t2v-peer-bench`).
//! Every timed region ends with a one-element readback, checked against the CPU.
//! Shapes are reduced on CPU adapters (lavapipe) and full on GPUs.

use t2v_kernels::bench::{best_time, check_value, pseudo_data};
use t2v_kernels::ops::{self, Conv2d};
use t2v_kernels::{AttentionPath, ConvPath, Gpu, GpuOptions, KernelVariant, Tensor};

/// y[0, 0, 1, 1] of a padded 3x3 conv of x (C, H, W) by w (O, C, 3, 3): output channel 0's
/// window at the input's top-left corner.
fn window_sum(xv: &[f32], wv: &[f32], c: usize, h: usize, w: usize) -> f64 {
    (0..c)
        .flat_map(|ci| (0..3).flat_map(move |ky| (0..3).map(move |kx| (ci, ky, kx))))
        .map(|(ci, ky, kx)| wv[(ci * 3 + ky) * 3 + kx] as f64 * xv[(ci * h + ky) * w + kx] as f64)
        .sum()
}

struct Bench {
    gpu: Gpu,
    budget: f64,
    rows: Vec<String>,
}

impl Bench {
    fn tensor(&self, shape: &[usize], seed: u32) -> (Tensor, Vec<f32>) {
        let v = pseudo_data(shape.iter().product(), seed);
        (Tensor::from_slice(&self.gpu, shape, &v).unwrap(), v)
    }
    fn row(&mut self, name: &str, shape: String, secs: f64, amount: f64, unit: &str, baseline: Option<f64>) -> f64 {
        let rate = amount / secs * 1e-9;
        let ratio = baseline.map_or(String::new(), |b| format!("{:.2}x", rate / b));
        let line = format!("| {name} | {shape} | {:.3} | {rate:.1} {unit} | {ratio} |", secs * 1e3);
        println!("{line}");
        self.rows.push(line);
        rate
    }
    /// One row per kernel variant (set before each timing; Auto again afterwards), the
    /// first variant the baseline of the others; rows are labelled by variant when there
    /// are several. `f` runs and checks the kernel once.
    fn variants(&mut self, variants: &[KernelVariant], name: &str, shape: String, amount: f64, f: impl Fn()) {
        let mut rates = vec![];
        for &v in variants {
            self.gpu.set_kernel_variant(v);
            let t = best_time(self.budget, 3, &f);
            let label = if variants.len() > 1 { format!("{name} ({v:?})") } else { name.to_string() };
            rates.push(self.row(&label, shape.clone(), t, amount, "GFLOP/s", rates.first().copied()));
        }
        self.gpu.set_kernel_variant(KernelVariant::Auto);
    }
    /// A 3x3 conv through the direct kernels (the baseline) and through Winograd F(2x2,
    /// 3x3) and F(4x4, 3x3), all at the direct convolution's FLOPs (so the rate ratio is the
    /// speed-up).
    fn conv_paths(&mut self, name: &str, shape: String, amount: f64, f: impl Fn()) -> f64 {
        let mut base = None;
        for (path, label) in [(ConvPath::Direct, "direct"), (ConvPath::Winograd, "Winograd"), (ConvPath::Winograd4, "Winograd F4")] {
            self.gpu.set_conv_path(path);
            let t = best_time(self.budget, 3, &f);
            let rate = self.row(&format!("{name} ({label})"), shape.clone(), t, amount, "GFLOP/s", base);
            base = base.or(Some(rate));
        }
        self.gpu.set_conv_path(ConvPath::Auto);
        base.expect("two rows")
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let gpu = Gpu::new(&GpuOptions { adapter: None, quiet: true, ..Default::default() }).expect("a wgpu adapter");
    let cpu = gpu.is_cpu();
    let info = gpu.adapter_info().clone();
    println!("device: {} ({:?}, {:?}, {})", info.name, info.backend, info.device_type, info.driver_info);
    println!("| kernel | shape | best ms | throughput | vs baseline |");
    println!("|---|---|---:|---:|---:|");
    let mut b = Bench { gpu, budget: if cpu { 2.0 } else { 0.5 }, rows: vec![] };

    // Bandwidth baseline: a contiguous copy (read + write).
    let n = if cpu { 1 << 23 } else { 1 << 27 };
    let (x, xv) = b.tensor(&[n], 1);
    let t = best_time(b.budget, 3, || check_value("copy", ops::scale(&x, 1.0).unwrap().item_at(n - 1).unwrap(), xv[n - 1] as f64, 0.0));
    let copy_gbs = b.row("copy (bandwidth)", format!("{n}"), t, 8.0 * n as f64, "GB/s", None);

    // Reading a model's worth of tensors back (checkpoints, data-parallel gradients): one
    // `to_vec` each (the baseline) against `Tensor::read_many` (a wait per staging buffer).
    // The UNet's ~1400 weights, at their mean size (1.4 G / 1400) on GPUs.
    let (count, each) = if cpu { (400, 4096) } else { (1400, 1 << 20) };
    let many: Vec<(Tensor, Vec<f32>)> = (0..count).map(|i| b.tensor(&[each], 100 + i as u32)).collect();
    let refs: Vec<&Tensor> = many.iter().map(|t| &t.0).collect();
    let bytes = 4.0 * (count * each) as f64;
    let last = |vs: Vec<Vec<f32>>| check_value("readback", vs[count - 1][each - 1], many[count - 1].1[each - 1] as f64, 0.0);
    let t = best_time(b.budget, 3, || last(refs.iter().map(|t| t.to_vec().unwrap()).collect()));
    let one_each = b.row("readback, to_vec each", format!("{count} x {each}"), t, bytes, "GB/s", None);
    let t = best_time(b.budget, 3, || last(Tensor::read_many(&refs).unwrap()));
    b.row("readback, read_many", format!("{count} x {each}"), t, bytes, "GB/s", Some(one_each));
    drop(many);

    // Strided copies (permutes) the 3D UNet makes: heads split (N, L, H, D) -> (N, H, L, D),
    // and video <-> frames (B, C, T, HW) -> (B, T, C, HW).
    let perms: [(&str, Vec<usize>, Vec<usize>); 2] = if cpu {
        [("permute heads", vec![32, 256, 2, 16], vec![0, 2, 1, 3]), ("permute frames", vec![4, 32, 8, 256], vec![0, 2, 1, 3])]
    } else {
        [("permute heads", vec![16, 4096, 5, 64], vec![0, 2, 1, 3]), ("permute frames", vec![2, 320, 16, 1024], vec![0, 2, 1, 3])]
    };
    for (name, shape, perm) in perms {
        let (x, xv) = b.tensor(&shape, 9);
        let numel: usize = shape.iter().product();
        // the last element of any permutation is the last input element
        let want = xv[numel - 1] as f64;
        let t = best_time(b.budget, 3, || check_value(name, ops::permute(&x, &perm).unwrap().item_at(numel - 1).unwrap(), want, 0.0));
        b.row(name, format!("{shape:?}"), t, 8.0 * numel as f64, "GB/s", Some(copy_gbs));
    }

    // Matmul: squares and UNet shapes (M x K x N).
    let mut mm = vec![(256, 256, 256), (512, 512, 512), (1024, 1024, 1024)];
    if !quick {
        mm.extend([(2048, 2048, 2048), (2560, 320, 320), (640, 1280, 1280)]);
    }
    if !cpu {
        mm.push((4096, 4096, 4096));
    }
    // On GPUs each shape runs the first tiled kernel (TiledScalar) as the default's baseline.
    let tiled_variants: &[KernelVariant] = if cpu { &[KernelVariant::Auto] } else { &[KernelVariant::TiledScalar, KernelVariant::Auto] };
    for (m, k, nn) in mm {
        let (a, av) = b.tensor(&[m, k], 2);
        let (w, wv) = b.tensor(&[k, nn], 3);
        let want: f64 = (0..k).map(|l| av[l] as f64 * wv[l * nn] as f64).sum();
        b.variants(tiled_variants, "matmul", format!("{m}x{k}x{nn}"), 2.0 * (m * k * nn) as f64, || {
            check_value("matmul", ops::matmul(&a, &w).unwrap().item_at(0).unwrap(), want, 1e-4)
        });
    }
    // A linear layer, x W^T with W stored (out, in) as in checkpoints: the UNet's
    // feed-forward input projection (320 -> 2 x 1280, GEGLU) over 16 frames of 40x64 tokens.
    let (tokens, cin, cout) = if cpu { (2560, 64, 256) } else { (40960, 320, 2560) };
    let (x, xv) = b.tensor(&[tokens, cin], 16);
    let (w, wv) = b.tensor(&[cout, cin], 17);
    let want: f64 = (0..cin).map(|l| xv[l] as f64 * wv[l] as f64).sum();
    b.variants(tiled_variants, "linear", format!("{tokens}x{cin} -> {cout}"), 2.0 * (tokens * cin * cout) as f64, || {
        check_value("linear", ops::linear(&x, &w, None).unwrap().item_at(0).unwrap(), want, 1e-4)
    });

    // Attention (batch*heads, Lq, Lk, d): spatial self, cross to 77 text tokens, temporal.
    let hw = if cpu { 640 } else { 2560 };
    let att = [
        ("attention spatial", if cpu { 2 } else { 16 }, hw, hw, 64),
        ("attention cross", if cpu { 2 } else { 16 }, hw, 77, 64),
        ("attention temporal", if cpu { 640 } else { 2 * 2560 * 5 }, 16, 16, 64),
    ];
    for (name, bh, lq, lk, d) in att {
        let (q, qv) = b.tensor(&[bh, lq, d], 4);
        let (k, kv) = b.tensor(&[bh, lk, d], 5);
        let (v, vv) = b.tensor(&[bh, lk, d], 6);
        let scale = 1.0 / (d as f64).sqrt();
        let s: Vec<f64> = (0..lk).map(|j| scale * (0..d).map(|t| qv[t] as f64 * kv[j * d + t] as f64).sum::<f64>()).collect();
        let mx = s.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
        let want: f64 = (0..lk).map(|j| (s[j] - mx).exp() / z * vv[j * d] as f64).sum();
        // the fused kernels as the baseline of the device's default path
        let mut rates = vec![];
        for path in [AttentionPath::Fused, AttentionPath::Auto] {
            b.gpu.set_attention_path(path);
            let t = best_time(b.budget, 3, || {
                let o = ops::attention(&q, &k, &v, scale as f32, false).unwrap().out;
                check_value(name, o.item_at(0).unwrap(), want, 1e-4);
            });
            let label = if path == AttentionPath::Fused { format!("{name} (fused)") } else { format!("{name} (default: {})", if ops::materialises_scores(&b.gpu, bh, lq, lk) { "materialised" } else { "fused" }) };
            rates.push(b.row(&label, format!("{bh}x{lq}x{lk}x{d}"), t, 4.0 * (bh * lq * lk * d) as f64, "GFLOP/s", rates.first().copied()));
        }
    }

    // conv2d 3x3, 320 -> 320 channels at the 40x64 latent size (frames folded into N).
    let frames = if cpu { 1 } else { 16 };
    let (x, xv) = b.tensor(&[frames, 320, 40, 64], 7);
    let (w, wv) = b.tensor(&[320, 320, 3, 3], 8);
    // y[0,0,1,1]: the full 3x3 window around input (1, 1)
    let want = window_sum(&xv, &wv, 320, 40, 64);
    let conv = || check_value("conv2d", ops::conv2d(&x, &w, None, Conv2d::new(1, 1)).unwrap().item_at(65).unwrap(), want, 1e-4);
    // the GEMM kernels' rows convolve directly; the Winograd rows follow
    b.gpu.set_conv_path(ConvPath::Direct);
    b.variants(tiled_variants, "conv2d 3x3", format!("{frames}x320x40x64 -> 320"), 2.0 * (frames * 320 * 320 * 9 * 40 * 64) as f64, conv);
    b.conv_paths("conv2d 3x3", format!("{frames}x320x40x64 -> 320"), 2.0 * (frames * 320 * 320 * 9 * 40 * 64) as f64, conv);

    // conv2d 3x3 at the UNet's deepest level (1280 channels on 5x8 latents): few pixels per
    // image; the barrier-free kernel (what GPUs ran for thin outputs before) as the baseline,
    // and on GPUs the first tiled kernel (one 128-column tile per image, 69% empty; the
    // default folds the images' columns together and splits K)
    let (n, c) = if cpu { (2, 256) } else { (16, 1280) };
    let (x, xv) = b.tensor(&[n, c, 5, 8], 14);
    let (w, wv) = b.tensor(&[c, c, 3, 3], 15);
    let want = window_sum(&xv, &wv, c, 5, 8);
    let deep_variants: &[KernelVariant] = if cpu { &[KernelVariant::BarrierFree, KernelVariant::Auto] } else { &[KernelVariant::BarrierFree, KernelVariant::TiledScalar, KernelVariant::Auto] };
    let conv = || check_value("conv2d", ops::conv2d(&x, &w, None, Conv2d::new(1, 1)).unwrap().item_at(9).unwrap(), want, 1e-4);
    b.gpu.set_conv_path(ConvPath::Direct);
    b.variants(deep_variants, "conv2d 3x3", format!("{n}x{c}x5x8 -> {c}"), 2.0 * (n * c * c * 9 * 40) as f64, conv);
    b.conv_paths("conv2d 3x3", format!("{n}x{c}x5x8 -> {c}"), 2.0 * (n * c * c * 9 * 40) as f64, conv);

    // The input gradient of a 3x3 conv (dcols = W^T dy, then col2im) at a VAE decoder's
    // size, the cost of reward feedback through the frozen decoder; the ratio is to the
    // direct forward conv of the same shape (the same FLOPs) measured here; the gradient
    // through the direct kernels (im2col-style columns, col2im) and through Winograd.
    let (n, c, hh, ww) = if cpu { (4, 64, 32, 32) } else { (16, 128, 256, 256) };
    let (x, xv) = b.tensor(&[n, c, hh, ww], 12);
    let (w, wv) = b.tensor(&[c, c, 3, 3], 13);
    let flops = 2.0 * (n * c * c * 9 * hh * ww) as f64;
    let want = window_sum(&xv, &wv, c, hh, ww);
    let shape = format!("{n}x{c}x{hh}x{ww} -> {c}");
    let forward = b.conv_paths("conv2d 3x3", shape.clone(), flops, || check_value("conv2d", ops::conv2d(&x, &w, None, Conv2d::new(1, 1)).unwrap().item_at(ww + 1).unwrap(), want, 1e-4));
    // dy = x: dx[0, 0, 1, 1] = sum over o, ky, kx of w[o, 0, ky, kx] dy[o, 2 - ky, 2 - kx]
    let want: f64 = (0..c).flat_map(|o| (0..3).flat_map(move |ky| (0..3).map(move |kx| (o, ky, kx))))
        .map(|(o, ky, kx)| wv[o * c * 9 + ky * 3 + kx] as f64 * xv[(o * hh + 2 - ky) * ww + 2 - kx] as f64)
        .sum();
    for (path, label) in [(ConvPath::Direct, "direct"), (ConvPath::Winograd, "Winograd"), (ConvPath::Winograd4, "Winograd F4")] {
        b.gpu.set_conv_path(path);
        let t = best_time(b.budget, 3, || {
            let dx = ops::conv2d_backward(&x, &w, &x, Conv2d::new(1, 1), (true, false, false)).unwrap().0.unwrap();
            check_value("conv2d dx", dx.item_at(ww + 1).unwrap(), want, 1e-4);
        });
        b.row(&format!("conv2d 3x3 input gradient ({label})"), shape.clone(), t, flops, "GFLOP/s", Some(forward));
    }
    b.gpu.set_conv_path(ConvPath::Auto);

    // Group norm (32 groups) with fused SiLU over (N, C, F, H, W).
    let f = if cpu { 4 } else { 16 };
    let shape = [1, 320, f, 40, 64];
    let (x, xv) = b.tensor(&shape, 9);
    let len = 10 * f * 40 * 64;
    let mean = xv[..len].iter().map(|&v| v as f64).sum::<f64>() / len as f64;
    let var = xv[..len].iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / len as f64;
    let y0 = (xv[0] as f64 - mean) / (var + 1e-6).sqrt();
    let want = y0 / (1.0 + (-y0).exp());
    let t = best_time(b.budget, 3, || {
        let y = ops::group_norm(&x, 32, None, None, 1e-6, true).unwrap().y;
        check_value("group_norm", y.item_at(0).unwrap(), want, 1e-4);
    });
    let numel: usize = shape.iter().product();
    b.row("group_norm+silu", format!("{shape:?}"), t, 8.0 * numel as f64, "GB/s", Some(copy_gbs));

    // Layer norm over the channels of every token (the transformers' norm1..3): short rows,
    // one invocation per row up to 128 channels.
    let (tokens, c) = if cpu { (16384, 64) } else { (40960, 320) };
    let (x, xv) = b.tensor(&[tokens, c], 11);
    let mean = xv[..c].iter().map(|&v| v as f64).sum::<f64>() / c as f64;
    let var = xv[..c].iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
    let want = (xv[0] as f64 - mean) / (var + 1e-5).sqrt();
    let t = best_time(b.budget, 3, || {
        let y = ops::layer_norm(&x, None, None, 1e-5).unwrap().y;
        check_value("layer_norm", y.item_at(0).unwrap(), want, 1e-4);
    });
    b.row("layer_norm", format!("{tokens}x{c}"), t, 8.0 * (tokens * c) as f64, "GB/s", Some(copy_gbs));

    // Softmax over long rows (spatial attention scores).
    let (x, _) = b.tensor(&[hw, hw], 10);
    let t = best_time(b.budget, 3, || {
        let y = ops::softmax(&x).unwrap();
        assert!(y.item_at(0).unwrap() > 0.0);
    });
    b.row("softmax", format!("{hw}x{hw}"), t, 8.0 * (hw * hw) as f64, "GB/s", Some(copy_gbs));
    let _ = b.rows.len();
    matrix_cores(cpu, quick);
}

/// The GEMMs on the matrix units (gemm_coop: f16 inputs, f32 sums) against the f32 tiled
/// kernel on the same device, where the adapter offers cooperative matrices (a device opened
/// with `GpuOptions::matrix_cores`); values checked against the f32 reference to 1%.
fn matrix_cores(cpu: bool, quick: bool) {
    let gpu = match Gpu::new(&GpuOptions { quiet: true, matrix_cores: true, ..Default::default() }) {
        Ok(g) => g,
        Err(e) => {
            println!("(no matrix-core rows: {e})");
            return;
        }
    };
    let t = gpu.matrix_tile().expect("opened for them");
    let mut b = Bench { gpu, budget: if cpu { 2.0 } else { 0.5 }, rows: vec![] };
    let variants = [KernelVariant::Tiled, KernelVariant::MatrixCores];
    let mut mm = if cpu { vec![(256, 256, 256), (512, 512, 512)] } else { vec![(1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (2560, 320, 320), (640, 1280, 1280)] };
    if quick {
        mm.truncate(2);
    }
    for (m, k, nn) in mm {
        let (a, av) = b.tensor(&[m, k], 2);
        let (w, wv) = b.tensor(&[k, nn], 3);
        let want: f64 = (0..k).map(|l| av[l] as f64 * wv[l * nn] as f64).sum();
        b.variants(&variants, &format!("matmul, {t}x{t} fragments"), format!("{m}x{k}x{nn}"), 2.0 * (m * k * nn) as f64, || {
            check_value("matmul", ops::matmul(&a, &w).unwrap().item_at(0).unwrap(), want, 1e-2)
        });
    }
    let (tokens, cin, cout) = if cpu { (2560, 64, 256) } else { (40960, 320, 2560) };
    let (x, xv) = b.tensor(&[tokens, cin], 16);
    let (w, wv) = b.tensor(&[cout, cin], 17);
    let want: f64 = (0..cin).map(|l| xv[l] as f64 * wv[l] as f64).sum();
    b.variants(&variants, "linear", format!("{tokens}x{cin} -> {cout}"), 2.0 * (tokens * cin * cout) as f64, || {
        check_value("linear", ops::linear(&x, &w, None).unwrap().item_at(0).unwrap(), want, 1e-2)
    });
    // the UNet's 3x3 convs at 320 channels on 40x64, direct (what matrix cores run)
    let frames = if cpu { 1 } else { 16 };
    let (x, xv) = b.tensor(&[frames, 320, 40, 64], 7);
    let (w, wv) = b.tensor(&[320, 320, 3, 3], 8);
    let want = window_sum(&xv, &wv, 320, 40, 64);
    b.gpu.set_conv_path(ConvPath::Direct);
    b.variants(&variants, "conv2d 3x3", format!("{frames}x320x40x64 -> 320"), 2.0 * (frames * 320 * 320 * 9 * 40 * 64) as f64, || {
        check_value("conv2d", ops::conv2d(&x, &w, None, Conv2d::new(1, 1)).unwrap().item_at(65).unwrap(), want, 1e-2)
    });
}
