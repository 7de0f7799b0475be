//! The runtime: adapters, pool reuse, profiling, readback, errors, host-owned devices.
mod common;
use common::*;
use t2v_kernels::{list_adapters, ops, DType, Error, Gpu, GpuOptions, Tensor};

#[test]
fn adapters_are_listed_and_selectable() {
    let list = list_adapters();
    assert!(!list.is_empty());
    let g = gpu();
    let name = g.adapter_info().name.clone();
    // By index and by a part of the name.
    let idx = list.iter().find(|a| a.info.name == name).unwrap().index;
    let by_index = Gpu::new(&GpuOptions { adapter: Some(idx.to_string()), quiet: true, ..Default::default() }).unwrap();
    assert_eq!(by_index.adapter_info().name, name);
    let part = name.split_whitespace().next().unwrap().to_lowercase();
    assert!(Gpu::new(&GpuOptions { adapter: Some(part), quiet: true, ..Default::default() }).is_ok());
    let e = Gpu::new(&GpuOptions { adapter: Some("no-such-adapter-xyz".into()), quiet: true, ..Default::default() }).unwrap_err();
    assert!(matches!(e, Error::AdapterNotFound { .. }));
    assert!(e.to_string().contains(&name), "lists what is available: {e}");
    // The device got the adapter's limits, not wgpu's defaults.
    let adapter_limits = &list[idx].limits;
    assert_eq!(g.limits().max_storage_buffer_binding_size, adapter_limits.max_storage_buffer_binding_size);
    assert_eq!(g.limits().max_buffer_size, adapter_limits.max_buffer_size);
}

#[test]
fn steady_state_loop_allocates_nothing_new() {
    let g = private_gpu();
    let x = Tensor::from_slice(&g, &[33, 17], &Rng::new(1).uniform(33 * 17, -1.0, 1.0)).unwrap();
    let w = Tensor::from_slice(&g, &[9, 17], &Rng::new(2).uniform(9 * 17, -1.0, 1.0)).unwrap();
    let step = |x: &Tensor| -> f32 {
        let h = ops::silu(&ops::linear(x, &w, None).unwrap()).unwrap();
        let s = ops::softmax(&h).unwrap();
        ops::sum(&ops::sum(&s, -1).unwrap(), 0).unwrap().item_at(0).unwrap()
    };
    let first = step(&x);
    assert!((first - 33.0).abs() < 1e-3, "softmax rows sum to 1: {first}");
    let warm = g.memory();
    for _ in 0..5 {
        step(&x);
    }
    let after = g.memory();
    assert_eq!(after.allocations, warm.allocations, "no new buffers in steady state");
    assert!(after.reuses > warm.reuses);
    assert_eq!(after.live_bytes, warm.live_bytes);
    assert!(after.peak_total_bytes >= after.live_bytes);
    g.trim_pool();
    assert_eq!(g.memory().pooled_bytes, 0);
    drop(x);
    assert!(g.memory().live_bytes < after.live_bytes, "dropping a tensor returns its buffer");
}

/// A memory limit keeps tensors and pool under it by freeing pooled buffers (the same
/// results), and refuses an allocation that cannot fit with a clear error.
#[test]
fn a_memory_limit_bounds_the_pool_and_refuses_beyond_it() {
    // buffers of many sizes, each dropped after its step: without a limit the pool keeps
    // them all
    let work = |g: &Gpu| -> Result<Vec<f32>, Error> {
        let mut outs = Vec::new();
        for n in [40usize, 56, 72, 88, 104, 120, 136] {
            let a = Tensor::from_slice(g, &[n, n], &Rng::new(n as u64).uniform(n * n, -1.0, 1.0))?;
            let c = ops::silu(&ops::matmul(&a, &a)?)?;
            outs.push(ops::sum(&ops::sum(&c, -1)?, 0)?.item_at(0)?);
        }
        Ok(outs)
    };
    let free = private_gpu();
    let want = work(&free).unwrap();
    let m = free.memory();
    assert!(m.peak_total_bytes > 2 * m.peak_live_bytes, "the workload should leave much pooled: {m:?}");
    let limit = (m.peak_live_bytes + m.peak_total_bytes) / 2;
    let capped = Gpu::new(&GpuOptions { quiet: true, memory_limit: Some(limit), ..Default::default() }).unwrap();
    assert_eq!(capped.memory_limit(), Some(limit));
    assert_eq!(work(&capped).unwrap(), want, "results under the limit");
    let c = capped.memory();
    assert!(c.peak_total_bytes <= limit && c.peak_live_bytes == m.peak_live_bytes, "{c:?} under {limit}");
    // too little for the tensors alive at once
    capped.set_memory_limit(Some(m.peak_live_bytes / 2));
    let e = work(&capped).unwrap_err();
    assert!(matches!(e, Error::OutOfMemory { .. }) && e.to_string().contains("over the memory limit"), "{e}");
    capped.set_memory_limit(None);
    assert_eq!(work(&capped).unwrap(), want, "after lifting the limit");
}

