//! Reverse-mode automatic differentiation over the compute core's ops.
//!
//! A [`Tape`] records, for every op on tracked [`Var`]s, a backward closure that maps the
//! output gradient to input gradients. [`Tape::backward`] walks the records in reverse and
//! returns [`Grads`] of the leaves (parameters or chosen inputs). Untracked values (from
//! [`Tape::constant`], [`Var::detach`], or ops inside [`Tape::no_grad`]) record nothing.
//! [`Tape::checkpoint`] keeps only a block's inputs and recomputes its inside during the
//! backward pass, trading compute for activation memory.
//!
//! ```no_run
//! use t2v_kernels::{autograd::{self as ad, Tape}, Gpu, GpuOptions, Tensor};
//! let gpu = Gpu::new(&GpuOptions::default())?;
//! let tape = Tape::new();
//! let w = tape.leaf(Tensor::from_slice(&gpu, &[2, 3], &[0.1; 6])?);
//! let x = tape.constant(Tensor::from_slice(&gpu, &[4, 3], &[1.0; 12])?);
//! let loss = ad::mean_all(&ad::square(&ad::linear(&x, &w, None)?)?)?;
//! let grads = tape.backward(&loss)?;
//! let dw = grads.get(&w).expect("w is a leaf");
//! # Ok::<(), t2v_kernels::Error>(())
//! ```

mod lora;
mod ops;
mod tape;

pub use lora::{conv2d_lora, linear_lora, temporal_conv_lora, Lora, LoraVars};
pub use ops::*;
pub use tape::{Grads, Tape, Var};
