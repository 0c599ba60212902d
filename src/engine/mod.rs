//! The engine: request state, scheduling, batch preparation and the engine thread.

pub mod batch;
pub mod core;
pub mod handle;
pub mod sampling_params;
pub mod scheduler;
pub mod sequence;
pub mod stats;

pub use core::{start, EngineConfig, EngineInfo};
pub use handle::{EngineEvent, EngineHandle, EngineRequest, RequestStream, SubmitError};
