//! Learning-rate schedules: the reference's `--lr_scheduler` / `--lr_warmup_steps`, which
//! it hands to diffusers' `get_scheduler` (a `LambdaLR`: optimizer step k, counted from 0,
//! runs at `lr * factor(k)`). T2V-Turbo trains with `constant`, where the warmup is unused.

use serde::{Deserialize, Serialize};

/// The schedule's shape (diffusers' names; `cosine_with_restarts` with one cycle,
/// `polynomial` of power 1 down to 1e-7, diffusers' defaults).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// The learning rate throughout (warmup ignored, as in diffusers).
    #[default]
    Constant,
    /// Linear warmup from 0, then constant.
    #[value(alias = "constant_with_warmup")]
    ConstantWithWarmup,
    /// Linear warmup, then linear decay to 0 at the last step.
    Linear,
    /// Linear warmup, then half a cosine down to 0 at the last step.
    Cosine,
    /// Linear warmup, then a cosine down to 0 (one cycle: the same as `cosine` up to the
    /// last step).
    #[value(alias = "cosine_with_restarts")]
    CosineWithRestarts,
    /// Linear warmup, then linear decay to an absolute 1e-7 at the last step.
    Polynomial,
}

/// diffusers' `lr_end` of the polynomial schedule.
const POLYNOMIAL_LR_END: f64 = 1e-7;

impl LrSchedule {
    /// The multiplier of the base rate `lr` for optimizer step `step` (0 = the first) of a
    /// `total`-step run with `warmup` warmup steps.
    pub fn factor(self, step: u64, warmup: u64, total: u64, lr: f32) -> f64 {
        let (s, w, n) = (step as f64, warmup as f64, total as f64);
        if self == LrSchedule::Constant {
            return 1.0;
        }
        if step < warmup {
            return s / w.max(1.0);
        }
        // fraction of the decay done (diffusers: max(1, total - warmup) steps of decay)
        let progress = (s - w) / (n - w).max(1.0);
        match self {
            LrSchedule::Constant | LrSchedule::ConstantWithWarmup => 1.0,
            LrSchedule::Linear => ((n - s) / (n - w).max(1.0)).max(0.0),
            LrSchedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
            LrSchedule::CosineWithRestarts if progress >= 1.0 => 0.0,
            LrSchedule::CosineWithRestarts => (0.5 * (1.0 + (std::f64::consts::PI * (progress % 1.0)).cos())).max(0.0),
            LrSchedule::Polynomial => {
                let lr = lr as f64;
                if step > total {
                    return POLYNOMIAL_LR_END / lr;
                }
                ((lr - POLYNOMIAL_LR_END) * (1.0 - progress) + POLYNOMIAL_LR_END) / lr
            }
        }
    }

    /// Why this schedule cannot run at base rate `lr` (diffusers refuses a polynomial
    /// decay to 1e-7 from a rate not above it).
    pub fn check(self, lr: f32) -> Result<(), String> {
        if self == LrSchedule::Polynomial && lr as f64 <= POLYNOMIAL_LR_END {
            return Err(format!("the polynomial schedule decays to {POLYNOMIAL_LR_END:e}: --lr {lr:e} must be above it"));
        }
        Ok(())
    }

    /// Does the rate depend on the run's length (so that a resumed run with another
    /// `--steps` changes the rates of its later steps)?
    pub fn decays(self) -> bool {
        !matches!(self, LrSchedule::Constant | LrSchedule::ConstantWithWarmup)
    }
}

#[cfg(test)]
mod tests {
    use super::LrSchedule::*;

    /// Values of diffusers' `get_scheduler` lambdas (written out by hand from its formulas)
    /// for a 10-step run with 4 warmup steps.
    #[test]
    fn factors_follow_diffusers() {
        let f = |s: super::LrSchedule, k| s.factor(k, 4, 10, 0.25);
        for k in 0..12 {
            assert_eq!(f(Constant, k), 1.0);
        }
        assert_eq!([0, 1, 3, 4, 9].map(|k| f(ConstantWithWarmup, k)), [0.0, 0.25, 0.75, 1.0, 1.0]);
        // linear: (10 - k) / 6 after the warmup
        assert_eq!([2, 4, 7, 10, 11].map(|k| f(Linear, k)), [0.5, 1.0, 0.5, 0.0, 0.0]);
        // cosine: 0.5 (1 + cos(pi (k - 4) / 6))
        let c = [4, 6, 7, 10].map(|k| f(Cosine, k));
        for (got, want) in c.iter().zip([1.0, 0.75, 0.5, 0.0]) {
            assert!((got - want).abs() < 1e-12, "{c:?}");
        }
        assert_eq!(f(CosineWithRestarts, 7), f(Cosine, 7));
        assert_eq!(f(CosineWithRestarts, 10), 0.0);
        // polynomial: ((lr - 1e-7) (1 - progress) + 1e-7) / lr
        assert!((f(Polynomial, 7) - ((0.25 - 1e-7) * 0.5 + 1e-7) / 0.25).abs() < 1e-15);
        assert!((f(Polynomial, 11) - 4e-7).abs() < 1e-15);
        assert!(Polynomial.check(5e-8).is_err() && Polynomial.check(1e-5).is_ok() && Linear.check(0.0).is_ok());
        assert_eq!(f(Polynomial, 1), 0.25);
        // no warmup: the first step already decays from 1
        assert_eq!(Linear.factor(0, 0, 4, 1e-5), 1.0);
        assert_eq!(Linear.factor(2, 0, 4, 1e-5), 0.5);
    }
}
