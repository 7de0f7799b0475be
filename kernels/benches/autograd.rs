//! Training costs: `cargo bench -p t2v-kernels --bench autograd`.
//!
//! - backward/forward time ratios of matmul, conv2d and attention;
//! - one training step (forward + backward + AdamW) of a small UNet-like block against its
//!   forward alone;
//! - the AdamW step alone with f32 and with 8-bit moments;
//! - peak live tensor memory of a 4-block stack with and without checkpointing.
//!
//! Every timed region ends with a readback checked for finiteness; the training-step run
//! also checks that the parameters changed.

use t2v_kernels::autograd::{self as ad, Tape, Var};
use t2v_kernels::bench::{best_time, pseudo_data};
use t2v_kernels::ops::{self, Conv2d};
use t2v_kernels::optim::{AdamW, AdamWConfig, ParamGroup};
use t2v_kernels::{AttentionPath, Gpu, GpuOptions, Result, Tensor};

fn t(gpu: &Gpu, shape: &[usize], seed: u32, scale: f32) -> Tensor {
    let v: Vec<f32> = pseudo_data(shape.iter().product(), seed).iter().map(|x| x * scale).collect();
    Tensor::from_slice(gpu, shape, &v).unwrap()
}

fn finite(x: &Tensor) {
    let v = x.item_at(0).unwrap();
    assert!(v.is_finite(), "non-finite result");
}

/// Times `fwd` alone and `fwd + backward` (seeded with ones); prints the ratio of the
/// backward part to the forward.
fn ratio(name: &str, shape: &str, budget: f64, fwd: &dyn Fn(&Tape) -> (Var, Vec<Var>)) -> f64 {
    let tf = best_time(budget, 3, || {
        let tape = Tape::new();
        let (y, _) = fwd(&tape);
        finite(y.value());
    });
    let tb = best_time(budget, 3, || {
        let tape = Tape::new();
        let (y, leaves) = fwd(&tape);
        let seed = Tensor::full(y.value().gpu(), y.shape(), 1.0).unwrap();
        let grads = tape.backward_with(&y, seed).unwrap();
        for l in &leaves {
            finite(grads.get(l).unwrap());
        }
    });
    let r = (tb - tf) / tf;
    println!("| {name} | {shape} | {:.2} | {:.2} | {r:.2}x |", tf * 1e3, (tb - tf) * 1e3);
    r
}

struct BlockParams {
    gn1: (Tensor, Tensor),
    conv1: (Tensor, Tensor),
    gn2: (Tensor, Tensor),
    conv2: (Tensor, Tensor),
    qkv: Tensor,
    proj: Tensor,
}

impl BlockParams {
    fn new(gpu: &Gpu, c: usize, seed: u32) -> BlockParams {
        let s = 1.0 / ((9 * c) as f32).sqrt();
        BlockParams {
            gn1: (Tensor::full(gpu, &[c], 1.0).unwrap(), Tensor::zeros(gpu, &[c]).unwrap()),
            conv1: (t(gpu, &[c, c, 3, 3], seed, s), Tensor::zeros(gpu, &[c]).unwrap()),
            gn2: (Tensor::full(gpu, &[c], 1.0).unwrap(), Tensor::zeros(gpu, &[c]).unwrap()),
            conv2: (t(gpu, &[c, c, 3, 3], seed + 1, s), Tensor::zeros(gpu, &[c]).unwrap()),
            qkv: t(gpu, &[3 * c, c], seed + 2, 1.0 / (c as f32).sqrt()),
            proj: t(gpu, &[c, c], seed + 3, 1.0 / (c as f32).sqrt()),
        }
    }
    fn all(&self) -> Vec<Tensor> {
        vec![self.gn1.0.clone(), self.gn1.1.clone(), self.conv1.0.clone(), self.conv1.1.clone(), self.gn2.0.clone(), self.gn2.1.clone(), self.conv2.0.clone(), self.conv2.1.clone(), self.qkv.clone(), self.proj.clone()]
    }
}

