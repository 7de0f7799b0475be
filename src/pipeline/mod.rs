//! The method end to end: loading the models and generating videos (`sample`).

pub mod sample;
pub mod video_io;
pub mod preprocess;
