//! surge: a vLLM-style LLM inference server for Llama 3.x.

pub mod api;
pub mod bench;
pub mod config;
pub mod engine;
pub mod frontend;
pub mod kv_cache;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod runner;
