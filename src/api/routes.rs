//! The routes: which handler answers which path.

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use super::state::AppState;
use super::{auth, body_limit, chat, completions, health, models, tokenize};

/// Every route; `/v1/*` behind the API key when one is set.
pub fn router(state: AppState, max_request_body_bytes: usize) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(models::list))
        .route("/v1/chat/completions", post(chat::create))
        .route("/v1/completions", post(completions::create))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    Router::new()
        .merge(v1)
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/health", get(health::health))
        .route("/ping", get(health::ping).post(health::ping))
        .route("/version", get(health::version))
        .route("/metrics", get(health::metrics))
        .layer(DefaultBodyLimit::max(max_request_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            max_request_body_bytes,
            body_limit::reject_oversized,
        ))
        .with_state(state)
}
