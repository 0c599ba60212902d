//! GET /v1/models: the one served model.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::state::AppState;
use super::wire::models::ModelList;

pub async fn list(State(state): State<AppState>) -> Response {
    match state.model() {
        Ok(model) => Json(ModelList::single(
            state.served_model_name.clone(),
            state.served_model_name.clone(),
            state.created,
            model.max_model_len,
        ))
        .into_response(),
        Err(e) => e.into_response(),
    }
}
