//! Liveness, readiness and the metrics scrape: /ping, /health, /version, /metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::lifecycle::Status;
use super::state::AppState;

/// Readiness: 200 once the model is loaded and warm; 503 with the phase while loading,
/// and 503 while draining.
pub async fn health(State(state): State<AppState>) -> Response {
    let (status, body) = match state.lifecycle.status() {
        Status::Ready => (StatusCode::OK, json!({"status": "ok"})),
        Status::Loading(phase) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "loading", "phase": phase.as_str()}),
        ),
        Status::Draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "draining"}),
        ),
    };
    (status, Json(body)).into_response()
}

/// Liveness: answers as soon as the process serves.
pub async fn ping() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub async fn version() -> Json<serde_json::Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

/// The Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