#[test]
fn profiling_reports_kernels_or_says_why_not() {
    let g = private_gpu();
    match g.set_profiling(true) {
        Ok(()) => {
            let (a, _) = (Tensor::full(&g, &[64, 64], 1.0).unwrap(), ());
            let c = ops::matmul(&a, &a).unwrap();
            assert_eq!(c.item_at(0).unwrap(), 64.0);
            let rows = g.profile().unwrap();
            let gemm = rows.iter().find(|r| r.kernel.starts_with("gemm")).expect("gemm row");
            assert_eq!(gemm.calls, 1);
            assert!(gemm.total_ms >= 0.0);
            // the GEMM states its shape (M x K x N) and FLOPs; an elementwise kernel does not
            assert_eq!((gemm.shape.as_str(), gemm.flop), ("64x64x64", 2.0 * 64f64.powi(3)));
            let c2 = ops::scale(&c, 2.0).unwrap();
            assert_eq!(c2.item_at(0).unwrap(), 128.0);
            let rows = g.profile().unwrap();
            let scale = rows.iter().find(|r| !r.kernel.starts_with("gemm")).expect("elementwise row");
            assert_eq!((scale.shape.as_str(), scale.flop), ("", 0.0));
            let table = g.profile_table().unwrap();
            assert!(table.contains("gemm") && table.contains("64x64x64") && table.contains("GFLOP/s"), "{table}");
        }
        Err(e) => assert!(e.to_string().contains("TIMESTAMP_QUERY"), "{e}"),
    }
}

#[test]
fn upload_readback_and_reshape_errors() {
    let g = gpu();
    let e = Tensor::from_slice(g, &[2, 3], &[1.0; 5]).unwrap_err();
    assert!(e.to_string().contains("5 values") && e.to_string().contains("[2, 3]"), "{e}");
    let t = Tensor::from_slice(g, &[2, 3], &[1., 2., 3., 4., 5., 6.]).unwrap();
    assert!(t.reshape(&[4, 2]).unwrap_err().to_string().contains("[2, 3]"));
    let r = t.reshape(&[3, 2]).unwrap();
    assert!(r.same_storage(&t));
    assert_eq!(r.to_vec().unwrap(), vec![1., 2., 3., 4., 5., 6.]);
    assert!(matches!(t.to_vec_u32().unwrap_err(), Error::DType { .. }));
    let u = Tensor::from_u32(g, &[3], &[7, 8, 9]).unwrap();
    assert_eq!(u.dtype(), DType::U32);
    assert_eq!(u.to_vec_u32().unwrap(), vec![7, 8, 9]);
    assert!(matches!(ops::exp(&u).unwrap_err(), Error::DType { .. }));
    // Writes are ordered after earlier kernels that read the old contents.
    let y = ops::scale(&t, 2.0).unwrap();
    t.write(&[0.0; 6]).unwrap();
    assert_eq!(y.to_vec().unwrap(), vec![2., 4., 6., 8., 10., 12.]);
    assert_eq!(t.to_vec().unwrap(), vec![0.0; 6]);
    // an on-device copy lands in order with the recorded work: a kernel recorded before it
    // reads the old contents, one after it the new; views of the buffer see it
    let before = ops::scale(&t, 1.0).unwrap();
    t.copy_from(&y).unwrap();
    let after = ops::scale(&t, 1.0).unwrap();
    assert_eq!(before.to_vec().unwrap(), vec![0.0; 6]);
    assert_eq!(after.to_vec().unwrap(), y.to_vec().unwrap());
    assert_eq!(t.reshape(&[6]).unwrap().to_vec().unwrap(), y.to_vec().unwrap());
    let e = t.copy_from(&Tensor::zeros(g, &[5]).unwrap()).unwrap_err();
    assert!(matches!(e, Error::Shape { op: "copy_from", .. }), "{e}");
}

