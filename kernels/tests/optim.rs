//! AdamW, clipping, state files, finiteness checks, and a small network that learns.
mod common;
use common::*;
use t2v_kernels::autograd::{self as ad, Tape};
use t2v_kernels::optim::{check_finite, dynamic_map, global_norm, state_bytes, AdamW, AdamWConfig, ParamGroup, Q8_BLOCK};
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
        ParamGroup { params: vec![p0.clone()], lr_scale: 1.0, weight_decay: None, clipped: true },
        ParamGroup { params: vec![p1.clone()], lr_scale: 0.5, weight_decay: Some(0.0), clipped: true },
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

/// A group outside the clipping (like parameters left out of torch's clip_grad_norm_):
/// the norm and the scale come from the clipped group alone, its own gradients are used
/// as they are, and its norm is reported apart.
#[test]
fn a_group_can_stay_outside_the_clipping() {
    let g = gpu();
    // an epsilon that makes the update depend on the gradient's scale (Adam's is
    // otherwise nearly scale-free, so a wrong clip would hardly show)
    let c = AdamWConfig { lr: 0.05, eps: 1.0, weight_decay: 0.0, ..Default::default() };
    let (p0, p0v) = rand_tensor(&[4, 5], 3, -1.0, 1.0);
    let (p1, p1v) = rand_tensor(&[3, 3], 4, -1.0, 1.0);
    let mut opt = AdamW::new(c, vec![
        ParamGroup { params: vec![p0.clone()], lr_scale: 1.0, weight_decay: None, clipped: true },
        ParamGroup { params: vec![p1.clone()], lr_scale: 1.0, weight_decay: None, clipped: false },
    ]);
    let (mut h0, mut h1) = (to64(&p0v), to64(&p1v));
    let mut s0 = HostAdamW { m: vec![0.0; 20], v: vec![0.0; 20], t: 0 };
    let mut s1 = HostAdamW { m: vec![0.0; 9], v: vec![0.0; 9], t: 0 };
    for step in 0..3 {
        let g0 = Rng::new(30 + step).uniform(20, -2.0, 2.0);
        // large enough that a norm over both groups would clip differently
        let g1 = Rng::new(40 + step).uniform(9, -20.0, 20.0);
        let grads = [Tensor::from_slice(g, &[4, 5], &g0).unwrap(), Tensor::from_slice(g, &[3, 3], &g1).unwrap()];
        let info = opt.step(&grads, Some(0.5)).unwrap();
        let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let (n0, n1) = (norm(&g0), norm(&g1));
        assert!((info.grad_norm.item_at(0).unwrap() as f64 - n0).abs() < 1e-4 * n0);
        assert!((info.unclipped_norm.as_ref().unwrap().item_at(0).unwrap() as f64 - n1).abs() < 1e-4 * n1);
        let clip = (0.5 / (n0 + 1e-6)).min(1.0);
        assert!(clip < 1.0);
        s0.step(&mut h0, &to64(&g0).iter().map(|x| x * clip).collect::<Vec<_>>(), 0.05, 0.0, &c);
        s1.step(&mut h1, &to64(&g1), 0.05, 0.0, &c);
        assert_close(&format!("clipped param step {step}"), &p0.to_vec().unwrap(), &h0, 2e-6, 2e-5);
        assert_close(&format!("unclipped param step {step}"), &p1.to_vec().unwrap(), &h1, 2e-6, 2e-5);
    }
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
        (p.clone(), AdamW::new(AdamWConfig { lr: 0.01, ..Default::default() }, vec![ParamGroup { params: vec![p], lr_scale: 1.0, weight_decay: None, clipped: true }]))
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
        (p.clone(), AdamW::new(AdamWConfig::default(), vec![ParamGroup { params: vec![p.clone(), p], lr_scale: 1.0, weight_decay: None, clipped: true }]))
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
    let mut opt = AdamW::new(AdamWConfig { lr: 0.02, weight_decay: 0.0, ..Default::default() }, vec![ParamGroup { params: params.clone(), lr_scale: 1.0, weight_decay: None, clipped: true }]);
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

/// bitsandbytes' block-wise 8-bit AdamW on the host, in f32 like the kernel, for one
/// parameter of at least Q8_MIN_ELEMENTS elements.
struct HostAdamW8 {
    m: Vec<u8>,
    v: Vec<u8>,
    absmax: [Vec<f32>; 2],
    t: i32,
}

fn nearest_code(codes: &[f32; 256], x: f32) -> u8 {
    // argmin |x - code|, the first on a tie
    let mut best = 0;
    for (k, c) in codes.iter().enumerate() {
        if (x - c).abs() < (x - codes[best]).abs() {
            best = k;
        }
    }
    best as u8
}

impl HostAdamW8 {
    fn new(n: usize) -> HostAdamW8 {
        let zero = dynamic_map(true).iter().position(|&c| c == 0.0).unwrap() as u8;
        let blocks = n.div_ceil(Q8_BLOCK);
        HostAdamW8 { m: vec![zero; n], v: vec![0; n], absmax: [vec![1.0; blocks], vec![1.0; blocks]], t: 0 }
    }
    fn step(&mut self, p: &mut [f32], g: &[f32], c: &AdamWConfig) {
        let (s, u) = (dynamic_map(true), dynamic_map(false));
        self.t += 1;
        let bc1 = 1.0 - c.beta1.powi(self.t);
        let bc2_sqrt = (1.0 - c.beta2.powi(self.t)).sqrt();
        for (b, chunk) in (0..p.len()).collect::<Vec<_>>().chunks(Q8_BLOCK).enumerate() {
            let mut mv = Vec::new();
            for &i in chunk {
                let m = c.beta1 * (s[self.m[i] as usize] * self.absmax[0][b]) + (1.0 - c.beta1) * g[i];
                let v = c.beta2 * (u[self.v[i] as usize] * self.absmax[1][b]) + (1.0 - c.beta2) * g[i] * g[i];
                let x = p[i] * (1.0 - c.lr * c.weight_decay);
                p[i] = x - (c.lr / bc1) * m / (v.sqrt() / bc2_sqrt + c.eps);
                mv.push((i, m, v));
            }
            let am = mv.iter().map(|e| e.1.abs()).fold(0.0f32, f32::max);
            let av = mv.iter().map(|e| e.2).fold(0.0f32, f32::max);
            let (am, av) = (if am == 0.0 { 1.0 } else { am }, if av == 0.0 { 1.0 } else { av });
            for (i, m, v) in mv {
                self.m[i] = nearest_code(&s, m / am);
                self.v[i] = nearest_code(&u, v / av);
            }
            self.absmax[0][b] = am;
            self.absmax[1][b] = av;
        }
    }
}

/// The 8-bit states of parameter `i` in a state file: (m codes, v codes, absmax).
fn q8_state(path: &std::path::Path, i: usize, n: usize) -> (Vec<u8>, Vec<u8>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let codes = |name: String| st.tensor(&name).unwrap().data()[..n].to_vec();
    let absmax = bytemuck::pod_collect_to_vec(st.tensor(&format!("{i}.absmax")).unwrap().data());
    (codes(format!("{i}.exp_avg.q8")), codes(format!("{i}.exp_avg_sq.q8")), absmax)
}

/// AdamW with 8-bit states against the block-wise quantised update on the host, on sizes
/// that leave the last block partial: the same parameters (f32 rounding apart), the same
/// codes but for rare neighbours where a value sits at the midpoint of two codes, the same
/// block maxima; parameters under Q8_MIN_ELEMENTS keep f32 states; a quarter of the state
/// memory; a saved and reloaded state continues bit for bit; a state of the other kind is
/// refused.
#[test]
fn adamw_8bit_states_match_blockwise_quantisation() {
    let g = gpu();
    let c = AdamWConfig { lr: 0.01, weight_decay: 0.05, eight_bit: true, ..Default::default() };
    let shapes = [vec![4133], vec![67, 131], vec![5, 3]];
    let ns: Vec<usize> = shapes.iter().map(|s| numel(s)).collect();
    let init: Vec<(Tensor, Vec<f32>)> = shapes.iter().enumerate().map(|(k, s)| rand_tensor(s, 30 + k as u64, -1.0, 1.0)).collect();
    let params: Vec<Tensor> = init.iter().map(|(t, _)| t.clone()).collect();
    let mut opt = AdamW::new(c, vec![ParamGroup { params: params.clone(), lr_scale: 1.0, weight_decay: None, clipped: true }]);
    let mut host: Vec<Vec<f32>> = init.iter().map(|(_, v)| v.clone()).collect();
    let mut q8: Vec<HostAdamW8> = ns[..2].iter().map(|&n| HostAdamW8::new(n)).collect();
    let mut small = HostAdamW { m: vec![0.0; 15], v: vec![0.0; 15], t: 0 };
    let mut small64 = to64(&host[2]);
    let dir = std::env::temp_dir().join(format!("t2v-optim8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let grads_at = |step: u64| -> Vec<Vec<f32>> { ns.iter().enumerate().map(|(k, &n)| Rng::new(100 * step + k as u64).uniform(n, -1.0, 1.0)).collect() };
    for step in 0..3u64 {
        let gs = grads_at(step);
        let grads: Vec<Tensor> = gs.iter().zip(&shapes).map(|(v, s)| Tensor::from_slice(g, s, v).unwrap()).collect();
        opt.step(&grads, None).unwrap();
        let file = dir.join(format!("step{step}.safetensors"));
        opt.save(&file).unwrap();
        for k in 0..2 {
            q8[k].step(&mut host[k], &gs[k], &c);
            let got = params[k].to_vec().unwrap();
            assert_close(&format!("param {k} step {step}"), &got, &to64(&host[k]), 1e-6, 1e-5);
            let (m, v, absmax) = q8_state(&file, k, ns[k]);
            for (what, gpu_codes, host_codes) in [("m", &m, &q8[k].m), ("v", &v, &q8[k].v)] {
                let differ = gpu_codes.iter().zip(host_codes).filter(|(a, b)| a != b).count();
                assert!(gpu_codes.iter().zip(host_codes).all(|(a, b)| a.abs_diff(*b) <= 1), "param {k} step {step}: {what} codes more than one apart");
                assert!(differ * 100 <= ns[k], "param {k} step {step}: {differ} of {} {what} codes differ", ns[k]);
            }
            let want: Vec<f64> = q8[k].absmax.concat().iter().map(|&x| x as f64).collect();
            assert_close(&format!("absmax {k} step {step}"), &absmax, &want, 1e-7, 1e-5);
            // keep the host on the device's codes, so that rare midpoint choices do not drift
            (q8[k].m, q8[k].v) = (m, v);
        }
        small.step(&mut small64, &to64(&gs[2]), 0.01, 0.05, &c);
        assert_close(&format!("small param step {step}"), &params[2].to_vec().unwrap(), &small64, 2e-6, 2e-5);
    }
    // 2 bytes per element and 8 per block of 256 for the large ones, 8 per element otherwise
    let want_bytes = 2 * (17 + 35) * 256 + 8 * (17 + 35) + 8 * 15;
    assert_eq!(opt.state_bytes(), want_bytes as u64);
    assert_eq!(ns.iter().map(|&n| state_bytes(n, true)).sum::<u64>(), want_bytes as u64);
    // resume: the state after step 1, reloaded, continues as the run did
    let resumed: Vec<Tensor> = init.iter().map(|(t, v)| Tensor::from_slice(g, t.shape(), v).unwrap()).collect();
    let mut again = AdamW::new(c, vec![ParamGroup { params: resumed.clone(), lr_scale: 1.0, weight_decay: None, clipped: true }]);
    let mut straight = AdamW::new(c, vec![ParamGroup { params: resumed.iter().map(|t| Tensor::from_slice(g, t.shape(), &t.to_vec().unwrap()).unwrap()).collect(), lr_scale: 1.0, weight_decay: None, clipped: true }]);
    let step_with = |o: &mut AdamW, s: u64| {
        let grads: Vec<Tensor> = grads_at(s).iter().zip(&shapes).map(|(v, sh)| Tensor::from_slice(g, sh, v).unwrap()).collect();
        o.step(&grads, Some(10.0)).unwrap();
    };
    for s in 0..2 {
        step_with(&mut again, s);
        step_with(&mut straight, s);
    }
    let mid = dir.join("mid.safetensors");
    again.save(&mid).unwrap();
    let weights: Vec<Vec<f32>> = resumed.iter().map(|t| t.to_vec().unwrap()).collect();
    let reloaded: Vec<Tensor> = weights.iter().zip(&shapes).map(|(v, s)| Tensor::from_slice(g, s, v).unwrap()).collect();
    let mut third = AdamW::new(c, vec![ParamGroup { params: reloaded.clone(), lr_scale: 1.0, weight_decay: None, clipped: true }]);
    third.load(&mid).unwrap();
    step_with(&mut third, 2);
    step_with(&mut straight, 2);
    let bits = |ts: &[Tensor]| ts.iter().flat_map(|t| t.to_vec().unwrap()).map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(bits(&reloaded), bits(&straight.params().cloned().collect::<Vec<_>>()), "a resumed 8-bit state continues bit for bit");
    // the other kind of state is refused
    let mut f32opt = AdamW::new(AdamWConfig { eight_bit: false, ..c }, vec![ParamGroup { params: reloaded, lr_scale: 1.0, weight_decay: None, clipped: true }]);
    let e = f32opt.load(&mid).unwrap_err().to_string();
    assert!(e.contains("8-bit moments") && e.contains("32-bit"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
