//! The server's lifecycle as the API sees it: loading (and in which phase), ready,
//! draining; the requests in flight; and the shutdown deadline that cuts the rest.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use tokio::sync::{watch, Notify};

use super::error::ApiError;
use crate::metrics::Metrics;

/// Seconds a client is asked to wait before retrying while this replica loads or drains.
const RETRY_AFTER_SECS: u64 = 5;

/// A start-up phase (`surge_startup_seconds{phase}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Fetching the model (OCI image, hub).
    Pull,
    /// Reading weights, building the model and the KV cache.
    Load,
    /// A first forward pass.
    Warmup,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pull => "pull",
            Self::Load => "load",
            Self::Warmup => "warmup",
        }
    }
}

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Loading(Phase),
    Ready,
    Draining,
}

pub struct Lifecycle {
    status: Mutex<Status>,
    in_flight: AtomicUsize,
    idle: Notify,
    /// Set once the shutdown deadline passed: requests still running end now.
    cut: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

impl Lifecycle {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        metrics.ready.set(0.0);
        metrics.draining.set(0.0);
        Self {
            status: Mutex::new(Status::Loading(Phase::Pull)),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            cut: watch::Sender::new(false),
            metrics,
        }
    }

    pub fn status(&self) -> Status {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, status: Status) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
        self.metrics
            .ready
            .set(f64::from(u8::from(status == Status::Ready)));
        self.metrics
            .draining
            .set(f64::from(u8::from(status == Status::Draining)));
    }

    /// A new start-up phase began (ignored once ready or draining).
    pub fn loading(&self, phase: Phase) {
        if matches!(self.status(), Status::Loading(_)) {
            self.set(Status::Loading(phase));
        }
    }

    pub fn ready(&self) {
        if matches!(self.status(), Status::Loading(_)) {
            self.set(Status::Ready);
        }
    }

    /// Stops taking new requests; those in flight go on until [`Self::cut`].
    pub fn drain(&self) {
        self.set(Status::Draining);
    }

    /// The shutdown deadline passed: every request in flight ends now.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// A place for one new request, or the 503 that says why there is none.
    pub fn enter(self: &Arc<Self>) -> Result<InFlight, ApiError> {
        match self.status() {
            Status::Ready => Ok(InFlight::new(self.clone())),
            Status::Loading(phase) => Err(unavailable(format!(
                "The model is loading ({}); retry shortly.",
                phase.as_str()
            ))),
            Status::Draining => Err(unavailable(
                "The server is shutting down; retry on another replica.",
            )),
        }
    }

    pub fn num_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Returns once no request is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.num_in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// An OpenAI-shaped 503 with `Retry-After`.
pub fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError {
        retry_after: Some(RETRY_AFTER_SECS),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableError",
            message,
        )
    }
}

/// One request in flight; the drain waits for every one to drop.
pub struct InFlight {
    lifecycle: Arc<Lifecycle>,
    cut: watch::Receiver<bool>,
}

impl InFlight {
    fn new(lifecycle: Arc<Lifecycle>) -> Self {
        lifecycle.in_flight.fetch_add(1, Ordering::AcqRel);
        let cut = lifecycle.cut.subscribe();
        Self { lifecycle, cut }
    }

    /// Resolves when the shutdown deadline cuts this request (never, otherwise).
    pub async fn cut(&mut self) {
        if self.cut.wait_for(|cut| *cut).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Clone for InFlight {
    fn clone(&self) -> Self {
        Self::new(self.lifecycle.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.lifecycle.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.lifecycle.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifecycle() -> Arc<Lifecycle> {
        Arc::new(Lifecycle::new(Arc::new(Metrics::new("m").unwrap())))
    }

    #[test]
    fn requests_enter_only_while_ready() {
        let l = lifecycle();
        l.loading(Phase::Load);
        let e = l.enter().err().unwrap();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.message.contains("load"), "{}", e.message);
        l.ready();
        let a = l.enter().unwrap();
        let b = a.clone();
        assert_eq!(l.num_in_flight(), 2);
        l.drain();
        assert!(l.enter().is_err());
        l.loading(Phase::Warmup);
        assert_eq!(l.status(), Status::Draining, "no way back from draining");
        drop((a, b));
        assert_eq!(l.num_in_flight(), 0);
    }

    #[tokio::test]
    async fn wait_idle_returns_when_the_last_request_ends_and_cut_reaches_requests() {
        let l = lifecycle();
        l.ready();
        let mut a = l.enter().unwrap();
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.wait_idle().await }
        });
        l.cut();
        a.cut().await;
        assert!(!waiter.is_finished());
        drop(a);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
