//! GET /v1/models: the one served model.

use axum::extract::State;
use axum::Json;

use super::state::AppState;
use super::wire::models::ModelList;

pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList::single(
        state.served_model_name.clone(),
        state.served_model_name.clone(),
        state.created,
        state.max_model_len,
    ))
}
