//! `--http-body-read-timeout`: a request's whole body must arrive within the limit, or
//! the client gets 408 and the connection is closed — a client trickling its body (or
//! declaring more than it sends) cannot hold a connection and a task forever.
//! The body is read here, bounded by `--max-request-body-bytes`, and handed on whole.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::ApiError;
use crate::metrics::Metrics;

/// What the middleware needs.
#[derive(Clone)]
pub struct BodyReadLimits {
    /// `None`: no time limit (the body is then read by the handlers as it comes).
    pub timeout: Option<Duration>,
    pub max_bytes: usize,
    pub metrics: Arc<Metrics>,
}

pub async fn read_body_in_time(
    State(limits): State<BodyReadLimits>,
    request: Request,
    next: Next,
) -> Response {
    let Some(timeout) = limits.timeout else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let read = Limited::new(body, limits.max_bytes).collect();
    let error = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(collected)) => {
            let body = Body::from(collected.to_bytes());
            return next.run(Request::from_parts(parts, body)).await;
        }
        Ok(Err(e)) if e.is::<LengthLimitError>() => super::body_limit::too_large(),
        Ok(Err(e)) => ApiError::bad_request(format!("Cannot read the request body: {e}"), None),
        Err(_) => {
            limits
                .metrics
                .request_timeouts
                .with_label_values(&["body"])
                .inc();
            timed_out(timeout)
        }
    };
    // What is left of the body is unread: the connection cannot carry another request.
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The OpenAI-shaped 408.
fn timed_out(timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "RequestTimeoutError",
        format!(
            "The request body did not arrive within {} (--http-body-read-timeout).",
            humantime::format_duration(timeout)
        ),
    )
}
