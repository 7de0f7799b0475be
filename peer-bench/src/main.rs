//! Matmul throughput of t2v-kernels against burn's wgpu backend, same device, same shapes,
//! same run. Each timed region ends by reading one output element back (so lazy/batched
//! execution has really finished) and that element is checked against the CPU.
//!
//!   cargo run --release -p t2v-peer-bench [-- --quick | --large]

use burn::backend::wgpu::{Wgpu, WgpuDevice};
use burn::tensor::{Tensor as BTensor, TensorData};
use t2v_kernels::bench::{best_time, check_value, pseudo_data};
use t2v_kernels::{ops, Gpu, GpuOptions, Tensor};

/// `C[0][0]` of A (m x k) B (k x n) in f64.
fn c00(a: &[f32], b: &[f32], k: usize, n: usize) -> f64 {
    (0..k).map(|l| a[l] as f64 * b[l * n] as f64).sum()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gpu = Gpu::new(&GpuOptions::default()).expect("a wgpu adapter");
    let cpu = gpu.is_cpu();
    let quick = args.iter().any(|a| a == "--quick");
    let large = args.iter().any(|a| a == "--large") || !cpu;
    let mut shapes: Vec<(usize, usize, usize)> = vec![(256, 256, 256), (512, 512, 512), (1024, 1024, 1024)];
    if !quick {
        shapes.extend([(2560, 320, 320), (640, 1280, 1280)]);
    }
    if large {
        shapes.extend([(2048, 2048, 2048), (4096, 4096, 4096)]);
    }
    let device = WgpuDevice::default();
    let budget = if cpu { 3.0 } else { 1.0 };
    println!("device: {} ({:?}, {:?})", gpu.adapter_info().name, gpu.adapter_info().backend, gpu.adapter_info().device_type);
    println!("| M x K x N | t2v-kernels GFLOP/s | burn-wgpu GFLOP/s | ratio |");
    println!("|---|---:|---:|---:|");
    for (m, k, n) in shapes {
        let (av, bv) = (pseudo_data(m * k, 1), pseudo_data(k * n, 2));
        let want = c00(&av, &bv, k, n);
        let flop = 2.0 * (m * n * k) as f64;

        let a = Tensor::from_slice(&gpu, &[m, k], &av).unwrap();
        let b = Tensor::from_slice(&gpu, &[k, n], &bv).unwrap();
        let ours = best_time(budget, 3, || {
            let c = ops::matmul(&a, &b).unwrap();
            check_value("t2v-kernels C[0,0]", c.item_at(0).unwrap(), want, 1e-4);
        });

        let ba = BTensor::<Wgpu, 2>::from_data(TensorData::new(av.clone(), [m, k]), &device);
        let bb = BTensor::<Wgpu, 2>::from_data(TensorData::new(bv.clone(), [k, n]), &device);
        let peer = best_time(budget, 3, || {
            let c = ba.clone().matmul(bb.clone());
            let v: f32 = c.slice([0..1, 0..1]).into_scalar();
            check_value("burn C[0,0]", v, want, 1e-4);
        });
        let (g_ours, g_peer) = (flop / ours * 1e-9, flop / peer * 1e-9);
        println!("| {m} x {k} x {n} | {g_ours:.1} | {g_peer:.1} | {:.2}x |", g_ours / g_peer);
    }
}
