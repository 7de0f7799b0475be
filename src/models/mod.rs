//! Networks of the method, loadable from the real checkpoints' key names.

pub mod weights;
pub mod fitting;
pub mod torch_checkpoint;
pub mod vae;
pub mod tokenizer;
pub mod clip;
pub mod layers;
pub mod preprocess;
pub mod unet3d;
pub mod bert;
pub mod internvideo2;
