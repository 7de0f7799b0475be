//! Helpers shared by the benchmarks (`cargo bench`, the peer benchmark).

use std::time::Instant;

/// Deterministic values in [-1, 1] without a random-number dependency.
pub fn pseudo_data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(97_531)) >> 16) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

/// Best wall time in seconds of `f` over repeated runs after one warm-up: at least
/// `min_runs`, then more until `budget_s` has passed (at most 50). `f` must end by reading
/// a result back, so that the GPU work is inside the timed region.
pub fn best_time(budget_s: f64, min_runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut runs = 0;
    while runs < min_runs || (start.elapsed().as_secs_f64() < budget_s && runs < 50) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    best
}

/// Panics unless `got` is within `rtol` (relative to max(1, |want|)) of `want`.
#[track_caller]
pub fn check_value(what: &str, got: f32, want: f64, rtol: f64) {
    let tol = rtol * want.abs().max(1.0);
    assert!((got as f64 - want).abs() <= tol, "{what}: GPU gives {got}, CPU gives {want}");
}
