//! The routes: which handler answers which path, and the layers every request passes.

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use super::body_timeout::{self, BodyReadLimits};
use super::cors::CorsConfig;
use super::state::AppState;
use super::{auth, body_limit, chat, completions, health, models, tokenize};

/// The request limits and CORS settings the layers apply.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Larger bodies get 413.
    pub max_request_body_bytes: usize,
    /// A body must arrive whole within this, or 408 (`None`: no limit).
    pub body_read_timeout: Option<Duration>,
    /// `None`: no CORS headers at all.
    pub cors: Option<CorsConfig>,
}

/// Every route; `/v1/*` behind the API key when one is set.
pub fn router(state: AppState, config: &RouterConfig) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(models::list))
        .route("/v1/chat/completions", post(chat::create))
        .route("/v1/completions", post(completions::create))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    let limits = BodyReadLimits {
        timeout: config.body_read_timeout.filter(|t| !t.is_zero()),
        max_bytes: config.max_request_body_bytes,
        metrics: state.metrics.clone(),
    };
    let router = Router::new()
        .merge(v1)
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/health", get(health::health))
        .route("/ping", get(health::ping).post(health::ping))
        .route("/version", get(health::version))
        .route("/metrics", get(health::metrics))
        .layer(DefaultBodyLimit::max(config.max_request_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            limits,
            body_timeout::read_body_in_time,
        ))
        .layer(axum::middleware::from_fn_with_state(
            config.max_request_body_bytes,
            body_limit::reject_oversized,
        ))
        .with_state(state);
    // Outermost: preflights are answered before auth, and errors carry the headers too.
    match &config.cors {
        Some(cors) => router.layer(cors.layer()),
        None => router,
    }
}
