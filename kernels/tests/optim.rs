//! AdamW, clipping, state files, finiteness checks, and a small network that learns.
mod common;
use common::*;
use t2v_kernels::autograd::{self as ad, Tape};
use t2v_kernels::optim::{check_finite, global_norm, AdamW, AdamWConfig, ParamGroup};
use t2v_kernels::{Error, Tensor};

/// torch.optim.AdamW on the host, for one parameter.
struct HostAdamW {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl HostAdamW {
    fn step(&mut self, p: &mut [f64], g: &[f64], lr: f64, wd: f64, c: &AdamWConfig) {
        self.t += 1;
        let (b1, b2) = (c.beta1 as f64, c.beta2 as f64);
        let (bc1, bc2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        for i in 0..p.len() {
            p[i] *= 1.0 - lr * wd;
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
            p[i] -= lr / bc1 * self.m[i] / (self.v[i].sqrt() / bc2.sqrt() + c.eps as f64);
        }
    }
}

#[test]
fn adamw_matches_torch_with_groups_and_clipping() {
    let g = gpu();
    let c = AdamWConfig { lr: 0.05, weight_decay: 0.1, ..Default::default() };
    let (p0, p0v) = rand_tensor(&[7, 3], 1, -1.0, 1.0);
    let (p1, p1v) = rand_tensor(&[5], 2, -1.0, 1.0);
    let mut opt = AdamW::new(c, vec![
        ParamGroup { params: vec![p0.clone()], lr_scale: 1.0, weight_decay: None },
        ParamGroup { params: vec![p1.clone()], lr_scale: 0.5, weight_decay: Some(0.0) },
    ]);
    let (mut h0, mut h1) = (to64(&p0v), to64(&p1v));
    let mut s0 = HostAdamW { m: vec![0.0; 21], v: vec![0.0; 21], t: 0 };
    let mut s1 = HostAdamW { m: vec![0.0; 5], v: vec![0.0; 5], t: 0 };
    for step in 0..4 {
        let g0 = Rng::new(10 + step).uniform(21, -2.0, 2.0);
        let g1 = Rng::new(20 + step).uniform(5, -2.0, 2.0);
        let grads = [Tensor::from_slice(g, &[7, 3], &g0).unwrap(), Tensor::from_slice(g, &[5], &g1).unwrap()];
        let info = opt.step(&grads, Some(1.5)).unwrap();
        let norm: f64 = g0.iter().chain(&g1).map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((info.grad_norm.item_at(0).unwrap() as f64 - norm).abs() < 1e-4 * norm);
        let clip = (1.5 / (norm + 1e-6)).min(1.0);
        s0.step(&mut h0, &to64(&g0).iter().map(|x| x * clip).collect::<Vec<_>>(), 0.05, 0.1, &c);
        s1.step(&mut h1, &to64(&g1).iter().map(|x| x * clip).collect::<Vec<_>>(), 0.025, 0.0, &c);
        assert_close(&format!("param 0 step {step}"), &p0.to_vec().unwrap(), &h0, 2e-6, 2e-5);
        assert_close(&format!("param 1 step {step}"), &p1.to_vec().unwrap(), &h1, 2e-6, 2e-5);
    }
    assert_eq!(opt.steps(), 4);
    let bad = opt.step(&[Tensor::zeros(g, &[21]).unwrap(), Tensor::zeros(g, &[5]).unwrap()], None).unwrap_err();
    assert!(bad.to_string().contains("shape"), "{bad}");
}

#[test]
fn state_round_trips_and_resumes_exactly() {
    let g = gpu();
    let dir = std::env::temp_dir().join(format!("t2v-optim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("opt.safetensors");
    let init = Rng::new(3).uniform(12, -1.0, 1.0);
    let grads: Vec<Tensor> = (0..5).map(|s| Tensor::from_slice(g, &[3, 4], &Rng::new(40 + s).uniform(12, -1.0, 1.0)).unwrap()).collect();
    let make = || {
        let p = Tensor::from_slice(g, &[3, 4], &init).unwrap();
        (p.clone(), AdamW::new(AdamWConfig { lr: 0.01, ..Default::default() }, vec![ParamGroup { params: vec![p], lr_scale: 1.0, weight_decay: None }]))
    };
    // uninterrupted: 5 steps
    let (pa, mut a) = make();
    for gr in &grads {
        a.step(std::slice::from_ref(gr), Some(1.0)).unwrap();
    }
    // interrupted after 3: save params + state, restore into fresh objects, 2 more
    let (pb, mut b) = make();
    for gr in &grads[..3] {
        b.step(std::slice::from_ref(gr), Some(1.0)).unwrap();
    }
    b.save(&path).unwrap();
    let saved_params = pb.to_vec().unwrap();
    let (pc, mut c) = make();
    pc.write(&saved_params).unwrap();
    c.load(&path).unwrap();
    assert_eq!(c.steps(), 3);
    for gr in &grads[3..] {
        c.step(std::slice::from_ref(gr), Some(1.0)).unwrap();
    }
    assert_eq!(pc.to_vec().unwrap(), pa.to_vec().unwrap(), "resumed run equals the uninterrupted one bit for bit");
    // wrong files are refused with the path in the message
    std::fs::write(dir.join("junk.safetensors"), b"not a safetensors file").unwrap();
    let e = c.load(&dir.join("junk.safetensors")).unwrap_err().to_string();
    assert!(e.contains("junk.safetensors"), "{e}");
    let (_, mut other) = {
        let p = Tensor::zeros(g, &[2]).unwrap();
        (p.clone(), AdamW::new(AdamWConfig::default(), vec![ParamGroup { params: vec![p.clone(), p], lr_scale: 1.0, weight_decay: None }]))
    };
    assert!(other.load(&path).unwrap_err().to_string().contains("parameters"));
    assert!(c.load(&dir.join("missing.safetensors")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn norms_and_non_finite_values() {
    let g = gpu();
    let a = Tensor::from_slice(g, &[2], &[3.0, 4.0]).unwrap();
    let b = Tensor::from_slice(g, &[1], &[12.0]).unwrap();
    assert_eq!(global_norm(&[a.clone(), b]).unwrap().item_at(0).unwrap(), 13.0);
    // many tensors of odd sizes, some spanning several partial sums, one empty
    let sizes = [1usize, 7, 4095, 4096, 4097, 13_001, 0, 33];
    let mut want = 0f64;
    let ts: Vec<Tensor> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let v: Vec<f32> = (0..n).map(|j| ((j * 31 + i * 7) % 97) as f32 / 48.0 - 1.0).collect();
            want += v.iter().map(|&x| x as f64 * x as f64).sum::<f64>();
            Tensor::from_slice(g, &[n], &v).unwrap()
        })
        .collect();
    let got = global_norm(&ts).unwrap().item_at(0).unwrap() as f64;
    assert!((got - want.sqrt()).abs() <= 1e-5 * want.sqrt(), "{got} vs {}", want.sqrt());
    check_finite(&[("a", &a)]).unwrap();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let t = Tensor::from_slice(g, &[3], &[1.0, bad, 2.0]).unwrap();
        let e = check_finite(&[("a", &a), ("grad of w", &t)]).unwrap_err();
        assert!(matches!(&e, Error::NonFinite { what } if what == "grad of w"), "{e}");
    }
}

#[test]
fn a_small_network_learns_on_this_device() {
    // y = sin(2 x0) + x1^2 - 0.5 x2 from 64 samples, a 3-32-1 SiLU MLP, AdamW.
    let g = gpu();
    let n = 64;
    let x = Rng::new(5).uniform(n * 3, -1.0, 1.0);
    let y: Vec<f32> = (0..n).map(|i| (2.0 * x[3 * i]).sin() + x[3 * i + 1].powi(2) - 0.5 * x[3 * i + 2]).collect();
    let xt = Tensor::from_slice(g, &[n, 3], &x).unwrap();
    let yt = Tensor::from_slice(g, &[n, 1], &y).unwrap();
    let params: Vec<Tensor> = [(vec![32, 3], 6, 0.5), (vec![32], 7, 0.1), (vec![1, 32], 8, 0.2), (vec![1], 9, 0.1)]
        .into_iter()
        .map(|(s, seed, a)| Tensor::from_slice(g, &s, &Rng::new(seed).uniform(numel(&s), -a, a)).unwrap())
        .collect();
    let mut opt = AdamW::new(AdamWConfig { lr: 0.02, weight_decay: 0.0, ..Default::default() }, vec![ParamGroup { params: params.clone(), lr_scale: 1.0, weight_decay: None }]);
    let mut losses = vec![];
    for step in 0..300 {
        let tape = Tape::new();
        let p: Vec<_> = params.iter().map(|t| tape.leaf(t.clone())).collect();
        let h = ad::silu(&ad::linear(&tape.constant(xt.clone()), &p[0], Some(&p[1])).unwrap()).unwrap();
        let out = ad::linear(&h, &p[2], Some(&p[3])).unwrap();
        let loss = ad::mse(&out, &tape.constant(yt.clone())).unwrap();
        let mut grads = tape.backward(&loss).unwrap();
        let gs: Vec<Tensor> = p.iter().map(|v| grads.take(v).unwrap()).collect();
        opt.step(&gs, Some(1.0)).unwrap();
        if step % 50 == 0 || step == 299 {
            losses.push(loss.value().item_at(0).unwrap());
        }
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    // The data variance is ~0.85 (the first loss): learning means a 20x reduction.
    assert!(last < 0.05 && last < first / 20.0, "loss went {first} -> {last} ({losses:?})");
}
