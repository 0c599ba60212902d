//! The server's lifecycle as the API sees it: loading (and in which phase), ready,
//! draining; the requests in flight; and the shutdown deadline that cuts the rest.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    deadline: Option<Arc<Deadline>>,
}

/// `--request-timeout` for one request, shared by the clones of its [`InFlight`].
struct Deadline {
    at: tokio::time::Instant,
    timeout: Duration,
    /// Counted once per request however many of its prompts hit it.
    counted: AtomicBool,
}

/// Why a request in flight must end now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The shutdown deadline passed (503).
    Shutdown,
    /// Its own `--request-timeout` passed (504).
    Deadline(Duration),
}

impl InFlight {
    fn new(lifecycle: Arc<Lifecycle>) -> Self {
        lifecycle.in_flight.fetch_add(1, Ordering::AcqRel);
        let cut = lifecycle.cut.subscribe();
        Self {
            lifecycle,
            cut,
            deadline: None,
        }
    }

    /// Gives the request `timeout` from now to finish (`None`: no limit).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.deadline = timeout.map(|timeout| {
            Arc::new(Deadline {
                at: tokio::time::Instant::now() + timeout,
                timeout,
                counted: AtomicBool::new(false),
            })
        });
        self
    }

    /// Resolves when this request must end: the shutdown deadline cut it, or its own
    /// deadline passed (then `surge_request_timeouts_total{phase="deadline"}` counts it).
    /// Never resolves otherwise.
    pub async fn ended(&mut self) -> Ending {
        let deadline = self.deadline.clone();
        let (cut_rx, metrics) = (&mut self.cut, &self.lifecycle.metrics);
        let own = async {
            match &deadline {
                Some(d) => tokio::time::sleep_until(d.at).await,
                None => std::future::pending().await,
            }
        };
        let cut = async {
            if cut_rx.wait_for(|cut| *cut).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = cut => Ending::Shutdown,
            () = own => {
                let d = deadline.expect("a deadline fired");
                if !d.counted.swap(true, Ordering::AcqRel) {
                    metrics
                        .request_timeouts
                        .with_label_values(&["deadline"])
                        .inc();
                }
                Ending::Deadline(d.timeout)
            }
        }
    }
}

/// The OpenAI-shaped 504 for a request past its `--request-timeout`.
pub fn deadline_exceeded(timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "TimeoutError",
        format!(
            "The request did not finish within {} (--request-timeout).",
            humantime::format_duration(timeout)
        ),
    )
}

impl Clone for InFlight {
    fn clone(&self) -> Self {
        let mut clone = Self::new(self.lifecycle.clone());
        clone.deadline = self.deadline.clone();
        clone
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
        assert_eq!(a.ended().await, Ending::Shutdown);
        assert!(!waiter.is_finished());
        drop(a);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_deadline_ends_the_request_and_its_clones_and_is_counted_once() {
        let l = lifecycle();
        l.ready();
        let mut a = l
            .enter()
            .unwrap()
            .with_timeout(Some(std::time::Duration::from_millis(50)));
        let mut b = a.clone();
        let limit = std::time::Duration::from_secs(10);
        let ended = tokio::time::timeout(limit, a.ended()).await.unwrap();
        assert_eq!(
            ended,
            Ending::Deadline(std::time::Duration::from_millis(50))
        );
        let ended = tokio::time::timeout(limit, b.ended()).await.unwrap();
        assert!(matches!(ended, Ending::Deadline(_)));
        let counted = l
            .metrics
            .request_timeouts
            .with_label_values(&["deadline"])
            .get();
        assert_eq!(counted, 1);
        let mut c = l.enter().unwrap();
        let never = tokio::time::timeout(std::time::Duration::from_millis(100), c.ended()).await;
        assert!(never.is_err(), "no deadline, no cut: never ends");
    }
}
