//! `t2v-turbo info`: adapters, features, limits, and a self-check of the chosen device.

use t2v_kernels::{list_adapters, ops, AdapterSummary, Gpu, GpuOptions, Tensor, OPTIONAL_FEATURES};

use super::{CliError, DeviceArgs};

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Only list adapters; do not open a device and run the self-check.
    #[arg(long)]
    pub no_check: bool,
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
}

fn describe(a: &AdapterSummary) -> String {
    let f = |flag: wgpu::Features, name: &str| format!("{name} {}", if a.features.contains(flag) { "yes" } else { "no" });
    let l = &a.limits;
    format!(
        "{}\n      features: {}, {}, {}\n      limits: buffer {}, storage binding {}, workgroup memory {} KiB, \
         invocations/workgroup {}, workgroups/dim {}, subgroup size {}..{}",
        a.line(),
        f(wgpu::Features::SHADER_F16, "SHADER_F16"),
        f(wgpu::Features::SUBGROUP, "SUBGROUP"),
        f(wgpu::Features::TIMESTAMP_QUERY, "TIMESTAMP_QUERY"),
        mib(l.max_buffer_size),
        mib(l.max_storage_buffer_binding_size as u64),
        l.max_compute_workgroup_storage_size / 1024,
        l.max_compute_invocations_per_workgroup,
        l.max_compute_workgroups_per_dimension,
        a.info.subgroup_min_size,
        a.info.subgroup_max_size,
    )
}

pub fn run(dev: &DeviceArgs, args: &InfoArgs) -> Result<(), CliError> {
    let adapters = list_adapters();
    println!("t2v-turbo {} — {} adapter(s):", env!("CARGO_PKG_VERSION"), adapters.len());
    for a in &adapters {
        println!("  {}", describe(a));
    }
    if args.no_check {
        return Ok(());
    }
    let gpu = Gpu::new(&GpuOptions { adapter: dev.adapter.clone(), quiet: true, ..Default::default() })?;
    let info = gpu.adapter_info();
    let enabled: Vec<String> = (gpu.features() & OPTIONAL_FEATURES).iter_names().map(|(n, _)| n.to_string()).collect();
    println!(
        "chosen: {} ({:?}, {:?}); optional features enabled: {}; largest tensor {}",
        info.name,
        info.backend,
        info.device_type,
        if enabled.is_empty() { "none".into() } else { enabled.join(", ") },
        mib(gpu.max_binding_bytes())
    );
    // Self-check: a small matmul and softmax against the host.
    let (m, k, n) = (37usize, 53usize, 29usize);
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0).collect();
    let c = ops::matmul(&Tensor::from_slice(&gpu, &[m, k], &a)?, &Tensor::from_slice(&gpu, &[k, n], &b)?)?;
    let got = c.to_vec()?;
    let mut worst = 0f64;
    for i in 0..m {
        for j in 0..n {
            let want: f64 = (0..k).map(|l| a[i * k + l] as f64 * b[l * n + j] as f64).sum();
            worst = worst.max((got[i * n + j] as f64 - want).abs());
        }
    }
    if worst > 1e-4 {
        return Err(CliError::Check(format!("self-check failed: matmul differs from the CPU by {worst:e}")));
    }
    println!("self-check: matmul {m}x{k}x{n} matches the CPU (max error {worst:.1e}) — ok");
    Ok(())
}
