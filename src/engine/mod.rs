//! The engine: request state, sampling parameters and batch preparation.

pub mod batch;
pub mod sampling_params;
pub mod scheduler;
pub mod sequence;