/// ResBlock (GN+SiLU, conv3x3, GN+SiLU, conv3x3, skip) then single-head spatial
/// self-attention with a residual: x (N, C, H, W) -> same. v = [x, params...].
fn block(v: &[Var]) -> Result<Var> {
    let x = &v[0];
    let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let g = 8.min(c);
    let hdn = ad::group_norm(x, g, Some(&v[1]), Some(&v[2]), 1e-5, true)?;
    let hdn = ad::conv2d(&hdn, &v[3], Some(&v[4]), Conv2d::new(1, 1))?;
    let hdn = ad::group_norm(&hdn, g, Some(&v[5]), Some(&v[6]), 1e-5, true)?;
    let hdn = ad::add(&ad::conv2d(&hdn, &v[7], Some(&v[8]), Conv2d::new(1, 1))?, x)?;
    let tok = ad::permute(&ad::reshape(&hdn, &[n, c, h * w])?, &[0, 2, 1])?; // (N, L, C)
    let qkv = ad::linear(&tok, &v[9], None)?; // (N, L, 3C)
    let q = ad::slice(&qkv, 2, 0, c)?;
    let k = ad::slice(&qkv, 2, c, c)?;
    let val = ad::slice(&qkv, 2, 2 * c, c)?;
    let a = ad::attention(&q, &k, &val, 1.0 / (c as f32).sqrt())?;
    let o = ad::add(&ad::linear(&a, &v[10], None)?, &tok)?;
    ad::reshape(&ad::permute(&o, &[0, 2, 1])?, &[n, c, h, w])
}

