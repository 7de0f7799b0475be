//! t2v-turbo: T2V-Turbo-v2 video consistency distillation and fast sampling on wgpu.
//!
//! Layers (see ARCHITECTURE.md): the compute core lives in the `t2v-kernels` crate,
//! re-exported here as [`kernels`]; models, method and pipeline build on it.

pub use t2v_kernels as kernels;

pub mod cli;
pub mod diffusion;
pub mod eval;
pub mod guidance;
pub mod models;
pub mod parity;
pub mod pipeline;
pub mod pretrain;
pub mod reward;
pub mod world;
