//! POST /tokenize and /detokenize (vLLM's shapes).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::respond::{self, blocking};
use super::state::AppState;
use super::wire::tokenize::{DetokenizeRequest, TokenizeRequest};
use crate::frontend::validate::parse_request;

pub async fn tokenize(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let model = state.model()?;
        let request: TokenizeRequest = parse_request(&respond::body(body)?)?;
        blocking(move || model.validator.tokenize(request)).await
    };
    match result.await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn detokenize(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let model = state.model()?;
        let request: DetokenizeRequest = parse_request(&respond::body(body)?)?;
        blocking(move || model.validator.detokenize(request)).await
    };
    match result.await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}
