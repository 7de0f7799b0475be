//! Reward preprocessing: resampling weights and differentiability.
use t2v_kernels::autograd::{self as ad, Tape};
use t2v_kernels::{Gpu, GpuOptions, Tensor};
use t2v_turbo::models::preprocess::{hps, resample_matrix};

#[test]
fn resampling_rows_are_normalised_and_identity_at_equal_size() {
    for (i, o) in [(36, 32), (20, 18), (7, 13), (5, 5)] {
        let m = resample_matrix(i, o);
        for r in 0..o {
            let s: f32 = m[r * i..(r + 1) * i].iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "{i}->{o} row {r} sums to {s}");
        }
    }
    let id = resample_matrix(5, 5);
    for r in 0..5 {
        for c in 0..5 {
            assert!((id[r * 5 + c] - if r == c { 1.0 } else { 0.0 }).abs() < 1e-6);
        }
    }
}

#[test]
fn hps_preprocessing_passes_gradients_to_the_frames() {
    let g = Gpu::new(&GpuOptions { quiet: true, ..Default::default() }).unwrap();
    let img: Vec<f32> = (0..3 * 10 * 14).map(|i| ((i * 37 % 101) as f32) / 101.0).collect();
    let loss_of = |v: &[f32]| -> (f32, Option<Vec<f32>>) {
        let tape = Tape::new();
        let x = tape.leaf(Tensor::from_slice(&g, &[1, 3, 10, 14], v).unwrap());
        let y = hps(&x, 12).unwrap();
        assert_eq!(y.shape(), [1, 3, 12, 12]);
        let loss = ad::mean_all(&ad::square(&y).unwrap()).unwrap();
        let l = loss.value().item_at(0).unwrap();
        (l, tape.backward(&loss).unwrap().get(&x).map(|t| t.to_vec().unwrap()))
    };
    let (_, grad) = loss_of(&img);
    let grad = grad.unwrap();
    for e in [0, 77, 300, 419] {
        let (mut p, mut m) = (img.clone(), img.clone());
        p[e] += 1e-2;
        m[e] -= 1e-2;
        let num = (loss_of(&p).0 - loss_of(&m).0) / 2e-2;
        assert!((grad[e] - num).abs() <= 1e-2 * num.abs().max(1e-2), "d/dx[{e}]: {} vs {num}", grad[e]);
    }
}
