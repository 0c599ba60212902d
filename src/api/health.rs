//! Liveness and readiness: /health, /ping, /version.

use axum::Json;
use serde_json::{json, Value};

/// The model is loaded and the engine runs (the server only listens once both hold).
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Liveness: answers as soon as the process serves.
pub async fn ping() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn version() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}
