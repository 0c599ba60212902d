//! The engine: request state, scheduling, batch preparation and the engine thread.

pub mod admission;
pub mod batch;
pub mod core;
pub mod handle;
pub mod sampling_params;
pub mod scheduler;
pub mod sequence;
pub mod stats;
pub mod timeline;

pub use core::{start, start_with_metrics, EngineConfig, EngineInfo};
pub use handle::{EngineEvent, EngineHandle, EngineRequest, RequestStream, SubmitError};
