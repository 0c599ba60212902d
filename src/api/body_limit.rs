//! `--max-request-body-bytes` for bodies that declare their length: refused with 413
//! before any handler runs, after reading and discarding what the client sends (bounded
//! in bytes and time). Answering while the client is still writing makes the kernel reset
//! the connection, and the client then sees a broken pipe instead of the 413.
//! Bodies without a length are capped by `DefaultBodyLimit` in the handlers.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::error::ApiError;

/// At most this much of an oversized body is read before the connection is closed.
const MAX_DRAIN_BYTES: u64 = 64 << 20;
/// At most this long is spent reading an oversized body.
const MAX_DRAIN_TIME: Duration = Duration::from_secs(10);

pub async fn reject_oversized(
    State(limit): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit as u64 => {
            let drained = drain(request.into_body(), length).await;
            let mut response = too_large().into_response();
            if !drained {
                response.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            response
        }
        _ => next.run(request).await,
    }
}

/// The OpenAI-shaped 413.
pub fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestTooLargeError",
        "The request body is too large.",
    )
}

/// Reads and drops the body; true when all of it was read within the bounds.
async fn drain(body: Body, declared: u64) -> bool {
    if declared > MAX_DRAIN_BYTES {
        return false;
    }
    let mut stream = body.into_data_stream();
    let read_all = async {
        while let Some(chunk) = stream.next().await {
            if chunk.is_err() {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(MAX_DRAIN_TIME, read_all)
        .await
        .unwrap_or(false)
}
