//! The method end to end: data sets on disk, Algorithm 1 (`preprocess`), Algorithm 2
//! (`train`), generation (`sample`), progress and metrics.

pub mod captions;
pub mod demo;
pub mod lora_file;
pub mod model_dir;
pub mod plot;
pub mod preprocess;
pub mod progress;
pub mod reward_scores;
pub mod sample;
pub mod shards;
pub mod train;
pub mod validation;
pub mod video_io;