#[test]
fn oversized_tensors_are_refused_before_any_dispatch() {
    let g = gpu();
    let limit = g.max_binding_bytes();
    let elems = (limit / 4 + 1) as usize;
    let e = Tensor::zeros(g, &[elems]).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("zeros"), "{e}");
    // the device still works
    assert_eq!(Tensor::full(g, &[3], 1.5).unwrap().to_vec().unwrap(), vec![1.5; 3]);
}

#[test]
fn a_host_applications_device_can_be_lent() {
    // What an embedding application does: it owns instance, adapter, device and queue.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default())).unwrap();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).unwrap();
    let g = Gpu::from_device(device.clone(), queue);
    assert_eq!(g.adapter_info().name, adapter.get_info().name);
    let a = Tensor::from_slice(&g, &[2, 2], &[1., 2., 3., 4.]).unwrap();
    let c = ops::matmul(&a, &a).unwrap();
    assert_eq!(c.to_vec().unwrap(), vec![7., 10., 15., 22.]);
    assert_eq!(g.device().limits().max_buffer_size, device.limits().max_buffer_size);
}

#[test]
fn the_host_runs_at_most_a_few_batches_ahead() {
    // thousands of dispatches with no readback: the scheduler submits them in batches and
    // waits for the oldest once MAX_IN_FLIGHT are queued; a sync leaves none in flight
    let g = private_gpu();
    let mut x = Tensor::from_slice(&g, &[64], &Rng::new(3).uniform(64, -1.0, 1.0)).unwrap();
    let want: Vec<f32> = x.to_vec().unwrap().iter().map(|v| v * 1.0001f32.powi(3000)).collect();
    let mut most = 0;
    for _ in 0..3000 {
        x = ops::scale(&x, 1.0001).unwrap();
        most = most.max(g.submissions_in_flight());
    }
    assert!(most >= 2 && most <= t2v_kernels::MAX_IN_FLIGHT, "{most} batches in flight");
    let got = x.to_vec().unwrap();
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{a} vs {b}");
    }
    g.sync().unwrap();
    assert_eq!(g.submissions_in_flight(), 0);
}