fn main() {
    let gpu = Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).expect("a wgpu adapter");
    let cpu = gpu.is_cpu();
    let info = gpu.adapter_info().clone();
    println!("device: {} ({:?}, {:?})", info.name, info.backend, info.device_type);
    let budget = if cpu { 2.0 } else { 0.5 };

    println!("| op | shape | forward ms | backward ms | backward / forward |");
    println!("|---|---|---:|---:|---:|");
    let m = if cpu { 512 } else { 4096 };
    let (a, b) = (t(&gpu, &[m, m], 1, 1.0), t(&gpu, &[m, m], 2, 1.0));
    ratio("matmul", &format!("{m}^3"), budget, &|tape| {
        let (x, y) = (tape.leaf(a.clone()), tape.leaf(b.clone()));
        (ad::matmul(&x, &y).unwrap(), vec![x, y])
    });
    let (c, hw, n) = if cpu { (64, 32, 1) } else { (320, 64, 16) };
    let (x, w) = (t(&gpu, &[n, c, hw, hw], 3, 1.0), t(&gpu, &[c, c, 3, 3], 4, 0.05));
    ratio("conv2d 3x3", &format!("{n}x{c}x{hw}x{hw}"), budget, &|tape| {
        let (xv, wv) = (tape.leaf(x.clone()), tape.leaf(w.clone()));
        (ad::conv2d(&xv, &wv, None, Conv2d::new(1, 1)).unwrap(), vec![xv, wv])
    });
    let (bh, l) = if cpu { (2, 640) } else { (16, 2560) };
    let (q, k, v) = (t(&gpu, &[bh, l, 64], 5, 1.0), t(&gpu, &[bh, l, 64], 6, 1.0), t(&gpu, &[bh, l, 64], 7, 1.0));
    // both attention paths; the default (Auto) picks one per adapter and size
    let mut att = Vec::new();
    for path in [AttentionPath::Fused, AttentionPath::Materialised] {
        gpu.set_attention_path(path);
        att.push(ratio(&format!("attention ({path:?})"), &format!("{bh}x{l}x{l}x64"), budget, &|tape| {
            let (qv, kv, vv) = (tape.leaf(q.clone()), tape.leaf(k.clone()), tape.leaf(v.clone()));
            (ad::attention(&qv, &kv, &vv, 0.125).unwrap(), vec![qv, kv, vv])
        }));
    }
    gpu.set_attention_path(AttentionPath::Auto);
    let auto = ops::materialises_scores(&gpu, bh, l, l);
    println!("\nattention backward / forward on this adapter's default path ({}): {:.2}x (target <= 2.5x)\n", if auto { "Materialised" } else { "Fused" }, att[auto as usize]);

    // One training step of the block vs its forward.
    let (c, hw, n) = if cpu { (32, 16, 2) } else { (320, 32, 16) };
    let params = BlockParams::new(&gpu, c, 10);
    let x = t(&gpu, &[n, c, hw, hw], 11, 1.0);
    let forward = |tape: &Tape| -> (Var, Vec<Var>) {
        let mut vars = vec![tape.constant(x.clone())];
        vars.extend(params.all().into_iter().map(|p| tape.leaf(p)));
        (block(&vars).unwrap(), vars)
    };
    let tf = best_time(budget, 3, || finite(forward(&Tape::new()).0.value()));
    let mut opt = AdamW::new(AdamWConfig { lr: 1e-4, ..Default::default() }, vec![ParamGroup { params: params.all(), lr_scale: 1.0, weight_decay: None, clipped: true }]);
    let before = params.proj.item_at(0).unwrap();
    let ts = best_time(budget, 3, || {
        let tape = Tape::new();
        let (y, vars) = forward(&tape);
        let loss = ad::mean_all(&ad::square(&y).unwrap()).unwrap();
        let mut grads = tape.backward(&loss).unwrap();
        let gs: Vec<Tensor> = vars[1..].iter().map(|v| grads.take(v).unwrap()).collect();
        opt.step(&gs, Some(1.0)).unwrap();
        finite(&params.proj);
    });
    assert_ne!(params.proj.item_at(0).unwrap(), before, "the steps changed the parameters");
    println!("| UNet-like block ({n}x{c}x{hw}x{hw}) | forward {:.2} ms | training step {:.2} ms | {:.2}x (target <= 3.5x) |", tf * 1e3, ts * 1e3, ts / tf);

    // The optimizer step alone: AdamW with f32 moments against 8-bit ones (the reference's
    // AdamW8bit), on weights of a few large tensors; bytes moved per weight: parameter
    // read + write, gradient, and the moments read + written (16 B, or 2 B + block maxima).
    let sizes: Vec<usize> = if cpu { vec![1 << 20, 3 << 19, 12_345] } else { vec![16 << 20, 24 << 20, 1_234_567] };
    let total: usize = sizes.iter().sum();
    let grads: Vec<Tensor> = sizes.iter().enumerate().map(|(i, &n)| t(&gpu, &[n], 20 + i as u32, 1.0)).collect();
    let norm = sizes.iter().enumerate().map(|(i, &n)| pseudo_data(n, 20 + i as u32).iter().map(|x| (*x as f64).powi(2)).sum::<f64>()).sum::<f64>().sqrt();
    println!("\n| optimizer step | weights | best ms | GB/s | vs f32 moments |");
    println!("|---|---:|---:|---:|---:|");
    let mut f32_ms = 0.0;
    for eight_bit in [false, true] {
        let weights: Vec<Tensor> = sizes.iter().enumerate().map(|(i, &n)| t(&gpu, &[n], 40 + i as u32, 1.0)).collect();
        let mut opt = AdamW::new(AdamWConfig { lr: 1e-4, eight_bit, ..Default::default() }, vec![ParamGroup { params: weights.clone(), lr_scale: 1.0, weight_decay: None, clipped: true }]);
        let ms = 1e3 * best_time(budget, 3, || {
            let info = opt.step(&grads, Some(1.0)).unwrap();
            finite(&weights[0]);
            let got = info.grad_norm.item_at(0).unwrap() as f64;
            assert!((got - norm).abs() <= 1e-4 * norm, "gradient norm {got}, on the CPU {norm}");
        });
        let bytes = 12.0 * total as f64 + opt.state_bytes() as f64 * 2.0;
        if !eight_bit {
            f32_ms = ms;
        }
        println!("| AdamW, {} moments | {total} | {ms:.2} | {:.1} | {:.2}x |", if eight_bit { "8-bit" } else { "f32" }, bytes / ms / 1e6, f32_ms / ms);
    }

    // Peak live memory (and time) of a 4-block stack: plain backward vs checkpointed blocks.
    let peak = |checkpoint: bool| -> (u64, f64) {
        gpu.sync().unwrap();
        gpu.reset_peak_memory();
        let base = gpu.memory().live_bytes;
        let start = std::time::Instant::now();
        let tape = Tape::new();
        let mut h = tape.constant(x.clone());
        let pv: Vec<Var> = params.all().into_iter().map(|p| tape.leaf(p)).collect();
        for _ in 0..4 {
            let mut ins = vec![h.clone()];
            ins.extend(pv.iter().cloned());
            h = if checkpoint {
                let refs: Vec<&Var> = ins.iter().collect();
                tape.checkpoint(&refs, block).unwrap()
            } else {
                block(&ins).unwrap()
            };
        }
        let loss = ad::mean_all(&ad::square(&h).unwrap()).unwrap();
        let grads = tape.backward(&loss).unwrap();
        finite(grads.get(&pv[9]).unwrap());
        let secs = start.elapsed().as_secs_f64();
        drop(grads);
        (gpu.memory().peak_live_bytes - base, secs)
    };
    // Auto (the default) takes the fused attention inside checkpoints (Gpu::memory_lean) and,
    // on CPU adapters, the materialised one elsewhere.
    println!("\n| 4-block stack, attention path | plain peak MiB | checkpointed peak MiB | less memory (target >= 2x) | plain ms | checkpointed ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for path in [AttentionPath::Fused, AttentionPath::Materialised, AttentionPath::Auto] {
        gpu.set_attention_path(path);
        peak(true); // warm the pipelines of both paths
        let ((plain, tp), (ckpt, tc)) = (peak(false), peak(true));
        let mib = |b: u64| b as f64 / 1048576.0;
        println!("| {path:?} | {:.2} | {:.2} | {:.2}x | {:.1} | {:.1} |", mib(plain), mib(ckpt), plain as f64 / ckpt as f64, tp * 1e3, tc * 1e3);
    }
    gpu.set_attention_path(AttentionPath::Auto);
}
