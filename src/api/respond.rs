//! What chat and completions share: validation errors and submit failures as HTTP,
//! token logprob text, SSE framing, and the per-request log line.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::error::ApiError;
use super::generation::Generation;
use crate::engine::SubmitError;
use crate::frontend::validate::ValidationError;

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
        Self {
            param: e.param,
            ..ApiError::new(status, e.kind, e.message)
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull { retry_after, .. } => Self {
                retry_after: Some(retry_after.as_secs().max(1)),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequestsError",
                    e.to_string(),
                )
            },
            SubmitError::EngineStopped => Self {
                retry_after: Some(5),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailableError",
                    e.to_string(),
                )
            },
        }
    }
}

/// The request body, or the body-limit rejection as an OpenAI-shaped 413 (or 400).
pub fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            super::body_limit::too_large()
        } else {
            ApiError::bad_request(
                format!("Cannot read the request body: {}", rejection.body_text()),
                None,
            )
        }
    })
}

/// The text of one token for logprobs (special tokens included).
pub fn token_text(tokenizer: &tokenizers::Tokenizer, token: u32) -> String {
    tokenizer.decode(&[token], false).unwrap_or_default()
}

/// A data-only SSE stream fed by `rx`; the handler's task writes JSON lines into it and
/// ends with `[DONE]`. When the client goes away the receiver drops, sends fail, and the
/// task drops its `Generation`, which aborts the request.
pub fn sse(rx: mpsc::Receiver<String>) -> Response {
    let stream = tokio_stream::StreamExt::map(ReceiverStream::new(rx), |data| {
        Ok::<_, Infallible>(Event::default().data(data))
    });
    Sse::new(stream).into_response()
}

/// One line per finished request.
pub fn log_finished(generation: &Generation, finish: &str) {
    let now = std::time::Instant::now();
    let ttft_ms = generation
        .first_token
        .map(|t| (t - generation.started).as_secs_f64() * 1e3);
    tracing::info!(
        request_id = generation.request_id(),
        prompt_tokens = generation.num_prompt_tokens,
        output_tokens = generation.num_output_tokens,
        ttft_ms,
        duration_ms = (now - generation.started).as_secs_f64() * 1e3,
        finish_reason = finish,
        "request finished"
    );
}

/// Runs blocking validation (template rendering, tokenizing) off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ValidationError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(format!("validation task failed: {e}"))),
    }
}