/// `Tensor::read_many` / `read_each` read tensors back in one round trip per staging buffer: the same
/// values as one `to_vec` each, in order, with the groups split where the cap says (a
/// tensor above the cap alone), written-to-after values seen, empty tensors kept.
#[test]
fn many_tensors_read_back_at_once() {
    let g = gpu();
    let shapes: [&[usize]; 6] = [&[7, 3], &[0], &[1], &[33, 5], &[2, 3, 5], &[11]];
    let tensors: Vec<(Tensor, Vec<f32>)> = shapes.iter().enumerate().map(|(i, s)| rand_on(g, s, 40 + i as u64, -2.0, 2.0)).collect();
    // recorded work that the readback must wait for
    let doubled = ops::scale(&tensors[3].0, 2.0).unwrap();
    let mut refs: Vec<&Tensor> = tensors.iter().map(|t| &t.0).collect();
    refs.push(&doubled);
    let mut want: Vec<Vec<f32>> = tensors.iter().map(|t| t.1.clone()).collect();
    want.push(tensors[3].1.iter().map(|x| 2.0 * x).collect());
    assert_eq!(Tensor::read_many(&refs).unwrap(), want);
    // staging of 100 bytes: [7x3 = 84 bytes, 0, 1 = 4 bytes] [33x5 alone] [2x3x5] [11, ...]
    for cap in [4, 100, 700, 1 << 20] {
        let mut got = Vec::new();
        Tensor::read_each_staged(&refs, cap, |i, v| -> Result<(), Error> {
            got.push((i, bytemuck::pod_collect_to_vec::<u8, f32>(&v)));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, want.iter().cloned().enumerate().collect::<Vec<_>>(), "cap {cap}");
    }
    assert!(Tensor::read_many(&[]).unwrap().is_empty());
    // values: f32 only; bytes: any dtype
    let u = Tensor::from_u32(g, &[2], &[1, 2]).unwrap();
    assert!(Tensor::read_many(&[&tensors[0].0, &u]).is_err());
    let mut bytes = Vec::new();
    Tensor::read_each_bytes(&[&u, &tensors[2].0], |_, b| -> Result<(), Error> {
        bytes.push(b);
        Ok(())
    })
    .unwrap();
    assert_eq!(bytes, vec![bytemuck::cast_slice::<u32, u8>(&[1, 2]).to_vec(), tensors[2].1[0].to_le_bytes().to_vec()]);
    // one device
    let other = private_gpu();
    let (t2, _) = rand_on(&other, &[3], 1, 0.0, 1.0);
    let e = Tensor::read_many(&[&tensors[0].0, &t2]).unwrap_err().to_string();
    assert!(e.contains("different devices"), "{e}");
}

/// `io::write_safetensors` streams tensors from the device into a file the safetensors
/// crate reads back (dtypes, shapes, bytes, metadata with characters JSON escapes); a
/// wrong byte count is refused and leaves the earlier file as it was.
#[test]
fn safetensors_files_are_written_streamed() {
    use t2v_kernels::io::{write_safetensors, SafetensorsEntry};
    let g = gpu();
    let (a, av) = rand_on(g, &[3, 5], 7, -1.0, 1.0);
    let u = Tensor::from_u32(g, &[4], &[1, 2, 3, u32::MAX]).unwrap();
    let (e, _) = rand_on(g, &[0], 8, 0.0, 1.0);
    let entries: Vec<SafetensorsEntry> = vec![
        ("z.first".into(), safetensors::Dtype::F32, vec![3, 5]),
        ("a.words".into(), safetensors::Dtype::U32, vec![4]),
        ("empty".into(), safetensors::Dtype::F32, vec![0]),
    ];
    let meta = vec![("format".to_string(), "test".to_string()), ("note".to_string(), "a \"quoted\"\nline, ü, \\".to_string())];
    let dir = std::env::temp_dir().join(format!("t2v-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.safetensors");
    let write = |skip_last_byte: bool| {
        write_safetensors(&path, &entries, &meta, |w| {
            Tensor::read_each_bytes(&[&a, &u, &e], |i, bytes| {
                let n = if skip_last_byte && i == 1 { bytes.len() - 1 } else { bytes.len() };
                w.write_all(&bytes[..n]).map_err(|e| Error::Io { path: "test".into(), msg: e.to_string() })
            })
        })
    };
    write(false).unwrap();
    let file = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&file).unwrap();
    assert_eq!(st.tensor("z.first").unwrap().data(), bytemuck::cast_slice::<f32, u8>(&av));
    assert_eq!(st.tensor("z.first").unwrap().shape(), &[3, 5]);
    assert_eq!(st.tensor("a.words").unwrap().dtype(), safetensors::Dtype::U32);
    assert_eq!(st.tensor("a.words").unwrap().data(), bytemuck::cast_slice::<u32, u8>(&[1, 2, 3, u32::MAX]));
    assert_eq!(st.tensor("empty").unwrap().shape(), &[0]);
    let (header, m) = safetensors::SafeTensors::read_metadata(&file).unwrap();
    assert_eq!(header % 8, 0, "data 8-byte aligned");
    let m = m.metadata().clone().unwrap();
    assert_eq!(m.get("note").unwrap(), &meta[1].1);
    // a byte short: refused, the file as it was, no temporary file left
    let err = write(true).unwrap_err().to_string();
    assert!(err.contains("bytes of tensor data written"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), file);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
